"""Check a pretrained MiniMind: continue a few Chinese openings, and measure held-out loss.

    python 0-eval_pretrain.py                         # continue the fixed prompts with out/pretrain_512x8.pth
    python 0-eval_pretrain.py --val                   # also: loss and perplexity on dataset/pretrain val shards
    python 0-eval_pretrain.py --val --no_samples      # only the numbers
    python 0-eval_pretrain.py --prompt "北京是"         # your own opening instead of the fixed list
    python 0-eval_pretrain.py --ckpt out/pretrain_640x8_moe.pth --temperature 0

The prompts are raw text (no chat template): a pretrained model only knows how to continue documents.
Validation reads the held-out split that `data_process.py pretrain` wrote, in windows of the model's
max_seq_len, and reports the mean next-token cross-entropy (the MoE balance loss is not included) and
its exponential, the perplexity.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import math
import time

import torch
from torch.utils.data import DataLoader

from data.datasets import PretrainDataset
from model.cli import PRETRAIN_PROMPTS, ROOT, add_model_args, load_from_args
from model.errors import run_main
from model.generate import stream_generate
from model.model import lm_loss
from model.tokenizer import EOS_ID, tokenizer_hash


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="pretrain")
    parser.add_argument("--prompt", action="append", default=None, help="an opening to continue (repeatable)")
    parser.add_argument("--no_samples", action="store_true", help="skip the continuations")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--repetition_penalty", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", action="store_true", help="report validation loss and perplexity")
    parser.add_argument("--data_dir", default=str(ROOT / "dataset" / "pretrain"), help="token shards with meta.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--val_batches", type=int, default=0, help="stop after this many batches (0 = the whole split)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def continue_prompts(model, tokenizer, prompts, args) -> None:
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    for prompt in prompts:
        # In the pretraining stream every document follows a </s>, so that is how a document starts.
        ids = [EOS_ID] + tokenizer.encode(prompt)
        print(f"\n📝 {prompt}", end="", flush=True)
        stream = stream_generate(
            model, tokenizer, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_p=args.top_p, repetition_penalty=args.repetition_penalty, generator=generator,
        )
        start = time.perf_counter()
        for delta in stream:
            print(delta, end="", flush=True)
        seconds = time.perf_counter() - start
        print(f"\n[{stream.completion_tokens} tokens, {stream.completion_tokens / max(seconds, 1e-9):.1f} tokens/s]")


@torch.no_grad()
def validation_loss(model, dataset, batch_size: int, max_batches: int = 0) -> tuple[float, int]:
    """(mean next-token cross-entropy in nats, tokens scored) over `dataset`, in order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total, count = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        x, y = x.to(model.device), y.to(model.device)
        total += lm_loss(model(x).logits, y, reduction="sum").item()
        count += y.numel()
    return total / count, count


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load_from_args(args)
    if not args.no_samples:
        continue_prompts(model, tokenizer, args.prompt or PRETRAIN_PROMPTS, args)
    if args.val:
        seq_len = model.config.max_seq_len
        # The hash refuses shards that were tokenized with a different tokenizer than the model's.
        val = PretrainDataset(args.data_dir, seq_len, split="val", tokenizer_hash=tokenizer_hash(tokenizer.name_or_path))
        loss, tokens = validation_loss(model, val, args.batch_size, args.val_batches)
        print(f"\nval: {tokens:,} tokens in windows of {seq_len}: loss {loss:.4f}, perplexity {math.exp(loss):.2f}")


if __name__ == "__main__":
    run_main(main)
