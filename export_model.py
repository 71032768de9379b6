"""Export a trained MiniMind as a transformers folder (our own architecture or a native one) or a GGUF file.

    python export_model.py --weight full_sft                    # out/hf/full_sft_512x8: our code, trust_remote_code
    python export_model.py --weight full_sft --format native     # out/hf/full_sft_512x8_llama: plain LlamaForCausalLM
    python export_model.py --preset moe --weight full_sft --format native   # out/hf/full_sft_640x8_moe_qwen2_moe
    python export_model.py --ckpt out/dpo_512x8.pth --out my_model
    python export_model.py --weight lora_medical                # full_sft with the adapter merged in
    python export_model.py --weight dpo --dtype_out bfloat16     # half the size on disk
    python export_model.py --weight full_sft --format gguf --outtype q8_0   # out/gguf/full_sft_512x8-q8_0.gguf
    python export_model.py --weight lora_medical --format native --keep_adapter  # base + peft adapter, unmerged
    python export_model.py --weight lora_medical --format gguf --keep_adapter    # base GGUF + LoRA adapter GGUF

Every folder holds config.json, model.safetensors, generation_config.json (the chat's sampling
defaults, so transformers' generate and pipeline sample as our chat does instead of decoding greedily),
the tokenizer with its chat template, and README.md, a model card whose YAML block the Hugging Face Hub
reads (export/card.py; with the run's scoreboard when out/score_{weight}_{tag}.json sits beside the
checkpoint). It is written atomically and readable by everyone, and checked after writing: it is
loaded back and its logits are compared with the checkpoint's, with the weights rounded to --dtype_out
the same way (--no_verify skips this). The conversion runs on the CPU in
float32 whatever --device/--dtype say. The tokenizer files name PreTrainedTokenizerFast and the native
config.json carries the legacy rope_theta/rope_scaling keys beside rope_parameters: the names and keys
transformers 4.x reads (the folders are tested with 5.x).

--format remote (default): MiniMind's own classes. The model code (model/model.py and
model/LMConfig.py, which import each other relatively) is copied into the folder and config.json's
`auto_map` points at it, so anyone loads it with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

--format native, dense models: a `LlamaForCausalLM` folder that needs no remote code, so tools built on
Llama (vLLM, llama.cpp's converter, ollama) read it. The weights map 1:1: MiniMind names its modules
as Llama does, uses the same rotate-half RoPE, bias-free GQA attention, SwiGLU, RMSNorm (eps from
norm_eps) and a tied LM head. RoPE scaling maps too: linear -> Llama's linear, ntk (a static rescaled
base) -> the default rope with the rescaled theta, yarn -> Llama's yarn with our context as
original_max_position_embeddings.

--format native, MoE models: a `Qwen2MoeForCausalLM` folder. Its router is the same as ours (softmax
over the routed experts, top-k, renormalised when norm_topk_prob; we renormalise only for k > 1, and the
export follows that), its experts are SwiGLU, and its attention is Llama's with qkv_bias off.
The one difference is its single shared expert, which is gated by sigmoid(w . x) while ours are
added unweighted. The export sets w = 0, so the gate is exactly 1/2, and doubles the shared expert's
down projection (both exact in floating point); several shared experts become one of their combined
width. Mixtral, OLMoE and Qwen3-MoE lack shared experts (and OLMoE/Qwen3 add q/k norms), DeepSeek-V2/V3
use latent attention and other routing, so Qwen2-MoE is the one native class that matches.

--format gguf: one file for llama.cpp, Ollama and LM Studio (export/gguf.py says what goes in),
with --outtype f32, f16 or q8_0. Dense models are llama.cpp's `llama`; MoE models are its `qwen2moe`
when llama.cpp computes the same thing (norm_topk_prob false, or top-1 routing), and are refused with
the reason otherwise. The check loads the file with transformers (gguf_file=...), which undoes the
format's Q/K row order and dequantizes, and compares its logits with the checkpoint's weights rounded
the same way. Beside the file goes FILE.Modelfile for Ollama (`ollama create NAME -f FILE.Modelfile`):
our chat template in Ollama's template language, `</s>` as the stop, and the chat's sampling defaults.

--keep_adapter, with --weight lora_NAME: the base is exported unmerged and the adapter beside it, so
peft applies it at load time: for remote/native the adapter goes to FOLDER/adapter/, its
adapter_config.json naming the exported base by absolute path, so that
`AutoPeftModelForCausalLM.from_pretrained(FOLDER/adapter)` loads the pair; for gguf it is written as a
llama.cpp LoRA adapter, BASE-lora.gguf, for `--lora`.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import copy
import json
import shutil
import warnings
from pathlib import Path

import torch

from export.gguf import (
    OUTTYPES,
    apply_lora_gguf,
    rounded_like_gguf,
    share_readable,
    shared_expert_width,
    write_gguf,
    write_lora_gguf,
    write_modelfile,
)
from data.fetch import source_repositories
from export.card import model_card
from export.native import native_config, rope_parameters
from model.checkpoint import atomic_write_folder
from model.cli import add_model_args, load_from_args, load_with_flags, merge_lora, resolve_checkpoint
from model.errors import MiniMindError, run_main
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, context_length
from model.jsonfile import read_json_object
from model.LMConfig import describe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft", quantize=False)
    parser.add_argument("--format", default="remote", choices=["remote", "native", "gguf"],
                        help="remote: our classes with trust_remote_code; native: Llama (dense) or Qwen2-MoE (MoE); "
                             "gguf: one file for llama.cpp / Ollama")
    parser.add_argument("--out", default=None, help="output folder (default out/hf/{weight}_{tag}[_{native class}]), "
                                                    "or for gguf the file (default out/gguf/{weight}_{tag}-{outtype}.gguf)")
    parser.add_argument("--dtype_out", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved weights (remote and native)")
    parser.add_argument("--outtype", default="f16", choices=list(OUTTYPES),
                        help="GGUF weight type: f32, f16 or q8_0 (8-bit blocks); norm gains stay f32 (default %(default)s)")
    parser.add_argument("--keep_adapter", action="store_true",
                        help="with --weight lora_NAME: export the base unmerged plus the adapter (peft or GGUF LoRA)")
    parser.add_argument("--no_verify", action="store_true", help="skip loading the folder back to compare logits")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------- native configs and weights

def to_llama(model):
    """A LlamaForCausalLM with the same weights (dense models only)."""
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(native_config(model.config))
    llama.load_state_dict(model.state_dict(), strict=True)  # identical names and shapes
    return llama


def to_qwen2_moe(model):
    """A Qwen2MoeForCausalLM computing the same function (MoE models; see the module docstring)."""
    from transformers import Qwen2MoeForCausalLM

    cfg = model.config
    with warnings.catch_warnings():  # without shared experts their (empty) layers warn about zero-size init
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        qwen = Qwen2MoeForCausalLM(native_config(cfg))
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    for i, layer in enumerate(model.model.layers):
        moe, prefix = layer.mlp, f"model.layers.{i}.mlp."
        state[prefix + "gate.weight"] = moe.gate.weight
        state[prefix + "experts.gate_up_proj"] = torch.stack(
            [torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in moe.experts])
        state[prefix + "experts.down_proj"] = torch.stack([e.down_proj.weight for e in moe.experts])
        shared, hidden = list(moe.shared_experts), cfg.dim
        cat = lambda name, dim, empty: torch.cat([getattr(e, name).weight for e in shared], dim) if shared else empty
        state[prefix + "shared_expert.gate_proj.weight"] = cat("gate_proj", 0, torch.zeros(0, hidden))
        state[prefix + "shared_expert.up_proj.weight"] = cat("up_proj", 0, torch.zeros(0, hidden))
        # sigmoid(0) = 1/2 exactly; twice the down projection undoes it exactly.
        state[prefix + "shared_expert.down_proj.weight"] = 2 * cat("down_proj", 1, torch.zeros(hidden, 0))
        state[prefix + "shared_expert_gate.weight"] = torch.zeros(1, hidden)
    qwen.load_state_dict(state, strict=True)
    return qwen


# ----------------------------------------------------------------------------- files other tools read

def legacy_rope_keys(cfg) -> dict:
    """The rope_theta / rope_scaling keys transformers 4.x reads (5.x reads rope_parameters, and takes
    rope_scaling, when present, as the same dict). Without them 4.x would run YaRN or linear scaling
    as plain RoPE."""
    rope, _ = rope_parameters(cfg)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if rope["rope_type"] != "default" else None
    return {"rope_theta": rope["rope_theta"], "rope_scaling": scaling}


def update_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def portable_files(folder: Path, cfg, native: bool) -> None:
    """Make a freshly saved folder read the same in transformers 4.x and 5.x, and sample like our chat."""
    from transformers import GenerationConfig

    def tokenizer_config(data):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"  # TokenizersBackend exists in 5.x only
        for leaked in ("is_local", "local_files_only"):  # where the tokenizer was loaded from, not settings
            data.pop(leaked, None)
        data["model_max_length"] = context_length(cfg)

    update_json(folder / "tokenizer_config.json", tokenizer_config)
    if native:
        update_json(folder / "config.json", lambda data: data.update(legacy_rope_keys(cfg)))
    # generate() and pipeline() read this file: without it they decode greedily, and greedy answers of a
    # small model fall into loops. The chat (2-eval.py) and the server sample with these values.
    GenerationConfig(do_sample=True, temperature=CHAT_TEMPERATURE, top_p=CHAT_TOP_P, bos_token_id=cfg.bos_token_id,
                     eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id).save_pretrained(str(folder))


def scoreboard_beside(path: Path, stem: str) -> dict | None:
    """The run's scoreboard of this export, score_{stem}.json beside the checkpoint (where the quickstart's
    `score.py --json` writes it), or None. One that cannot be read is named and left out of the card."""
    board_file = path.parent / f"score_{stem}.json"
    if not board_file.is_file():
        return None
    try:
        return read_json_object(board_file)
    except MiniMindError as error:
        print(f"warning: {error}: the model card goes without a scoreboard")
        return None


def write_adapter(adapter: Path, into: Path, base: Path, tokenizer) -> None:
    """Copy a peft adapter into `into`, its config naming the exported base folder `base` (an absolute
    path, so that AutoPeftModelForCausalLM finds it from anywhere on this machine). The tokenizer goes
    along, as peft and AutoTokenizer look for one beside the adapter."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).exists():
            shutil.copyfile(adapter / name, into / name)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base.resolve())
    (into / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(into))


