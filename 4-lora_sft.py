"""Stage 4, LoRA: adapt the chat model to a domain by training small low-rank adapters, base frozen.

    python 4-lora_sft.py --preset tiny --data dataset/lora_identity.jsonl            # CPU: a minute
    python 4-lora_sft.py --preset tiny --data dataset/lora_identity.jsonl --resume   # continue exactly
    python 4-lora_sft.py --data dataset/lora_medical.jsonl --lora_rank 16 --merge
    torchrun --nproc_per_node 8 4-lora_sft.py --preset small --data dataset/lora_medical.jsonl

Each adapted linear layer W (attention q/k/v/o and the SwiGLU gate/up/down by default) computes
W x + (alpha / r) * B A x, where A (r x in) and B (out x r) are the only trained parameters and B starts
at zero, so training starts exactly from the base model. Loss is on assistant tokens only, as in SFT.

Reads the base weights from out/full_sft_{tag}.pth (or --ckpt) and a chat jsonl
({"conversations": [{"role", "content"}, ...]}). Writes, under --out_dir (NAME from --name, by default
the data file's name without a `lora_` prefix):

    lora_NAME_{tag}/               the adapter only, in peft's format (adapter_config.json records the base)
    lora_NAME_{tag}.pth  + .json   with --merge: base + adapter folded into one plain checkpoint
    lora_NAME_{tag}_resume.pth     everything --resume needs (base weights included)
    lora_NAME_{tag}_loss.png       loss curves
    --identity_json PATH           the identity score (evaluation/identity.py) of the finished adapter

The base checkpoint is only read, never written. Chat with the result: `python 2-eval.py --weight lora_NAME`
or `python 2-eval.py --ckpt out/lora_NAME_{tag}` (the folder names its base).

The quickstart's identity recipe: 647 conversations (LLaMA-Factory's 91, less the 4 that ask a held-out
question, plus 560 generated paraphrases whose replies all state the name first; data/sft.py), adapters of
rank 8 (alpha 16) on every attention and SwiGLU projection, 40 steps of 16 at --learning_rate 5e-3, loss on
the answers only. The old 20 steps at 1e-4 on the 91 left the tiny model answering "你是谁？" with a film
title; this recipe names itself on 32 of 32 held-out questions (a tiny model of 150 pretraining and 60 SFT
steps, three seeds; 30 steps at 2e-3 reached 28). With --identity_json the stage then asks
evaluation/identity.py's held-out paraphrases greedily, with the adapter on and off, and stops non-zero if
the adapter-off logits differ from the base's.

The quickstart's tool adapter: rank 32 (alpha 32) on the DPO model, 800 steps of 16 at 5e-3 on
sft_tools.jsonl, merged. Its rows all open with the system turn that offers the calculator, which sft_loss
runs once per batch, and --group_by_length batches them by length: a step costs a third of a plain one.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import json
import re
from pathlib import Path

from data.datasets import SFTDataset, sft_loss
from engine.config_file import parse_with_config
from engine.trainer import TrainConfig, Trainer, add_train_args
from evaluation.identity import BOT_NAME, board_line, identity_board
from model.checkpoint import atomic_write, check_vocabulary, previous_stage_weights, weights_path
from model.cli import load_with_flags
from model.errors import run_main
from model.LMConfig import add_config_args, config_from_args, describe
from model.lora import (
    adapter_dir,
    add_lora_args,
    apply_lora,
    lora_settings_from_args,
    save_adapter,
    save_merged,
    trainable_summary,
)
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    group = parser.add_argument_group("LoRA fine-tuning")
    group.add_argument("--data", default=str(ROOT / "dataset" / "lora_identity.jsonl"), help="domain chat jsonl")
    group.add_argument("--val_data", default=None, help="held-out chat jsonl for validation (optional)")
    group.add_argument("--name", default=None, help="adapter name in out/lora_NAME_{tag}/ (default: from --data)")
    group.add_argument("--ckpt", default=None, help="base weights (default out/full_sft_{tag}.pth)")
    group.add_argument("--seq_len", type=int, default=None, help="tokens per conversation (default: max_seq_len)")
    group.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    group.add_argument("--strict", action="store_true", help="stop at the first malformed line instead of skipping it")
    group.add_argument("--merge", action="store_true", help="also write base + adapter merged to out/lora_NAME_{tag}.pth")
    group.add_argument("--identity_json", default=None,
                       help="after training, score the adapter on the held-out identity questions (adapter on and "
                            "off, evaluation/identity.py) and write the board here")
    group.add_argument("--bot_name", default=BOT_NAME,
                       help="the name the identity data gives the model, for --identity_json (default %(default)s)")
    add_lora_args(parser)
    add_train_args(parser, learning_rate=1e-4, batch_size=16, epochs=10, weight_decay=0.01,
                   log_interval=10, eval_interval=100, save_interval=200)
    return parse_with_config(parser, argv)


def adapter_name(args) -> str:
    """--name, else the data file's name: dataset/lora_medical.jsonl -> medical."""
    name = args.name or Path(args.data).stem.removeprefix("lora_")
    if not re.fullmatch(r"[\w.-]+", name):
        raise SystemExit(f"adapter name {name!r} must be letters, digits, '_', '.' or '-' (it becomes a folder name)")
    return name


