"""Loading a trained model from the command line, for every script that uses one.

    parser = argparse.ArgumentParser()
    add_model_args(parser, default_weight="full_sft")
    args = parser.parse_args()
    model, tokenizer = load_from_args(args)

The arguments it adds:

    --weight pretrain|full_sft|dpo|lora_NAME   a stage checkpoint: out/{weight}_{tag}.pth, where the tag
                     (512x8, 640x8_moe) comes from --preset and its overrides. lora_NAME loads the base
                     and merges the adapter in out/lora_NAME_{tag}/; the base is the checkpoint recorded
                     in the adapter's config, or --lora_base STAGE (full_sft when neither is known).
    --ckpt PATH      any .pth with its .json beside it, an exported HF folder, or a LoRA adapter folder
                     (out/lora_NAME_{tag}/: its base is the checkpoint the adapter records, no --preset
                     needed); wins over --weight
    --out_dir DIR    where stage checkpoints live (out)
    --tokenizer DIR  model/minimind_tokenizer, or the HF folder's own tokenizer when --ckpt is one
    --device         auto picks cuda, then mps, then cpu
    --dtype          auto: the rule of model/runtime.py (bf16 on GPUs and CPUs with bf16 instructions)
    --quantize int8  CPU only: int8 weights (model/quantize.py) for faster generation; outputs differ slightly

The config always comes from the checkpoint itself (the .json saved beside it), so a 640-dim
checkpoint loads as 640-dim whatever the preset says; the preset only names the file to look for.
Fields that do not change what the weights are (RUNTIME_FIELDS: max_seq_len, rope scaling, flash_attn,
dropout, the MoE balance loss) are applied at load time, e.g. `--rope_scaling_type yarn` to stretch the
context; any other field flag that differs from the checkpoint is named as ignored (load_with_flags).
The training stages load their starting weights the same way.

The demo prompts shared by the chat, the pretrain check, the quickstart and the README live here too.
"""
import argparse
from pathlib import Path

import torch

from model.chat import build_prompt
from model.checkpoint import check_vocabulary, checkpoint_stage, load_model
from model.errors import MiniMindError, first_line
from model.jsonfile import read_json_object
from model.LMConfig import add_config_args, config_from_args, config_overrides, describe
from model.lora import adapter_base, check_adapter_base, is_adapter_dir, recorded_base
from model.quantize import INT8_THREADS, quantize_int8
from model.runtime import DeviceError, pick_device, pick_dtype
from model.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent

# Asked by `2-eval.py --auto`: knowledge, reasoning, writing, identity, and a multi-step request.
DEMO_QUESTIONS = [
    "你有什么特长？",
    "为什么天空是蓝色的？",
    "请用Python写一个计算斐波那契数列的函数。",
    "解释一下“光合作用”的基本过程。",
    "如果明天下雨，我应该如何出门？",
    "比较一下猫和狗作为宠物的优缺点。",
    "解释什么是机器学习。",
    "推荐一些中国的美食。",
]

# Continued by `0-eval_pretrain.py` as raw text, without the chat template.
PRETRAIN_PROMPTS = [
    "人工智能是",
    "长江是中国最长的河流，",
    "春天来了，",
    "秦始皇统一六国以后，",
    "在很久很久以前，",
    "科学研究表明，",
    "他推开门，看见",
    "床前明月光，",
]

# Config fields that change how a trained model runs or trains, not what its weights are: a flag for one
# of them applies on load. Every other field flag is decided by the checkpoint's own config.
RUNTIME_FIELDS = ("max_seq_len", "rope_scaling_type", "rope_factor", "flash_attn", "dropout", "aux_loss_alpha",
                  "seq_aux")


