"""export_model.py --format gguf: the file transformers reads back (gguf_file=...) reproduces our logits.

transformers dequantizes the file and undoes llama.cpp's Q/K row order on load, so these round trips
check the tensor names, the Q/K reordering, the metadata (heads, eps, RoPE base, context) and the
tokenizer without a llama.cpp build. The llama.cpp test at the end runs where llama-cpp-python is
installed.
"""
import copy
import importlib
import json
import os
import stat

import pytest
import torch
from conftest import export_gguf, modelfile_fields, random_tokens, tiny_config, tiny_moe_config

from model.checkpoint import save_weights
from model.errors import MiniMindError
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, generate
from model.model import MiniMindForCausalLM
from model.tokenizer import TOOL_TOKENS

gguf = pytest.importorskip("gguf")
export_model = importlib.import_module("export_model")
gguf_export = importlib.import_module("export.gguf")


def checkpoint(tmp_path, config, name="full_sft", router_std=None, scale=None):
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        if scale:  # larger weights than the init's: logits that differ clearly between tokens
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, scale)
        if router_std:  # a sharper router, so that top-k choices and weights differ clearly between tokens
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0.0, router_std)
    path = tmp_path / f"{name}_{config.tag()}.pth"
    save_weights(model, path)
    return model, path


def read_fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("outtype,tolerance", [("f32", 1e-4), ("f16", 1e-2), ("q8_0", 2e-1)])
def test_gguf_reloads_in_transformers_with_our_logits(tmp_path, tokenizer_dir, outtype, tolerance):
    from transformers import LlamaForCausalLM

    model, path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    out = export_gguf(path, tokenizer_dir, tmp_path / f"m-{outtype}.gguf", "--outtype", outtype)  # verifies too
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644, "the file must be readable by others"
    loaded = export_model.load_gguf(out, model.config)
    assert isinstance(loaded, LlamaForCausalLM)
    x = random_tokens(model.config, 48)
    with torch.no_grad():
        ours, theirs = model(x).logits, loaded(x).logits
        # Against the same weights rounded as the file stores them: only the conversion can differ.
        exact = gguf_export.rounded_like_gguf(model, outtype)(x).logits
    assert (theirs - exact).abs().max() < 1e-4
    assert (theirs - ours).abs().max() < tolerance
    if outtype != "f32":  # the rounding is real, so the exact comparison above is not trivially true
        assert (theirs - ours).abs().max() > 1e-6
    # and the same greedy continuation
    prompt = [1, 40, 41, 42, 43]
    expected = generate(model, [prompt], max_new_tokens=10)[0]
    got = loaded.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert got[:len(expected)] == expected and expected


