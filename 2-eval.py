"""Chat with a trained MiniMind in the terminal, with streaming replies.

    python 2-eval.py                              # chat with out/full_sft_512.pth
    python 2-eval.py --weight dpo --auto          # answer the fixed demo questions, no typing
    python 2-eval.py --weight lora_medical        # full_sft + the LoRA adapter out/lora_medical_512/
    python 2-eval.py --ckpt out/hf/full_sft_512   # an exported HF folder
    python 2-eval.py --history_turns 3            # remember the last 3 exchanges
    python 2-eval.py --weight pretrain            # a pretrained model continues raw text instead
                                                  # (so does any --ckpt named pretrain_*)
    python 2-eval.py --weight pretrain --auto --demo_questions   # the demo questions as bare text, to compare

Sampling: --temperature (0 = greedy), --top_p, --top_k, --repetition_penalty, --max_new_tokens, --seed.
In interactive mode an empty line is ignored, /clear forgets the history, /exit or Ctrl-D quits;
Ctrl-C during an answer stops that answer, Ctrl-C at the prompt quits.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import time
from pathlib import Path

import torch

from model.cli import DEMO_QUESTIONS, PRETRAIN_PROMPTS, add_model_args, load_from_args, render_chat
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, context_length, stream_generate
from model.tokenizer import EOS_ID


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft")
    parser.add_argument("--auto", action="store_true", help="answer the demo questions, then exit")
    parser.add_argument("--demo_questions", action="store_true",
                        help="with --auto, a pretrained model gets the demo questions too (as bare text to continue) "
                             "instead of its continuation prompts, to compare it with the chat model")
    parser.add_argument("--history_turns", type=int, default=0, help="earlier exchanges kept in the prompt (0 = none)")
    parser.add_argument("--system", default=None, help="system message put before the conversation")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    parser.add_argument("--top_p", type=float, default=CHAT_TOP_P)
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k cut")
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for reproducible answers")
    args = parser.parse_args(argv)
    if args.history_turns < 0 or args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("need --history_turns >= 0, --max_new_tokens >= 1, --temperature >= 0 and 0 < --top_p <= 1")
    return args


class Chat:
    """One conversation: the kept history and the sampling settings, answering one question at a time."""

    def __init__(self, model, tokenizer, args):
        self.model, self.tokenizer, self.args = model, tokenizer, args
        # A pretrained model never saw the chat template: give it the bare text to continue.
        self.raw_text = Path(args.ckpt).name.startswith("pretrain_") if args.ckpt else args.weight == "pretrain"
        self.history: list[dict] = []
        self.generator = None
        if args.seed is not None:
            self.generator = torch.Generator(device=model.device).manual_seed(args.seed)

    def prompt_ids(self, question: str) -> list[int]:
        # Leave room for (at least half of) the answer inside the context; past it, generation slides.
        context = context_length(self.model.config)
        budget = context - min(self.args.max_new_tokens, context // 2)
        if self.raw_text:
            # Every pretraining document follows a </s>: that is how a document starts.
            return ([EOS_ID] + self.tokenizer.encode(question))[-budget:]
        messages = [{"role": "system", "content": self.args.system}] if self.args.system else []
        messages += self.history
        messages.append({"role": "user", "content": question})
        ids, _ = render_chat(self.tokenizer, messages, budget)
        return ids

    def answer(self, question: str) -> str:
        a = self.args
        stream = stream_generate(
            self.model, self.tokenizer, self.prompt_ids(question), max_new_tokens=a.max_new_tokens,
            temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, repetition_penalty=a.repetition_penalty,
            generator=self.generator,
        )
        start = time.perf_counter()
        print("🤖 ", end="", flush=True)
        interrupted = False
        try:
            for delta in stream:
                print(delta, end="", flush=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()
        seconds = time.perf_counter() - start
        note = "stopped" if interrupted else ("max tokens reached" if stream.finish_reason == "length" else "")
        speed = stream.completion_tokens / seconds if seconds > 0 else 0.0
        print(f"\n[{stream.completion_tokens} tokens, {speed:.1f} tokens/s{', ' + note if note else ''}]\n")
        if self.args.history_turns and not self.raw_text:
            self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": stream.text}]
            self.history = self.history[-2 * self.args.history_turns:]  # only what the next prompt may use
        return stream.text


def interactive(chat: Chat) -> None:
    print("type a message (/clear forgets the history, /exit quits)")
    while True:
        try:
            question = input("👶 ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not question:
            continue
        if question in ("/exit", "/quit"):
            return
        if question == "/clear":
            chat.history.clear()
            print("(history cleared)")
            continue
        chat.answer(question)


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load_from_args(args)
    chat = Chat(model, tokenizer, args)
    if args.auto:
        for question in PRETRAIN_PROMPTS if chat.raw_text and not args.demo_questions else DEMO_QUESTIONS:
            print(f"👶 {question}")
            chat.answer(question)
    else:
        interactive(chat)


if __name__ == "__main__":
    main()
