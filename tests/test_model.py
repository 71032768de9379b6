"""Invariants of the model package: sizes, KV cache == recompute, MoE routing and loss, save/load, generation."""
import math

import pytest
import torch
from conftest import greedy_by_recompute, tiny_config, tiny_moe_config
from transformers import AutoModelForCausalLM

from model.generate import generate, left_pad, sample_next, stream_generate
from model.LMConfig import PRESETS, LMConfig, count_parameters
from model.model import IGNORE, KVCache, MiniMindForCausalLM, lm_loss


def test_small_T_has_the_original_26_88M_parameters():
    model = MiniMindForCausalLM(LMConfig())
    total, active = count_parameters(model)
    assert abs(total / 1e6 - 26.88) < 0.01
    assert total == active
    assert LMConfig().hidden_dim == 1408


def test_moe_preset_counts_total_and_active():
    model = MiniMindForCausalLM(LMConfig.from_preset("moe"))
    total, active = count_parameters(model)
    assert abs(total / 1e6 - 163) < 1.0  # the original README's "166M"
    expert = 3 * 640 * LMConfig.from_preset("moe").hidden_dim
    assert total - active == 8 * 2 * expert  # 2 of 4 routed experts idle per token in each of 8 layers


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_forward_and_backward(preset):
    # Full width, but two layers and a short sequence keep this fast; the width is what differs.
    config = LMConfig.from_preset(preset, n_layers=2)
    model = MiniMindForCausalLM(config)
    x = torch.randint(0, config.vocab_size, (1, 16))
    out = model(x, labels=x)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.model.embed_tokens.weight.grad is not None


@pytest.mark.parametrize("make_config", [tiny_config, tiny_moe_config], ids=["dense", "moe"])
@pytest.mark.parametrize("prompt_len", [1, 37])
def test_kv_cache_matches_full_forward(make_config, prompt_len):
    model = MiniMindForCausalLM(make_config()).eval()
    total = prompt_len + 12
    x = torch.randint(0, 512, (2, total))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(capacity=8)  # small, so the cache has to grow along the way
        steps = [model(x[:, :prompt_len], cache=cache, use_cache=True).logits]
        for i in range(prompt_len, total):
            # every other step under the name transformers 4 and trl pass the cache under
            name = "cache" if i % 2 else "past_key_values"
            out = model(x[:, i:i + 1], use_cache=True, **{name: cache})
            assert out.cache is cache and out.past_key_values is cache
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)
    assert cache.get_seq_length() == total


@pytest.mark.parametrize("make_config", [tiny_config, tiny_moe_config], ids=["dense", "moe"])
def test_greedy_generation_same_with_and_without_cache(make_config):
    model = MiniMindForCausalLM(make_config()).eval()
    prompt = torch.randint(3, 512, (9,)).tolist()
    cached = generate(model, [prompt], max_new_tokens=20, eos_token_id=-1)[0]
    assert cached == greedy_by_recompute(model, prompt, 20)
    # transformers' own generate (with its DynamicCache) drives the same forward
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert hf[0, len(prompt):].tolist() == cached


def test_batched_generation_with_padding_matches_single_prompts():
    model = MiniMindForCausalLM(tiny_config()).eval()
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (3, 11, 6)]
    batched = generate(model, prompts, max_new_tokens=8, eos_token_id=-1)
    for prompt, row in zip(prompts, batched):
        assert generate(model, [prompt], max_new_tokens=8, eos_token_id=-1)[0] == row


def test_generation_stops_per_row_at_eos():
    model = MiniMindForCausalLM(tiny_config()).eval()
    prompt = torch.randint(3, 512, (5,)).tolist()
    free = generate(model, [prompt], max_new_tokens=10, eos_token_id=-1)[0]
    eos = free[3]  # pretend the 4th generated token is EOS
    assert generate(model, [prompt], max_new_tokens=10, eos_token_id=eos)[0] == free[:free.index(eos)]
    assert len(generate(model, [prompt], max_new_tokens=7, eos_token_id=-1)[0]) == 7  # counts new tokens


