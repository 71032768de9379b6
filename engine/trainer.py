"""The training engine shared by every stage (pretraining, full SFT, LoRA, DPO).

A stage script is a recipe: it builds a model, a dataset, a collate function and a loss function;
the engine runs the loop. `Trainer.fit` below is that loop, read top to bottom: set the learning rate,
run the micro-steps (forward, backward), clip, step the optimizers, then log, validate, save. What
surrounds it lives in small modules: engine/settings.py (TrainConfig, every setting described once, and
its flags), engine/optim.py (parameter groups, AdamW and Muon, the learning-rate schedule), model/runtime.py
(device, precision, FLOPs), engine/runstate.py (the run's position and the resume file), engine/runlog.py
(log lines, metrics file, loss curves).

    from engine.trainer import TrainConfig, Trainer, add_train_args

    parser = argparse.ArgumentParser()
    add_train_args(parser, learning_rate=5e-4)        # every TrainConfig field as a flag; stage defaults
    args = parser.parse_args()
    trainer = Trainer(TrainConfig.from_args(args))     # joins torchrun's process group, picks device/dtype, seeds

    model = MiniMindForCausalLM(config)                # built after seeding, so every run starts the same

    def loss_fn(model, batch):                         # batch is already on trainer.device
        x, y = batch
        out = model(input_ids=x, shift_labels=y)       # call `model` (it may be wrapped by DDP/compile)
        return out.loss, {"aux_loss": out.aux_loss}    # extra metrics are averaged and logged

    result = trainer.fit(model, train_set, loss_fn, val_set=val_set, collate_fn=None, name="pretrain_512x8")
    result.finished, result.val_metrics, result.history, result.model   # False after --stop_step; ...
    trainer.close()                                    # leaves the DDP process group

`fit` accepts any nn.Module: only parameters with requires_grad are optimized (a peft model trains
just its adapters), and a loss function may hold other modules, such as DPO's frozen reference
(move it with `.to(trainer.device)`). What the stage writes is `save_fn(model) -> path`; the default
is `save_weights` to `out/{name}.pth`. Besides that, the engine writes, atomically:

    out/{name}_resume.pth   model, optimizers, grad scaler, step, epoch, data position, RNG states of
                            every rank, world size, loss history: `--resume` continues bit-exactly
    out/{name}_loss.png     training and validation loss curves (validation also runs before step 1)
    out/{name}_metrics.jsonl, out/{name}_args.json   every log line and validation; the run's settings

SIGINT/SIGTERM finish the current step, write the resume checkpoint and exit with 128 + signal.

Datasets are map-style; their order comes from `EpochSampler` (a permutation per (seed, epoch),
rank r taking every world_size-th index), so a global batch is the same set of samples whatever
the number of processes, and a run resumes at the exact sample where it stopped.
"""
import math
import os
import random
import signal
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader

from data.sampler import EpochSampler
from engine.optim import build_optimizers, describe_optimizer, lr_at, set_learning_rate
from engine.runlog import MetricWindow, RunLog
from engine.runstate import RunState, StopFlag, read_resume, restore, rng_state, set_rng_state, write_resume
from engine.settings import TrainConfig, add_train_args  # noqa: F401  (add_train_args: scripts import it from here)
from model.checkpoint import save_weights
from model.errors import MiniMindError
from model.runtime import DeviceError, FlopsPerToken, dtype_name, peak_flops, pick_device, pick_dtype


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


# ----------------------------------------------------------------------------- output folder