def main(argv=None):
    args = parse_args(argv)
    trainer = Trainer(TrainConfig.from_args(args))  # seeds first: the adapters' random A starts the same every run
    out_dir = Path(args.out_dir)

    base_path = previous_stage_weights(args.ckpt, out_dir, "full_sft", config_from_args(args), args.preset)
    model = load_with_flags(base_path, args, say=trainer.print)  # its .json config decides the shape
    config = model.config
    trainer.print(f"base {base_path}: {describe(model)}")
    model = apply_lora(model, lora_settings_from_args(args))
    trainer.print(trainable_summary(model))

    tokenizer = load_tokenizer(args.tokenizer)
    check_vocabulary(tokenizer, config.vocab_size, args.tokenizer)
    seq_len = args.seq_len or config.max_seq_len
    verbose = trainer.is_main
    train_set = SFTDataset(args.data, tokenizer, seq_len, strict=args.strict, verbose=verbose)
    val_set = None
    if args.val_data:
        val_set = SFTDataset(args.val_data, tokenizer, seq_len, strict=args.strict, verbose=verbose)

    domain = adapter_name(args)
    folder = adapter_dir(out_dir, domain, config)  # out/lora_{domain}_{tag}/, also the prefix of the engine's files
    save_fn = lambda m: (save_adapter(m, folder, base_path=base_path), folder)[1]
    result = trainer.fit(model, train_set, sft_loss, val_set=val_set, collate_fn=SFTDataset.collate,
                         save_fn=save_fn, name=folder.name)
    if result.finished:
        trainer.print(f"done: adapter in {folder}" + (f", validation loss {result.val_metrics['loss']:.4f}"
                                                        if result.val_metrics else ""))
        if args.merge and trainer.is_main:
            merged = save_merged(result.model, weights_path(out_dir, f"lora_{domain}", config), f"lora_{domain}")
            trainer.print(f"merged weights: {merged}")
        if args.identity_json and trainer.is_main:
            score_identity(args, base_path, folder, tokenizer)
    trainer.close()


def score_identity(args, base_path, folder, tokenizer) -> None:
    """The adapter as saved, on a fresh copy of the base, in float32 on the CPU (where equal inputs give
    bit-equal outputs): the held-out identity share with the adapter on and off, and the base check."""
    base = load_with_flags(base_path, args, say=lambda _: None).float().eval()
    board = identity_board(base, folder, tokenizer, args.bot_name)
    board["base"] = str(base_path)
    text = json.dumps(board, ensure_ascii=False, indent=1)
    atomic_write(args.identity_json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(board_line(board) + f" ({args.identity_json})")
    if not board["adapter_off_is_base"]:
        raise SystemExit(f"{folder}: with the adapter off the logits differ from {base_path}'s: the base changed")


if __name__ == "__main__":
    run_main(main)
