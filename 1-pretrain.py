"""Stage 1, pretraining: learn to continue Chinese text from the token shards of `data_process.py pretrain`.

    python 1-pretrain.py --preset tiny --batch_size 8 --train_tokens 5e5    # CPU: 4.6M model, ~10 min on 2 cores
    python 1-pretrain.py --preset tiny --batch_size 8 --train_tokens 5e5 --resume # continue an interrupted run exactly
    python 1-pretrain.py                                                # small-T (26.88M), one epoch
    torchrun --nproc_per_node 8 1-pretrain.py --preset small --batch_size 64 --epochs 2
    python 1-pretrain.py --preset moe --ckpt out/pretrain_640x8_moe.pth   # continue pretraining from weights

Reads dataset/pretrain/{meta.json, train_*.bin, val_*.bin}: windows of --seq_len tokens (documents joined
by </s>), the target of each position the next token. Writes, under --out_dir:

    pretrain_{tag}.pth   + .json   the weights (a plain state dict) and the config that built them
    pretrain_{tag}_resume.pth            everything --resume needs to continue bit-exactly
    pretrain_{tag}_loss.png              training and validation loss curves

Every field of the model config is a flag (--preset, then --dim, --n_layers, ...), and every training
setting too (see --help). Ctrl-C saves a resume checkpoint before exiting.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import math
from pathlib import Path

from data.datasets import PackedChatDataset, PretrainDataset, SFTDataset
from engine.config_file import add_config_file_arg, parse_with_config
from engine.trainer import TrainConfig, Trainer, add_train_args
from model.cli import load_with_flags
from model.errors import MiniMindError, run_main
from model.LMConfig import add_config_args, config_from_args, describe
from model.model import MiniMindForCausalLM
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer, tokenizer_hash

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    group = parser.add_argument_group("pretraining")
    group.add_argument("--data_dir", default=str(ROOT / "dataset" / "pretrain"), help="token shards with meta.json")
    group.add_argument("--seq_len", type=int, default=None, help="tokens per training window (default: max_seq_len)")
    group.add_argument("--train_tokens", type=float, default=0,
                       help="train on this many tokens (sets --max_steps from the global batch; e.g. 2e6)")
    group.add_argument("--chat_data", nargs="+", default=None,
                       help="instead of token shards: chat jsonl files whose conversations, in the chat template, "
                            "are learned token by token (every token a target), packed into windows")
    group.add_argument("--chat_val", default=None, help="held-out chat jsonl for validation with --chat_data")
    group.add_argument("--ckpt", default=None, help="start from these weights (a stage .pth) instead of random")
    group.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR),
                       help="the tokenizer the shards must have been made with (checked by its hash, when present)")
    add_train_args(parser, learning_rate=5e-4, batch_size=32, eval_interval=100, eval_batches=10, save_interval=200)
    add_config_file_arg(parser)  # --config FILE: read by parse_with_config
    return parser


def parse_args(argv=None):
    return parse_with_config(build_parser(), argv)


def chat_text(args, seq_len: int, verbose: bool):
    """(train, validation) sets of whole conversations in the chat template, packed into windows, every
    token a target: the text of the conversations, laid out exactly as the chat will show it to the model."""
    tokenizer = load_tokenizer(args.tokenizer)
    read = [SFTDataset(path, tokenizer, seq_len, verbose=verbose) for path in args.chat_data]
    train_set = PackedChatDataset(read, seq_len, targets="all")
    val_set = None
    if args.chat_val:
        val_set = PackedChatDataset([SFTDataset(args.chat_val, tokenizer, seq_len, verbose=verbose)], seq_len, "all")
    return train_set, val_set


def pretrain_loss(model, batch):
    x, y = batch
    out = model(input_ids=x, shift_labels=y)  # out.loss includes the MoE balance loss
    return out.loss, {}


def moe_pretrain_loss(model, batch):
    """The same loss, also logging the balance loss on its own."""
    x, y = batch
    out = model(input_ids=x, shift_labels=y)
    return out.loss, {"aux_loss": out.aux_loss}


def main(argv=None):
    args = parse_args(argv)
    train_config = TrainConfig.from_args(args)
    trainer = Trainer(train_config)  # seeds, so the model below starts the same in every run

    if args.ckpt:
        model = load_with_flags(args.ckpt, args, say=trainer.print)
        trainer.print(f"initialised from {args.ckpt} (its config decides the shape)")
    else:
        model = MiniMindForCausalLM(config_from_args(args))
    config = model.config
    seq_len = args.seq_len or config.max_seq_len
    if seq_len > config.max_seq_len:
        raise MiniMindError(f"--seq_len {seq_len} is longer than the model's max_seq_len {config.max_seq_len}")

    if args.chat_data:
        train_set, val_set = chat_text(args, seq_len, verbose=trainer.is_main)
        shard_vocab = None
    else:
        if not (Path(args.tokenizer) / "tokenizer.json").is_file():
            raise MiniMindError(f"--tokenizer {args.tokenizer}: no tokenizer.json there (train one with "
                                f"`python train_tokenizer.py`): the shards are checked against it")
        expected_hash = tokenizer_hash(args.tokenizer)
        train_set = PretrainDataset(args.data_dir, seq_len, "train", tokenizer_hash=expected_hash)
        val_set = PretrainDataset(args.data_dir, seq_len, "val", tokenizer_hash=expected_hash)
        shard_vocab = train_set.meta.get("vocab_size")
    if shard_vocab and shard_vocab > config.vocab_size:
        raise MiniMindError(f"{args.data_dir} was tokenized with a {shard_vocab}-token vocabulary, but the model has "
                            f"vocab_size {config.vocab_size}: pick a preset with a matching vocabulary or --vocab_size")

    max_steps = trainer.steps_for_tokens(args.train_tokens, seq_len) if args.train_tokens else None
    tokens = train_set.tokens if args.chat_data else len(train_set) * seq_len
    trainer.print(f"MiniMind {config.tag()}: {describe(model)}; windows of {seq_len} tokens, "
                  f"{tokens / 1e6:.2f}M training tokens per epoch")

    loss_fn = moe_pretrain_loss if config.use_moe else pretrain_loss
    collate = train_set.collate if args.chat_data else None  # packed rows can end short of a full window
    result = trainer.fit(model, train_set, loss_fn, val_set=val_set, collate_fn=collate, name=f"pretrain_{config.tag()}",
                         stage="pretrain", max_steps=max_steps)
    if result.finished and result.val_metrics:
        loss = result.val_metrics["loss"]
        trainer.print(f"done: {result.weights_file}, validation loss {loss:.4f} (perplexity {math.exp(loss):.1f})")
    trainer.close()


if __name__ == "__main__":
    run_main(main)
