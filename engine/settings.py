"""TrainConfig: every setting of a training run, each described once, and the flags built from it.

    parser = argparse.ArgumentParser()
    add_train_args(parser, learning_rate=5e-4)        # one flag per field; a stage's own defaults
    config = TrainConfig.from_args(parser.parse_args())

A field's help (and, where it has them, its choices and flag type) is in the field's metadata, so the
dataclass is the one description: add_train_args appends the default to the help and builds the flag.
engine/trainer.py runs a TrainConfig (and re-exports both names: `from engine.trainer import TrainConfig`).
"""
import argparse
from dataclasses import dataclass, field, fields

from model.errors import MiniMindError
from model.LMConfig import parse_bool


def setting(default, help: str, **flag):
    """A TrainConfig field: its default, the help of its flag and any other argparse settings (choices, type)."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    out_dir: str = setting("out", "folder for weights, resume checkpoints and loss curves")
    # length of the run: max_steps wins over epochs; stop_step ends this invocation early (the
    # schedule still follows the full run), e.g. to split a run across time-limited sessions
    epochs: int = setting(1, "passes over the training data (unless --max_steps is set)")
    max_steps: int = setting(0, "optimizer steps in the whole run; 0: from --epochs")
    stop_step: int = setting(0, "end this invocation after this step with a resume checkpoint; continue with --resume")
    # batch: batch_size rows per process per micro-step; one optimizer step sees
    # batch_size * accumulation_steps * world_size rows
    batch_size: int = setting(32, "rows per process per micro-step")
    accumulation_steps: int = setting(1, "micro-steps per optimizer step")
    # AdamW (optionally with Muon for the weight matrices), linear warmup from 0, then cosine down to
    # min_lr, or warmup-stable-decay: the peak until the last decay_fraction of the run, then linear to min_lr
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the weight matrices, AdamW for embeddings and norms",
                             choices=["adamw", "muon"])
    learning_rate: float = setting(5e-4, "peak learning rate (AdamW)")
    muon_lr: float = setting(0.02, "peak learning rate of Muon's matrices (with --optimizer muon)")
    schedule: str = setting("cosine", "cosine, or wsd: warmup, stable at the peak, linear decay over the last "
                            "--decay_fraction", choices=["cosine", "wsd"])
    decay_fraction: float = setting(0.4, "share of the run spent decaying with --schedule wsd")
    min_lr: float = setting(None, "final learning rate of the cosine (default learning_rate / 10)", type=float)
    warmup_steps: int = setting(None, "linear warmup steps (default 2%% of the run)", type=int)
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay (never on norms, biases, embeddings)")
    beta1: float = setting(0.9, "AdamW's decay rate of the gradient's running mean")
    beta2: float = setting(0.95, "AdamW's decay rate of the squared gradient's running mean")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this; 0 disables")
    # runtime
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = setting("auto", "auto, float32, bfloat16, float16 (autocast; master weights stay float32)",
                         choices=["auto", "float32", "bfloat16", "float16"])
    compile: bool = setting(False, "torch.compile the model (true/false)")
    threads: int = setting(0, "CPU threads per process; 0: cores / local processes")
    num_workers: int = setting(0, "DataLoader worker processes")
    group_by_length: bool = setting(False, "batch rows of similar length together (less padding; SFT and LoRA data "
                                           "without --pack) (true/false)")
    seed: int = setting(1337, "seed of the model's initial weights, the data order and dropout")
    # logging, validation, checkpoints (intervals in optimizer steps; 0 disables)
    log_interval: int = setting(10, "steps between log lines")
    eval_interval: int = setting(200, "steps between validation passes; 0: only at the end")
    eval_batches: int = setting(20, "batches per process in a validation pass; 0: the whole validation set")
    save_interval: int = setting(500, "steps between checkpoints; 0: only at the end")
    resume: bool = setting(False, "continue from out/{stage}_{tag}_resume.pth (true/false)")
    report_to: str = setting("none", "also log to tensorboard or wandb", choices=["none", "tensorboard", "wandb"])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def __post_init__(self):
        positive = ("epochs", "batch_size", "accumulation_steps", "learning_rate")
        non_negative = ("max_steps", "stop_step", "weight_decay", "grad_clip", "threads", "num_workers", "log_interval",
                        "eval_interval", "eval_batches", "save_interval", "min_lr", "warmup_steps")
        for name in positive + non_negative:
            value = getattr(self, name)
            if value is not None and (value <= 0 if name in positive else value < 0):
                raise MiniMindError(f"--{name} must be {'positive' if name in positive else 'at least 0'}, got {value}")
        if self.optimizer not in ("adamw", "muon") or self.schedule not in ("cosine", "wsd"):
            raise MiniMindError(f"--optimizer is adamw or muon and --schedule cosine or wsd, got {self.optimizer}, "
                                f"{self.schedule}")
        if not (0 < self.muon_lr and 0 < self.decay_fraction <= 1):
            raise MiniMindError("need --muon_lr > 0 and 0 < --decay_fraction <= 1")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise MiniMindError(f"AdamW betas must lie in [0, 1), got {self.beta1}, {self.beta2}")


def add_train_args(parser: argparse.ArgumentParser, **defaults) -> None:
    """One flag per TrainConfig field, from the field's metadata; `defaults` sets a stage's own defaults
    (e.g. learning_rate=5e-5)."""
    unknown = set(defaults) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    group = parser.add_argument_group("training")
    for f in fields(TrainConfig):
        flag = dict(f.metadata)
        help = flag.pop("help")
        flag.update(default=defaults.get(f.name, f.default),
                    help=help if "(default" in help else help + " (default %(default)s)")
        if f.type is bool:
            group.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, metavar="BOOL", **flag)
        elif "choices" in flag:  # the value is one of the choices, as typed
            group.add_argument(f"--{f.name}", **flag)
        else:
            group.add_argument(f"--{f.name}", **{"type": f.type, **flag})
