"""The training engine shared by every stage (pretraining, full SFT, LoRA, DPO).

A stage script is a recipe: it builds a model, a dataset, a collate function and a loss function;
the engine owns everything else (device and precision, AdamW with warmup + cosine, accumulation,
clipping, torch.compile, DDP, the resumable data order, logging, validation, checkpoints).

    from model.trainer import TrainConfig, Trainer, add_train_args

    parser = argparse.ArgumentParser()
    add_train_args(parser, learning_rate=5e-4)        # every TrainConfig field as a flag; stage defaults
    args = parser.parse_args()
    trainer = Trainer(TrainConfig.from_args(args))     # joins torchrun's process group, picks device/dtype, seeds

    model = MiniMindForCausalLM(config)                # built after seeding, so every run starts the same

    def loss_fn(model, batch):                         # batch is already on trainer.device
        x, y = batch
        out = model(input_ids=x, shift_labels=y)       # call `model` (it may be wrapped by DDP/compile)
        return out.loss, {"aux_loss": out.aux_loss}    # extra metrics are averaged and logged

    result = trainer.fit(model, train_set, loss_fn, val_set=val_set, collate_fn=None, name="pretrain_512")
    result.finished, result.val_metrics, result.model  # False after --stop_step; last validation; unwrapped model
    trainer.close()                                    # leaves the DDP process group

`fit` accepts any nn.Module: only parameters with requires_grad are optimized (a peft model trains
just its adapters), and a loss function may hold other modules, such as DPO's frozen reference
(move it with `.to(trainer.device)`). What the stage writes is `save_fn(model) -> path`; the default
is `save_weights` to `out/{name}.pth`. Besides that, the engine writes, atomically:

    out/{name}_resume.pth   model, optimizer, grad scaler, step, epoch, data position, RNG states of
                            every rank, world size, loss history: `--resume` continues bit-exactly
    out/{name}_loss.png     training and validation loss curves (validation also runs before step 1)

SIGINT/SIGTERM finish the current step, write the resume checkpoint and exit with 128 + signal.

Datasets are map-style; their order comes from `EpochSampler` (a permutation per (seed, epoch),
rank r taking every world_size-th index), so a global batch is the same set of samples whatever
the number of processes, and a run resumes at the exact sample where it stopped.
"""
import argparse
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader

from model.checkpoint import atomic_torch_save, atomic_write, clean_state_dict, save_weights
from model.dataset import EpochSampler
from model.runtime import DeviceError, dtype_name, pick_device, pick_dtype


@dataclass
class TrainConfig:
    out_dir: str = "out"
    # length of the run: max_steps wins over epochs; stop_step ends this invocation early (the
    # schedule still follows the full run), e.g. to split a run across time-limited sessions
    epochs: int = 1
    max_steps: int = 0
    stop_step: int = 0
    # batch: batch_size rows per process per micro-step; one optimizer step sees
    # batch_size * accumulation_steps * world_size rows
    batch_size: int = 32
    accumulation_steps: int = 1
    # AdamW (optionally with Muon for the weight matrices), linear warmup from 0, then cosine down to
    # min_lr, or warmup-stable-decay: the peak until the last decay_fraction of the run, then linear to min_lr
    optimizer: str = "adamw"
    learning_rate: float = 5e-4
    muon_lr: float = 0.02
    schedule: str = "cosine"
    decay_fraction: float = 0.4
    min_lr: float = None  # None: learning_rate / 10
    warmup_steps: int = None  # None: 2% of the run
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # runtime
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bf16 where it is supported (and, on a CPU, measured faster), else fp32
    compile: bool = False
    threads: int = 0  # CPU threads per process; 0: the available cores divided among local processes
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 1337
    # logging, validation, checkpoints (intervals in optimizer steps; 0 disables)
    log_interval: int = 10
    eval_interval: int = 200
    eval_batches: int = 20  # 0: the whole validation set
    save_interval: int = 500
    resume: bool = False
    report_to: str = "none"  # none, tensorboard or wandb (when installed)

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
                raise SystemExit(f"--{name} must be {'positive' if name in positive else 'at least 0'}, got {value}")
        if self.optimizer not in ("adamw", "muon") or self.schedule not in ("cosine", "wsd"):
            raise SystemExit(f"--optimizer is adamw or muon and --schedule cosine or wsd, got {self.optimizer}, "
                             f"{self.schedule}")
        if not (0 < self.muon_lr and 0 < self.decay_fraction <= 1):
            raise SystemExit(f"need --muon_lr > 0 and 0 < --decay_fraction <= 1")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise SystemExit(f"AdamW betas must lie in [0, 1), got {self.beta1}, {self.beta2}")


