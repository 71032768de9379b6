"""MiniMind as GGUF, the single-file format of llama.cpp (and of Ollama, LM Studio, llama-cpp-python).

    write_gguf(model, tokenizer, "out/gguf/full_sft_512x8-q8_0.gguf", outtype="q8_0")
    write_lora_gguf(peft_adapter_dir, model.config, "out/gguf/lora_identity_512x8-f16.gguf", outtype="f16")

export_model.py --format gguf calls these, and write_modelfile for Ollama. What goes into the file, and why:

Architecture  a dense model is llama.cpp's `llama`: the same pre-norm blocks, bias-free grouped-query
              attention, SwiGLU and RMSNorm. The tied LM head is simply left out (llama.cpp then reads
              the output through token_embd). A MoE model is `qwen2moe` (see moe_support_problem for
              the settings llama.cpp reproduces, and moe_tensors for how the shared experts map).
Q and K       llama.cpp's `llama` rotates the pairs (2i, 2i+1) of each head, while MiniMind (like HF
              Llama) rotates (i, i + head_dim/2). Reordering the output rows of q_proj and k_proj
              inside each head turns one convention into the other, so the attention scores are
              unchanged. `qwen2moe` rotates (i, i + head_dim/2) like us and needs no reordering.
Tokenizer     our byte-level BPE is llama.cpp's `gpt2` tokenizer model with the `gpt-2` pre-tokenizer
              (the ByteLevel split is the GPT-2 regular expression). Tokens are written in id order in
              their byte-level spelling, with the merges; <unk>, <s>, </s> are control tokens. The
              added tokens that are not special, <tool_call> and </tool_call> (the last two ids), are
              user-defined tokens: llama.cpp then matches them as whole tokens in any input text and
              keeps them in the text it outputs, where control tokens would be dropped and a tool-call
              parser would never see them. No BOS is added on encode (the chat template writes its
              own <s>), and </s> ends a turn.
Metadata      context length (times the RoPE factor when scaling is set), RoPE base and scaling, head
              counts, norm eps, the chat template as the tokenizer has it (with the tools, the
              assistant's <tool_call> blocks and the tool turns) and the chat's sampling defaults.
Outtypes      f32; f16 and q8_0 for the matrices (norm gains stay f32, as llama.cpp keeps them).
              q8_0 needs rows of a multiple of 32 values; a matrix that has not stays f16.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import atomic_write
from model.errors import MiniMindError
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, context_length
from model.tokenizer import OLLAMA_TEMPLATE

OUTTYPES = ("f32", "f16", "q8_0")
# The llama.cpp gate weight that stands in for our unweighted shared experts (see moe_tensors).
SHARED_GATE_WEIGHT = 2.0 ** -24


# ----------------------------------------------------------------------------- what llama.cpp can run

def moe_support_problem(cfg) -> str | None:
    """Why llama.cpp cannot reproduce this MoE config, or None when it can.

    llama.cpp's qwen2moe weighs each token's top-k experts by their softmax probabilities over all
    routed experts and never renormalises them. MiniMind renormalises when norm_topk_prob is set and
    more than one expert is chosen, so only norm_topk_prob=False, or top-1 routing, compute the same."""
    if cfg.norm_topk_prob and cfg.num_experts_per_tok > 1:
        return (f"this MoE model renormalises its top-{cfg.num_experts_per_tok} expert weights (norm_topk_prob=True), "
                f"which llama.cpp's qwen2moe never does, so a GGUF would compute a different model. llama.cpp "
                f"reproduces MiniMind MoE models trained with --norm_topk_prob false or --num_experts_per_tok 1. "
                f"Export this one with --format native (Qwen2MoeForCausalLM) or --format remote instead")
    return None


# ----------------------------------------------------------------------------- tensors

def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a q/k projection (or of a LoRA B matrix feeding them) so that, within
    each head, the rows j and j + head_dim/2 become neighbours 2j and 2j+1."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def uninterleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleave_rope_rows."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensor_type(array: np.ndarray, outtype: str):
    """The GGML type a float32 array is stored as under `outtype`."""
    from gguf import GGMLQuantizationType as T

    if outtype == "f32" or array.ndim == 1:
        return T.F32
    if outtype == "q8_0" and array.shape[-1] % 32 == 0:
        return T.Q8_0
    return T.F16


def encode(array: np.ndarray, qtype) -> np.ndarray:
    from gguf import quants

    return quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def round_trip(tensor: torch.Tensor, outtype: str) -> torch.Tensor:
    """`tensor` as it reads back from a GGUF of this outtype: what llama.cpp computes with."""
    from gguf import quants

    array = tensor.detach().float().cpu().numpy()
    qtype = gguf_tensor_type(array, outtype)
    back = quants.dequantize(encode(array, qtype), qtype).reshape(array.shape)
    return torch.from_numpy(np.array(back, dtype=np.float32)).to(tensor.dtype)


def rounded_like_gguf(model, outtype: str):
    """A copy of `model` whose weights are rounded exactly as a GGUF of this outtype stores them, so that
    comparing its logits with the file's isolates the conversion from the rounding."""
    import copy

    rounded = copy.deepcopy(model).float()
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            parameter.copy_(round_trip(parameter, outtype))
    return rounded