def test_moe_routes_every_token_to_exactly_top_k_experts():
    config = tiny_moe_config(num_experts_per_tok=2, n_routed_experts=4)
    moe = MiniMindForCausalLM(config).model.layers[0].mlp
    x = torch.randn(3 * 10, config.dim)
    probs, experts, weights = moe.route(x)
    assert experts.shape == (30, 2)
    assert all(len(set(row)) == 2 for row in experts.tolist())
    # the router written out: a linear map to one score per expert, a softmax, the two most probable
    reference = (x @ moe.gate.weight.T).softmax(-1)
    assert torch.allclose(probs, reference, atol=1e-6)
    top = reference.topk(2, dim=-1)
    assert torch.equal(experts, top.indices)
    assert torch.allclose(weights, top.values / top.values.sum(-1, keepdim=True), atol=1e-6)  # renormalised
    assert torch.allclose(weights.sum(-1), torch.ones(30))


def test_moe_forward_equals_explicit_mixture():
    config = tiny_moe_config()
    moe = MiniMindForCausalLM(config).model.layers[0].mlp
    x = torch.randn(2, 5, config.dim)
    out, _ = moe(x)
    flat = x.reshape(-1, config.dim)
    # Routing worked out here, not by moe.route (tested above): softmax scores, top-k, renormalised.
    top = (flat @ moe.gate.weight.T).softmax(-1).topk(config.num_experts_per_tok, dim=-1)
    shares = top.values / top.values.sum(-1, keepdim=True)
    expected = torch.stack([
        sum(w * moe.experts[e](t) for e, w in zip(top.indices[i].tolist(), shares[i])) + moe.shared_experts[0](t)
        for i, t in enumerate(flat)
    ])
    assert torch.allclose(out.reshape(-1, config.dim), expected, atol=1e-5)


def test_moe_aux_loss_is_in_the_loss_and_trains_the_gate():
    model = MiniMindForCausalLM(tiny_moe_config(aux_loss_alpha=0.1))
    x = torch.randint(0, 512, (2, 16))
    out = model(x, labels=x)
    assert out.aux_loss > 0
    plain = MiniMindForCausalLM(tiny_moe_config(aux_loss_alpha=0.0))
    plain.load_state_dict(model.state_dict())
    out_plain = plain(x, labels=x)
    assert torch.allclose(out.loss - out_plain.loss, out.aux_loss, atol=1e-5)
    # the balance loss alone sends gradient into every router
    out.aux_loss.backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad.abs().sum() > 0


def test_moe_expert_with_no_tokens_still_gets_a_zero_gradient():
    """DDP needs a gradient for every parameter in every step, even for an expert no token chose."""
    model = MiniMindForCausalLM(tiny_moe_config(n_routed_experts=4, num_experts_per_tok=1))
    moe = model.model.layers[0].mlp
    with torch.no_grad():
        # Scores w.x and -w.x for experts 0 and 1, 0 for 2 and 3: one of the first two always scores
        # highest, so experts 2 and 3 never get a token, whatever the hidden states are.
        moe.gate.weight.zero_()
        moe.gate.weight[0] = 1.0
        moe.gate.weight[1] = -1.0
    called = set()
    for i, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda module, args, output, i=i: called.add(i))
    x = torch.randint(0, 512, (1, 8))
    model(x, labels=x).loss.backward()
    assert called and called <= {0, 1}  # the premise: 2 and 3 stayed idle
    for idle in (2, 3):
        for p in moe.experts[idle].parameters():
            assert p.grad is not None and torch.all(p.grad == 0)
    assert any(p.grad.abs().sum() > 0 for i in called for p in moe.experts[i].parameters())


def test_moe_runs_in_bf16():
    model = MiniMindForCausalLM(tiny_moe_config()).to(torch.bfloat16)
    x = torch.randint(0, 512, (2, 8))
    out = model(x, labels=x)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_casting_to_bf16_keeps_rope_frequencies_fp32():
    """A bf16 model must turn positions into the same angles as the fp32 model it came from."""
    model = MiniMindForCausalLM(tiny_config())
    fp32 = model.model.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.inv_freq.dtype == torch.float32 and torch.equal(model.model.inv_freq, fp32)


