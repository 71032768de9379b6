"""LoRA through peft: which layers get adapters, how adapters are saved, loaded and merged.

    model = apply_lora(load_model("out/full_sft_512x8.pth"), LoraSettings(rank=8))
    ...train: only the lora_A / lora_B matrices require grad...
    save_adapter(model, "out/lora_identity_512x8", base_path="out/full_sft_512x8.pth")
    save_merged(model, "out/lora_identity_512x8.pth", "lora_identity")  # W + (alpha/r) B A folded in, a stage file

An adapter folder is peft's own format (adapter_config.json + adapter_model.safetensors), so
`PeftModel.from_pretrained(base, folder)` reads it, and the chat/eval scripts load it with
`--weight lora_{name}` or `--ckpt out/lora_{name}_{tag}` (see model/cli.py). `adapter_config.json` records
the base checkpoint it was trained on in `base_model_name_or_path`, and BASE_FILE beside it records that
path again with the base's config, so a folder names its own base (adapter_base) and a base of another
shape is refused with a sentence rather than a peft size-mismatch trace.
"""
import argparse
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from model.checkpoint import atomic_write_folder, checkpoint_stage, load_config, save_weights
from model.errors import MiniMindError
from model.jsonfile import read_json_object

# Attention and SwiGLU projections, the layers the original MiniMind adapted. In an MoE model the FFN
# names match every expert's projections (routed and shared); the router (`mlp.gate`) stays frozen.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_FILE = "minimind_base.json"  # in an adapter folder: {"base": path, "stage": ..., "config": {...}}


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
    """Write only the adapter weights and config to folder `path`, atomically, with BASE_FILE naming the
    base checkpoint `base_path` and its config, so that the folder alone is enough to load it (--ckpt).

    peft writes the folder file by file, so it goes to a temporary sibling that is then renamed into
    place; a crash leaves the previous adapter (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if base_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    base = {"base": str(base_path) if base_path is not None else None,
            "stage": checkpoint_stage(base_path) if base_path is not None else None,
            "config": peft_model.get_base_model().config.to_dict()}
    text = json.dumps(base, indent=2, ensure_ascii=False, default=str)

    def write(tmp):
        peft_model.save_pretrained(str(tmp), save_embedding_layers=False)  # embeddings are never adapted
        (Path(tmp) / BASE_FILE).write_text(text, encoding="utf-8")

    atomic_write_folder(path, write)


def is_adapter_dir(path) -> bool:
    return Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file()


def recorded_base(folder) -> str | None:
    """The base checkpoint path an adapter folder records (BASE_FILE, else peft's base_model_name_or_path)."""
    folder = Path(folder)
    for name, key in ((BASE_FILE, "base"), ("adapter_config.json", "base_model_name_or_path")):
        if (folder / name).is_file():
            value = read_json_object(folder / name).get(key)
            if isinstance(value, str) and value:
                return value
    return None


def adapter_base(folder, out_dir=None) -> Path | None:
    """The base checkpoint of the adapter in `folder`: the path it records, as written (relative to where
    training ran), else a file of that name beside the folder or in `out_dir`; None when none is there.
    A base whose shape differs from the one the adapter recorded raises."""
    folder = Path(folder)
    recorded = recorded_base(folder)
    if recorded is None:
        return None
    name = Path(recorded).name
    candidates = [Path(recorded), folder.parent / name] + ([Path(out_dir) / name] if out_dir else [])
    for base in candidates:
        if base.suffix == ".pth" and base.is_file():
            check_adapter_base(folder, base)
            return base
    return None


def check_adapter_base(folder, base) -> None:
    """Raise when `base` is not of the shape the adapter in `folder` was trained on (per its BASE_FILE)."""
    folder = Path(folder)
    if not (folder / BASE_FILE).is_file():
        return  # saved before BASE_FILE existed: peft's own load reports a mismatch
    fields = read_json_object(folder / BASE_FILE).get("config")
    if not isinstance(fields, dict):
        return
    config = load_config(base)
    shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "use_moe", "n_routed_experts")
    differ = [f"{k} {fields[k]} vs {getattr(config, k)}" for k in shape
              if k in fields and fields[k] != getattr(config, k, None)]
    if differ:
        raise MiniMindError(f"{folder} was trained on a base of another shape than {base} ({', '.join(differ)})")


def save_merged(peft_model, path, stage: str) -> Path:
    """Write base + adapter folded together as a plain stage checkpoint (save_weights), leaving
    `peft_model` itself untouched so training can go on: the merge happens on a copy."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    save_weights(merged, path, stage)
    return Path(path)
