"""DPO: the loss formula, response-only log-probs, ln 2 at step 0, held-out margin rises, exact resume."""
import copy
import math

import pytest
import torch
from conftest import BAD, load_script, tiny_config, tiny_moe_config, write_pairs

from data.datasets import DPODataset
from engine.dpo import DPOLoss, dpo_loss, sequence_logps
from model.checkpoint import checkpoint_stage, load_model, save_weights
from model.errors import MiniMindError
from model.lora import LoraSettings, apply_lora
from model.model import IGNORE, MiniMindForCausalLM


@pytest.fixture
def dpo_files(tmp_path):
    base = tmp_path / "full_sft_64x2.pth"
    save_weights(MiniMindForCausalLM(tiny_config()), base)
    return base, write_pairs(tmp_path / "dpo.jsonl", 48, seed=1), write_pairs(tmp_path / "dpo_val.jsonl", 16, seed=2)


def run_dpo(tokenizer_dir, base, train, val, out_dir, *extra):
    load_script("5-dpo_train.py").main([
        "--ckpt", str(base), "--data", str(train), "--val_data", str(val), "--tokenizer", str(tokenizer_dir),
        "--out_dir", str(out_dir), "--batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "1",
        "--eval_batches", "1", "--eval_interval", "0", "--log_interval", "2", "--save_interval", "0",
        "--seq_len", "48", "--device", "cpu", "--dtype", "float32", "--threads", "1", *extra])


def heldout_logp_margin(model, dataset) -> float:
    batch = DPODataset.collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        chosen, _ = sequence_logps(model, batch["chosen_x"], batch["chosen_y"])
        rejected, _ = sequence_logps(model, batch["rejected_x"], batch["rejected_y"])
    return (chosen - rejected).mean().item()


# ----------------------------------------------------------------------------- the pieces


def test_loss_and_rewards_match_hand_computation():
    # trl 1.16 inlines its sigmoid loss in DPOTrainer._compute_loss (no function to call), so the check is
    # against the paper's formula written out with math on plain floats.
    beta = 0.1
    rows = [(-12.0, -15.0, -13.0, -14.0), (-40.5, -20.25, -41.0, -19.0), (-3.0, -3.0, -3.0, -3.0)]
    pc, pr, rc, rr = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    expected = []
    for p_c, p_r, r_c, r_r in rows:
        z = beta * ((p_c - r_c) - (p_r - r_r))
        expected.append(-math.log(1 / (1 + math.exp(-z))))
        assert chosen_rewards[len(expected) - 1].item() == pytest.approx(beta * (p_c - r_c))
        assert rejected_rewards[len(expected) - 1].item() == pytest.approx(beta * (p_r - r_r))
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    assert expected[-1] == pytest.approx(math.log(2))  # policy == reference


def test_sequence_logps_sum_only_response_tokens(dpo_files, tokenizer):
    _, train, _ = dpo_files
    model = MiniMindForCausalLM(tiny_config()).eval()
    dataset = DPODataset(train, tokenizer, seq_len=48, verbose=False)
    batch = DPODataset.collate([dataset[0], dataset[1]])
    x, y = batch["rejected_x"], batch["rejected_y"]
    got, _ = sequence_logps(model, x, y)
    with torch.no_grad():
        log_probs = model(input_ids=x).logits.log_softmax(-1)
    for row in range(2):
        targets = [(i, t) for i, t in enumerate(y[row].tolist()) if t != IGNORE]
        # the targets are exactly the reply: its content and </s>, nothing of the prompt or the padding
        reply = tokenizer.decode([t for _, t in targets[:-1]])
        assert reply in BAD and targets[-1][1] == 2
        expected = sum(log_probs[row, i, t].item() for i, t in targets)
        assert got[row].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind", ["full", "lora", "moe"])
def test_step0_loss_is_ln2(kind, dpo_files, tokenizer):
    _, train, _ = dpo_files
    policy = MiniMindForCausalLM(tiny_moe_config() if kind == "moe" else tiny_config())
    reference = copy.deepcopy(policy)
    if kind == "lora":
        policy, reference = apply_lora(policy, LoraSettings(rank=4)), None
    loss_fn = DPOLoss(reference, beta=0.1)
    batch = DPODataset.collate([DPODataset(train, tokenizer, seq_len=48, verbose=False)[i] for i in range(4)])
    policy.train()  # as in training: LoRA dropout is active, yet B = 0 keeps the policy equal to the reference
    loss, metrics = loss_fn(policy, batch)
    dpo = loss - metrics.get("aux_loss", 0.0)
    assert dpo.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert ("aux_loss" in metrics) == (kind == "moe")
    loss.backward()  # the reference takes no gradient, the policy does
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    if reference is not None:
        assert all(p.grad is None for p in reference.parameters())


# ----------------------------------------------------------------------------- the stage script


def test_heldout_margin_rises(dpo_files, tokenizer_dir, tokenizer, tmp_path, capsys):
    base, train, val = dpo_files
    run_dpo(tokenizer_dir, base, train, val, tmp_path, "--max_steps", "8")
    printed = capsys.readouterr().out
    assert f"DPO loss {math.log(2):.6f}" in printed  # the script's own step-0 check
    held_out = DPODataset(val, tokenizer, seq_len=48, verbose=False)
    before = heldout_logp_margin(load_model(base), held_out)
    after = heldout_logp_margin(load_model(tmp_path / "dpo_64x2.pth"), held_out)
    assert after > before + 1.0, f"held-out chosen-minus-rejected log-prob margin went {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_is_exact(lora, dpo_files, tokenizer_dir, tmp_path):
    base, train, val = dpo_files
    extra = ["--max_steps", "4"] + (["--lora"] if lora else [])
    run_dpo(tokenizer_dir, base, train, val, tmp_path / "straight", *extra)
    run_dpo(tokenizer_dir, base, train, val, tmp_path / "split", *extra, "--stop_step", "2")
    stopped = torch.load(tmp_path / "split" / "dpo_64x2_resume.pth", weights_only=True)["step"]
    run_dpo(tokenizer_dir, base, train, val, tmp_path / "split", *extra, "--resume")
    assert stopped == 2
    a = torch.load(tmp_path / "straight" / "dpo_64x2.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "dpo_64x2.pth", weights_only=True)
    assert a.keys() == b.keys() and not any("lora" in k for k in a)  # with --lora the output is merged
    assert checkpoint_stage(tmp_path / "split" / "dpo_64x2.pth") == "dpo"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    moved = torch.load(base, weights_only=True)
    assert any(not torch.equal(a[k], moved[k]) for k in a)


def test_missing_validation_file_is_a_clear_error(dpo_files, tokenizer_dir, tmp_path):
    base, train, _ = dpo_files
    with pytest.raises(MiniMindError, match="nope.jsonl not found.*--val_data none"):
        run_dpo(tokenizer_dir, base, train, tmp_path / "nope.jsonl", tmp_path, "--max_steps", "1")
