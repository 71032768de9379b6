"""1-pretrain.py end to end on tiny token shards: outputs, loss below the unigram entropy, exact resume
after a SIGKILL, clear errors for mismatched data."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, write_pretrain_shards

from model.checkpoint import load_model
from model.errors import MiniMindError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--vocab_size", "512", "--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
        "--max_seq_len", "32", "--batch_size", "8", "--threads", "1", "--dtype", "float32", "--log_interval", "5"]


pretrain = load_script("1-pretrain.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer, tokenizer_dir):
    folder = tmp_path_factory.mktemp("pretrain")
    train_tokens = write_pretrain_shards(folder, tokenizer, tokenizer_dir)
    return folder, train_tokens


def args_for(shards_dir, tokenizer_dir, out_dir, *extra) -> list[str]:
    return [*TINY, "--data_dir", str(shards_dir), "--tokenizer", str(tokenizer_dir), "--out_dir", str(out_dir), *extra]


def unigram_entropy(tokens: np.ndarray) -> float:
    """Cross-entropy (nats/token) of the best model that ignores context: the corpus's token frequencies."""
    counts = np.bincount(tokens).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_pretrain_writes_weights_and_beats_the_unigram_entropy(shards, tokenizer_dir, tmp_path, capsys):
    folder, train_tokens = shards
    pretrain.main(args_for(folder, tokenizer_dir, tmp_path, "--max_steps", "40", "--learning_rate", "3e-3",
                           "--eval_interval", "20", "--eval_batches", "4"))
    out = capsys.readouterr().out
    weights = torch.load(tmp_path / "pretrain_64x2.pth", weights_only=True)  # a plain state dict
    assert "model.embed_tokens.weight" in weights
    saved = json.loads((tmp_path / "pretrain_64x2.json").read_text())
    assert saved["dim"] == 64 and saved["stage"] == "pretrain"
    assert (tmp_path / "pretrain_64x2_loss.png").exists() and (tmp_path / "pretrain_64x2_resume.pth").exists()
    assert load_model(tmp_path / "pretrain_64x2.pth").config.n_layers == 2

    val = torch.load(tmp_path / "pretrain_64x2_resume.pth", weights_only=True)["history"]["val"]
    entropy = unigram_entropy(train_tokens)
    assert [s for s, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] and val[-1][1] < entropy - 0.5, (val, entropy)
    assert f"validation loss {val[-1][1]:.4f}" in out


def test_train_tokens_sets_the_number_of_steps(shards, tokenizer_dir, tmp_path, capsys):
    folder, _ = shards
    pretrain.main(args_for(folder, tokenizer_dir, tmp_path, "--train_tokens", "600", "--eval_interval", "0"))
    # 600 tokens / (8 rows x 32 tokens) per step -> 3 steps
    assert "pretrain_64x2: 3 steps" in capsys.readouterr().out


def test_sigkill_mid_run_then_resume_is_bit_exact(shards, tokenizer_dir, tmp_path):
    folder, _ = shards
    steps = ["--max_steps", "24", "--eval_interval", "12", "--eval_batches", "2"]
    pretrain.main(args_for(folder, tokenizer_dir, tmp_path / "whole", *steps))
    reference = torch.load(tmp_path / "whole" / "pretrain_64x2.pth", weights_only=True)

    killed = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "1-pretrain.py"), *args_for(folder, tokenizer_dir, killed, *steps),
               "--save_interval", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    resume_file = killed / "pretrain_64x2_resume.pth"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if resume_file.exists() and torch.load(resume_file, weights_only=True)["step"] >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        returncode = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert returncode == -signal.SIGKILL, \
        f"the run was not killed mid-way (exit {returncode}): {proc.stderr.read()[-2000:]}"
    stopped_at = torch.load(resume_file, weights_only=True)["step"]
    assert 3 <= stopped_at < 24

    pretrain.main(args_for(folder, tokenizer_dir, killed, *steps, "--resume"))
    resumed = torch.load(killed / "pretrain_64x2.pth", weights_only=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_vocabulary_mismatch_is_a_clear_error(shards, tokenizer_dir, tmp_path):
    folder, _ = shards
    flags = args_for(folder, tokenizer_dir, tmp_path, "--max_steps", "1")
    flags[flags.index("--vocab_size") + 1] = "256"
    with pytest.raises(MiniMindError, match="512-token vocabulary, but the model has vocab_size 256"):
        pretrain.main(flags)


def test_seq_len_longer_than_the_model_is_a_clear_error(shards, tokenizer_dir, tmp_path):
    folder, _ = shards
    with pytest.raises(MiniMindError, match="longer than the model's max_seq_len 32"):
        pretrain.main(args_for(folder, tokenizer_dir, tmp_path, "--seq_len", "64"))


def test_unigram_entropy_is_what_a_frequency_model_scores():
    tokens = np.array([0, 0, 1, 1])
    assert unigram_entropy(tokens) == pytest.approx(math.log(2))


def test_moe_pretraining_logs_the_balance_loss(shards, tokenizer_dir, tmp_path, capsys):
    folder, _ = shards
    pretrain.main(args_for(folder, tokenizer_dir, tmp_path, "--use_moe", "true", "--max_steps", "2",
                           "--log_interval", "1", "--eval_interval", "0", "--eval_batches", "1"))
    out = capsys.readouterr().out
    assert "| aux_loss " in out and (tmp_path / "pretrain_64x2_moe.pth").exists()
