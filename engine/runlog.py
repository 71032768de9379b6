"""What a training run reports: log lines, a metrics file, loss curves, optional TensorBoard / wandb.

    log = RunLog(out_dir, name, total_steps, first_step, is_main, report_to, config)
    log.train(step, epoch, values, lr)      # one log line, one metrics.jsonl record, history
    log.validation(step, metrics)
    log.plot(history)                       # out/{name}_loss.png (written atomically)

Files under out_dir, written by the main process only:

    {name}_loss.png       training and validation loss, and the learning rate, against step (DPO: also
                          the validation reward accuracy and margin, in a second panel)
    {name}_metrics.jsonl  one JSON object per log line and per validation pass (like HF Trainer's log_history)
    {name}_args.json      the run's full training config, written when it starts
"""
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from model.checkpoint import atomic_write
from model.errors import MiniMindError


class MetricWindow:
    """Sums over the micro-steps since the last log line, kept as tensors (no device sync per step)."""

    def __init__(self):
        self.sums, self.count, self.tokens, self.flops, self.norms = {}, 0, 0, 0.0, []
        self.start = time.perf_counter()

    def add(self, loss, metrics: dict, shapes: list = (), flops=None) -> None:
        """shapes: (rows, width) of the batch's inputs, counted as tokens. A loss that ran fewer tokens than
        the batch holds (sft_loss runs a shared start once) names the shapes it ran in metrics["computed"];
        those count for the FLOPs and are not averaged as a metric."""
        computed = metrics.get("computed")
        for key, value in {"loss": loss, **metrics}.items():
            if key == "computed":
                continue
            value = torch.as_tensor(value).detach().float()
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        self.tokens += sum(math.prod(shape) for shape in shapes)
        if flops is not None:
            self.flops += sum(math.prod(shape) * flops(shape[-1]) for shape in (computed or shapes))

    def add_norm(self, norm) -> None:
        self.norms.append(norm.detach().float())

    def reduce(self, device: torch.device, world_size: int) -> dict:
        """Means over micro-steps and processes; tokens and FLOPs summed over processes. Starts a new window."""
        keys = sorted(self.sums)
        sums = [self.sums[k].to(device) for k in keys]
        packed = torch.stack(sums + [torch.tensor(float(self.count), device=device)])
        if world_size > 1:
            dist.all_reduce(packed)
        values = {k: (v / packed[-1]).item() for k, v in zip(keys, packed[:-1])}
        if self.norms:
            values["grad_norm"] = torch.stack(self.norms).mean().item()
        values.update(tokens=self.tokens * world_size, flops=self.flops * world_size,
                      seconds=max(time.perf_counter() - self.start, 1e-9))
        self.__init__()
        return values


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def plot_losses(history: dict, path: Path, title: str) -> None:
    """Training (per log line) and validation loss against step, with the learning rate on a second
    axis when it was logged, as a PNG written atomically. When the history holds DPO's validation
    reward accuracy and margin ("val_reward_acc", "val_reward_margin": [(step, value)]), a second panel
    below shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = [key for key in ("val_reward_acc", "val_reward_margin") if history.get(key)]
    if rewards:
        fig, (ax, lower) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=(3, 2))
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train", linewidth=1)
    if history["val"]:
        ax.plot(*zip(*history["val"]), "o-", label="validation", markersize=3)
    ax.set(xlabel="" if rewards else "step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    if history["train"] or history["val"]:  # a run shorter than one log interval has nothing to label
        ax.legend(loc="upper center")
    if history.get("lr"):
        rate = ax.twinx()
        rate.plot(*zip(*history["lr"]), color="gray", linewidth=0.8, linestyle="--")
        rate.set_ylabel("learning rate (dashed)", color="gray")
    if rewards:
        lower.set(xlabel="step")
        lower.grid(alpha=0.3)
        if history.get("val_reward_acc"):
            lower.plot(*zip(*history["val_reward_acc"]), "o-", color="tab:green", markersize=3,
                       label="validation reward accuracy")
            lower.set_ylabel("reward accuracy", color="tab:green")
            lower.set_ylim(-0.05, 1.05)
        if history.get("val_reward_margin"):
            margin = lower.twinx() if history.get("val_reward_acc") else lower
            margin.plot(*zip(*history["val_reward_margin"]), "s--", color="tab:purple", markersize=3,
                        label="validation reward margin")
            margin.set_ylabel("reward margin", color="tab:purple")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


class Reporter:
    """Optional TensorBoard / wandb mirror of the log lines."""

    def __init__(self, kind: str, out_dir: Path, name: str, config: dict):
        self.kind, self.writer = kind, None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MiniMindError("--report_to tensorboard needs `pip install tensorboard`")
            self.writer = SummaryWriter(str(out_dir / "runs" / name))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise MiniMindError("--report_to wandb needs `pip install wandb`")
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


PLOTTED_VALIDATION = ("reward_acc", "reward_margin")  # drawn beside the loss when a run logs them (DPO)


class RunLog:
    """Log lines above a progress bar, the metrics file and the reporter, for the main process (the
    others get a RunLog that does nothing). A context manager: leaving it closes the bar and reporter."""

    def __init__(self, out_dir: Path, name: str, total_steps: int, first_step: int, is_main: bool,
                 report_to: str = "none", config: dict = None, peak_flops: float = 0.0, world_size: int = 1):
        self.is_main, self.name, self.total_steps = is_main, name, total_steps
        self.peak, self.world_size = peak_flops, world_size
        self.start_time, self.start_step = time.perf_counter(), first_step
        self.metrics_file = Path(out_dir) / f"{name}_metrics.jsonl"
        self.plot_file = Path(out_dir) / f"{name}_loss.png"
        self.progress = self.reporter = None
        # validation metrics beyond the loss (DPO's reward_acc, reward_margin), for the plot: read from the
        # metrics file once when a run resumes, then kept up as validation passes are logged
        self.val_series = {f"val_{name}": [] for name in PLOTTED_VALIDATION}
        if is_main:
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=first_step, disable=None, dynamic_ncols=True, leave=False)
            self.reporter = Reporter(report_to, Path(out_dir), name, config or {}) if report_to != "none" else None
            if config is not None:
                text = json.dumps(config, indent=2, default=str)
                atomic_write(Path(out_dir) / f"{name}_args.json", lambda tmp: Path(tmp).write_text(text))
            if first_step == 0:
                self.metrics_file.unlink(missing_ok=True)  # a fresh run starts a fresh record
            elif self.metrics_file.exists():  # resumed: drop what was logged after the checkpoint
                kept = [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines()
                        if line.strip()]
                kept = [record for record in kept if record.get("step", 0) <= first_step]
                text = "".join(json.dumps(record) + "\n" for record in kept)
                atomic_write(self.metrics_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
                for record in kept:
                    self._add_val_series(record)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.reporter is not None:
            self.reporter.close()

    def write(self, line: str) -> None:
        if self.is_main:
            self.progress.write(line)

    def _record(self, record: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def step_done(self) -> None:
        if self.is_main:
            self.progress.update(1)

    def train(self, step: int, epoch: int, values: dict, lr: float) -> None:
        """One log line from a MetricWindow's reduced values."""
        if not self.is_main:
            return
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / max(1, step - self.start_step) * (self.total_steps - step)
        tok_s = values["tokens"] / values["seconds"]
        mfu = values["flops"] / (values["seconds"] * self.world_size * self.peak) if self.peak else None
        extra = {k: v for k, v in values.items() if k not in ("loss", "tokens", "flops", "seconds")}
        self.write(f"step {step}/{self.total_steps} ep {epoch} | loss {values['loss']:.4f} | lr {lr:.2e} | "
                   f"{tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if mfu is not None else "") +
                   f" | ETA {format_duration(eta)}" + "".join(f" | {k} {v:.4g}" for k, v in extra.items()))
        self.progress.set_postfix(loss=f"{values['loss']:.3f}")
        self._record({"step": step, "epoch": epoch, "loss": values["loss"], "lr": lr, "tokens_per_s": tok_s,
                      **({"mfu": mfu} if mfu is not None else {}), **extra})
        if self.reporter:
            self.reporter.log({f"train/{k}": v for k, v in extra.items()} |
                              {"train/loss": values["loss"], "train/lr": lr, "train/tok_s": tok_s}, step)

    def validation(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        self.write(f"step {step} | validation " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        record = {"step": step, **{f"val_{k}": v for k, v in metrics.items()}}
        self._record(record)
        self._add_val_series(record)
        if self.reporter:
            self.reporter.log({f"val/{k}": v for k, v in metrics.items()}, step)

    def _add_val_series(self, record: dict) -> None:
        for key, points in self.val_series.items():
            if key in record:
                points.append((record["step"], record[key]))

    def plot(self, history: dict) -> None:
        if self.is_main:
            plot_losses({**history, **{k: v for k, v in self.val_series.items() if v}}, self.plot_file, self.name)
