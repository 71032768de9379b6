"""GRPO (engine/grpo.py, 6-grpo.py): advantages, the loss against trl's GRPOTrainer on the same rollouts, the
mask that keeps tool results out of the gradient, the KL, the reward, and the stage run end to end and resumed
bit-exactly."""
import copy
import json

import pytest
import torch
from conftest import load_script, tiny_config

from engine import grpo
from engine.grpo import (
    fits,
    group_advantages,
    group_batch,
    grpo_loss,
    reward,
    reward_parts,
    token_logps,
)
from model.checkpoint import checkpoint_stage, read_state_dict, save_weights
from model.model import IGNORE, MiniMindForCausalLM
from tooluse.agent import Rollout
from tooluse.problems import HELD_OUT_FAMILIES, Problem


def fake_rollouts(vocab: int, groups: int, group_size: int, seed: int) -> list:
    """Rollouts of random tokens shaped like the tool loop's, in groups sharing a prompt: a sampled call, a
    tool turn the loop wrote (learn False), a sampled answer; prompts and replies of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()
    rollouts = []
    for k in range(groups):
        prompt = ids(4 + 3 * k)
        for i in range(group_size):
            call, tool, answer = 2 + i % 3, 3 + (i + k) % 2, 1 + (2 * i + k) % 5
            r = Rollout(list(prompt), ids=ids(call) + ids(tool) + ids(answer))
            r.learn = [True] * call + [False] * tool + [True] * answer
            rollouts.append(r)
    return rollouts


def fake_batch(model, groups: int, group_size: int, seed: int):
    """fake_rollouts in `model`'s vocabulary, and the batch engine/grpo.group_batch makes of them."""
    rollouts = fake_rollouts(model.config.vocab_size, groups, group_size, seed)
    return rollouts, group_batch(rollouts, group_size)


def logps_no_grad(model, batch, group_size: int):
    """`model`'s log-prob of every token of `batch` (engine/grpo.token_logps), without a gradient."""
    with torch.no_grad():
        return token_logps(model, batch, group_size)[0]


@pytest.fixture
def models():
    torch.manual_seed(0)
    reference = MiniMindForCausalLM(tiny_config()).double().eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # some way from the reference, so the KL is not 0
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy, reference


# ----------------------------------------------------------------------------- advantages and rewards