def test_gguf_holds_llama_metadata_tokenizer_and_reordered_q_k(tmp_path, tokenizer_dir, tokenizer):
    model, path = checkpoint(tmp_path, tiny_config())
    out = export_gguf(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    fields, tensors = read_fields(out)
    cfg = model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == cfg.n_layers and fields["llama.embedding_length"] == cfg.dim
    assert fields["llama.attention.head_count"] == cfg.n_heads
    assert fields["llama.attention.head_count_kv"] == cfg.n_kv_heads
    assert fields["llama.feed_forward_length"] == cfg.hidden_dim
    assert fields["llama.context_length"] == cfg.max_seq_len
    assert fields["llama.rope.freq_base"] == cfg.rope_theta
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["general.sampling.temp"] == pytest.approx(CHAT_TEMPERATURE)
    assert fields["general.sampling.top_p"] == pytest.approx(CHAT_TOP_P)
    token_list = fields["tokenizer.ggml.tokens"]
    assert len(token_list) == cfg.vocab_size
    types = fields["tokenizer.ggml.token_type"]
    assert token_list[:3] == ["<unk>", "<s>", "</s>"] and types[:4] == [3, 3, 3, 1]  # CONTROL x3, NORMAL
    # The tool-call tokens are added, not special: USER_DEFINED (4), which llama.cpp matches as whole tokens
    # in any input and keeps in its output text (CONTROL tokens it would drop from the text).
    tool_ids = tokenizer.convert_tokens_to_ids(TOOL_TOKENS)
    assert tool_ids == [cfg.vocab_size - 2, cfg.vocab_size - 1]
    assert [token_list[i] for i in tool_ids] == TOOL_TOKENS and [types[i] for i in tool_ids] == [4, 4]
    assert "<tool_call>" in fields["tokenizer.chat_template"] and "tools" in fields["tokenizer.chat_template"]
    assert token_list[tokenizer.convert_tokens_to_ids("Ġ")] == "Ġ"
    assert len(fields["tokenizer.ggml.merges"]) > 100 and " " in fields["tokenizer.ggml.merges"][0]
    assert "output.weight" not in tensors, "the tied head is read through token_embd"

    # q rows within a head: (j, j + head_dim/2) become neighbours (2j, 2j + 1); v is untouched
    q = torch.from_numpy(tensors["blk.0.attn_q.weight"].data.copy()).reshape(cfg.dim, cfg.dim)
    ours = model.model.layers[0].self_attn.q_proj.weight.detach()
    half = cfg.head_dim // 2
    assert torch.equal(q[0], ours[0]) and torch.equal(q[1], ours[half]) and torch.equal(q[3], ours[half + 1])
    assert torch.equal(q[cfg.head_dim + 1], ours[cfg.head_dim + half])
    v = torch.from_numpy(tensors["blk.0.attn_v.weight"].data.copy()).reshape(-1, cfg.dim)
    assert torch.equal(v, model.model.layers[0].self_attn.v_proj.weight.detach())
    back = gguf_export.uninterleave_rope_rows(q, cfg.n_heads)
    assert torch.equal(back, ours)


def test_gguf_tokenizer_and_chat_template_load_in_transformers(tmp_path, tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    _, path = checkpoint(tmp_path, tiny_config())
    out = export_gguf(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "q8_0", "--no_verify")
    theirs = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    text = "今天天气很好，我们一起去公园散步吧。The quick brown fox 1234567890 ,.!? \n\n  spaces"
    assert theirs.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ours
    assert theirs.encode(rendered, add_special_tokens=False) == tokenizer.encode(ours)
    assert theirs.encode(rendered, add_special_tokens=False)[0] == 1, "<s> in the template is the BOS token"

    # with tools: the same prompt, the same ids, and each call tag one token (the vocabulary's last two)
    from tooluse.calculator import CALCULATOR

    messages = [{"role": "user", "content": "3个苹果每个2元，一共多少钱？"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "3*2"}}}]},
                {"role": "tool", "content": "6"}]
    ours = tokenizer.apply_chat_template(messages, tools=[CALCULATOR], tokenize=False, add_generation_prompt=True)
    rendered = theirs.apply_chat_template(messages, tools=[CALCULATOR], tokenize=False, add_generation_prompt=True)
    assert rendered == ours and "<tool_call>" in ours
    assert theirs.encode(rendered, add_special_tokens=False) == tokenizer.encode(ours)
    tool_ids = tokenizer.convert_tokens_to_ids(TOOL_TOKENS)
    assert [theirs.encode(tag, add_special_tokens=False) for tag in TOOL_TOKENS] == [[i] for i in tool_ids]
    block = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*2"}}\n</tool_call>'
    ids = theirs.encode(block, add_special_tokens=False)
    assert ids == tokenizer.encode(block) and [ids[0], ids[-1]] == tool_ids
    assert theirs.decode(ids, skip_special_tokens=True) == block, "decoding keeps the call tags"


