"""Export a trained MiniMind as a transformers folder, in our own architecture or a native one.

    python export_model.py --weight full_sft                    # out/hf/full_sft_512: our code, trust_remote_code
    python export_model.py --weight full_sft --format native     # out/hf/full_sft_512_llama: plain LlamaForCausalLM
    python export_model.py --preset moe --weight full_sft --format native   # out/hf/full_sft_640_moe_qwen2_moe
    python export_model.py --ckpt out/dpo_512.pth --out my_model
    python export_model.py --weight lora_medical                # full_sft with the adapter merged in
    python export_model.py --weight dpo --dtype_out bfloat16     # half the size on disk

Every folder holds config.json, model.safetensors and the tokenizer with its chat template, is
written atomically, and is checked after writing: it is loaded back and its logits are compared with
the checkpoint's, with the weights rounded to --dtype_out the same way (--no_verify skips this).
The conversion runs on the CPU in float32 whatever --device/--dtype say.

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
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import copy
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from model.cli import add_model_args, load_from_args, resolve_checkpoint
from model.generate import context_length


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft", quantize=False)
    parser.add_argument("--format", default="remote", choices=["remote", "native"],
                        help="remote: our classes with trust_remote_code; native: Llama (dense) or Qwen2-MoE (MoE)")
    parser.add_argument("--out", default=None, help="output folder (default out/hf/{weight}_{tag}[_{native class}])")
    parser.add_argument("--dtype_out", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved weights")
    parser.add_argument("--no_verify", action="store_true", help="skip loading the folder back to compare logits")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- native configs and weights

def rope_parameters(cfg) -> tuple[dict, int]:
    """transformers' rope_parameters equivalent to our RoPE settings, and the context they cover."""
    theta, kind, factor = cfg.rope_theta, cfg.rope_scaling_type, cfg.rope_factor
    if kind is None:
        return {"rope_type": "default", "rope_theta": theta}, cfg.max_seq_len
    context = int(cfg.max_seq_len * factor)
    if kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}, context
    if kind == "ntk":  # static NTK: only the base changes
        return {"rope_type": "default", "rope_theta": theta * factor ** (cfg.head_dim / (cfg.head_dim - 2))}, context
    return {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": cfg.max_seq_len,
            "attention_factor": 0.1 * math.log(factor) + 1.0}, context


def shared_fields(cfg) -> dict:
    rope, context = rope_parameters(cfg)
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, hidden_act="silu",
        max_position_embeddings=context, rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
        tie_word_embeddings=True, attention_dropout=0.0, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
    )


def to_llama(model):
    """A LlamaForCausalLM with the same weights (dense models only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    config = LlamaConfig(**shared_fields(cfg), intermediate_size=cfg.hidden_dim, head_dim=cfg.head_dim,
                         attention_bias=False, mlp_bias=False)
    llama = LlamaForCausalLM(config)
    llama.load_state_dict(model.state_dict(), strict=True)  # identical names and shapes
    return llama


def to_qwen2_moe(model):
    """A Qwen2MoeForCausalLM computing the same function (MoE models; see the module docstring)."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = model.config
    config = Qwen2MoeConfig(
        **shared_fields(cfg), intermediate_size=cfg.hidden_dim, moe_intermediate_size=cfg.hidden_dim,
        shared_expert_intermediate_size=cfg.hidden_dim * cfg.n_shared_experts, num_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, norm_topk_prob=cfg.norm_topk_prob and cfg.num_experts_per_tok > 1,
        decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=False, use_sliding_window=False,
        router_aux_loss_coef=cfg.aux_loss_alpha,
    )
    with warnings.catch_warnings():  # without shared experts their (empty) layers warn about zero-size init
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        qwen = Qwen2MoeForCausalLM(config)
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


# ----------------------------------------------------------------------------- writing and checking

def save_folder(model, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """save_pretrained into a temporary sibling, then rename it over `out`: never a half-written folder.
    Only an earlier export (a folder with config.json) is replaced, never an unrelated folder."""
    if out.exists() and not (out / "config.json").is_file() and (out.is_file() or any(out.iterdir())):
        raise SystemExit(f"--out {out} exists and is not an exported model folder: choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        if dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)  # the caller's model stays in full precision
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))  # tokenizer.json plus the chat template
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@torch.no_grad()
def max_logit_difference(reference, folder: Path, remote: bool, length: int = 128) -> float:
    """Load `folder` as transformers would and compare its logits with `reference` on random tokens."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=remote, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    length = min(length, context_length(reference.config))  # long enough for RoPE scaling to matter
    tokens = torch.randint(3, reference.config.vocab_size, (2, length), generator=generator)
    expected = reference.float()(tokens).logits
    return (loaded(tokens).logits - expected).abs().max().item()


def main(argv=None) -> Path:
    args = parse_args(argv)
    args.device, args.dtype = "cpu", "float32"  # export converts weights on the CPU, in full precision
    model, tokenizer = load_from_args(args)
    if args.format == "native":
        native = to_qwen2_moe(model) if model.config.use_moe else to_llama(model)
        suffix = "_qwen2_moe" if model.config.use_moe else "_llama"
    else:
        native, suffix = None, ""
    path, _ = resolve_checkpoint(args)
    name = path.stem if args.ckpt else f"{args.weight}_{model.config.tag()}"
    out = Path(args.out) if args.out else Path(args.out_dir) / "hf" / f"{name}{suffix}"
    dtype = getattr(torch, args.dtype_out)
    save_folder(native if native is not None else model, tokenizer, out, dtype)
    kind = type(native).__name__ if native is not None else "MiniMindForCausalLM (trust_remote_code=True)"
    print(f"exported {kind} to {out}/")
    if not args.no_verify:
        # The reference holds the same rounded weights, so a difference can only come from the export.
        reference = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype).float()
        difference = max_logit_difference(reference, out, remote=native is None)
        tolerance = 1e-4
        verdict = "OK" if difference <= tolerance else "MISMATCH"
        print(f"reloaded with transformers: max |logit difference| {difference:.2e} ({verdict}, tolerance {tolerance:g})")
        if difference > tolerance:
            raise SystemExit(f"{out}: the exported model does not reproduce the checkpoint's logits")
    return out


if __name__ == "__main__":
    main()