def test_group_advantages_known_values_and_zero_spread():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [1.2, 0.2, 1.2, 0.2]])
    a = group_advantages(rewards)
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert torch.allclose(a[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # every reply scored the same: nothing to learn, exactly
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    assert torch.allclose(a[2], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4))
    assert torch.allclose(group_advantages(rewards, "none")[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.allclose(group_advantages(rewards, "batch")[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) /
                          (rewards.std() + 1e-4))
    assert torch.equal(group_advantages(rewards, "none")[1], torch.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3, 1))


def answered(final: str, tool: str | None = None, ended: bool = True) -> Rollout:
    r = Rollout([1, 2, 3], ended=ended)
    if tool is not None:
        r.messages += [{"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "3*2"}}}]},
            {"role": "tool", "content": tool}]
        r.calls = 1
    r.messages.append({"role": "assistant", "content": final})
    return r


def test_reward_on_hand_made_rollouts():
    p = Problem("shopping_total", "one_step", "3个苹果每个2元，一共多少钱？", "2*3", 6.0, "元", "一共需要6元。")
    assert reward(answered("一共需要6元。", tool="6"), p) == pytest.approx(1.2)   # right, called, ended
    assert reward(answered("一共需要6元。"), p) == pytest.approx(1.1)             # right without the tool
    assert reward(answered("一共需要7元。", tool="6"), p) == pytest.approx(0.2)   # wrong: only the format
    assert reward(answered("一共需要6元。", tool="错误：除数为零"), p) == pytest.approx(1.1)  # a call that failed
    assert reward(answered("一共需要6", ended=False), p) == pytest.approx(1.0)   # ran out of tokens
    loop = "苹果苹果苹果苹果苹果苹果苹果苹果"
    parts = reward_parts(answered(loop), p)
    assert parts["repetition"] > 0.8 and reward(answered(loop), p) == pytest.approx(0.1 - 0.1 * parts["repetition"])
    assert grpo.repetition("一共需要6元。") == 0.0 and grpo.repetition("") == 0.0


# ----------------------------------------------------------------------------- log-probs and the mask


def test_shared_prompt_logps_are_each_rollouts_own_and_only_where_it_sampled(models):
    """Scored in groups, the prompt run once per group: the same log-probs as a whole pass over each rollout."""
    policy, _ = models
    rollouts, batch = fake_batch(policy, 3, 4, seed=1)
    batched = logps_no_grad(policy, batch, 4)
    for b, r in enumerate(rollouts):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([r.prompt_ids + r.ids])).logits[0].float().log_softmax(-1)
        start = len(r.prompt_ids) - 1  # the position that predicts ids[0]
        for j, (token, keep) in enumerate(zip(r.ids, r.learn)):
            assert batch["y"][b, j] == (token if keep else IGNORE)
            expected = logits[start + j, token].item() if keep else 0.0
            assert batched[b, j].item() == pytest.approx(expected, abs=1e-5)
        assert (batch["y"][b] != IGNORE).sum() == sum(r.learn)  # nothing else: not the padding
    with pytest.raises(ValueError):  # a "group" whose rollouts answer different prompts
        group_batch(rollouts[2:6], 4)


def test_tool_tokens_get_no_gradient(models):
    """Token by token: the loss's gradient reaches exactly the tokens the model sampled (learn True)."""
    policy, reference = models
    rollouts, batch = fake_batch(policy, 2, 2, seed=2)
    logps, _ = token_logps(policy, batch, 2)
    logps.retain_grad()
    ref = logps_no_grad(reference, batch, 2)
    mask = batch["y"] != IGNORE
    loss, _ = grpo_loss(logps, logps.detach(), ref, torch.tensor([1.0, -1.0, 0.5, -0.5]), mask)
    loss.backward()
    for b, r in enumerate(rollouts):
        grads = logps.grad[b, :len(r.ids)]
        assert all((g != 0) == keep for g, keep in zip(grads.tolist(), r.learn)), (grads, r.learn)
    assert logps.grad[~mask].abs().max() == 0  # nor the padding


def test_gradient_raises_positive_advantage_tokens():
    logp = torch.full((2, 3), -2.0, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), mask, beta=0.04)
    loss.backward()
    # at ratio 1: d loss / d logp = -A / (learned tokens), so a descent step raises logp where A > 0
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]) / 5)


def test_kl_is_zero_for_the_reference_itself_and_positive_otherwise(models):
    policy, reference = models
    _, batch = fake_batch(policy, 2, 2, seed=3)
    ref = logps_no_grad(reference, batch, 2)
    same = logps_no_grad(copy.deepcopy(reference), batch, 2)
    moved = logps_no_grad(policy, batch, 2)
    advantages, mask = torch.zeros(4), batch["y"] != IGNORE
    assert grpo_loss(same, same, ref, advantages, mask)[1]["kl"].item() == 0.0
    loss, stats = grpo_loss(moved, moved, ref, advantages, mask, beta=1.0)
    assert stats["kl"].item() > 0 and loss.item() == pytest.approx(stats["kl"].item())
    per_token = torch.exp(ref - moved) - (ref - moved) - 1
    assert per_token.min() >= 0  # k3 is never negative

    # The KL term's gradient at ratio 1 is log(pi / pi_ref) per token: the gradient of KL(pi || pi_ref)
    logp = moved.clone().requires_grad_(True)
    grpo_loss(logp, moved, ref, advantages, mask, beta=1.0)[0].backward()
    assert torch.allclose(logp.grad, (moved - ref) * mask / mask.sum(), atol=1e-7)


def test_fits_tells_a_cut_rollout():
    r = Rollout(list(range(10)), ids=[1] * 8, learn=[True] * 3 + [False] * 2 + [True] * 3)
    assert fits(r, context=18, budget=15)   # the last turn started at 15
    assert not fits(r, context=18, budget=14)  # its prompt was cut to 14
    assert not fits(r, context=17, budget=15)  # the window slid


# ----------------------------------------------------------------------------- against trl


