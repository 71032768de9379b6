"""Stage checkpoints: plain state dicts with their config beside them, written atomically.

    out/pretrain_512x8.pth    torch.load(path, weights_only=True) gives the state dict
    out/pretrain_512x8.json   the LMConfig that built it, and the stage that wrote it ("stage": "pretrain")

Every stage writes with `save_weights` and every consumer reads with `load_model`, so a checkpoint
always comes back with the shape it was trained with, whatever preset the reader was started with.

Checkpoints may come from anywhere, so reading one never runs code (`weights_only=True`: a pickle that
names anything but tensors and plain containers is refused) and every problem with the pair of files
(missing, empty, truncated, not a state dict, a config that is not JSON or has a wrong field, weights
whose names or shapes do not fit the config) raises a MiniMindError naming the file, before any
model-sized memory is allocated. Scripts end with that one line (model/errors.py's run_main).
"""
import json
import os
import pickle
import re
import reprlib
import secrets
import shutil
from pathlib import Path

import torch

from model.errors import MiniMindError, first_line
from model.jsonfile import read_json_object
from model.LMConfig import LMConfig, check_field_types
from model.model import MiniMindForCausalLM


def _new_sibling(path: Path, create) -> Path:
    """A fresh name `.{name}.{random}.tmp` beside `path`, made by `create(tmp)`, which raises
    FileExistsError when the name is taken. The callers create with the full mode (0o666, 0o777) so that
    the umask decides the permissions, as for any file the user makes, without reading (or changing) the
    process-wide umask."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path, write_fn) -> None:
    """Write through `write_fn(tmp_path)` into a temp file in the same folder, then rename over `path`.
    A crash at any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(path, lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_folder(path, write_fn) -> None:
    """Write a folder through `write_fn(tmp_folder)` into a temporary sibling, then swap it in for `path`.
    A crash leaves the old folder or the new one, never a half-written one (between the two renames the
    old one waits as `.{name}.old`, and is removed once the new one is in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(path, lambda name: os.mkdir(name, 0o777))
    try:
        write_fn(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_torch_save(obj, path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def config_path(weights_path) -> Path:
    return Path(weights_path).with_suffix(".json")


def weights_path(out_dir, stage: str, config: LMConfig) -> Path:
    """out/{stage}_{tag}.pth, e.g. out/full_sft_512x8.pth: the stage, then the shape (LMConfig.tag)."""
    return Path(out_dir) / f"{stage}_{config.tag()}.pth"


# The stage that produces each stage's default starting weights, and the command that makes them.
_MADE_BY = {"pretrain": "1-pretrain.py", "full_sft": "3-full_sft.py", "dpo": "5-dpo_train.py",
            "grpo": "6-grpo.py"}


def previous_stage_weights(ckpt, out_dir, stage: str, config: LMConfig, preset: str) -> Path:
    """`ckpt` if given, else out/{stage}_{tag}.pth; exits with the command to run when it is missing."""
    path = Path(ckpt) if ckpt else weights_path(out_dir, stage, config)
    if not path.exists():
        raise MiniMindError(f"{path} does not exist: run `python {_MADE_BY.get(stage, stage)} --preset {preset}` "
                         f"first, or pass --ckpt")
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


# The key in a checkpoint's .json that names the stage which wrote it, beside the config fields. Readers
# decide from it, not from the file name, whether a model continues text (pretrain) or answers in the chat.
STAGE_KEY = "stage"


def save_weights(model, path, stage: str | None = None) -> None:
    """Save the model's weights (tied embedding stored once) and its config, both atomically, recording
    `stage` ("pretrain", "full_sft", "dpo", "lora_identity", ...) in the config file when given."""
    state = clean_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_torch_save(state, path)
    fields = model.config.to_dict()
    if stage is not None:
        fields[STAGE_KEY] = stage
    config_json = json.dumps(fields, indent=2, ensure_ascii=False, default=str)
    atomic_write(config_path(path), lambda tmp: Path(tmp).write_text(config_json, encoding="utf-8"))


def load_config(path) -> LMConfig:
    """The LMConfig saved beside the weights `path` (its .json), checked field by field."""
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise MiniMindError(f"{path}: no config file {cfg_file.name} beside the weights")
    fields = read_config_fields(cfg_file)
    fields.pop("model_type", None)
    fields.pop(STAGE_KEY, None)
    check_field_types(fields, cfg_file)
    try:
        return LMConfig(**fields)
    except (MiniMindError, ValueError, TypeError) as error:
        raise MiniMindError(f"{cfg_file}: {first_line(error)}") from None


def checkpoint_stage(path) -> str | None:
    """The stage recorded beside the weights `path` (see STAGE_KEY), or None: an exported folder, a file
    from an older version, or weights saved without a stage."""
    cfg_file = config_path(path)
    if Path(path).is_dir() or not cfg_file.is_file():
        return None
    stage = read_config_fields(cfg_file).get(STAGE_KEY)
    return stage if isinstance(stage, str) else None


def read_config_fields(cfg_file: Path) -> dict:
    """The JSON object in a checkpoint's .json; a MiniMindError naming the file when it is anything else."""
    return read_json_object(cfg_file, "a JSON object of config fields", ": not a model config")


def read_state_dict(path) -> dict:
    """The tensors in a .pth, read without running code. Raises a MiniMindError naming the file when it is
    unreadable, truncated, refused as unsafe, or not a dict of name -> tensor."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # torch reports bad files as several exception types
        text = str(error)
        code = re.search(r"GLOBAL ([\w.]+)", text)
        if code:  # the pickle names a Python callable: the weights-only reader stopped before calling it
            raise MiniMindError(
                f"{path}: refused to load: its pickle would call {code.group(1)}, and a checkpoint holds only "
                f"tensors (a crafted or foreign file?); nothing in it was run"
            ) from None
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        what = "an empty file" if size == 0 else f"{size} bytes that are not a complete checkpoint"
        detail = re.search(r"Unsupported operand \d+|[^\n]*[Uu]nsupported [^\n]*", text) if "Weights only" in text else None
        detail = detail.group(0).strip() if detail else first_line(error, 160)
        raise MiniMindError(f"{path}: cannot read the weights: {what} ({detail})") from None
    if not isinstance(state, dict):
        raise MiniMindError(f"{path}: expected a state dict (parameter name -> tensor), found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise MiniMindError(f"{path}: entry {reprlib.repr(key)} is not a named tensor: not a state dict")
    return clean_state_dict(state)


def check_shapes(path, config, state: dict) -> None:
    """Compare the state dict's names and shapes with what `config` builds, on the meta device (no memory),
    so a config and weights that do not belong together are refused before the model is allocated."""
    with torch.device("meta"):
        expected = MiniMindForCausalLM(config)
    tied = set(expected.tied_weight_names())
    shapes = {key: tuple(value.shape) for key, value in expected.state_dict().items()}
    missing = [k for k in shapes if k not in state and k not in tied]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k} {tuple(state[k].shape)} vs {shapes[k]}" for k in shapes if k in state
             and tuple(state[k].shape) != shapes[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise MiniMindError(f"{path}: the weights do not match the config in {config_path(path).name} "
                            f"({'; '.join(parts)})")


def load_model(path, device="cpu", dtype=None, **config_overrides):
    """Build a MiniMindForCausalLM from `path` (a stage .pth with its .json, or an exported HF folder)."""
    path = Path(path)
    if path.is_dir():
        try:
            model = MiniMindForCausalLM.from_pretrained(str(path), **config_overrides)
        except MiniMindError:
            raise
        except pickle.UnpicklingError as error:  # a crafted pytorch_model.bin, stopped by the weights-only reader
            bins = sorted(path.glob("*.bin"))
            where = bins[0] if len(bins) == 1 else path
            detail = re.search(r"GLOBAL [\w.]+|Unsupported operand \d+", str(error))
            raise MiniMindError(f"{where}: refused to load: it holds more than tensors "
                                f"({detail.group(0) if detail else first_line(error, 120)}); nothing in it was run") from None
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
            raise MiniMindError(f"{path}: cannot load the model folder ({first_line(error, 200)})") from None
    else:
        if not path.exists():
            raise MiniMindError(f"checkpoint {path} does not exist: train that stage first, or pass --weight/--ckpt")
        if not path.is_file():
            raise MiniMindError(f"checkpoint {path} is not a file")
        config = load_config(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        state = read_state_dict(path)
        check_shapes(path, config, state)
        model = MiniMindForCausalLM(config)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise MiniMindError(f"{path}: the weights do not fit the model ({first_line(error, 200)})") from None
        missing = [k for k in missing if k not in model.tied_weight_names()]
        if missing or unexpected:
            raise MiniMindError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval()


def check_vocabulary(tokenizer, vocab_size: int, name) -> None:
    """Stop, naming the tokenizer `name`, when it has tokens the model has no embedding row for: a tokenizer
    and a model that were not trained together. A smaller tokenizer is fine (rows it never uses)."""
    if len(tokenizer) > vocab_size:
        raise MiniMindError(f"tokenizer {name} has {len(tokenizer)} tokens but the model only {vocab_size}: "
                            f"they were not trained together (pass --tokenizer)")