def test_gguf_pads_a_short_tokenizer_to_the_embedding_rows(tmp_path, tokenizer_dir):
    model, path = checkpoint(tmp_path, tiny_config(vocab_size=544))  # 32 rows more than the 512 tokens
    out = export_gguf(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32")
    fields, _ = read_fields(out)
    assert len(fields["tokenizer.ggml.tokens"]) == 544
    assert fields["tokenizer.ggml.tokens"][540] == "[PAD540]" and fields["tokenizer.ggml.token_type"][540] == 5


@pytest.mark.parametrize("rope", ["ntk", "linear", "yarn"])
def test_gguf_records_rope_scaling(tmp_path, tokenizer_dir, rope):
    model, path = checkpoint(tmp_path, tiny_config(max_seq_len=32, rope_scaling_type=rope, rope_factor=2.0))
    out = export_gguf(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    fields, _ = read_fields(out)
    assert fields["llama.context_length"] == 64
    if rope == "ntk":  # only the base changes, which transformers reads: compare past the trained context
        assert "llama.rope.scaling.type" not in fields
        assert fields["llama.rope.freq_base"] == pytest.approx(1e4 * 2.0 ** (16 / 14), rel=1e-6)
        loaded = export_model.load_gguf(out, model.config)
        x = random_tokens(model.config, 64)
        with torch.no_grad():
            assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4
    else:
        assert fields["llama.rope.scaling.type"] == rope
        assert fields["llama.rope.scaling.factor"] == 2.0
        assert fields["llama.rope.scaling.original_context_length"] == 32


@pytest.mark.parametrize("shared,top_k,norm", [(1, 2, False), (2, 1, True), (0, 2, False)])
def test_moe_gguf_is_qwen2moe_with_our_logits(tmp_path, tokenizer_dir, shared, top_k, norm):
    from transformers import Qwen2MoeForCausalLM

    config = tiny_moe_config(n_shared_experts=shared, num_experts_per_tok=top_k, norm_topk_prob=norm)
    model, path = checkpoint(tmp_path, config, router_std=1.0)
    out = export_gguf(path, tokenizer_dir, tmp_path / "moe.gguf", "--outtype", "f32")
    fields, tensors = read_fields(out)
    assert fields["general.architecture"] == "qwen2moe"
    assert "output.weight" in tensors, "llama.cpp's qwen2moe needs its own output matrix"
    gate = tensors["blk.0.ffn_gate_inp_shexp.weight"].data
    assert gate.any(), "an all-zero shared-expert gate is NaN in llama.cpp"
    loaded = export_model.load_gguf(out, model.config)
    assert isinstance(loaded, Qwen2MoeForCausalLM)
    x = random_tokens(config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_moe_gguf_refused_where_llama_cpp_computes_another_model(tmp_path, tokenizer_dir):
    _, path = checkpoint(tmp_path, tiny_moe_config(num_experts_per_tok=2, norm_topk_prob=True))
    out = tmp_path / "moe.gguf"
    with pytest.raises(MiniMindError, match="norm_topk_prob.*--format native"):
        export_gguf(path, tokenizer_dir, out)
    assert not out.exists() and not list(tmp_path.glob(".moe.gguf*"))


def test_lora_exports_as_base_gguf_plus_adapter_gguf(tmp_path, tokenizer_dir):
    from model.lora import LoraSettings, apply_lora, save_adapter

    base, base_path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    peft_model = apply_lora(copy.deepcopy(base), LoraSettings(rank=4, alpha=8.0))  # wraps its argument in place
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # a trained adapter: B is zero only at the start
    save_adapter(peft_model, tmp_path / "lora_demo_64x2", base_path=base_path)
    merged = peft_model.merge_and_unload().eval()

    argv = ["--weight", "lora_demo", "--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
            "--out_dir", str(tmp_path), "--tokenizer", str(tokenizer_dir), "--format", "gguf", "--outtype", "f32",
            "--keep_adapter", "--out", str(tmp_path / "g" / "demo.gguf")]
    out = export_model.main(argv)  # verifies base and base + adapter through transformers
    adapter = out.with_name("demo-lora.gguf")
    assert modelfile_fields(out.with_suffix(".Modelfile"))[1][:2] == ["FROM ./demo.gguf", "ADAPTER ./demo-lora.gguf"]
    fields, tensors = read_fields(adapter)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0
    assert "blk.1.attn_q.weight.lora_a" in tensors and "blk.1.ffn_down.weight.lora_b" in tensors
    loaded = export_model.load_gguf(out, base.config)
    x = random_tokens(base.config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - base(x).logits).abs().max() < 1e-4  # the base file holds the base only
        gguf_export.apply_lora_gguf(loaded, adapter, base.config)
        difference = (loaded(x).logits - merged(x).logits).abs().max()
        assert difference < 1e-4
        assert (merged(x).logits - base(x).logits).abs().max() > 1e-2, "the adapter must change the model"


def test_llama_cpp_agrees_when_installed(tmp_path, tokenizer_dir):
    """Against llama.cpp itself, through llama-cpp-python when it is installed (it is not in CI)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    model, path = checkpoint(tmp_path, tiny_config(), scale=0.1)
    out = export_gguf(path, tokenizer_dir, tmp_path / "m.gguf", "--outtype", "f32", "--no_verify")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    prompt = [1, 40, 41, 42, 43, 44, 45]
    llm.eval(prompt)
    theirs = torch.from_numpy(np.array(llm.scores[:len(prompt)], dtype=np.float32))
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0]
    assert (theirs - ours).abs().max() < 1e-3
    assert json.loads(json.dumps(llm.metadata)).get("tokenizer.ggml.pre") == "gpt-2"
    # llama.cpp's own tokenizer: each call tag is one token even without special-token parsing, and
    # detokenizing keeps it (both hold for USER_DEFINED tokens, neither for CONTROL ones)
    tool_ids = [model.config.vocab_size - 2, model.config.vocab_size - 1]
    block = b'<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*2"}}\n</tool_call>'
    ids = llm.tokenize(block, add_bos=False, special=False)
    assert [ids[0], ids[-1]] == tool_ids and llm.tokenize(b"<tool_call>", add_bos=False, special=False) == tool_ids[:1]
    assert llm.detokenize(ids) == block