def trl_inputs(rollouts, old, ref, advantages, pad_id: int) -> dict:
    """Our rollouts in GRPOTrainer's layout: prompts left-padded, completions (the tool turns inside them)
    right-padded, tool_mask 0 on the tokens the loop wrote. Per-token tensors are laid out as ours already."""
    rows, width_p, width_c = len(rollouts), max(len(r.prompt_ids) for r in rollouts), max(len(r.ids) for r in rollouts)
    inputs = {k: torch.zeros(rows, w, dtype=torch.long) for k, w in (("prompt_ids", width_p), ("prompt_mask", width_p),
              ("completion_ids", width_c), ("completion_mask", width_c), ("tool_mask", width_c))}
    inputs["prompt_ids"].fill_(pad_id)
    inputs["completion_ids"].fill_(pad_id)
    for b, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.ids)
        inputs["prompt_ids"][b, width_p - p:] = torch.tensor(r.prompt_ids)
        inputs["prompt_mask"][b, width_p - p:] = 1
        inputs["completion_ids"][b, :c] = torch.tensor(r.ids)
        inputs["completion_mask"][b, :c] = 1
        inputs["tool_mask"][b, :c] = torch.tensor(r.learn, dtype=torch.long)
    mask = inputs["completion_mask"] * inputs["tool_mask"]
    return inputs | {"advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
                     "num_items_in_batch": mask.sum()}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # transformers' own
