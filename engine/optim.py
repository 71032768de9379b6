"""The optimizers and the learning-rate schedule of every training stage (engine/trainer.py builds them).

    optimizers = build_optimizers(model, train_config, device, dtype)   # AdamW, plus Muon with --optimizer muon
    lr = lr_at(step, total, warmup, peak, min_lr, "cosine")            # the rate of optimizer step `step`
    set_learning_rate(optimizers, lr / peak)                           # every group follows, from its own peak

Parameter groups: AdamW decays the weight matrices and never the norms, biases or embeddings; with Muon
(engine/muon.py) the hidden weight matrices move from AdamW's decayed group to Muon. Each group keeps its
peak rate in "peak_lr", so groups with different peaks (AdamW's and Muon's) follow one schedule.
"""
import math

import torch
import torch.nn as nn

from engine.muon import Muon, split_for_muon
from model.errors import MiniMindError


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


def build_optimizers(model: nn.Module, cfg, device: torch.device, dtype: torch.dtype) -> list:
    """AdamW over every trainable parameter; with --optimizer muon, Muon takes the hidden weight matrices
    out of AdamW's decayed group. Each group keeps its peak rate in "peak_lr" for the schedule to scale."""
    groups = param_groups(model, cfg.weight_decay)
    optimizers = []
    if cfg.optimizer == "muon":
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
        raise MiniMindError("the model has no trainable parameters (every parameter has requires_grad=False)")
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



def set_learning_rate(optimizers: list, scale: float) -> None:
    """Set every parameter group's rate to its peak ("peak_lr") times `scale` (the schedule's lr / peak)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * scale