def test_lm_loss_is_the_mean_negative_log_likelihood_of_the_targets():
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[3, IGNORE, 0, 6, IGNORE], [IGNORE, IGNORE, 2, 2, 1]])
    scored = [(b, t) for b in range(2) for t in range(5) if targets[b, t] != IGNORE]
    nll = [-logits[b, t].log_softmax(-1)[targets[b, t]] for b, t in scored]
    assert torch.allclose(lm_loss(logits, targets), torch.stack(nll).mean())
    assert torch.allclose(lm_loss(logits, targets, reduction="sum"), torch.stack(nll).sum())
    per_position = lm_loss(logits, targets, reduction="none")
    assert per_position.shape == targets.shape and bool((per_position[targets == IGNORE] == 0).all())


def test_labels_and_shift_labels_give_the_same_loss():
    model = MiniMindForCausalLM(tiny_config())
    x = torch.randint(0, 512, (2, 12))
    y = x.clone()
    y[:, :4] = IGNORE
    hf_style = model(x, labels=y).loss
    aligned = torch.full_like(y, IGNORE)
    aligned[:, :-1] = y[:, 1:]
    assert torch.allclose(hf_style, model(x, shift_labels=aligned).loss)
    assert torch.allclose(hf_style, lm_loss(model(x).logits, aligned), atol=1e-6)  # a dense model: no balance loss


def test_left_pad_right_aligns_prompts_of_different_lengths():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sdpa_and_plain_attention_agree():
    fast = MiniMindForCausalLM(tiny_config()).eval()
    plain = MiniMindForCausalLM(tiny_config(flash_attn=False)).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randint(0, 512, (2, 20))
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    with torch.no_grad():
        assert torch.allclose(fast(x).logits, plain(x).logits, atol=1e-5)
        assert torch.allclose(fast(x, attention_mask=mask).logits, plain(x, attention_mask=mask).logits, atol=1e-5)


def test_save_pretrained_round_trip_through_auto_class(tmp_path):
    for config in (tiny_config(), tiny_moe_config()):
        model = MiniMindForCausalLM(config).eval()
        model.save_pretrained(tmp_path / config.tag())
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / config.tag(), trust_remote_code=True).eval()
        x = torch.randint(0, 512, (2, 10))
        with torch.no_grad():
            assert torch.equal(model(x).logits, loaded(x).logits)


@pytest.mark.parametrize("scaling", [None, "linear", "ntk", "yarn"])
def test_forward_past_max_seq_len(scaling):
    config = tiny_config(max_seq_len=32, rope_scaling_type=scaling, rope_factor=2.0)
    model = MiniMindForCausalLM(config).eval()
    x = torch.randint(0, 512, (1, 64))
    with torch.no_grad():
        logits = model(x).logits
    assert logits.shape == (1, 64, 512) and torch.isfinite(logits).all()


def test_generation_past_the_context_slides_the_window():
    model = MiniMindForCausalLM(tiny_config(max_seq_len=16)).eval()
    out = generate(model, [[5, 6, 7]], max_new_tokens=50, eos_token_id=-1)[0]
    assert len(out) == 50


def test_yarn_leaves_high_frequencies_and_stretches_low_ones():
    from model.model import rope_inverse_frequencies
    base, _ = rope_inverse_frequencies(tiny_config())
    yarn, scale = rope_inverse_frequencies(tiny_config(rope_scaling_type="yarn", rope_factor=4.0))
    assert torch.isclose(yarn[0], base[0])  # fastest rotation untouched
    assert torch.isclose(yarn[-1], base[-1] / 4)  # slowest interpolated
    assert scale == pytest.approx(0.1 * math.log(4) + 1)