_HELP = {
    "out_dir": "folder for weights, resume checkpoints and loss curves",
    "epochs": "passes over the training data (unless --max_steps is set)",
    "max_steps": "optimizer steps in the whole run; 0: from --epochs",
    "stop_step": "end this invocation after this step with a resume checkpoint; continue with --resume",
    "batch_size": "rows per process per micro-step",
    "accumulation_steps": "micro-steps per optimizer step",
    "optimizer": "adamw, or muon: Muon for the weight matrices, AdamW for embeddings and norms",
    "learning_rate": "peak learning rate (AdamW)",
    "muon_lr": "peak learning rate of Muon's matrices (with --optimizer muon)",
    "schedule": "cosine, or wsd: warmup, stable at the peak, linear decay over the last --decay_fraction",
    "decay_fraction": "share of the run spent decaying with --schedule wsd",
    "min_lr": "final learning rate of the cosine (default learning_rate / 10)",
    "warmup_steps": "linear warmup steps (default 2%% of the run)",
    "weight_decay": "AdamW decoupled weight decay (never on norms, biases, embeddings)",
    "grad_clip": "clip the global gradient norm to this; 0 disables",
    "device": "auto, cpu, cuda, cuda:1, mps",
    "dtype": "auto, float32, bfloat16, float16 (autocast; master weights stay float32)",
    "compile": "torch.compile the model (true/false)",
    "threads": "CPU threads per process; 0: cores / local processes",
    "num_workers": "DataLoader worker processes",
    "log_interval": "steps between log lines",
    "eval_interval": "steps between validation passes; 0: only at the end",
    "eval_batches": "batches per process in a validation pass; 0: the whole validation set",
    "save_interval": "steps between checkpoints; 0: only at the end",
    "resume": "continue from out/{stage}_{tag}_resume.pth (true/false)",
    "report_to": "also log to tensorboard or wandb",
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_train_args(parser: argparse.ArgumentParser, **defaults) -> None:
    """One flag per TrainConfig field; `defaults` sets a stage's own defaults (e.g. learning_rate=5e-5)."""
    unknown = set(defaults) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    group = parser.add_argument_group("training")
    for f in fields(TrainConfig):
        default = defaults.get(f.name, f.default)
        kind = {"min_lr": float, "warmup_steps": int}.get(f.name, f.type)
        help = _HELP.get(f.name, "")
        kwargs = dict(default=default, help=help if "(default" in help else help + " (default %(default)s)")
        if kind is bool:
            group.add_argument(f"--{f.name}", type=_parse_bool, nargs="?", const=True, metavar="BOOL", **kwargs)
        elif f.name == "dtype":
            group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], **kwargs)
        elif f.name in ("optimizer", "schedule"):
            group.add_argument(f"--{f.name}", choices={"optimizer": ["adamw", "muon"],
                                                       "schedule": ["cosine", "wsd"]}[f.name], **kwargs)
        elif f.name == "report_to":
            group.add_argument("--report_to", choices=["none", "tensorboard", "wandb"], **kwargs)
        else:
            group.add_argument(f"--{f.name}", type=kind, **kwargs)


