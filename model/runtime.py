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
import time
from pathlib import Path

import torch
import torch.nn as nn

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


# ----------------------------------------------------------------------------- FLOPs and peaks, for MFU


def matmul_flops(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, reps: int = 20,
                 budget_s: float = float("inf"), statistic=min) -> float:
    """The measured matmul rate, FLOP/s, of (m x k) @ (k x n) in `dtype` on `device`: 2mkn over the
    `statistic` (min: the best; statistics.median) of up to `reps` timed runs after a warm-up, stopping
    early once `budget_s` seconds are spent. What MFU is measured against on a CPU, in training (peak_flops)
    and in bench.py."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG (and so exact resume) alone
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    a @ b  # warm-up: kernel selection, allocation
    times, spent = [], 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if spent > budget_s:
            break
    return 2 * m * k * n / statistic(times)


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
        return matmul_flops(device, dtype, n, n, n, budget_s=0.3)
    return 0.0


def matmul_params_per_token(config) -> int:
    """Weights of every matmul one token goes through: attention, the FFN (for an MoE its shared experts,
    its top-k routed experts and the router) and the output head; the embedding lookup is free."""
    d, h, kv = config.dim, config.hidden_dim, config.n_kv_heads * config.head_dim
    attention = 2 * d * d + 2 * d * kv
    ffn = 3 * d * h
    if config.use_moe:
        ffn = ffn * (config.n_shared_experts + config.num_experts_per_tok) + d * config.n_routed_experts
    return config.n_layers * (attention + ffn) + d * config.vocab_size


def train_flops_per_token(config, width: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per matmul weight, plus QK^T and AV
    over a causal context of `width` keys, half the width x width square: 6 * layers * width * dim."""
    return 6 * matmul_params_per_token(config) + 6 * config.n_layers * width * config.dim


class FlopsPerToken:
    """train_flops_per_token for a model's config, as a function of the context width. A module without
    a MiniMind config counts 6 FLOPs per parameter."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        self.config = config if hasattr(config, "n_kv_heads") and hasattr(config, "hidden_dim") else None
        self.plain = 6.0 * sum(p.numel() for p in model.parameters())

    def __call__(self, width: int) -> float:
        return train_flops_per_token(self.config, width) if self.config is not None else self.plain