@pytest.mark.parametrize("kind", ["grpo", "cispo"])
def test_our_loss_equals_trls_on_the_same_rollouts(models, tokenizer, tmp_path, kind):
    """trl 1.x computes its loss inside GRPOTrainer._compute_loss, from its own forward pass over each prompt
    and completion whole (where ours runs each group's prompt once: model/model.SharedPrompts); so the test builds a real GRPOTrainer on the native export of our policy (a plain
    LlamaForCausalLM, as `export_model.py --format native` writes) and hands it our rollouts, with the same
    old and reference log-probs. loss_type "dapo" is trl's name for our normalisation (every learned token of
    the batch weighs the same), "cispo" for CISPO. The old log-probs are moved off the policy's, so that the
    ratio leaves the clip band both ways and the clip (or CISPO's cap) is tested, not only ratio 1."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    policy, reference = models
    native = tmp_path / "native"
    load_script("export_model.py").to_llama(policy).double().save_pretrained(native)
    beta, eps, cap = 0.04, 0.2, 1.1
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, epsilon=eps, loss_type="dapo" if kind == "grpo"
                          else "cispo", epsilon_high=cap if kind == "cispo" else None, num_generations=4,
                          per_device_train_batch_size=4, use_bias_correction_kl=True, report_to="none",
                          use_cpu=True, bf16=False,
                          model_init_kwargs={"dtype": torch.float64})
    trainer = trl.GRPOTrainer(model=str(native), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=datasets.Dataset.from_list([{"prompt": "你好"}] * 4),
                              processing_class=tokenizer)
    trainer.model.eval()  # trl's eval mode: no gradient-accumulation scaling of the loss

    rollouts, batch = fake_batch(policy, 2, 4, seed=4)
    mask = batch["y"] != IGNORE
    logps, _ = token_logps(policy, batch, 4)
    ref = logps_no_grad(reference, batch, 4)
    g = torch.Generator().manual_seed(5)
    old = (logps.detach() + 0.3 * torch.randn(logps.shape, generator=g, dtype=logps.dtype)) * mask
    advantages = torch.randn(len(rollouts), generator=g, dtype=torch.float64)
    ours, stats = grpo_loss(logps, old, ref, advantages, mask, clip_eps=eps, beta=beta, kind=kind, cispo_max=cap)
    assert stats["clipped"].item() > 0  # the clip is active on some tokens

    theirs = trainer._compute_loss(trainer.model, trl_inputs(rollouts, old, ref, advantages, tokenizer.pad_token_id))
    assert theirs.item() == pytest.approx(ours.item(), abs=1e-6)
    assert trainer._metrics["eval"]["kl"][-1] == pytest.approx(stats["kl"].item(), abs=1e-6)
    ours.backward()
    theirs.backward()
    their_grads = dict(trainer.model.named_parameters())
    for name, p in policy.named_parameters():
        assert torch.allclose(p.grad, their_grads[name].grad, rtol=1e-4, atol=1e-6), name


# ----------------------------------------------------------------------------- the stage


@pytest.fixture
def sft_ckpt(tmp_path, tokenizer):
    path = tmp_path / "full_sft_64x2.pth"
    save_weights(MiniMindForCausalLM(tiny_config(vocab_size=len(tokenizer), max_seq_len=1024)), path, stage="full_sft")
    return path


@pytest.fixture
def varied_reward(monkeypatch):
    """A random tiny model earns the same real reward on every reply (0: wrong, no call, no end), so every
    advantage would be 0 and the weights would never move; this reward varies with the sampled tokens."""
    monkeypatch.setattr(grpo, "reward", lambda rollout, problem: float(sum(rollout.ids) % 3))


def run_grpo(tokenizer_dir, ckpt, out_dir, *extra):
    load_script("6-grpo.py").main([
        "--ckpt", str(ckpt), "--tokenizer", str(tokenizer_dir), "--out_dir", str(out_dir),
        "--prompts_per_step", "2", "--group_size", "3", "--max_new_tokens", "6", "--max_calls", "1",
        "--batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "1", "--eval_problems", "2",
        "--eval_interval", "2", "--log_interval", "1", "--save_interval", "0", "--device", "cpu",
        "--dtype", "float32", "--threads", "1", *extra])


def test_stage_runs_end_to_end_and_logs_its_metrics(tokenizer_dir, sft_ckpt, tmp_path):
    out = tmp_path / "out"
    run_grpo(tokenizer_dir, sft_ckpt, out, "--max_steps", "2")
    assert checkpoint_stage(out / "grpo_64x2.pth") == "grpo"
    for suffix in ("_resume.pth", "_loss.png", "_reward.png", "_args.json"):
        assert (out / f"grpo_64x2{suffix}").exists(), suffix
    records = [json.loads(line) for line in (out / "grpo_64x2_metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("reward", "reward_std", "kl", "accuracy", "reply_tokens", "zero_spread", "called", "ended", "lr"):
        assert all(key in r for r in train), key
    assert [r["step"] for r in records if "val_accuracy" in r] == [0, 2]  # the baseline, then every 2 steps
    settings = json.loads((out / "grpo_64x2_args.json").read_text())
    assert settings["group_size"] == 3 and "config" not in settings  # --config reads it back


def test_resume_is_bit_exact(tokenizer_dir, sft_ckpt, tmp_path, varied_reward):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_grpo(tokenizer_dir, sft_ckpt, straight, "--max_steps", "4")
    run_grpo(tokenizer_dir, sft_ckpt, split, "--max_steps", "4", "--stop_step", "2")
    run_grpo(tokenizer_dir, sft_ckpt, split, "--max_steps", "4", "--resume")
    a, b = read_state_dict(straight / "grpo_64x2.pth"), read_state_dict(split / "grpo_64x2.pth")
    start = read_state_dict(sft_ckpt)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    assert all(torch.equal(a[k], b[k]) for k in a)
    rewards = lambda out: [(r["step"], r["reward"], r["kl"]) for r in map(json.loads, (
        out / "grpo_64x2_metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert rewards(straight) == rewards(split) and len(rewards(straight)) == 4


def test_config_file_and_refused_flags(tokenizer_dir, sft_ckpt, tmp_path):
    grpo_script = load_script("6-grpo.py")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"group_size": 4, "beta": 0.1, "loss": "cispo"}))
    args = grpo_script.parse_args(["--config", str(config), "--beta", "0.2"])
    assert (args.group_size, args.beta, args.loss) == (4, 0.2, "cispo")  # the command line wins
    from model.errors import MiniMindError
    for bad in (["--epochs", "2"], ["--group_size", "1"], ["--max_steps", "0"], ["--kinds", "two_step,four"]):
        with pytest.raises(MiniMindError):
            grpo_script.parse_args(bad)


def test_each_step_and_process_gets_its_own_problems():
    script = load_script("6-grpo.py")
    whole = script.problems_for_step(1, 0, 4, 1, 0)
    split = script.problems_for_step(1, 0, 2, 2, 0) + script.problems_for_step(1, 0, 2, 2, 1)
    assert [p.question for p in split] == [p.question for p in whole]  # the same step, whatever the processes
    later = script.problems_for_step(1, 1, 4, 1, 0)
    assert not {p.question for p in later} & {p.question for p in whole}  # a new step, new problems
    assert not {p.family for p in whole + later} & HELD_OUT_FAMILIES  # training families only
    multi = script.problems_for_step(1, 0, 4, 1, 0, script.kinds_to_draw("two_step,three_step"))
    assert len(multi) == 4 and {p.kind for p in multi} <= {"two_step", "three_step"}