# ----------------------------------------------------------------------------- writing and checking

def save_folder(model, tokenizer, out: Path, dtype: torch.dtype, native: bool = False, adapter: Path = None,
                card: str = None) -> None:
    """save_pretrained into a temporary sibling, then rename it over `out`: never a half-written folder.
    Only an earlier export (a folder with config.json) is replaced, never an unrelated folder.
    With `adapter`, that peft adapter is written to out/adapter/, naming `out` as its base; `card` is
    written as out/README.md (export/card.py)."""
    if out.exists() and not (out / "config.json").is_file() and (out.is_file() or any(out.iterdir())):
        raise MiniMindError(f"--out {out} exists and is not an exported model folder: choose a new or empty folder")
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)  # the caller's model stays in full precision

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))  # tokenizer.json plus the chat template
        portable_files(tmp, model.config if not native else source_config(model), native)
        if adapter is not None:
            write_adapter(adapter, tmp / "adapter", out, tokenizer)
            portable_files(tmp / "adapter", source_config(model), native=False)
            (tmp / "adapter" / "generation_config.json").unlink()  # generation settings belong to the base
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        share_readable(tmp)  # transformers and peft write their weights 0600

    atomic_write_folder(out, write)


def source_config(model):
    """Our LMConfig behind a native model (to_llama / to_qwen2_moe keep it), else the model's own."""
    return getattr(model, "minimind_config", model.config)


