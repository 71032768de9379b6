"""Stage checkpoints: plain state dicts with their config beside them, written atomically.

    out/pretrain_512.pth    torch.load(path, weights_only=True) gives the state dict
    out/pretrain_512.json   the LMConfig that built it

Every stage writes with `save_weights` and every consumer reads with `load_model`, so a checkpoint
always comes back with the shape it was trained with, whatever preset the reader was started with.
"""
import json
import os
import tempfile
from pathlib import Path

import torch

from model.LMConfig import LMConfig

STAGES = ("pretrain", "full_sft", "dpo")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn) -> None:
    """Write through `write_fn(tmp_path)` into a temp file in the same folder, then rename over `path`.
    A crash at any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def config_path(weights_path) -> Path:
    return Path(weights_path).with_suffix(".json")


def weights_path(out_dir, stage: str, config: LMConfig) -> Path:
    """out/{stage}_{dim}[_moe].pth, the names the original MiniMind used."""
    return Path(out_dir) / f"{stage}_{config.tag()}.pth"


# The stage that produces each stage's default starting weights, and the command that makes them.
_MADE_BY = {"pretrain": "1-pretrain.py", "full_sft": "3-full_sft.py", "dpo": "5-dpo_train.py"}


def previous_stage_weights(init_from, out_dir, stage: str, config: LMConfig, preset: str) -> Path:
    """`init_from` if given, else out/{stage}_{tag}.pth; exits with the command to run when it is missing."""
    path = Path(init_from) if init_from else weights_path(out_dir, stage, config)
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `python {_MADE_BY.get(stage, stage)} --preset {preset}` "
                         f"first, or pass --init_from")
    return path


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrappers' prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key.replace("._orig_mod.", ".")] = value
    return cleaned


def save_weights(model, path) -> None:
    """Save the model's weights (tied embedding stored once) and its config, both atomically."""
    state = clean_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_torch_save(state, path)
    config_json = json.dumps(model.config.to_dict(), indent=2, ensure_ascii=False, default=str)
    atomic_write(config_path(path), lambda tmp: Path(tmp).write_text(config_json, encoding="utf-8"))


def load_config(path) -> LMConfig:
    cfg_file = config_path(path)
    if not cfg_file.exists():
        raise SystemExit(f"{path}: no config file {cfg_file.name} beside the weights")
    fields = json.loads(cfg_file.read_text(encoding="utf-8"))
    fields.pop("model_type", None)
    return LMConfig(**fields)


def load_model(path, device="cpu", dtype=None, **config_overrides):
    """Build a MiniMindForCausalLM from `path` (a stage .pth with its .json, or an exported HF folder)."""
    from model.model import MiniMindForCausalLM

    path = Path(path)
    if path.is_dir():
        model = MiniMindForCausalLM.from_pretrained(str(path), **config_overrides)
    else:
        if not path.exists():
            raise SystemExit(f"checkpoint {path} does not exist: train that stage first, or pass --weight/--ckpt")
        config = load_config(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model = MiniMindForCausalLM(config)
        state = clean_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in model.tied_weight_names()]
        if missing or unexpected:
            raise SystemExit(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval()