def attention_tensors(state: dict, i: int, q_heads: int = 0, kv_heads: int = 0):
    """(GGUF name, tensor) of layer i's two norms and attention projections. With head counts, the Q and K
    rows are reordered for the `llama` architecture's interleaved RoPE (interleave_rope_rows)."""
    p = f"model.layers.{i}."
    q, k = state[p + "self_attn.q_proj.weight"], state[p + "self_attn.k_proj.weight"]
    yield f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"]
    yield f"blk.{i}.attn_q.weight", interleave_rope_rows(q, q_heads) if q_heads else q
    yield f"blk.{i}.attn_k.weight", interleave_rope_rows(k, kv_heads) if kv_heads else k
    yield f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"]
    yield f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"]
    yield f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"]


def dense_tensors(model):
    """(GGUF name, float32 tensor) of a dense model, in llama.cpp's `llama` layout."""
    cfg = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        yield from attention_tensors(state, i, cfg.n_heads, cfg.n_kv_heads)
        yield f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]


def shared_expert_width(cfg) -> int:
    """Hidden width of the one qwen2moe shared expert: all of ours side by side, or 32 zero units."""
    return cfg.hidden_dim * cfg.n_shared_experts if cfg.n_shared_experts else 32


def moe_tensors(model):
    """(GGUF name, float32 tensor) of a MoE model, in llama.cpp's `qwen2moe` layout.

    qwen2moe gates its one shared expert by sigmoid(w . x); ours are added unweighted. A gate of
    exactly zero would make the factor 1/2 everywhere, but llama.cpp turns an all-zero gate into NaN,
    so w holds 2^-24 in its first entry (exact in f16 and f32) and zeros elsewhere: w . x is then
    below 1e-6 for any normalised activation, sigmoid of it is 1/2 to float32 precision, and the
    shared expert's down projection is doubled to undo the 1/2. Several shared experts become one
    of their combined width; without shared experts the file holds a small one of zeros. llama.cpp needs its own output matrix here, so the tied head is written
    out as `output.weight`."""
    cfg = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        yield from attention_tensors(state, i)  # qwen2moe rotates halves, as we do: no reordering
        moe = layer.mlp
        yield f"blk.{i}.ffn_gate_inp.weight", state[p + "mlp.gate.weight"]
        for part, short in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
            stacked = torch.stack([getattr(e, part).weight.detach().float() for e in moe.experts])
            yield f"blk.{i}.ffn_{short}_exps.weight", stacked
        gate = torch.zeros(cfg.dim)
        gate[0] = SHARED_GATE_WEIGHT
        yield f"blk.{i}.ffn_gate_inp_shexp.weight", gate
        shared = list(moe.shared_experts)
        if shared:
            cat = lambda part, dim: torch.cat([getattr(e, part).weight.detach().float() for e in shared], dim)
            gate_proj, up_proj, down_proj = cat("gate_proj", 0), cat("up_proj", 0), 2 * cat("down_proj", 1)
        else:  # qwen2moe always has a shared expert: one that outputs zero
            width = shared_expert_width(cfg)
            gate_proj, up_proj, down_proj = torch.zeros(width, cfg.dim), torch.zeros(width, cfg.dim), torch.zeros(cfg.dim, width)
        yield f"blk.{i}.ffn_gate_shexp.weight", gate_proj
        yield f"blk.{i}.ffn_up_shexp.weight", up_proj
        yield f"blk.{i}.ffn_down_shexp.weight", down_proj
    yield "output_norm.weight", state["model.norm.weight"]
    yield "output.weight", state["model.embed_tokens.weight"]


# ----------------------------------------------------------------------------- tokenizer

