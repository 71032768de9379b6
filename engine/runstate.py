"""Where a training run stands, and the resume file that lets it continue bit-exactly after a stop.

    state = RunState()                      # step 0, epoch 0, nothing consumed
    write_resume(path, state, model, optimizers, scaler, rngs, meta)
    saved = read_resume(path)               # a dict of tensors and plain values (weights_only=True)

The resume file holds the weights, every optimizer's state, the grad scaler, the position in the data
(step, epoch, samples consumed in the epoch), the RNG states of every process, the loss history, the
train config and the precision. Every RNG state is stored as tensors and numbers, so the file loads with
`torch.load(weights_only=True)`: a crafted file cannot make the loader run code.

`StopFlag` turns SIGINT/SIGTERM into a flag the loop reads between steps, so a stop always lands on a
finished step with a checkpoint.
"""
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import atomic_torch_save, clean_state_dict
from model.errors import MiniMindError


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    offset: int = 0  # samples this process has consumed in the current epoch
    history: dict = field(default_factory=lambda: {"train": [], "val": [], "lr": []})  # [(step, value)] each


def rng_state(device: torch.device) -> dict:
    """Every RNG this process draws from (torch, numpy, Python, CUDA), as tensors and plain numbers."""
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


def write_resume(path: Path, state: RunState, model, optimizers: list, scaler, rngs: list, meta: dict) -> None:
    """Atomically write everything --resume needs. `meta` adds plain values (config, world size, ...)."""
    atomic_torch_save(dict(model=clean_state_dict(model.state_dict()),
                           optimizers=[opt.state_dict() for opt in optimizers], scaler=scaler.state_dict(),
                           step=state.step, epoch=state.epoch, offset=state.offset, history=state.history,
                           rng=rngs, **meta), path)


def read_resume(path: Path) -> dict:
    """The resume file as written by write_resume; MiniMindError (one line) when it cannot be used."""
    try:  # weights_only: tensors and plain containers only; a crafted pickle cannot run code here
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MiniMindError(f"{path} is not a resume checkpoint this version can read "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                         f"delete it to start over, or run without --resume")
    missing = [key for key in ("model", "optimizers", "scaler", "step", "epoch", "offset", "rng", "history")
               if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise MiniMindError(f"{path} was written by another version (no {', '.join(missing)}): start over without --resume")
    return saved


class StopFlag:
    """While active, SIGINT/SIGTERM set `signum` instead of killing the process; a second one stops at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def restore(path, saved: dict, model, optimizers: list, scaler) -> RunState:
    """Put a resume checkpoint's weights, optimizer and scaler states (`saved`, read from `path`) into a
    run, and return where it stopped. A checkpoint of another model or optimizer set is one clear error."""
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as error:
        raise MiniMindError(f"{path} was saved from a different model ({str(error).splitlines()[0]}); "
                            f"start over without --resume or use the settings of that run")
    if len(saved["optimizers"]) != len(optimizers):
        raise MiniMindError(f"{path} was saved with {len(saved['optimizers'])} optimizer(s), this run has "
                            f"{len(optimizers)}: resume with the --optimizer it was trained with")
    for optimizer, state in zip(optimizers, saved["optimizers"]):
        optimizer.load_state_dict(state)
    scaler.load_state_dict(saved["scaler"])
    return RunState(saved["step"], saved["epoch"], saved["offset"], saved["history"])
