"""Stage 5, DPO: align the chat model with preference pairs (a chosen and a rejected reply per prompt).

    python 5-dpo_train.py --preset tiny                      # full-parameter DPO from out/full_sft_256x4.pth
    python 5-dpo_train.py --preset tiny --lora               # only LoRA adapters train; merged at the end
    python 5-dpo_train.py --preset tiny --resume             # continue an interrupted run exactly
    torchrun --nproc_per_node 8 5-dpo_train.py --preset small --beta 0.1

The policy starts as the SFT model and a frozen copy of it is the reference (with --lora, the reference
is the same network with its adapters switched off). Per pair, with log-probabilities summed over the
reply's tokens only (content and its </s>),

    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

which is ln 2 = 0.6931 before the first step; the script checks that on one batch before training.
Logged besides the loss: reward_chosen / reward_rejected (beta * log-ratio), reward_margin, reward_acc
(share of pairs whose chosen reward is higher) and logp_margin (policy log p(chosen) - log p(rejected)),
on the training batches and on the held-out pairs.

The loss is native (engine/dpo.py) rather than trl's DPOTrainer, so DPO runs through the same engine as
every other stage (resume, DDP, logging, checkpoints); engine/dpo.py says why in full.

Reads out/full_sft_{tag}.pth (or --ckpt) and dataset/dpo.jsonl + dataset/dpo_val.jsonl from
`python data_process.py dpo`. Writes, under --out_dir:

    dpo_{tag}.pth  + .json   the aligned weights (with --lora: base + adapter merged)
    dpo_{tag}_resume.pth           everything --resume needs
    dpo_{tag}_loss.png             loss curves
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import copy
import math
from pathlib import Path

from data.datasets import DPODataset
from engine.config_file import add_config_file_arg, parse_with_config
from engine.dpo import DPOLoss
from engine.trainer import TrainConfig, Trainer, add_train_args
from model.checkpoint import check_vocabulary, previous_stage_weights, weights_path
from model.cli import load_with_flags
from model.errors import MiniMindError, run_main
from model.LMConfig import add_config_args, config_from_args, describe
from model.lora import add_lora_args, apply_lora, lora_settings_from_args, save_merged, trainable_summary
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    group = parser.add_argument_group("DPO")
    group.add_argument("--data", default=str(ROOT / "dataset" / "dpo.jsonl"), help="preference pairs jsonl")
    group.add_argument("--val_data", default=str(ROOT / "dataset" / "dpo_val.jsonl"),
                       help="held-out pairs; 'none' to skip validation")
    group.add_argument("--ckpt", default=None, help="policy and reference weights (default out/full_sft_{tag}.pth)")
    group.add_argument("--beta", type=float, default=0.1, help="strength of the pull towards the reference")
    group.add_argument("--lora", action="store_true", help="train LoRA adapters instead of every weight")
    group.add_argument("--seq_len", type=int, default=None, help="tokens per prompt + reply (default: max_seq_len)")
    group.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    group.add_argument("--strict", action="store_true", help="stop at the first malformed line instead of skipping it")
    add_lora_args(parser)
    # DPO moves a model that already chats: a small learning rate, one epoch. The rate is resolved
    # below: adapters start from zero and need a larger one than the full weights.
    add_train_args(parser, learning_rate=None, batch_size=8, epochs=1, log_interval=10, eval_interval=100,
                   eval_batches=10, save_interval=200)
    parser._option_string_actions["--learning_rate"].help = "peak learning rate (default 5e-6; 5e-5 with --lora)"
    add_config_file_arg(parser)  # --config FILE: read by parse_with_config
    return parser


def parse_args(argv=None):
    args = parse_with_config(build_parser(), argv)
    if args.learning_rate is None:
        args.learning_rate = 5e-5 if args.lora else 5e-6
    return args


def check_start(trainer: Trainer, model, loss_fn: DPOLoss, dataset: DPODataset) -> None:
    """Score the pairs the engine validates on (trainer.evaluate) before the first step: the loss must be
    ln 2, since the policy is the reference; logp_margin is the baseline that training should raise."""
    model.to(trainer.device)
    metrics = trainer.evaluate(model, dataset, loss_fn, DPODataset.collate)
    loss = metrics["loss"] - metrics.get("aux_loss", 0.0)  # the MoE balance loss is not part of DPO's
    trainer.print(f"step 0 | DPO loss {loss:.6f} (ln 2 = {math.log(2):.6f}) | logp_margin {metrics['logp_margin']:.3f}")
    if abs(loss - math.log(2)) > 1e-3:
        raise MiniMindError(f"the DPO loss before training is {loss:.6f}, not ln 2: the policy does not start from "
                            f"the reference (check --ckpt)")


def main(argv=None):
    args = parse_args(argv)
    trainer = Trainer(TrainConfig.from_args(args))
    out_dir = Path(args.out_dir)

    init_path = previous_stage_weights(args.ckpt, out_dir, "full_sft", config_from_args(args), args.preset)
    model = load_with_flags(init_path, args, say=trainer.print)  # its .json config decides the shape
    config = model.config
    trainer.print(f"policy from {init_path}: {describe(model)}")
    if args.lora:
        model = apply_lora(model, lora_settings_from_args(args))
        trainer.print(trainable_summary(model) + "; reference: the same model with the adapters off")
        reference = None
    else:
        reference = copy.deepcopy(model).to(trainer.device)  # frozen copy; DPOLoss keeps it in eval mode
    loss_fn = DPOLoss(reference, beta=args.beta)

    tokenizer = load_tokenizer(args.tokenizer)
    check_vocabulary(tokenizer, config.vocab_size, args.tokenizer)
    seq_len = args.seq_len or config.max_seq_len
    verbose = trainer.is_main
    train_set = DPODataset(args.data, tokenizer, seq_len, strict=args.strict, verbose=verbose)
    val_set = None
    if args.val_data.lower() != "none":
        if not Path(args.val_data).exists():
            raise MiniMindError(f"{args.val_data} not found: build it with `python data_process.py dpo`, "
                                f"or pass --val_data none to train without held-out pairs")
        val_set = DPODataset(args.val_data, tokenizer, seq_len, strict=args.strict, verbose=verbose)

    name = f"dpo_{config.tag()}"
    resuming = args.resume and (out_dir / f"{name}_resume.pth").exists()
    if not resuming:  # once trained, the policy has moved away from the reference
        check_start(trainer, model, loss_fn, val_set or train_set)

    target = weights_path(out_dir, "dpo", config)
    save_fn = (lambda m: save_merged(m, target, "dpo")) if args.lora else None  # None: the engine's save_weights
    result = trainer.fit(model, train_set, loss_fn, val_set=val_set, collate_fn=DPODataset.collate,
                         save_fn=save_fn, name=name, stage="dpo")
    if result.finished:
        summary = ""
        if result.val_metrics:
            v = result.val_metrics
            summary = (f"; held-out pairs: loss {v['loss']:.4f}, reward_acc {v['reward_acc']:.3f}, "
                       f"reward_margin {v['reward_margin']:.4f}, logp_margin {v['logp_margin']:.3f}")
        trainer.print(f"done: {target}{summary}")
    trainer.close()


if __name__ == "__main__":
    run_main(main)
