"""Stage 3, full SFT: teach the pretrained model to answer in the chat format, every weight trained.

    python 3-full_sft.py --preset tiny                                 # from out/pretrain_256x4.pth
    python 3-full_sft.py --preset tiny --resume                        # continue an interrupted run exactly
    python 3-full_sft.py --data dataset/sft_multi.jsonl --seq_len 1024
    torchrun --nproc_per_node 8 3-full_sft.py --preset small --epochs 2

Starts from out/pretrain_{tag}.pth (or --ckpt; its .json config decides the model's shape).
Reads conversations, {"conversations": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} per
line, from --data (default dataset/sft_single.jsonl and dataset/sft_multi.jsonl, those that exist) and
validates on --val_data (default dataset/sft_val.jsonl). The loss falls on the assistant tokens of every
turn, each reply's </s> included, so the model learns to stop; prompts, role headers and padding carry
none. Batches are padded to their longest row. Writes, under --out_dir:

    full_sft_{tag}.pth  + .json   the chat model's weights and config
    full_sft_{tag}_resume.pth           everything --resume needs to continue bit-exactly
    full_sft_{tag}_loss.png             training and validation loss curves

At the end it answers --eos_check held-out prompts and reports how many answers end with </s> within
--eos_check_tokens (a model that has learned the format stops by itself): once sampled as the chat samples
(temperature and top-p of 2-eval.py, fixed seed) and once greedily, next to the share of the held-out
reference answers that are that short.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from data.datasets import (
    ChatEncoder,
    PackedChatDataset,
    SFTDataset,
    Skips,
    conversation_of,
    read_jsonl,
    sft_loss,
)
from engine.config_file import add_config_file_arg, parse_with_config
from engine.trainer import TrainConfig, Trainer, add_train_args
from model.chat import generation_header
from model.checkpoint import check_vocabulary, previous_stage_weights
from model.cli import load_with_flags
from model.errors import MiniMindError, run_main
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, generate_steps
from model.LMConfig import add_config_args, config_from_args, describe
from model.tokenizer import DEFAULT_TOKENIZER_DIR, EOS_ID, load_tokenizer

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = [ROOT / "dataset" / "sft_single.jsonl", ROOT / "dataset" / "sft_multi.jsonl"]
DEFAULT_VAL = ROOT / "dataset" / "sft_val.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    group = parser.add_argument_group("supervised fine-tuning")
    group.add_argument("--data", nargs="+", default=None,
                       help="chat jsonl file(s) (default: dataset/sft_single.jsonl and sft_multi.jsonl)")
    group.add_argument("--val_data", default=None,
                       help="held-out chat jsonl (default dataset/sft_val.jsonl if present)")
    group.add_argument("--ckpt", default=None, help="starting weights (default out_dir/pretrain_{tag}.pth)")
    group.add_argument("--seq_len", type=int, default=None, help="tokens per conversation (default: max_seq_len)")
    group.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    group.add_argument("--pack", action="store_true",
                       help="pack whole conversations into rows of --seq_len tokens: no compute spent on padding")
    group.add_argument("--strict", action="store_true", help="stop at the first malformed line instead of skipping it")
    group.add_argument("--eos_check", type=int, default=50,
                       help="after training, answer this many held-out prompts and report how many end with </s>")
    group.add_argument("--eos_check_tokens", type=int, default=128, help="token budget per answer in that check")
    add_train_args(parser, learning_rate=1e-4, batch_size=16, weight_decay=0.01, eval_interval=100,
                   eval_batches=10, save_interval=200)
    add_config_file_arg(parser)  # --config FILE: read by parse_with_config
    return parser


def parse_args(argv=None):
    return parse_with_config(build_parser(), argv)


def held_out_prompts(path, tokenizer, count: int, max_prompt: int) -> list[tuple[list[int], int]]:
    """Up to `count` (prompt, reference answer length) pairs from a chat jsonl: the prompt is each
    conversation up to its last assistant reply, then the generation prompt `<s>assistant\\n`, tokenized
    exactly as in training. Unusable lines are skipped."""
    encoder = ChatEncoder(tokenizer)
    prompts = []
    for _, row in read_jsonl(path, Skips(show=0)):
        messages, reason, _ = conversation_of(row)
        last = 0 if reason else max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
        if last == 0:
            continue
        ids = encoder.encode(messages[:last], lambda i, m: False)[0] + generation_header(tokenizer)
        if len(ids) <= max_prompt:
            answer = tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"]
            prompts.append((list(ids), len(answer)))
        if len(prompts) == count:
            break
    return prompts


@torch.no_grad()
def eos_rate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, batch_size: int = 16) -> float:
    """Fraction of answers that emit </s> within max_new_tokens (temperature 0 = greedy)."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    stopped = 0
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start:start + batch_size]
        ended = torch.zeros(len(rows), dtype=torch.bool)
        for step in generate_steps(model, rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                   generator=generator):
            ended |= step.cpu() == EOS_ID
        stopped += int(ended.sum())
    return stopped / len(prompts)