def load_with_flags(path, args, say=print, device="cpu"):
    """The model saved at `path` with its own config, plus the runtime fields (RUNTIME_FIELDS) the command
    line set. A field flag that is not a runtime field and differs from the checkpoint cannot apply to
    trained weights: `say` names each one as ignored instead of dropping it silently."""
    overrides = config_overrides(args)
    model = load_model(path, device=device, **{k: v for k, v in overrides.items() if k in RUNTIME_FIELDS})
    ignored = [f"--{name} {value} (it has {getattr(model.config, name)})" for name, value in overrides.items()
               if name not in RUNTIME_FIELDS and getattr(model.config, name) != value]
    if ignored:
        say(f"{path}: the checkpoint's own config decides its shape; ignored {', '.join(ignored)}")
    return model


def add_model_args(parser: argparse.ArgumentParser, default_weight: str = "full_sft", quantize: bool = True) -> None:
    """quantize=False leaves out --quantize, for scripts that need the float weights themselves (export)."""
    add_config_args(parser)
    group = parser.add_argument_group("which model to load")
    group.add_argument("--weight", default=default_weight,
                       help="stage checkpoint: pretrain, full_sft, dpo, grpo or lora_NAME (default %(default)s)")
    group.add_argument("--ckpt", default=None,
                       help="a .pth (with its .json), an exported HF folder or a LoRA adapter folder (its base "
                            "is the checkpoint it records); wins over --weight")
    group.add_argument("--lora_base", default=None,
                       help="stage under a LoRA adapter (default: the base recorded in the adapter, else full_sft)")
    group.add_argument("--out_dir", default=str(ROOT / "out"), help="folder of the stage checkpoints")
    group.add_argument("--tokenizer", default=None, help="tokenizer folder (default model/minimind_tokenizer)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    if quantize:
        group.add_argument("--quantize", default="none", choices=["none", "int8"],
                           help="int8: CPU only; int8 weights make generation faster, outputs differ slightly "
                                "from the float32 model (default %(default)s)")


def resolve_checkpoint(args) -> tuple[Path, Path | None]:
    """(weights file or HF folder, LoRA adapter folder or None) named by --ckpt or --weight."""
    if args.ckpt:
        path = Path(args.ckpt)
        if not path.exists():
            raise MiniMindError(f"--ckpt {path} does not exist")
        if is_adapter_dir(path):
            base = adapter_base(path, args.out_dir)
            if base is None:
                recorded = recorded_base(path)
                raise MiniMindError(
                    f"--ckpt {path}: its base checkpoint {recorded} is missing (looked there and beside the "
                    f"adapter): put the base back, or load with --weight lora_NAME --lora_base STAGE"
                    if recorded else f"--ckpt {path}: the adapter records no base checkpoint: load it with "
                    f"--weight lora_NAME --lora_base STAGE")
            return base, path
        if path.is_dir():
            config_file = path / "config.json"
            if not config_file.exists():
                raise MiniMindError(f"--ckpt {path}: a folder without config.json (expected an export_model.py folder)")
            model_type = read_json_object(config_file).get("model_type")
            if model_type != "minimind":
                raise MiniMindError(f"--ckpt {path} holds a {model_type!r} model: these scripts load MiniMind folders "
                                 f"(export_model.py --format remote) or .pth checkpoints; load native exports "
                                 f"with transformers' AutoModelForCausalLM")
        return path, None
    tag = config_from_args(args).tag()  # a MiniMindError naming the flags when they disagree
    out_dir = Path(args.out_dir)
    adapter = None
    stage = args.weight
    if stage.startswith("lora_"):
        adapter = out_dir / f"{stage}_{tag}"
        if not (adapter / "adapter_config.json").exists():
            raise MiniMindError(f"no LoRA adapter at {adapter} (adapter_config.json missing): train it with the LoRA "
                             f"stage first, or check --weight and --preset")
        base = adapter_base(adapter, out_dir) if args.lora_base is None else None
        if base is not None:
            return base, adapter
        stage = args.lora_base or "full_sft"
    path = out_dir / f"{stage}_{tag}.pth"
    if adapter is not None and path.exists():
        check_adapter_base(adapter, path)
    if not path.exists():
        found = sorted(p.name for p in out_dir.glob("*.pth")) if out_dir.is_dir() else []
        hint = f"checkpoints in {out_dir}: {', '.join(found)}" if found else f"{out_dir} holds no checkpoints yet"
        raise MiniMindError(f"checkpoint {path} not found ({hint}). Train the {stage} stage first, or pick "
                         f"another --weight, --preset (it sets the name's tag, {tag}) or --ckpt")
    return path, adapter


def is_pretrain_checkpoint(args) -> bool:
    """Whether the checkpoint the arguments name was written by pretraining (the stage recorded in its
    .json): a model that learned to continue text, asked with the bare text by default. An exported folder,
    or a file that records no stage, counts as a chat model."""
    path, adapter = resolve_checkpoint(args)
    return adapter is None and checkpoint_stage(path) == "pretrain"


def load_from_args(args, verbose: bool = True):
    """The model (eval mode, on the chosen device and dtype; an int8-quantised copy with --quantize int8)
    and tokenizer that the arguments name."""
    path, adapter = resolve_checkpoint(args)
    int8 = getattr(args, "quantize", "none") == "int8"  # absent where add_model_args(quantize=False)
    try:
        device = torch.device("cpu") if int8 and args.device == "auto" else pick_device(args.device)
        dtype = torch.float32 if int8 and args.dtype == "auto" else pick_dtype(args.dtype, device)[0]
    except DeviceError as error:
        raise MiniMindError(str(error))
    if int8 and (device.type != "cpu" or dtype != torch.float32):
        raise MiniMindError(f"--quantize int8 runs on the CPU from float32 weights, not on {device} in "
                         f"{str(dtype).removeprefix('torch.')}: use --device cpu and --dtype float32 (or auto)")
    model = load_with_flags(path, args, say=print if verbose else lambda _: None)
    if adapter is not None:
        model = merge_lora(model, adapter)
    model = model.to(device=device, dtype=dtype).eval()
    described = f"{describe(model)}, {device}, {str(dtype).removeprefix('torch.')}"
    if int8:
        model = quantize_int8(model)
        torch.set_num_threads(INT8_THREADS)
        described += f" with int8 Linear weights, {INT8_THREADS} thread"
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None and path.is_dir() and (path / "tokenizer.json").exists():
        tokenizer_dir = path  # an exported folder carries its own tokenizer
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except MiniMindError:
        raise
    except Exception as error:  # a tokenizer.json that is not one
        raise MiniMindError(f"tokenizer {tokenizer_dir or 'model/minimind_tokenizer'}: cannot load it "
                            f"({first_line(error, 200)})") from None
    check_vocabulary(tokenizer, model.config.vocab_size, tokenizer_dir or "model/minimind_tokenizer")
    if verbose:
        what = f"{path}" + (f" + LoRA {adapter}" if adapter else "")
        print(f"loaded {what}: {described}")
    return model, tokenizer


def merge_lora(model, adapter_dir: Path):
    """Apply a peft LoRA adapter and fold it into the base weights, so inference costs nothing extra."""
    from peft import PeftModel

    config = read_json_object(adapter_dir / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise MiniMindError(f"{adapter_dir}: peft_type {config.get('peft_type')!r} is not a LoRA adapter")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except Exception as error:  # missing or unreadable adapter weights, shapes of another base model
        raise MiniMindError(f"{adapter_dir}: cannot apply the LoRA adapter ({first_line(error, 200)})") from None


def render_chat(tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
    """The terminal chat's prompt: token ids of `messages` plus the generation prompt, fitted to
    `max_tokens` by model/chat.py's policy (the server's and C-Eval's too). Returns (ids, number of
    messages dropped). When even the system messages and the last message are too long, the ids are cut
    from the left, so the end of the question and the reply header survive."""
    return build_prompt(tokenizer, messages, max_tokens, cut=True)