def tokenizer_fields(tokenizer, vocab_size: int) -> dict:
    """tokens, token types and merges for llama.cpp's gpt2 tokenizer model, checked to be our kind of BPE."""
    from gguf import TokenType

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = data["model"], data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") \
            or not pre.get("use_regex", True) or data.get("normalizer"):
        raise MiniMindError("GGUF export handles byte-level BPE tokenizers (ByteLevel pre-tokenizer with the GPT-2 "
                         "split, no prefix space, no normalizer), as train_tokenizer.py makes; this tokenizer "
                         "is another kind")
    tokens = {index: token for token, index in model["vocab"].items()}
    kinds = {index: TokenType.NORMAL for index in tokens}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        # special (<unk>, <s>, </s>): CONTROL; added but not special (<tool_call>, </tool_call>): USER_DEFINED
        kinds[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    if max(tokens) >= vocab_size:
        raise MiniMindError(f"the tokenizer has ids up to {max(tokens)}, the model only {vocab_size} embeddings")
    # The model may have more embedding rows than the tokenizer has tokens; llama.cpp wants one token
    # per row, so the spare rows get placeholder tokens that no text encodes to.
    names = [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [int(kinds.get(i, TokenType.UNUSED)) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": names, "types": types, "merges": merges}


# ----------------------------------------------------------------------------- the file

def file_type(outtype: str) -> int:
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
            "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]


def add_rope(writer, cfg) -> None:
    from gguf import RopeScalingType

    kind, factor, theta = cfg.rope_scaling_type, cfg.rope_factor, cfg.rope_theta
    if kind == "ntk":  # a static NTK stretch is just a larger base
        theta = theta * factor ** (cfg.head_dim / (cfg.head_dim - 2))
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(cfg.head_dim)
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(RopeScalingType.LINEAR if kind == "linear" else RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(cfg.max_seq_len)
        if kind == "yarn":  # our ramp: beta_fast 32, beta_slow 1, attention scale 0.1 ln(factor) + 1
            writer.add_rope_scaling_yarn_beta_fast(32.0)
            writer.add_rope_scaling_yarn_beta_slow(1.0)


def write_file(writer_fill, path: Path, arch: str) -> Path:
    """Create a GGUFWriter for `arch`, let `writer_fill` add metadata and tensors, and write it to a
    temporary sibling that then replaces `path`: never a half-written file. Readable by everyone."""
    import gguf

    def write(tmp):
        writer = gguf.GGUFWriter(tmp, arch)
        writer_fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)
    share_readable(path)
    return path


def add_tensors(writer, named, outtype: str) -> None:
    for name, tensor in named:
        array = tensor.numpy().astype(np.float32)
        qtype = gguf_tensor_type(array, outtype)
        data = encode(array, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)


def write_gguf(model, tokenizer, path, outtype: str = "f32", name: str = "MiniMind") -> Path:
    """Write `model` (float weights) and `tokenizer` as one GGUF file; returns its path."""
    import gguf  # optional: only the GGUF export needs it

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    cfg = model.config
    if cfg.use_moe and (problem := moe_support_problem(cfg)):
        raise MiniMindError(f"GGUF export refused: {problem}")
    arch = "qwen2moe" if cfg.use_moe else "llama"
    vocab = tokenizer_fields(tokenizer, cfg.vocab_size)

    def fill(w):
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        w.add_file_type(file_type(outtype))
        if outtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(context_length(cfg))
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        add_rope(w, cfg)
        if cfg.use_moe:
            w.add_expert_count(cfg.n_routed_experts)
            w.add_expert_used_count(cfg.num_experts_per_tok)
            w.add_expert_feed_forward_length(cfg.hidden_dim)
            w.add_expert_shared_feed_forward_length(shared_expert_width(cfg))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        w.add_bos_token_id(cfg.bos_token_id)
        w.add_eos_token_id(cfg.eos_token_id)
        w.add_unk_token_id(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else cfg.pad_token_id)
        w.add_pad_token_id(cfg.pad_token_id)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        if tokenizer.chat_template:
            w.add_chat_template(tokenizer.chat_template)
        w.add_sampling_temp(CHAT_TEMPERATURE)
        w.add_sampling_top_p(CHAT_TOP_P)
        add_tensors(w, moe_tensors(model) if cfg.use_moe else dense_tensors(model), outtype)

    return write_file(fill, Path(path), arch)


# ----------------------------------------------------------------------------- LoRA adapters

# Our module names -> llama.cpp's, for the layers a LoRA adapter may target in a dense model.
LORA_TARGET_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def lora_tensors(adapter_dir, cfg):
    """(GGUF name, float32 tensor) of a peft LoRA adapter on a dense model, in llama.cpp's adapter layout:
    blk.N.attn_q.weight.lora_a (rank x in) and .lora_b (out x rank). B feeds the output rows, so for
    q and k it gets the same reordering as the base weights; A is left as it is."""
    import re

    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    pattern = re.compile(r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight")
    for key in sorted(state):
        match = pattern.fullmatch(key)
        if not match or match.group(2) not in LORA_TARGET_NAMES:
            raise MiniMindError(f"{adapter_dir}: adapter tensor {key} has no llama.cpp equivalent")
        layer, module, which = match.groups()
        tensor = state[key].float()
        target = LORA_TARGET_NAMES[module]
        if which == "B" and target in ("attn_q", "attn_k"):
            tensor = interleave_rope_rows(tensor, cfg.n_heads if target == "attn_q" else cfg.n_kv_heads)
        yield f"blk.{layer}.{target}.weight.lora_{which.lower()}", tensor


def write_lora_gguf(adapter_dir, cfg, path, outtype: str = "f32", name: str = "MiniMind LoRA") -> Path:
    """Write a peft LoRA adapter trained on a dense MiniMind as a llama.cpp LoRA adapter GGUF
    (`llama-cli -m base.gguf --lora adapter.gguf`). Its scale is lora_alpha / r, as peft's."""
    import gguf

    if cfg.use_moe:
        raise MiniMindError("GGUF LoRA adapters are written for dense models only")
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("use_rslora") \
            or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise MiniMindError(f"{adapter_dir}: only plain LoRA adapters (one rank and alpha, no DoRA or rsLoRA) map "
                         f"onto llama.cpp's adapters")
    named = list(lora_tensors(adapter_dir, cfg))

    def fill(w):
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        # A and B are tiny: kept in f16 at most, since q8_0 would need the rank to be a multiple of 32.
        add_tensors(w, named, "f32" if outtype == "f32" else "f16")

    return write_file(fill, Path(path), "llama")


def apply_lora_gguf(llama, path, cfg) -> None:
    """Fold a LoRA adapter GGUF into a LlamaForCausalLM loaded from the base GGUF, as llama.cpp applies
    it: W += (alpha / r) B A, with B's rows put back into the HF order for q and k. It reads the file
    by its own names, so it checks the names, shapes, order and alpha that write_lora_gguf wrote."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    tensors = {}
    for t in reader.tensors:
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(*reversed(t.shape.tolist()))
    by_target = {short: module for module, short in LORA_TARGET_NAMES.items()}
    with torch.no_grad():
        for name, a in tensors.items():
            if not name.endswith(".lora_a"):
                continue
            prefix = name.removesuffix(".lora_a")  # blk.N.attn_q.weight
            b = tensors[prefix + ".lora_b"]
            _, layer, target, _ = prefix.split(".")
            if target in ("attn_q", "attn_k"):
                b = uninterleave_rope_rows(b, cfg.n_heads if target == "attn_q" else cfg.n_kv_heads)
            module = llama.get_submodule(f"model.layers.{layer}.{by_target[target]}")
            module.weight += (alpha / a.shape[0]) * (b @ a)


# ----------------------------------------------------------------------------- Ollama


def write_modelfile(gguf: Path, cfg, adapter: Path | None = None) -> Path:
    """An Ollama Modelfile beside `gguf` (`ollama create NAME -f FILE`). Ollama renders prompts with its own
    template language, not the Jinja template inside the GGUF, so the chat template is written again, tools
    and tool calls included (OLLAMA_TEMPLATE in model/tokenizer.py; Ollama finds the model's calls by the
    `<tool_call>` tag that template writes them with); `</s>` ends a turn, and the sampling defaults are the
    chat's."""
    lines = [f"FROM ./{gguf.name}"]
    if adapter is not None:
        lines.append(f"ADAPTER ./{adapter.name}")
    lines += [f'TEMPLATE """{OLLAMA_TEMPLATE}"""', 'PARAMETER stop "</s>"',
              f"PARAMETER temperature {CHAT_TEMPERATURE}", f"PARAMETER top_p {CHAT_TOP_P}",
              f"PARAMETER num_ctx {context_length(cfg)}"]
    path = gguf.with_suffix(".Modelfile")
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    share_readable(path)
    return path


# ----------------------------------------------------------------------------- sharing

def share_readable(path) -> None:
    """Let everyone read an exported file or folder: 0644 files, 0755 folders (transformers and peft
    write their weights 0600)."""
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o644)
        return
    os.chmod(path, 0o755)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