def main(argv=None):
    args = parse_args(argv)
    trainer = Trainer(TrainConfig.from_args(args))
    out_dir = Path(args.out_dir)

    ckpt = previous_stage_weights(args.ckpt, out_dir, "pretrain", config_from_args(args), args.preset)
    model = load_with_flags(ckpt, args, say=trainer.print)  # its .json config decides the shape
    model.train()
    config = model.config
    trainer.print(f"starting from {ckpt}: {describe(model)}")

    tokenizer = load_tokenizer(args.tokenizer)
    check_vocabulary(tokenizer, config.vocab_size, args.tokenizer)
    seq_len = args.seq_len or config.max_seq_len
    data_files = args.data or [path for path in DEFAULT_DATA if path.exists()]
    if not data_files:
        raise MiniMindError(f"no SFT data: build {DEFAULT_DATA[0].name} with `python data_process.py sft`, "
                            f"or pass --data")
    verbose = trainer.is_main
    read = [SFTDataset(f, tokenizer, seq_len, strict=args.strict, verbose=verbose) for f in data_files]
    train_set = PackedChatDataset(read, seq_len) if args.pack else ConcatDataset(read)
    if args.pack:
        trainer.print(f"packed {train_set.conversations:,} conversations into {len(train_set):,} rows of up to "
                      f"{seq_len} tokens ({train_set.tokens / (len(train_set) * (seq_len + 1)):.0%} full)")
    val_file = args.val_data or (DEFAULT_VAL if DEFAULT_VAL.exists() else None)
    val_set = SFTDataset(val_file, tokenizer, seq_len, strict=args.strict, verbose=verbose) if val_file else None
    if val_set is None:
        trainer.print("no validation set (pass --val_data): training loss only")

    result = trainer.fit(model, train_set, sft_loss, val_set=val_set, collate_fn=SFTDataset.collate,
                         name=f"full_sft_{config.tag()}", stage="full_sft")
    if result.finished and trainer.is_main:
        summary = f"done: {result.weights_file}"
        if result.val_metrics:
            summary += f", validation loss {result.val_metrics['loss']:.4f}"
        trainer.print(summary)
        if args.eos_check and val_file:
            # Prompt and answer must fit the model's context, or generation would slide its window.
            pairs = held_out_prompts(val_file, tokenizer, args.eos_check, config.max_seq_len - args.eos_check_tokens)
            if pairs:
                prompts, budget = [p for p, _ in pairs], args.eos_check_tokens
                with trainer.autocast:
                    sampled = eos_rate(result.model, prompts, budget, CHAT_TEMPERATURE, CHAT_TOP_P)
                    greedy = eos_rate(result.model, prompts, budget)
                short = sum(length < budget for _, length in pairs) / len(pairs)
                trainer.print(f"held-out answers ending with </s> within {budget} tokens, of {len(prompts)}: "
                              f"{100 * sampled:.0f}% sampled as the chat does (temperature {CHAT_TEMPERATURE}, "
                              f"top-p {CHAT_TOP_P}), {100 * greedy:.0f}% greedy; "
                              f"{100 * short:.0f}% of the reference answers are that short")
    trainer.close()


if __name__ == "__main__":
    run_main(main)
