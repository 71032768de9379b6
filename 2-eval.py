"""Chat with a trained MiniMind in the terminal, with streaming replies.

    python 2-eval.py                              # chat with out/full_sft_512x8.pth
    python 2-eval.py --weight dpo --auto          # answer the fixed demo questions, no typing
    python 2-eval.py --weight lora_medical        # full_sft + the LoRA adapter out/lora_medical_512x8/
    python 2-eval.py --ckpt out/hf/full_sft_512x8   # an exported HF folder
    python 2-eval.py --history_turns 3            # remember the last 3 exchanges
    python 2-eval.py --weight pretrain            # a pretrained model continues raw text instead
                                                  # (so does any --ckpt named pretrain_*)
    python 2-eval.py --weight pretrain --auto --demo_questions   # the demo questions as bare text, to compare
    python 2-eval.py --weight dpo --auto --judge --questions dataset/sft_val.jsonl --limit 50
                                                  # held-out questions, each answer judged on topic or not

--auto answers its questions in batches (without history) and prints each answer when its batch is done.
--judge marks each answer on topic when its first sentence contains a topic word of the question, and
prints the share (the rule is in evaluation/ontopic.py); a pretrained model is judged the same way on its
continuation of the bare question.

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

from data.datasets import Skips
from evaluation.ontopic import on_topic
from evaluation.scoreboard import answer_all, first_question, read_conversations
from model.chat import continuation_prompt, prompt_budget
from model.cli import (
    DEMO_QUESTIONS,
    PRETRAIN_PROMPTS,
    add_model_args,
    is_pretrain_checkpoint,
    load_from_args,
    render_chat,
)
from model.errors import MiniMindError, run_main
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, context_length, stream_generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft")
    parser.add_argument("--auto", action="store_true", help="answer the demo questions, then exit")
    parser.add_argument("--demo_questions", action="store_true",
                        help="with --auto, a pretrained model gets the demo questions too (as bare text to continue) "
                             "instead of its continuation prompts, to compare it with the chat model")
    parser.add_argument("--questions", default=None,
                        help="with --auto, ask these instead: a .txt file (one question a line) or a chat .jsonl "
                             "(the first user message of each conversation)")
    parser.add_argument("--limit", type=int, default=0, help="with --questions, ask only the first N (0 = all)")
    parser.add_argument("--judge", action="store_true",
                        help="with --auto, mark each answer on topic or not and print the share (evaluation/ontopic.py)")
    parser.add_argument("--quiet", action="store_true", help="with --auto, print only the summary lines")
    parser.add_argument("--batch_size", type=int, default=16, help="questions answered at once by --auto")
    parser.add_argument("--history_turns", type=int, default=0, help="earlier exchanges kept in the prompt (0 = none)")
    parser.add_argument("--system", default=None, help="system message put before the conversation")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    parser.add_argument("--top_p", type=float, default=CHAT_TOP_P)
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k cut")
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for reproducible answers")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.history_turns < 0 or args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("need --history_turns >= 0, --max_new_tokens >= 1, --temperature >= 0 and 0 < --top_p <= 1")
    if args.limit < 0 or args.batch_size < 1:
        parser.error("need --limit >= 0 and --batch_size >= 1")
    if (args.questions or args.judge or args.quiet) and not args.auto:
        parser.error("--questions, --judge and --quiet go with --auto")
    return args


class Chat:
    """One conversation: the kept history and the sampling settings, answering one question at a time."""

    def __init__(self, model, tokenizer, args):
        self.model, self.tokenizer, self.args = model, tokenizer, args
        # A pretrained model never saw the chat template: give it the bare text to continue.
        self.raw_text = is_pretrain_checkpoint(args)
        self.history: list[dict] = []
        self.generator = None
        if args.seed is not None:
            self.generator = torch.Generator(device=model.device).manual_seed(args.seed)

    def prompt_ids(self, question: str) -> list[int]:
        # Leave room for (at least half of) the answer inside the context; past it, generation slides.
        budget = prompt_budget(context_length(self.model.config), self.args.max_new_tokens)
        if self.raw_text:
            return continuation_prompt(self.tokenizer, question, budget)
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


def read_questions(path, limit: int) -> list[str]:
    """Questions from a .txt file (one a line) or a chat .jsonl (each conversation's first user message)."""
    path = Path(path)
    if not path.exists():
        raise MiniMindError(f"--questions: {path} not found")
    questions, skips = [], Skips()
    if path.suffix == ".jsonl":
        conversations, skips = read_conversations(path, show_skips=3)
        questions = [first_question(messages) for messages in conversations]
    else:
        try:
            questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise MiniMindError(f"--questions: {path} is not UTF-8 text (byte {error.start})")
    if skips.total():
        print(f"{path}: skipped {skips.total()} lines ({skips.summary()})")
    if not questions:
        raise MiniMindError(f"--questions: {path} holds no questions")
    return questions[:limit] if limit else questions


def ask_all(chat: Chat, questions: list[str], judge: bool, quiet: bool = False) -> None:
    """Answer every question, a batch at a time, print each answer (unless `quiet`) and, with `judge`,
    whether it is on topic."""
    a = chat.args
    start = time.perf_counter()
    answers = answer_all(chat.model, chat.tokenizer, questions, [chat.prompt_ids(q) for q in questions],
                         a.max_new_tokens, chat.generator, a.batch_size, temperature=a.temperature, top_k=a.top_k,
                         top_p=a.top_p, repetition_penalty=a.repetition_penalty)
    hits = 0
    for item in answers:
        notes = [f"{item['tokens']} tokens", "stopped" if item["ended"] else "max tokens reached"]
        if judge:
            word = on_topic(item["question"], item["answer"])
            hits += word is not None
            notes.append(f"on topic: {word}" if word else "off topic")
        if not quiet:
            print(f"👶 {item['question']}\n🤖 {item['answer']}\n[{', '.join(notes)}]\n", flush=True)
    seconds = time.perf_counter() - start
    tokens = sum(item["tokens"] for item in answers)
    print(f"{len(questions)} answers, {tokens} tokens in {seconds:.1f}s ({tokens / seconds:.0f} tokens/s)")
    if judge:
        print(f"on topic: {hits} of {len(questions)} ({100 * hits / len(questions):.0f}%): the first sentence of the "
              f"answer contains a topic word of the question (evaluation/ontopic.py)")


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
        if args.questions:
            questions = read_questions(args.questions, args.limit)
        else:
            questions = PRETRAIN_PROMPTS if chat.raw_text and not args.demo_questions else DEMO_QUESTIONS
        ask_all(chat, questions, args.judge, args.quiet)
    else:
        interactive(chat)


if __name__ == "__main__":
    run_main(main)