@torch.no_grad()
def logit_difference(reference, loaded, length: int = 128) -> float:
    """Largest |logit difference| between two models on the same random tokens."""
    generator = torch.Generator().manual_seed(0)
    length = min(length, context_length(reference.config))  # long enough for RoPE scaling to matter
    tokens = torch.randint(3, reference.config.vocab_size, (2, length), generator=generator)
    expected = reference.float()(tokens).logits
    return (loaded(tokens).logits - expected).abs().max().item()


def max_logit_difference(reference, folder: Path, remote: bool, length: int = 128) -> float:
    """Load `folder` as transformers would and compare its logits with `reference` on random tokens."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=remote, dtype=torch.float32).eval()
    return logit_difference(reference, loaded, length)


def load_gguf(path: Path, cfg):
    """The GGUF file as transformers reads it (dequantized to float32). transformers' qwen2moe reader
    takes neither the expert widths nor the absence of q/k/v biases from the file, so they are passed."""
    from transformers import AutoModelForCausalLM

    extra = {}
    if cfg.use_moe:
        extra = dict(moe_intermediate_size=cfg.hidden_dim, shared_expert_intermediate_size=shared_expert_width(cfg),
                     qkv_bias=False)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                **extra).eval()


def check(difference: float, what: Path, tolerance: float = 1e-4) -> None:
    verdict = "OK" if difference <= tolerance else "MISMATCH"
    print(f"reloaded with transformers: max |logit difference| {difference:.2e} ({verdict}, tolerance {tolerance:g})")
    if difference > tolerance:
        raise MiniMindError(f"{what}: the exported model does not reproduce the checkpoint's logits")


def export_gguf(args, model, base, adapter, tokenizer, name: str) -> Path:
    """--format gguf: the model (or, with --keep_adapter, the base and a LoRA adapter GGUF beside it)."""
    out = Path(args.out) if args.out else Path(args.out_dir) / "gguf" / f"{name}-{args.outtype}.gguf"
    if out.is_dir():
        raise MiniMindError(f"--out {out} is a folder: with --format gguf it names the .gguf file to write")
    written = write_gguf(base if base is not None else model, tokenizer, out, args.outtype, name=f"MiniMind {name}")
    print(f"exported GGUF ({args.outtype}) to {written}")
    lora = None
    if base is not None:
        lora = write_lora_gguf(adapter, base.config, out.with_name(out.stem + "-lora.gguf"), args.outtype,
                               name=f"MiniMind {name} LoRA")
        print(f"exported the LoRA adapter as GGUF to {lora} (llama.cpp: -m {out.name} --lora {lora.name})")
    modelfile = write_modelfile(written, model.config, lora)
    print(f"wrote {modelfile} (Ollama: ollama create minimind -f {modelfile})")
    if not args.no_verify:
        # The reference holds the weights rounded as the file stores them: a difference can only come
        # from the conversion (names, Q/K order, metadata), not from the precision chosen.
        loaded = load_gguf(written, model.config)
        reference = base if base is not None else model
        check(logit_difference(rounded_like_gguf(reference, args.outtype), loaded), written)
        if base is not None:
            apply_lora_gguf(loaded, out.with_name(out.stem + "-lora.gguf"), base.config)
            check(logit_difference(rounded_like_gguf(model, args.outtype), loaded), lora,
                  tolerance=1e-4 if args.outtype == "f32" else 5e-2)
    return written


def main(argv=None) -> Path:
    args = parse_args(argv)
    args.device, args.dtype = "cpu", "float32"  # export converts weights on the CPU, in full precision
    path, adapter = resolve_checkpoint(args)
    if args.keep_adapter and adapter is None:
        raise MiniMindError("--keep_adapter exports a LoRA adapter beside its base: use it with --weight lora_NAME")
    model, tokenizer = load_from_args(args)  # with a LoRA adapter: merged
    base = None
    if args.keep_adapter:
        base = load_with_flags(path, args, say=lambda _: None)  # ignored flags were named by load_from_args
        if args.format == "native" and base.config.use_moe:
            raise MiniMindError("--keep_adapter with --format native: Qwen2MoeForCausalLM fuses the experts' "
                                "projections, so an adapter on them cannot be applied; use --format remote")
    stem = path.stem if args.ckpt else f"{args.weight}_{model.config.tag()}"
    if args.format == "gguf":
        return export_gguf(args, model, base, adapter, tokenizer, stem)
    source = base if base is not None else model
    if args.format == "native":
        native = to_qwen2_moe(source) if source.config.use_moe else to_llama(source)
        native.minimind_config = source.config
        suffix = "_qwen2_moe" if source.config.use_moe else "_llama"
    else:
        native, suffix = None, ""
    out = Path(args.out) if args.out else Path(args.out_dir) / "hf" / f"{stem}{suffix}"
    dtype = getattr(torch, args.dtype_out)
    card = model_card(stem, source.config, remote=native is None, datasets=source_repositories(),
                      board=scoreboard_beside(path, stem), parameters=describe(source))
    save_folder(native if native is not None else source, tokenizer, out, dtype, native=native is not None,
                adapter=adapter if base is not None else None, card=card)
    kind = type(native).__name__ if native is not None else "MiniMindForCausalLM (trust_remote_code=True)"
    print(f"exported {kind} to {out}/" + (f", the LoRA adapter to {out}/adapter/" if base is not None else ""))
    if not args.no_verify:
        # The reference holds the same rounded weights, so a difference can only come from the export.
        reference = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype).float()
        if base is not None and dtype != torch.float32:  # peft adds the adapter to the rounded base
            reference = merge_lora(copy.deepcopy(base).to(dtype).float(), adapter)
        if base is None:
            check(max_logit_difference(reference, out, remote=native is None), out)
        else:
            from peft import AutoPeftModelForCausalLM
            loaded = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter"), trust_remote_code=native is None,
                                                              dtype=torch.float32).eval()
            check(logit_difference(reference, loaded), out / "adapter")
    return out


if __name__ == "__main__":
    run_main(main)
