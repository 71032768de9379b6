"""3-full_sft.py: loss only on assistant tokens, end-to-end run from pretrain weights, exact resume, errors."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, qa_conversation, tiny_config, write_jsonl

from data.datasets import MIN_SHARED, SFTDataset, shared_start
from model.checkpoint import save_weights
from model.errors import MiniMindError
from model.model import IGNORE, MiniMindForCausalLM, lm_loss
from tooluse.calculator import CALCULATOR

TINY = ["--seq_len", "48", "--batch_size", "4", "--threads", "1", "--dtype", "float32", "--log_interval", "2",
        "--learning_rate", "3e-3", "--warmup_steps", "1"]


sft = load_script("3-full_sft.py")


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    write_jsonl(folder / "train.jsonl", [qa_conversation(i) for i in range(64)])
    write_jsonl(folder / "val.jsonl", [qa_conversation(i) for i in range(100, 116)])
    torch.manual_seed(0)
    save_weights(MiniMindForCausalLM(tiny_config(max_seq_len=64)), folder / "pretrain_64x2.pth")
    return folder


def args_for(files: Path, tokenizer_dir, out_dir, *extra) -> list[str]:
    return [*TINY, "--data", str(files / "train.jsonl"), "--val_data", str(files / "val.jsonl"),
            "--ckpt", str(files / "pretrain_64x2.pth"), "--tokenizer", str(tokenizer_dir),
            "--out_dir", str(out_dir), *extra]


def test_sft_loss_counts_only_assistant_tokens(sft_files, tokenizer):
    """sft_loss equals the cross-entropy over exactly the assistant positions of a two-turn example, and
    does not move when the logits at every other position change."""
    data = SFTDataset(sft_files / "train.jsonl", tokenizer, seq_len=64, verbose=False)
    x, y = SFTDataset.collate([data[1]])  # qa_conversation(1) has two turns
    model = MiniMindForCausalLM(tiny_config(max_seq_len=64)).eval()
    loss, _ = sft.sft_loss(model, (x, y))
    logits = model(input_ids=x).logits[0]
    targets = (y[0] != IGNORE).nonzero().flatten()
    assert 0 < len(targets) < len(y[0])
    assert loss.item() == pytest.approx(F.cross_entropy(logits[targets], y[0, targets]).item(), rel=1e-5)
    # Positions without a target contribute nothing: scrambling their logits leaves the loss alone.
    scrambled = logits.clone()
    others = (y[0] == IGNORE).nonzero().flatten()
    scrambled[others] = torch.randn_like(scrambled[others]) * 10
    kept = lm_loss(scrambled[None], y)
    assert kept.item() == pytest.approx(loss.item(), rel=1e-5)


def test_sft_loss_runs_a_shared_start_once_with_the_same_loss_and_gradient(sft_files, tokenizer, tmp_path):
    """Rows that all open with the same system turn (tools offered): sft_loss runs that turn once, for one
    row, and the rest of every row after it; the loss and every gradient equal one plain pass's."""
    records = [dict(qa_conversation(i), tools=[CALCULATOR]) for i in range(4)]
    data = SFTDataset(write_jsonl(tmp_path / "tools.jsonl", records), tokenizer, seq_len=400, verbose=False)
    x, y = SFTDataset.collate([data[i] for i in range(4)])
    shared = shared_start(x, y)
    assert MIN_SHARED <= shared < x.shape[1] and (y[:, :shared] == IGNORE).all()
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=512))
    seen = []
    hook = model.model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    loss, _ = sft.sft_loss(model, (x, y))
    hook.remove()
    assert seen == [(1, shared), (4, x.shape[1] - shared)]
    loss.backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = model(input_ids=x, shift_labels=y).loss
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
    for got, want in zip(shared_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_runtime_flags_apply_and_shape_flags_are_named_as_ignored(sft_files, tokenizer_dir, tmp_path, capsys):
    # --dropout changes how the loaded model trains; --dim and --n_heads cannot change trained weights.
    sft.main(args_for(sft_files, tokenizer_dir, tmp_path, "--max_steps", "1", "--eos_check", "0", "--dropout", "0.3",
                      "--dim", "128", "--n_layers", "3", "--n_heads", "4", "--n_kv_heads", "2"))
    ignored = capsys.readouterr().out.split("ignored ")[1].splitlines()[0]
    assert ignored == "--dim 128 (it has 64), --n_layers 3 (it has 2)"  # equal flags are not named
    saved = json.loads((tmp_path / "full_sft_64x2.json").read_text())
    assert saved["dropout"] == 0.3 and saved["dim"] == 64


def test_full_sft_trains_from_pretrain_weights_and_checks_eos(sft_files, tokenizer_dir, tmp_path, capsys):
    sft.main(args_for(sft_files, tokenizer_dir, tmp_path, "--max_steps", "30", "--eval_interval", "10",
                      "--eos_check", "8", "--eos_check_tokens", "24"))
    out = capsys.readouterr().out
    assert f"starting from {sft_files / 'pretrain_64x2.pth'}" in out
    weights = torch.load(tmp_path / "full_sft_64x2.pth", weights_only=True)
    saved = json.loads((tmp_path / "full_sft_64x2.json").read_text())
    assert saved["max_seq_len"] == 64 and saved["stage"] == "full_sft"
    start = torch.load(sft_files / "pretrain_64x2.pth", weights_only=True)
    assert not torch.equal(weights["model.norm.weight"], start["model.norm.weight"])
    val = torch.load(tmp_path / "full_sft_64x2_resume.pth", weights_only=True)["history"]["val"]
    assert [s for s, _ in val] == [0, 10, 20, 30] and val[-1][1] < val[0][1] - 0.5, val
    # The EOS check ran on 8 held-out prompts and reported a rate.
    assert "held-out answers ending with </s> within 24 tokens, of 8:" in out
    assert "sampled as the chat does" in out and "greedy" in out and "reference answers are that short" in out


def test_full_sft_resume_is_bit_exact(sft_files, tokenizer_dir, tmp_path):
    """Padded batches of varying width, stopped mid-epoch and resumed: identical to one run."""
    common = ["--max_steps", "8", "--eval_interval", "0", "--eos_check", "0"]
    sft.main(args_for(sft_files, tokenizer_dir, tmp_path / "whole", *common))
    sft.main(args_for(sft_files, tokenizer_dir, tmp_path / "split", *common, "--stop_step", "3"))
    sft.main(args_for(sft_files, tokenizer_dir, tmp_path / "split", *common, "--resume"))
    whole = torch.load(tmp_path / "whole" / "full_sft_64x2.pth", weights_only=True)
    split = torch.load(tmp_path / "split" / "full_sft_64x2.pth", weights_only=True)
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_missing_pretrain_weights_is_a_clear_error(sft_files, tokenizer_dir, tmp_path):
    flags = args_for(sft_files, tokenizer_dir, tmp_path, "--max_steps", "1")
    flags[flags.index("--ckpt") + 1] = str(tmp_path / "nope.pth")
    with pytest.raises(MiniMindError, match="nope.pth does not exist: run `python 1-pretrain.py"):
        sft.main(flags)


def test_default_start_is_the_pretrain_checkpoint_of_the_preset(sft_files, tokenizer_dir, tmp_path):
    flags = args_for(sft_files, tokenizer_dir, tmp_path, "--preset", "tiny")
    del flags[flags.index("--ckpt"):flags.index("--ckpt") + 2]
    with pytest.raises(MiniMindError, match=r"pretrain_256x4\.pth does not exist"):
        sft.main(flags)
