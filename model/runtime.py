"""Where and in what precision the model computes: one rule, used by training, chat, server, C-Eval and bench.

    device = pick_device("auto")               # cuda, then mps, then cpu; a named device must exist
    dtype, why = pick_dtype("auto", device)    # torch.bfloat16, "the CPU has AVX512_BF16"

The precision rule for "auto":
- CUDA: bfloat16 where the GPU supports it, else float16 (training adds a gradient scaler).
- CPU: bfloat16 when the CPU has bf16 instructions (x86 AVX512_BF16 or AMX-BF16, Arm BF16), where bf16
  matmuls run 2-4x faster than float32; float32 otherwise, where bf16 is emulated and ~10x slower.
  The choice is read from the CPU's feature flags, not timed, so it cannot flip between two stages of
  one run on one machine.
- anything else (MPS): float32.
"""
import platform
from pathlib import Path

import torch

from model.errors import MiniMindError


class DeviceError(MiniMindError):
    """A device or precision that this machine cannot provide."""


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device `name` names ("auto", "cpu", "cuda", "cuda:1", "mps"), checked to exist.
    A bare "cuda" under torchrun means this process's GPU, cuda:{local_rank}."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name (use auto, cpu, cuda, cuda:1 or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: torch sees no CUDA GPU (use --device cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps: the Apple GPU backend is not available (use --device cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def cpu_bf16_flags(cpuinfo: str = None) -> list[str]:
    """The CPU's bf16 feature flags (e.g. ["avx512_bf16", "amx_bf16"]); [] when it has none or
    when they cannot be read (then float32 is the safe choice)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 and Arm spell the line differently
            flags.update(value.split())
    wanted = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, x86 AMX, Armv8.6 BF16
    return [flag for flag in wanted if flag in flags]


def pick_dtype(name: str, device: torch.device, cpuinfo: str = None) -> tuple[torch.dtype, str]:
    """(dtype, why) for the precision `name` ("auto", "float32", "bfloat16", "float16") on `device`."""
    device = torch.device(device)
    if name != "auto":
        if name not in ("float32", "bfloat16", "float16"):
            raise DeviceError(f"--dtype {name}: use auto, float32, bfloat16 or float16")
        return getattr(torch, name), "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "the GPU supports bf16"
        return torch.float16, "the GPU has no bf16"
    if device.type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return torch.bfloat16, f"the CPU has {', '.join(f.upper() for f in flags)}"
        return torch.float32, f"the CPU ({platform.machine()}) has no bf16 instructions"
    return torch.float32, f"{device.type} runs float32"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
