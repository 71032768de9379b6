"""LoRA through peft: which layers get adapters, how adapters are saved, loaded and merged.

    model = apply_lora(load_model("out/full_sft_512x8.pth"), LoraSettings(rank=8))
    ...train: only the lora_A / lora_B matrices require grad...
    save_adapter(model, "out/lora_identity_512x8", base_path="out/full_sft_512x8.pth")
    save_merged(model, "out/lora_identity_512x8.pth", "lora_identity")  # W + (alpha/r) B A folded in, a stage file

An adapter folder is peft's own format (adapter_config.json + adapter_model.safetensors), so
`PeftModel.from_pretrained(base, folder)` reads it, and the chat/eval scripts load it with
`--weight lora_{name}` (see model/cli.py). `adapter_config.json` records the base checkpoint it was
trained on in `base_model_name_or_path`.
"""
import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from model.checkpoint import atomic_write_folder, save_weights
from model.errors import MiniMindError

# Attention and SwiGLU projections, the layers the original MiniMind adapted. In an MoE model the FFN
# names match every expert's projections (routed and shared); the router (`mlp.gate`) stays frozen.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.1  # on the adapter's input only; the frozen path is unaffected
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA")
    group.add_argument("--lora_rank", type=int, default=8, help="rank r of each adapter")
    group.add_argument("--lora_alpha", type=float, default=16.0, help="scale: the update is multiplied by alpha / r")
    group.add_argument("--lora_dropout", type=float, default=0.1, help="dropout on the adapter input")
    group.add_argument("--lora_targets", default=",".join(DEFAULT_TARGETS),
                       help="comma-separated names of the linear layers that get adapters")


def lora_settings_from_args(args: argparse.Namespace) -> LoraSettings:
    targets = tuple(name.strip() for name in args.lora_targets.split(",") if name.strip())
    return LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=targets)


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's nn.Linear layers (what a LoRA target may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def apply_lora(model: nn.Module, settings: LoraSettings):
    """Freeze `model` and wrap it in a peft model with fresh adapters (B = 0, so its output is unchanged)."""
    from peft import LoraConfig, get_peft_model

    if settings.rank < 1:
        raise MiniMindError(f"--lora_rank must be at least 1, got {settings.rank}")
    available = set(linear_layer_names(model)) - {"lm_head"}
    unknown = [t for t in settings.targets if t not in available]
    if unknown or not settings.targets:
        raise MiniMindError(f"--lora_targets: {unknown or 'empty list'} not among the model's linear layers "
                         f"({', '.join(sorted(available))})")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_summary(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"LoRA: {trainable / 1e6:.3f}M trainable of {total / 1e6:.2f}M parameters ({100 * trainable / total:.2f}%)"


def adapter_dir(out_dir, name: str, config) -> Path:
    """out/lora_{name}_{tag}/, e.g. out/lora_identity_512x8."""
    return Path(out_dir) / f"lora_{name}_{config.tag()}"


def save_adapter(peft_model, path, base_path=None) -> None:
    """Write only the adapter weights and config to folder `path`, atomically.

    peft writes the folder file by file, so it goes to a temporary sibling that is then renamed into
    place; a crash leaves the previous adapter (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if base_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    # embeddings are never adapted
    atomic_write_folder(path, lambda tmp: peft_model.save_pretrained(str(tmp), save_embedding_layers=False))


def save_merged(peft_model, path, stage: str) -> Path:
    """Write base + adapter folded together as a plain stage checkpoint (save_weights), leaving
    `peft_model` itself untouched so training can go on: the merge happens on a copy."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    save_weights(merged, path, stage)
    return Path(path)
