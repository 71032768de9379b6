"""model/quantize.py: the int8 copy stays close to fp32, keeps the KV cache invariant, leaves the original alone."""
import argparse

import pytest
import torch
import torch.nn as nn
from conftest import greedy_by_recompute, tiny_config, tiny_moe_config
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

from model.checkpoint import save_weights
from model.cli import add_model_args, load_from_args
from model.errors import MiniMindError
from model.generate import generate
from model.model import MiniMindForCausalLM
from model.quantize import quantize_int8


@pytest.fixture(scope="module", params=[tiny_config, tiny_moe_config], ids=["dense", "moe"])
def trained(request):
    """A tiny model that has memorised one 64-token sequence over 16 symbols, and that sequence.

    Random weights make a poor test: with tied embeddings their greedy output repeats the last
    token whatever the weights are. Over 16 symbols the next token depends on more than the
    current one, so reproducing the sequence needs the attention over earlier tokens."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(request.param())
    seq = torch.randint(3, 19, (1, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):  # loss 6.2 -> ~0.02 (dense) / ~0.04 (MoE)
        model(seq, labels=seq).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), seq


def relative_error(approx, exact) -> float:
    return float((approx - exact).norm() / exact.norm())


def test_int8_logits_stay_close_to_fp32_and_greedy_decoding_agrees(trained):
    model, seq = trained
    int8 = quantize_int8(model)
    with torch.no_grad():
        exact, approx = model(seq).logits, int8(seq).logits
    # Measured: 0.021 (dense) and 0.014 (MoE); the trained tiny checkpoint of the quickstart 0.009-0.015.
    assert relative_error(approx, exact) < 0.05
    prompt, rest = seq[0, :9].tolist(), seq[0, 9:49].tolist()
    assert generate(model, [prompt], max_new_tokens=40, eos_token_id=-1)[0] == rest  # it did memorise it
    assert generate(int8, [prompt], max_new_tokens=40, eos_token_id=-1)[0] == rest


def test_int8_greedy_generation_same_with_and_without_cache(trained):
    model, seq = trained
    int8 = quantize_int8(model)
    prompt = seq[0, :9].tolist()
    cached = generate(int8, [prompt], max_new_tokens=40, eos_token_id=-1)[0]
    assert cached == greedy_by_recompute(int8, prompt, 40)
    assert len(set(cached)) > 8  # a real sequence, not one token repeated


@pytest.mark.parametrize("make_config", [tiny_config, tiny_moe_config], ids=["dense", "moe"])
def test_quantizing_leaves_the_original_model_untouched(make_config):
    model = MiniMindForCausalLM(make_config())  # in training mode, as built
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randint(3, 512, (1, 12))
    with torch.no_grad():
        logits = model(x).logits
    quantize_int8(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.training
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(x).logits, logits)


def test_every_linear_but_the_router_is_int8_and_the_embedding_stays_fp32():
    model = MiniMindForCausalLM(tiny_moe_config())
    int8 = quantize_int8(model)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    routers = {name for name in linears if name.endswith(".mlp.gate")}
    assert len(routers) == model.config.n_layers
    assert {name for name, m in int8.named_modules() if isinstance(m, Int8Linear)} == linears - routers
    assert {name for name, m in int8.named_modules() if type(m) is nn.Linear} == routers
    assert not int8.training
    embedding = int8.model.embed_tokens.weight
    assert embedding.dtype == torch.float32 and torch.equal(embedding, model.model.embed_tokens.weight)
    # The int8 lm_head is the tied matrix rounded row by row: within half a step of each row's scale.
    head = int8.lm_head.weight()
    scales = head.q_per_channel_scales().float()[:, None]
    assert ((head.dequantize() - embedding).abs() <= scales / 2 + 1e-7).all()


def test_a_bfloat16_model_gives_an_fp32_int8_copy():
    model = MiniMindForCausalLM(tiny_config()).to(torch.bfloat16)
    int8 = quantize_int8(model)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert int8(torch.tensor([[1, 40, 41]])).logits.dtype == torch.float32


def test_a_model_off_the_cpu_is_refused():
    with pytest.raises(ValueError, match="CPU model.*meta"):
        quantize_int8(MiniMindForCausalLM(tiny_config()).to("meta"))


def test_load_from_args_quantize_int8(tmp_path, tokenizer_dir):
    saved = MiniMindForCausalLM(tiny_config()).eval()
    save_weights(saved, tmp_path / "full_sft_64x2.pth")
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    argv = ["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2", "--out_dir", str(tmp_path),
            "--tokenizer", str(tokenizer_dir)]

    plain, _ = load_from_args(parser.parse_args(argv), verbose=False)
    assert type(plain.lm_head) is nn.Linear
    int8, _ = load_from_args(parser.parse_args(argv + ["--quantize", "int8"]), verbose=False)
    assert isinstance(int8.lm_head, Int8Linear) and isinstance(int8.model.layers[0].mlp.down_proj, Int8Linear)
    x = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert relative_error(int8(x).logits, saved(x).logits) < 0.05
    with pytest.raises(MiniMindError, match="--quantize int8 runs on the CPU from float32"):
        load_from_args(parser.parse_args(argv + ["--quantize", "int8", "--dtype", "bfloat16"]), verbose=False)
    # A script that needs the float weights (export) leaves the flag out, and still loads.
    without = argparse.ArgumentParser()
    add_model_args(without, quantize=False)
    with pytest.raises(SystemExit):
        without.parse_args(argv + ["--quantize", "int8"])
    assert type(load_from_args(without.parse_args(argv), verbose=False)[0].lm_head) is nn.Linear