def test_repetition_penalty_lowers_seen_tokens_of_either_sign():
    """A seen token's logit is divided by the penalty when positive and multiplied by it when negative, so
    it falls either way; unseen tokens keep theirs. Each case puts a seen token (0) against an unseen one
    (1) with the margins worked out by hand, so greedy picks show where the penalised logit landed."""
    seen = torch.tensor([[True, False, False]])
    # positive: 2.0 / 1.5 = 1.33 still beats 1.0; 2.0 / 3 = 0.67 does not
    positive = torch.tensor([[2.0, 1.0, -5.0]])
    assert sample_next(positive, seen, repetition_penalty=1.5).item() == 0
    assert sample_next(positive, seen, repetition_penalty=3.0).item() == 1
    # negative: -1.0 * 1.2 = -1.2 still beats -1.5; -1.0 * 2 = -2.0 does not (dividing, as for a positive
    # logit, would raise it to -0.5 and so favour the repeat)
    negative = torch.tensor([[-1.0, -1.5, -5.0]])
    assert sample_next(negative, seen, repetition_penalty=1.2).item() == 0
    assert sample_next(negative, seen, repetition_penalty=2.0).item() == 1
    # each row by its own seen tokens; the caller's logits are left as they were
    rows = torch.tensor([[2.0, 1.0, -5.0], [2.0, 1.0, -5.0]])
    assert sample_next(rows, torch.tensor([[True, False, False], [False, True, False]]),
                       repetition_penalty=3.0).tolist() == [1, 0]
    assert torch.equal(rows, torch.tensor([[2.0, 1.0, -5.0], [2.0, 1.0, -5.0]]))
    # sampling sees the penalised logits too: top_k=1 keeps only the best of them
    assert sample_next(negative, seen, temperature=1.0, top_k=1, repetition_penalty=2.0).item() == 1


def test_top_k_and_top_p_restrict_sampling():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, seen, temperature=1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {0, 1}
    picks = {sample_next(logits, seen, temperature=1.0, top_p=0.5, generator=g).item() for _ in range(50)}
    assert picks == {0}


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence, whatever the input: for testing the text side of streaming."""

    def __init__(self, script, vocab_size):
        super().__init__()
        self.script, self.config = script, tiny_config(vocab_size=vocab_size, max_seq_len=4096)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.step = 0

    def forward(self, input_ids, cache=None, **kwargs):
        empty = torch.zeros(input_ids.shape[0], 1, input_ids.shape[1], 1)
        cache.update(empty, empty, 0)
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -1e9)
        logits[:, :, self.script[min(self.step, len(self.script) - 1)]] = 0
        self.step += 1
        return type("Out", (), {"logits": logits})


def byte_tokens(tokenizer, text):
    """One token per UTF-8 byte, so Chinese characters span several tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    pieces = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    return tokenizer.convert_tokens_to_ids(list(pieces))


def test_streaming_yields_whole_characters_and_matches_full_decode(tokenizer):
    text = "今天天气很好，我们去公园。"
    script = byte_tokens(tokenizer, text) + [tokenizer.eos_token_id]
    stream = stream_generate(ScriptedModel(script, len(tokenizer)), tokenizer, [1], max_new_tokens=100)
    deltas = list(stream)
    assert "".join(deltas) == text == stream.text
    assert all("\ufffd" not in d for d in deltas)
    assert len(deltas) > 5  # streamed, not one blob
    assert stream.finish_reason == "stop" and stream.completion_tokens == len(script) - 1


def test_streaming_stop_string_is_cut_and_never_shown(tokenizer):
    text = "你好。用户：再见"
    script = byte_tokens(tokenizer, text)
    stream = stream_generate(ScriptedModel(script, len(tokenizer)), tokenizer, [1], max_new_tokens=100, stop=["用户："])
    deltas = list(stream)
    assert "".join(deltas) == "你好。" and stream.finish_reason == "stop"
    stream = stream_generate(ScriptedModel(script, len(tokenizer)), tokenizer, [1], max_new_tokens=4)
    list(stream)
    assert stream.finish_reason == "length" and stream.completion_tokens == 4


def test_a_config_written_with_the_old_scoring_func_field_still_loads(tmp_path):
    import json

    from model.checkpoint import config_path, load_model, save_weights, weights_path

    model = MiniMindForCausalLM(tiny_moe_config())
    path = weights_path(tmp_path, "full_sft", model.config)
    save_weights(model, path)
    fields = json.loads(config_path(path).read_text())
    assert "scoring_func" not in fields
    config_path(path).write_text(json.dumps({**fields, "scoring_func": "softmax"}))
    loaded = load_model(path)
    assert not hasattr(loaded.config, "scoring_func")
    tokens = torch.randint(0, model.config.vocab_size, (1, 8))
    assert torch.equal(loaded(tokens).logits, model.eval()(tokens).logits)