# ----------------------------------------------------------------------------- schedule and optimizer


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float, schedule: str = "cosine",
          decay_fraction: float = 0.4) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to `lr`, then either cosine to
    `min_lr`, or (wsd) `lr` held until the last `decay_fraction` of the run and a straight line to `min_lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "wsd":
        decay_start = max(warmup, total - round(decay_fraction * total))
        progress = min(1.0, max(0, step + 1 - decay_start) / max(1, total - decay_start))
        return lr - (lr - min_lr) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizers(model: nn.Module, cfg: "TrainConfig", device: torch.device, dtype: torch.dtype) -> list:
    """AdamW over every trainable parameter; with --optimizer muon, Muon takes the hidden weight matrices
    out of AdamW's decayed group. Each group keeps its peak rate in "peak_lr" for the schedule to scale."""
    groups = param_groups(model, cfg.weight_decay)
    optimizers = []
    if cfg.optimizer == "muon":
        from model.muon import Muon, split_for_muon

        matrices, groups[0]["params"] = split_for_muon(model, groups[0]["params"])
        if matrices:
            ns_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
            optimizers.append(Muon(matrices, lr=cfg.muon_lr, weight_decay=0.0, ns_dtype=ns_dtype))
    groups = [g for g in groups if g["params"]]
    optimizers.insert(0, torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                           fused=device.type in ("cuda", "cpu")))  # fused: ~6x faster on CPU too
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: weight decay for matrices, none for norms,
    biases and embeddings. Decay pulls weights towards 0: a norm's gain wants to stay near 1, and an
    embedding row is only updated when its token appears, so decay would shrink rare tokens."""
    exempt = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            exempt.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():  # a tied parameter (lm_head = embed_tokens) is listed once
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in exempt else decay).append(p)
    if not decay and not no_decay:
        raise SystemExit("the model has no trainable parameters (every parameter has requires_grad=False)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def describe_optimizer(optimizer) -> str:
    counts = [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups]
    if isinstance(optimizer, torch.optim.AdamW):
        parts = [f"{n:,} with weight decay {g['weight_decay']}" for n, g in zip(counts, optimizer.param_groups)]
        return "AdamW: " + ", ".join(parts)
    return f"{type(optimizer).__name__}: {sum(counts):,} in weight matrices"


# ----------------------------------------------------------------------------- device and precision


def _time_matmul(device: torch.device, dtype: torch.dtype, n: int, budget_s: float = 0.1) -> float:
    """Seconds per (n x n) @ (n x n) matmul in `dtype`, best of a few."""
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG (and so exact resume) alone
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    a @ b  # warm-up: kernel selection, allocation
    best, spent = float("inf"), 0.0
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best


# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs, for MFU.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "H800": 989e12, "L40S": 362e12,
                  "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The hardware's peak FLOP/s for MFU: a table for GPUs, a measured large matmul on CPUs (no
    reliable spec sheet for a shared laptop CPU). 0 when unknown (MFU is then not shown)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), 0.0)
        return peak if dtype != torch.float32 else peak / 2  # fp32 matmuls run as TF32 (enabled above): half rate
    if device.type == "cpu":
        n = 1024 if dtype == torch.float32 else 512
        return 2 * n**3 / _time_matmul(device, dtype, n, budget_s=0.3)
    return 0.0


class FlopsPerToken:
    """Training FLOPs per token (forward + backward): 6 per active parameter, plus the attention
    scores, 12 * layers * dim * context width. In an MoE only num_experts_per_tok of the
    n_routed_experts routed experts run for a token, so only those count."""

    def __init__(self, model: nn.Module):
        active = sum(p.numel() for p in model.parameters())
        config = getattr(model, "config", None)
        if getattr(config, "use_moe", False):
            routed = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
            active -= routed * (1 - config.num_experts_per_tok / config.n_routed_experts)
        self.dense = 6.0 * active
        self.attention = 12.0 * config.n_layers * config.dim if hasattr(config, "n_layers") else 0.0

    def __call__(self, width: int) -> float:
        return self.dense + self.attention * width


# ----------------------------------------------------------------------------- batches


def to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def input_shapes(batch) -> list[tuple]:
    """(rows, width) of the model inputs in a batch: the first tensor of a tuple, or a dict's
    `input_ids` / `*_x` entries (DPO's chosen_x and rejected_x). Used for tokens/s and MFU."""
    if torch.is_tensor(batch):
        return [tuple(batch.shape)]
    if isinstance(batch, (list, tuple)):
        return input_shapes(batch[0])
    if isinstance(batch, dict):
        inputs = [v for k, v in batch.items() if torch.is_tensor(v) and (k == "input_ids" or k.endswith("_x"))]
        return [tuple(v.shape) for v in inputs]
    return []


# ----------------------------------------------------------------------------- checkpoint state


def rng_state(device: torch.device) -> dict:
    """Every RNG state as tensors and plain numbers, so the resume file loads with weights_only=True
    (numpy's own state object would need unpickling arbitrary classes: a crafted file could run code)."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def prepare_out_dir(out_dir: Path, name: str) -> None:
    """Make sure `out_dir` can be written before any work is done, and remove the temp files that
    killed writes of this run's own outputs ({name}.pth, {name}_resume.pth, ...) left behind."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".{name}.write-test.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"--out_dir {out_dir} cannot be written ({error.strerror or error}): pick another folder")
    outputs = (".pth", ".json", "_resume.pth", "_loss.png")  # what fit() and save_weights write for `name`
    stale = [p for suffix in outputs for p in out_dir.glob(f".{name}{suffix}.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} unfinished temp file(s) of {name} in {out_dir} (from an interrupted save)")


def plot_losses(history: dict, path: Path, title: str) -> None:
    """Training (per log interval) and validation loss against step, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train", linewidth=1)
    if history["val"]:
        ax.plot(*zip(*history["val"]), "o-", label="validation", markersize=3)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    if history["train"] or history["val"]:  # a run shorter than one log interval has nothing to label
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


class _Reporter:
    """Optional TensorBoard / wandb mirror of the log lines (rank 0 only)."""

    def __init__(self, kind: str, out_dir: Path, name: str, config: dict):
        self.kind, self.writer = kind, None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SystemExit("--report_to tensorboard needs `pip install tensorboard`")
            self.writer = SummaryWriter(str(out_dir / "runs" / name))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise SystemExit("--report_to wandb needs `pip install wandb`")
            self.writer = wandb.init(project="minimind", name=name, config=config)

    def log(self, values: dict, step: int) -> None:
        if self.kind == "tensorboard":
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        elif self.kind == "wandb":
            self.writer.log(values, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close() if self.kind == "tensorboard" else self.writer.finish()


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- the engine


class Trainer:
    """Set up the process (DDP, device, dtype, threads, seed) at construction; train with `fit`."""

    def __init__(self, config: TrainConfig):
        self.config = config
        # torchrun sets these; a plain `python script.py` is a world of one.
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.ddp = self.world_size > 1
        self.is_main = self.rank == 0
        self.device = pick_device(config.device, self.local_rank)  # raises DeviceError for a missing GPU
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores; weights stay fp32
            torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cpu":
            # torchrun sets OMP_NUM_THREADS=1; share the cores among the processes on this machine instead.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0)) // local_world))
        if self.ddp and not dist.is_initialized():  # a script may build several Trainers in one process
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.dtype, self.dtype_reason = pick_dtype(config.dtype, self.device)
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise DeviceError("--dtype float16 needs a CUDA GPU (it relies on a gradient scaler); "
                              "use bfloat16 or float32")
        # Same seed on every rank, so every rank builds the same initial model (DDP also broadcasts it).
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self._stop_signal = None

    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    @property
    def autocast(self):
        """Low-precision math inside, float32 master weights outside."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def describe(self) -> str:
        dtype = f"{dtype_name(self.dtype)} ({self.dtype_reason})"
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        ddp = f", DDP over {self.world_size} processes" if self.ddp else ""
        return f"device {self.device}, {dtype}{threads}{ddp}"

    # ------------------------------------------------------------------------- fit

    def fit(self, model: nn.Module, train_set, loss_fn, val_set=None, collate_fn=None, save_fn=None,
            name: str = None) -> "FitResult":
        """Train `model` on `train_set`, minimizing `loss_fn(model, batch) -> (loss, metrics)`.

        name        prefix of the files written to out_dir, e.g. "pretrain_512" or "lora_identity_512"
        collate_fn  turns a list of samples into a batch (default: stack)
        save_fn     save_fn(model) -> path: writes the stage's output, atomically (default:
                    model.checkpoint.save_weights to out/{name}.pth); rank 0, every checkpoint
        """
        cfg = self.config
        if not name:
            raise ValueError("fit() needs name=, the prefix of the output files (e.g. 'pretrain_512')")
        if val_set is not None and len(val_set) == 0:
            raise SystemExit(f"{name}: the validation set is empty")
        out_dir = Path(cfg.out_dir)
        if self.is_main:
            prepare_out_dir(out_dir, name)
        self.weights_file = out_dir / f"{name}.pth"
        resume_file = out_dir / f"{name}_resume.pth"
        plot_file = out_dir / f"{name}_loss.png"
        if save_fn is None:
            def save_fn(m):
                save_weights(m, self.weights_file)
                return self.weights_file

        # --- data: a permutation per epoch, every rank its share, full micro-batches only
        B, accum, world = cfg.batch_size, cfg.accumulation_steps, self.world_size
        sampler = EpochSampler(len(train_set), seed=cfg.seed, shuffle=True, rank=self.rank, world_size=world)
        samples_per_step = B * accum  # per rank
        steps_per_epoch = sampler.per_rank() // samples_per_step
        if steps_per_epoch == 0:
            raise SystemExit(f"{name}: the training set has {len(train_set)} samples, fewer than one step's "
                             f"{samples_per_step * world} (batch_size {B} x accumulation_steps {accum} "
                             f"x {world} processes)")
        total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total_steps // 50)
        min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
        loader_kwargs = dict(collate_fn=collate_fn, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")

        # --- model and optimizer: fp32 master weights; autocast does the low-precision math
        raw = model.to(self.device)
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in raw.parameters()):
            raw.float()
        raw.train()
        optimizers = build_optimizers(raw, cfg, self.device, self.dtype)
        trainable = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.print(f"{self.describe()}; " + "; ".join(describe_optimizer(opt) for opt in optimizers))

        step, epoch, offset = 0, 0, 0  # offset: samples this rank has consumed in the current epoch
        history, rng = {"train": [], "val": []}, None
        if cfg.resume:
            if resume_file.exists():
                step, epoch, offset, history, rng = self._load_resume(resume_file, raw, optimizers, scaler,
                                                                      samples_per_step, len(train_set))
            else:
                self.print(f"--resume: no checkpoint at {resume_file} yet, starting from step 0")
        if step >= total_steps:
            self.print(f"{resume_file} is already at step {step} of {total_steps}: nothing to train")
            return FitResult(raw.eval(), step, total_steps, True, None, self.weights_file)

        model = torch.compile(raw) if cfg.compile else raw
        if self.ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

        reporter = _Reporter(cfg.report_to, out_dir, name, asdict(cfg)) if self.is_main else None
        peak = peak_flops(self.device, self.dtype) if self.is_main else 0.0
        flops = FlopsPerToken(raw)
        self.print(f"{name}: {total_steps} steps ({steps_per_epoch} per epoch) of {samples_per_step * world} samples; "
                   f"{len(train_set)} training samples"
                   + (f", {len(val_set)} validation" if val_set is not None else ""))

        def save(final: bool) -> Path:
            rngs = self._gather_rng()  # a collective: every rank takes part
            written = None
            if self.is_main:
                written = save_fn(raw)
                state = dict(model=clean_state_dict(raw.state_dict()),
                             optimizers=[opt.state_dict() for opt in optimizers],
                             scaler=scaler.state_dict(), step=step, epoch=epoch, offset=offset, rng=rngs,
                             world_size=world, samples_per_step=samples_per_step, dataset_size=len(train_set),
                             history=history,
                             train_config=asdict(cfg), dtype=dtype_name(self.dtype))
                atomic_torch_save(state, resume_file)
                plot_losses(history, plot_file, name)
                self.print(f"saved {written} and {resume_file.name} at step {step}" + (" (final)" if final else ""))
            if self.ddp:
                dist.barrier()
            return written

        def log(line: str) -> None:
            if self.is_main:
                progress.write(line)

        # --- the loop
        self._stop_signal = None
        if rng is not None:  # restored last, so that nothing above draws from it
            set_rng_state(rng, self.device)
        previous_handlers = self._install_signal_handlers()
        progress = _progress_bar(total_steps, step, self.is_main)
        val_metrics, stopped = None, False
        if val_set is not None and step == 0:  # the baseline every later validation is compared with
            val_metrics = self._evaluate(raw, val_set, loss_fn, collate_fn)
            history["val"].append((0, val_metrics["loss"]))
            log("step 0 | validation " + " | ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
        window = _Window()
        start_time, start_step = time.perf_counter(), step
        try:
            while step < total_steps and not stopped:
                if offset >= steps_per_epoch * samples_per_step:
                    epoch, offset = epoch + 1, 0
                sampler.set_epoch(epoch, skip=offset)
                # Its own generator: a DataLoader otherwise draws its workers' base seed from the global
                # RNG, and a resumed run (which opens a loader where the original did not) would diverge.
                loader = DataLoader(train_set, batch_sampler=BatchSampler(sampler, B, drop_last=True),
                                    generator=torch.Generator().manual_seed(cfg.seed + epoch), **loader_kwargs)
                batches = iter(loader)
                while step < total_steps and offset < steps_per_epoch * samples_per_step:
                    lr = lr_at(step, total_steps, warmup, cfg.learning_rate, min_lr, cfg.schedule, cfg.decay_fraction)
                    for opt in optimizers:  # every group follows the schedule, relative to its own peak
                        for group in opt.param_groups:
                            group["lr"] = group["peak_lr"] * lr / cfg.learning_rate
                    for micro in range(accum):
                        batch = to_device(next(batches), self.device)
                        sync = not self.ddp or micro == accum - 1  # all-reduce the gradients once per step
                        with (nullcontext() if sync else model.no_sync()), self.autocast:
                            loss, metrics = loss_fn(model, batch)
                        scaler.scale(loss / accum).backward()
                        window.add(loss, metrics, input_shapes(batch), flops)
                    if cfg.grad_clip > 0:
                        for opt in optimizers:
                            scaler.unscale_(opt)
                        window.add_norm(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
                    for opt in optimizers:
                        scaler.step(opt)
                    scaler.update()
                    for opt in optimizers:
                        opt.zero_grad(set_to_none=True)
                    step, offset = step + 1, offset + samples_per_step
                    progress.update(1)
                    last = step == total_steps

                    if (cfg.log_interval and step % cfg.log_interval == 0) or last:
                        values = window.reduce(self)
                        if not math.isfinite(values["loss"]):
                            raise SystemExit(f"loss is {values['loss']} at step {step}: lower --learning_rate or "
                                             f"use --dtype float32; the last checkpoint is {resume_file}")
                        history["train"].append((step, values["loss"]))
                        elapsed = time.perf_counter() - start_time
                        eta = elapsed / (step - start_step) * (total_steps - step)
                        tok_s = values["tokens"] / values["seconds"]
                        mfu = values["flops"] / (values["seconds"] * world * peak) if peak else None
                        extra = {k: v for k, v in values.items() if k not in ("loss", "tokens", "flops", "seconds")}
                        log(f"step {step}/{total_steps} ep {epoch} | loss {values['loss']:.4f} | lr {lr:.2e} | "
                            f"{tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if mfu is not None else "") +
                            f" | ETA {_format_duration(eta)}" + "".join(f" | {k} {v:.4g}" for k, v in extra.items()))
                        progress.set_postfix(loss=f"{values['loss']:.3f}")
                        if reporter:
                            reporter.log({f"train/{k}": v for k, v in extra.items()} |
                                         {"train/loss": values["loss"], "train/lr": lr, "train/tok_s": tok_s}, step)
                    if val_set is not None and ((cfg.eval_interval and step % cfg.eval_interval == 0) or last):
                        val_metrics = self._evaluate(raw, val_set, loss_fn, collate_fn)
                        history["val"].append((step, val_metrics["loss"]))
                        log(f"step {step} | validation " + " | ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
                        if reporter:
                            reporter.log({f"val/{k}": v for k, v in val_metrics.items()}, step)
                    stopped = self._should_stop(step) and not last
                    if (cfg.save_interval and step % cfg.save_interval == 0) or last or stopped:
                        save(final=last)
                    if stopped:
                        if cfg.stop_step and step >= cfg.stop_step:
                            log(f"stopped after step {step} (--stop_step); continue with --resume")
                            break
                        # Interrupted: exit non-zero, so a pipeline does not take the stage for finished.
                        signum = self._stop_signal or signal.SIGTERM  # or the signal reached another rank
                        log(f"interrupted ({signal.Signals(signum).name}) after step {step}; continue with --resume")
                        raise SystemExit(128 + signum)
        finally:
            progress.close()
            if reporter:
                reporter.close()
            self._restore_signal_handlers(previous_handlers)
        return FitResult(raw.eval(), step, total_steps, not stopped, val_metrics, self.weights_file)

    def close(self) -> None:
        """Leave the process group (call once at the end of a DDP script)."""
        if self.ddp and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # ------------------------------------------------------------------------- pieces of fit

    def _evaluate(self, raw, val_set, loss_fn, collate_fn) -> dict:
        """Mean loss and metrics over the first eval_batches batches of every rank's share of val_set."""
        cfg = self.config
        sampler = EpochSampler(len(val_set), shuffle=False, rank=self.rank, world_size=self.world_size)
        loader = DataLoader(val_set, batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=False),
                            collate_fn=collate_fn, num_workers=cfg.num_workers, generator=torch.Generator())
        window = _Window()
        raw.eval()
        with torch.no_grad(), self.autocast:
            for i, batch in enumerate(loader):
                if i == cfg.eval_batches > 0:
                    break
                loss, metrics = loss_fn(raw, to_device(batch, self.device))
                window.add(loss, metrics)
        raw.train()
        values = window.reduce(self)
        return {k: v for k, v in values.items() if k not in ("tokens", "flops", "seconds")}

    def _gather_rng(self) -> list:
        state = rng_state(self.device)
        if not self.ddp:
            return [state]
        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def _load_resume(self, path: Path, raw, optimizers, scaler, samples_per_step: int, dataset_size: int):
        try:  # weights_only: tensors and plain containers only; a crafted pickle cannot run code here
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise SystemExit(f"{path} is not a resume checkpoint this version can read "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                             f"delete it to start over, or run without --resume")
        # Settings that shape the run: changing them is allowed, but the result is no longer the run it was.
        before, now = state["train_config"], asdict(self.config)
        changed = [f"{k} {before[k]} -> {now[k]}" for k in RUN_SHAPING if k in before and before[k] != now[k]]
        if state.get("dataset_size", dataset_size) != dataset_size:
            changed.append(f"training samples {state['dataset_size']} -> {dataset_size}")
        if changed:
            self.print(f"warning: resuming {path} with different settings ({'; '.join(changed)}): it continues, "
                       f"but will not match an uninterrupted run")
        saved_dtype = state.get("dtype")
        if saved_dtype and saved_dtype != dtype_name(self.dtype) and self.config.dtype == "auto":
            # A resumed run computes as the run it continues, or it would not match an uninterrupted one.
            self.dtype, self.dtype_reason = getattr(torch, saved_dtype), f"as the run being resumed"
            self.print(f"resuming in {saved_dtype}, the precision {path.name} was trained in")
        try:
            raw.load_state_dict(state["model"])
        except RuntimeError as error:
            raise SystemExit(f"{path} was saved from a different model ({str(error).splitlines()[0]}); "
                             f"start over without --resume or use the settings of that run")
        if not isinstance(state.get("optimizers"), list):
            raise SystemExit(f"{path} was written by an older version (no optimizer list): start over without --resume")
        if len(state["optimizers"]) != len(optimizers):
            raise SystemExit(f"{path} was saved with {len(state['optimizers'])} optimizer(s), this run has "
                             f"{len(optimizers)}: resume with the --optimizer it was trained with")
        for opt, saved in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        scaler.load_state_dict(state["scaler"])
        step, epoch, offset = state["step"], state["epoch"], state["offset"]
        rng = state["rng"][self.rank] if state["world_size"] == self.world_size else state["rng"][0]
        if state["world_size"] != self.world_size or state["samples_per_step"] != samples_per_step:
            # Same samples in the same order, but split differently: not bit-exact any more.
            offset = offset * state["world_size"] // self.world_size
            offset -= offset % samples_per_step
            self.print(f"warning: {path} was written by {state['world_size']} process(es) with "
                       f"{state['samples_per_step']} samples per step each; continuing with {self.world_size} x "
                       f"{samples_per_step} from the same position in the data (the result will not be bit-identical "
                       f"to an uninterrupted run)")
        self.print(f"resumed from {path} at step {step} (epoch {epoch}, {offset * self.world_size} samples into it)")
        return step, epoch, offset, state["history"], rng

    def _install_signal_handlers(self):
        """SIGINT/SIGTERM (Ctrl-C, a scheduler, torchrun) finish the current step, save, and exit."""
        def handler(signum, frame):
            if self._stop_signal is not None:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop_signal = signum
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return previous

    def _restore_signal_handlers(self, previous) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _should_stop(self, step: int) -> bool:
        """Every rank must agree, or one would wait forever in the next all-reduce."""
        stop = (self.config.stop_step and step >= self.config.stop_step) or self._stop_signal is not None
        if self.ddp:
            flag = torch.tensor([float(stop)], device=self._reduce_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = flag.item() > 0
        return bool(stop)


# TrainConfig fields that define what an uninterrupted run would have computed.
RUN_SHAPING = ("epochs", "max_steps", "batch_size", "accumulation_steps", "optimizer", "learning_rate", "muon_lr",
               "schedule", "decay_fraction", "min_lr", "warmup_steps",
               "weight_decay", "beta1", "beta2", "grad_clip", "dtype", "seed")


@dataclass
class FitResult:
    model: nn.Module  # the trained model, unwrapped, in eval mode
    step: int  # optimizer steps done so far
    total_steps: int
    finished: bool  # False when stopped early (--stop_step or a signal); the run can --resume
    val_metrics: dict  # the last validation pass, or None
    weights_file: Path  # where the default save_fn writes


class _Window:
    """Sums over the micro-steps since the last log line, kept as tensors (no device sync per step)."""

    def __init__(self):
        self.sums, self.count, self.tokens, self.flops, self.norms = {}, 0, 0, 0.0, []
        self.start = time.perf_counter()

    def add(self, loss, metrics: dict, shapes: list = (), flops: "FlopsPerToken" = None) -> None:
        for key, value in {"loss": loss, **metrics}.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        for shape in shapes:
            tokens = math.prod(shape)
            self.tokens += tokens
            if flops is not None:
                self.flops += tokens * flops(shape[-1])

    def add_norm(self, norm) -> None:
        self.norms.append(norm.detach().float())

    def reduce(self, trainer: "Trainer") -> dict:
        """Means over micro-steps and ranks; tokens and FLOPs summed over ranks. Starts a new window."""
        keys = sorted(self.sums)
        device = trainer._reduce_device()
        sums = [self.sums[k].to(device) for k in keys]
        packed = torch.stack(sums + [torch.tensor(float(self.count), device=device)])
        if trainer.ddp:
            dist.all_reduce(packed)
        values = {k: (v / packed[-1]).item() for k, v in zip(keys, packed[:-1])}
        if self.norms:
            values["grad_norm"] = torch.stack(self.norms).mean().item()
        values.update(tokens=self.tokens * trainer.world_size, flops=self.flops * trainer.world_size,
                      seconds=max(time.perf_counter() - self.start, 1e-9))
        self.__init__()
        return values


def _progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on rank 0 when attached to a terminal; its write() keeps log lines above the bar."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=None if enabled else True, dynamic_ncols=True, leave=False)