def check_writable(out_dir: Path) -> None:
    """Fail before any work is done, not at the first save, when `out_dir` cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a probe with a unique name: two runs starting in the same folder must not delete each other's
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as error:
        raise MiniMindError(f"--out_dir {out_dir} cannot be written ({error.strerror or error}): pick another folder")


def remove_stale_temp_files(out_dir: Path, name: str) -> None:
    """Remove the temp files that killed writes of this run's own outputs ({name}.pth, {name}_resume.pth,
    ...) left behind; another run's files in the same folder are left alone."""
    outputs = (".pth", ".json", "_resume.pth", "_loss.png", "_metrics.jsonl", "_args.json")  # what a run writes
    stale = [p for suffix in outputs for p in out_dir.glob(f".{name}{suffix}.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} unfinished temp file(s) of {name} in {out_dir} (from an interrupted save)")


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
        if self.is_main:
            check_writable(Path(config.out_dir))
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

    def steps_for_tokens(self, tokens: float, tokens_per_row: int) -> int:
        """Optimizer steps that see about `tokens` tokens, given this run's batch and processes."""
        cfg = self.config
        return max(1, math.ceil(tokens / (tokens_per_row * cfg.batch_size * cfg.accumulation_steps * self.world_size)))

    # ------------------------------------------------------------------------- fit

    def fit(self, model: nn.Module, train_set, loss_fn, val_set=None, collate_fn=None, save_fn=None,
            name: str = None, stage: str = None, max_steps: int = None) -> "FitResult":
        """Train `model` on `train_set`, minimizing `loss_fn(model, batch) -> (loss, metrics)`.

        name        prefix of the files written to out_dir, e.g. "pretrain_512x8" or "lora_identity_512x8"
        stage       recorded in the weights' .json by the default save_fn ("pretrain", "full_sft", ...)
        collate_fn  turns a list of samples into a batch (default: stack)
        save_fn     save_fn(model) -> path: writes the stage's output, atomically (default:
                    model.checkpoint.save_weights to out/{name}.pth); rank 0, every checkpoint
        max_steps   overrides config.max_steps (e.g. from a token budget, see steps_for_tokens)
        """
        cfg, world = self.config, self.world_size
        plan = self._plan(train_set, val_set, name, max_steps or cfg.max_steps)
        weights_file = Path(cfg.out_dir) / f"{name}.pth"
        if save_fn is None:
            def save_fn(m):
                save_weights(m, weights_file, stage=stage)
                return weights_file

        # --- model and optimizers: fp32 master weights; autocast does the low-precision math
        raw = model.to(self.device)
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in raw.parameters()):
            raw.float()
        raw.train()
        optimizers = build_optimizers(raw, cfg, self.device, self.dtype)
        trainable = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.print(f"{self.describe()}; " + "; ".join(describe_optimizer(opt) for opt in optimizers))

        state, rng = RunState(), None
        if cfg.resume and plan.resume_file.exists():
            state, rng = self._resume(plan, raw, optimizers, scaler, len(train_set))
        elif cfg.resume:
            self.print(f"--resume: no checkpoint at {plan.resume_file} yet, starting from step 0")
        if state.step >= plan.total_steps:
            self.print(f"{plan.resume_file} is already at step {state.step} of {plan.total_steps}: nothing to train")
            return FitResult(raw.eval(), state.step, plan.total_steps, True, None, weights_file, state.history)

        model = torch.compile(raw) if cfg.compile else raw
        if self.ddp:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        flops = FlopsPerToken(raw)
        peak = peak_flops(self.device, self.dtype) if self.is_main else 0.0
        self.print(f"{name}: {plan.total_steps} steps ({plan.steps_per_epoch} per epoch) of "
                   f"{plan.samples_per_step * world} samples; {len(train_set)} training samples"
                   + (f", {len(val_set)} validation" if val_set is not None else ""))
        run_log = RunLog(cfg.out_dir, name, plan.total_steps, state.step, self.is_main, cfg.report_to, asdict(cfg),
                         peak, world)
        if rng is not None:  # restored last, so that nothing above draws from it
            set_rng_state(rng, self.device)

        def save(final: bool) -> None:
            rngs = self._gather_rng()  # a collective: every rank takes part
            if self.is_main:
                written = save_fn(raw)
                write_resume(plan.resume_file, state, raw, optimizers, scaler, rngs,
                             dict(world_size=world, samples_per_step=plan.samples_per_step,
                                  dataset_size=len(train_set), train_config=asdict(cfg), dtype=dtype_name(self.dtype)))
                run_log.plot(state.history)
                run_log.write(f"saved {written} and {plan.resume_file.name} at step {state.step}" + (" (final)" if final else ""))
            if self.ddp:
                dist.barrier()

        def validate() -> dict:
            metrics = self.evaluate(raw, val_set, loss_fn, collate_fn)
            state.history["val"].append((state.step, metrics["loss"]))
            run_log.validation(state.step, metrics)
            return metrics

        # --- the loop
        val_metrics, stopped, window = None, False, MetricWindow()
        with StopFlag() as stop_flag, run_log:
            if val_set is not None and state.step == 0:  # the baseline every later validation is compared with
                val_metrics = validate()
            batches = self._batches(train_set, state, plan, collate_fn)
            while state.step < plan.total_steps and not stopped:
                lr = lr_at(state.step, plan.total_steps, plan.warmup, cfg.learning_rate, plan.min_lr, cfg.schedule,
                           cfg.decay_fraction)
                set_learning_rate(optimizers, lr / cfg.learning_rate)  # every group, relative to its own peak
                for micro in range(cfg.accumulation_steps):
                    batch = to_device(next(batches), self.device)
                    sync = not self.ddp or micro == cfg.accumulation_steps - 1  # all-reduce gradients once per step
                    with (nullcontext() if sync else model.no_sync()), self.autocast:
                        loss, metrics = loss_fn(model, batch)
                    scaler.scale(loss / cfg.accumulation_steps).backward()
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
                state.step, state.offset = state.step + 1, state.offset + plan.samples_per_step
                run_log.step_done()
                last = state.step == plan.total_steps

                if (cfg.log_interval and state.step % cfg.log_interval == 0) or last:
                    values = window.reduce(self._reduce_device(), world)
                    if not math.isfinite(values["loss"]):
                        raise MiniMindError(f"loss is {values['loss']} at step {state.step}: lower --learning_rate or "
                                         f"use --dtype float32; the last checkpoint is {plan.resume_file}")
                    state.history["train"].append((state.step, values["loss"]))
                    state.history["lr"].append((state.step, lr))
                    run_log.train(state.step, state.epoch, values, lr)
                if val_set is not None and ((cfg.eval_interval and state.step % cfg.eval_interval == 0) or last):
                    val_metrics = validate()
                stopped = self._should_stop(state.step, stop_flag) and not last
                if (cfg.save_interval and state.step % cfg.save_interval == 0) or last or stopped:
                    save(final=last)
            if stopped and not (cfg.stop_step and state.step >= cfg.stop_step):
                # Interrupted: exit non-zero, so a pipeline does not take the stage for finished.
                signum = stop_flag.signum or signal.SIGTERM  # or the signal reached another rank
                run_log.write(f"interrupted ({signal.Signals(signum).name}) after step {state.step}; "
                              f"continue with --resume")
                raise SystemExit(128 + signum)
            if stopped:
                run_log.write(f"stopped after step {state.step} (--stop_step); continue with --resume")
        return FitResult(raw.eval(), state.step, plan.total_steps, not stopped, val_metrics, weights_file, state.history)

    def close(self) -> None:
        """Leave the process group (call once at the end of a DDP script)."""
        if self.ddp and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val_set, loss_fn, collate_fn=None) -> dict:
        """Mean loss and metrics over the first eval_batches batches of every rank's share of val_set,
        in order: the same samples at every validation pass of a run."""
        cfg = self.config
        sampler = EpochSampler(len(val_set), shuffle=False, rank=self.rank, world_size=self.world_size)
        loader = DataLoader(val_set, batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=False),
                            collate_fn=collate_fn, num_workers=cfg.num_workers, generator=torch.Generator())
        window = MetricWindow()
        was_training = model.training
        model.eval()
        with self.autocast:
            for i, batch in enumerate(loader):
                if i == cfg.eval_batches > 0:
                    break
                loss, metrics = loss_fn(model, to_device(batch, self.device))
                window.add(loss, metrics)
        model.train(was_training)
        values = window.reduce(self._reduce_device(), self.world_size)
        return {k: v for k, v in values.items() if k not in ("tokens", "flops", "seconds")}

    # ------------------------------------------------------------------------- pieces of fit

    def _plan(self, train_set, val_set, name: str, max_steps: int) -> "Plan":
        """Steps, warmup, batch and files of a run, checked before any work."""
        cfg = self.config
        if not name:
            raise ValueError("fit() needs name=, the prefix of the output files (e.g. 'pretrain_512x8')")
        if val_set is not None and len(val_set) == 0:
            raise MiniMindError(f"{name}: the validation set is empty")
        out_dir = Path(cfg.out_dir)
        if self.is_main:  # writable: checked when the Trainer was built
            remove_stale_temp_files(out_dir, name)
        samples_per_step = cfg.batch_size * cfg.accumulation_steps  # per rank
        per_rank = EpochSampler(len(train_set), world_size=self.world_size).per_rank()
        steps_per_epoch = per_rank // samples_per_step
        if steps_per_epoch == 0:
            raise MiniMindError(f"{name}: the training set has {len(train_set)} samples, fewer than one step's "
                             f"{samples_per_step * self.world_size} (batch_size {cfg.batch_size} x accumulation_steps "
                             f"{cfg.accumulation_steps} x {self.world_size} processes)")
        total = max_steps or cfg.epochs * steps_per_epoch
        return Plan(total_steps=total, steps_per_epoch=steps_per_epoch, samples_per_step=samples_per_step,
                    warmup=cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 50),
                    min_lr=cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10,
                    resume_file=out_dir / f"{name}_resume.pth")

    def _batches(self, train_set, state: RunState, plan: "Plan", collate_fn):
        """Micro-batches from where `state` stands, epoch after epoch; moves state.epoch and state.offset
        on at an epoch's end (the loop advances offset as it consumes samples)."""
        cfg = self.config
        lengths = None
        if cfg.group_by_length:
            if not hasattr(train_set, "lengths"):
                raise MiniMindError(f"--group_by_length: {type(train_set).__name__} has rows of one length; it is for "
                                    f"SFT and LoRA data without --pack")
            lengths = train_set.lengths()
        sampler = EpochSampler(len(train_set), seed=cfg.seed, shuffle=True, rank=self.rank, world_size=self.world_size,
                               lengths=lengths, batch_size=cfg.batch_size)
        epoch_samples = plan.steps_per_epoch * plan.samples_per_step
        while True:
            if state.offset >= epoch_samples:
                state.epoch, state.offset = state.epoch + 1, 0
            sampler.set_epoch(state.epoch, skip=state.offset)
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global
            # RNG, and a resumed run (which opens a loader where the original did not) would diverge.
            loader = DataLoader(train_set, batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=True),
                                generator=torch.Generator().manual_seed(cfg.seed + state.epoch), collate_fn=collate_fn,
                                num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
            micro_batches = (epoch_samples - state.offset) // cfg.batch_size
            for _, batch in zip(range(micro_batches), loader):
                yield batch
            state.offset = max(state.offset, epoch_samples)  # the epoch is used up, whatever the loop did

    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _gather_rng(self) -> list:
        state = rng_state(self.device)
        if not self.ddp:
            return [state]
        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def _resume(self, plan: "Plan", raw, optimizers, scaler, dataset_size: int) -> tuple[RunState, dict]:
        path, saved = plan.resume_file, read_resume(plan.resume_file)
        # Settings that shape the run: changing them is allowed, but the result is no longer the run it was.
        before, now = saved.get("train_config", {}), asdict(self.config)
        changed = [f"{k} {before[k]} -> {now[k]}" for k in RUN_SHAPING if k in before and before[k] != now[k]]
        if saved.get("dataset_size", dataset_size) != dataset_size:
            changed.append(f"training samples {saved['dataset_size']} -> {dataset_size}")
        if changed:
            self.print(f"warning: resuming {path} with different settings ({'; '.join(changed)}): it continues, "
                       f"but will not match an uninterrupted run")
        saved_dtype = saved.get("dtype")
        if saved_dtype and saved_dtype != dtype_name(self.dtype) and self.config.dtype == "auto":
            # A resumed run computes as the run it continues, or it would not match an uninterrupted one.
            self.dtype, self.dtype_reason = getattr(torch, saved_dtype), "as the run being resumed"
            self.print(f"resuming in {saved_dtype}, the precision {path.name} was trained in")
        state = restore(path, saved, raw, optimizers, scaler)
        same_split = saved["world_size"] == self.world_size and saved["samples_per_step"] == plan.samples_per_step
        rng = saved["rng"][self.rank] if saved["world_size"] == self.world_size else saved["rng"][0]
        if not same_split:
            # Same samples in the same order, but split differently: not bit-exact any more.
            state.offset = state.offset * saved["world_size"] // self.world_size
            state.offset -= state.offset % plan.samples_per_step
            self.print(f"warning: {path} was written by {saved['world_size']} process(es) with "
                       f"{saved['samples_per_step']} samples per step each; continuing with {self.world_size} x "
                       f"{plan.samples_per_step} from the same position in the data (the result will not be "
                       f"bit-identical to an uninterrupted run)")
        self.print(f"resumed from {path} at step {state.step} (epoch {state.epoch}, "
                   f"{state.offset * self.world_size} samples into it)")
        return state, rng

    def _should_stop(self, step: int, stop_flag: StopFlag) -> bool:
        """Every rank must agree, or one would wait forever in the next all-reduce."""
        stop = (self.config.stop_step and step >= self.config.stop_step) or stop_flag.signum is not None
        if self.ddp:
            flag = torch.tensor([float(stop)], device=self._reduce_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = flag.item() > 0
        return bool(stop)


# TrainConfig fields that define what an uninterrupted run would have computed.
RUN_SHAPING = ("epochs", "max_steps", "batch_size", "accumulation_steps", "optimizer", "learning_rate", "muon_lr",
               "schedule", "decay_fraction", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip",
               "dtype", "seed")


@dataclass
class Plan:
    total_steps: int
    steps_per_epoch: int
    samples_per_step: int  # per process
    warmup: int
    min_lr: float
    resume_file: Path


@dataclass
class FitResult:
    model: nn.Module  # the trained model, unwrapped, in eval mode
    step: int  # optimizer steps done so far
    total_steps: int
    finished: bool  # False when stopped early (--stop_step or a signal); the run can --resume
    val_metrics: dict  # the last validation pass, or None
    weights_file: Path  # where the default save_fn writes
    history: dict  # {"train": [(step, loss)], "val": [(step, loss)], "lr": [(step, lr)]}
