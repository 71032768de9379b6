"""The training engine: schedule, parameter groups, exact resume, atomic checkpoints, input checks."""
import math
import os
import signal
import sys

import pytest
import torch
from conftest import CountingData, next_token_loss, tiny_config, tiny_moe_config

from engine.optim import lr_at, param_groups
from engine.trainer import TrainConfig, Trainer
from model.checkpoint import atomic_torch_save, atomic_write
from model.errors import MiniMindError
from model.model import MiniMindForCausalLM


def train(out_dir, data, config=None, **overrides):
    """One fit() of a tiny model; returns (FitResult, Trainer)."""
    fields = dict(out_dir=str(out_dir), batch_size=4, accumulation_steps=2, learning_rate=3e-3, max_steps=8,
                  warmup_steps=2, dtype="float32", device="cpu", threads=1, log_interval=2, eval_interval=0,
                  save_interval=0, seed=3)
    fields.update(overrides)
    trainer = Trainer(TrainConfig(**fields))
    model = MiniMindForCausalLM(config or tiny_config(vocab_size=64))
    return trainer.fit(model, data, next_token_loss, name="unit"), trainer


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- schedule and groups


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    total, warmup, lr, min_lr = 100, 10, 1e-3, 1e-4
    rates = [lr_at(s, total, warmup, lr, min_lr) for s in range(total)]
    assert rates[0] == pytest.approx(lr / warmup)  # the first step already moves
    assert all(b > a for a, b in zip(rates[:warmup], rates[1:warmup]))  # linear rise
    assert rates[warmup - 1] == pytest.approx(lr) and rates[warmup] == pytest.approx(lr)
    assert all(b < a for a, b in zip(rates[warmup:], rates[warmup + 1:]))  # cosine fall
    midway = warmup + (total - warmup) // 2
    assert rates[midway] == pytest.approx((lr + min_lr) / 2, rel=1e-6)
    assert min_lr < rates[-1] < min_lr * 1.01
    assert lr_at(total + 50, total, warmup, lr, min_lr) == pytest.approx(min_lr)  # never below min_lr
    assert lr_at(0, 10, 0, lr, min_lr) == pytest.approx(lr)  # no warmup: start at the peak


def test_no_weight_decay_on_norms_biases_embeddings():
    model = MiniMindForCausalLM(tiny_moe_config())
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    plain_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in plain_names  # tied with lm_head: listed once, no decay
    assert all("norm" in n for n in plain_names - {"model.embed_tokens.weight"})
    assert all(n.endswith("_proj.weight") or n.endswith("mlp.gate.weight") for n in decay_names)
    assert len(decay_names) + len(plain_names) == len(list(model.parameters()))

    # Frozen parameters (a LoRA base) are left out of the optimizer entirely.
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    frozen = {id(p) for p in model.model.layers[0].parameters()}
    groups = param_groups(model, 0.1)
    assert not frozen & {id(p) for g in groups for p in g["params"]}


# ----------------------------------------------------------------------------- training and resume


def test_loss_goes_down_and_outputs_are_written(tmp_path):
    data = CountingData(64)
    result, _ = train(tmp_path, data, max_steps=16)
    first, last = result_history(tmp_path)
    assert result.finished and result.step == 16
    assert last < first - 0.5, (first, last)
    weights = torch.load(tmp_path / "unit.pth", weights_only=True)
    assert set(weights) >= {"model.embed_tokens.weight", "model.norm.weight"}
    assert (tmp_path / "unit.json").exists() and (tmp_path / "unit_loss.png").stat().st_size > 1000


def result_history(out_dir):
    history = torch.load(out_dir / "unit_resume.pth", weights_only=True)["history"]["train"]
    return history[0][1], history[-1][1]


@pytest.mark.parametrize("moe", [False, True])
def test_resume_is_bit_exact(tmp_path, moe):
    """2N steps in one go == N steps, stop, --resume for N more: identical fp32 weights. 8 steps of
    8 rows over 28 samples (3 steps per epoch) cross two epoch boundaries; the stop falls mid-epoch."""
    data = CountingData(28)
    config = tiny_moe_config(vocab_size=64) if moe else tiny_config(vocab_size=64, dropout=0.1)
    full, _ = train(tmp_path / "full", data, config)
    half, _ = train(tmp_path / "split", data, config, stop_step=4)
    assert not half.finished and half.step == 4
    resumed, _ = train(tmp_path / "split", data, config, resume=True)
    assert resumed.finished and resumed.step == 8
    a, b = state(full.model), state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # ...and it really trained past the stop (the resumed run did not just reload step 4).
    assert not torch.equal(state(half.model)["model.norm.weight"], b["model.norm.weight"])
    saved = torch.load(tmp_path / "split" / "unit_resume.pth", weights_only=True)
    assert saved["step"] == 8 and saved["epoch"] == 2 and saved["world_size"] == 1


def test_resume_without_checkpoint_starts_fresh_and_resume_at_end_does_nothing(tmp_path, capsys):
    data = CountingData(16)
    train(tmp_path, data, max_steps=2, resume=True)
    assert "yet, starting from step 0" in capsys.readouterr().out
    result, _ = train(tmp_path, data, max_steps=2, resume=True)
    assert result.step == 2 and "nothing to train" in capsys.readouterr().out


def test_resume_rejects_a_different_model(tmp_path):
    data = CountingData(16)
    train(tmp_path, data, max_steps=2)
    with pytest.raises(MiniMindError, match="different model"):
        train(tmp_path, data, tiny_config(vocab_size=64, dim=32), max_steps=4, resume=True)


def test_peft_style_partial_training_and_extra_metrics(tmp_path, capsys):
    """Only parameters with requires_grad train; metrics from loss_fn are logged; save_fn decides the output."""
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), batch_size=4, max_steps=3, dtype="float32", device="cpu",
                                  threads=1, log_interval=1, save_interval=0))
    model = MiniMindForCausalLM(tiny_config(vocab_size=64))
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    before = state(model)
    saved = []

    def loss_fn(m, batch):
        loss, _ = next_token_loss(m, batch)
        return loss, {"my_metric": torch.tensor(0.25)}

    def save_fn(m):
        saved.append(m.model.norm.weight.detach().clone())
        return tmp_path / "adapter"

    result = trainer.fit(model, CountingData(16), loss_fn, save_fn=save_fn, name="part")
    after = state(result.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.norm.weight"}
    assert len(saved) == 1 and "my_metric 0.25" in capsys.readouterr().out
    assert not (tmp_path / "part.pth").exists()


def test_too_little_data_is_a_clear_error(tmp_path):
    with pytest.raises(MiniMindError, match="fewer than one step"):
        train(tmp_path, CountingData(5))  # one step needs 4 x 2 rows


def test_nan_loss_stops_with_a_message(tmp_path):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), batch_size=2, max_steps=3, dtype="float32", device="cpu",
                                  threads=1, log_interval=1))
    model = MiniMindForCausalLM(tiny_config(vocab_size=64))
    with pytest.raises(MiniMindError, match="loss is nan at step 1"):
        trainer.fit(model, CountingData(8), lambda m, b: (next_token_loss(m, b)[0] * float("nan"), {}), name="nan")


def test_validation_runs_and_is_recorded(tmp_path):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), batch_size=4, max_steps=6, dtype="float32", device="cpu",
                                  threads=1, eval_interval=3, eval_batches=2, learning_rate=3e-3))
    model = MiniMindForCausalLM(tiny_config(vocab_size=64))
    result = trainer.fit(model, CountingData(32), next_token_loss, val_set=CountingData(8), name="val")
    history = torch.load(tmp_path / "val_resume.pth", weights_only=True)["history"]["val"]
    assert [s for s, _ in history] == [0, 3, 6]
    assert abs(history[0][1] - math.log(64)) < 0.5  # step 0: the untrained baseline, near uniform
    assert history[2][1] < history[1][1] < history[0][1]
    assert result.val_metrics["loss"] == history[2][1]


def test_cpu_dtype_auto_follows_the_cpu_flags():
    from model.runtime import DeviceError, cpu_bf16_flags, pick_dtype

    cpu = torch.device("cpu")
    with_bf16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16\n"
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16\n"
    assert cpu_bf16_flags(with_bf16) == ["avx512_bf16", "amx_bf16"]
    assert pick_dtype("auto", cpu, with_bf16)[0] == torch.bfloat16
    assert pick_dtype("auto", cpu, avx2_only)[0] == torch.float32
    assert pick_dtype("auto", cpu, arm)[0] == torch.bfloat16
    assert pick_dtype("auto", cpu, "")[0] == torch.float32  # unreadable flags: the safe choice
    assert pick_dtype("float16", cpu, avx2_only)[0] == torch.float16
    with pytest.raises(DeviceError, match="float16 needs a CUDA GPU"):
        Trainer(TrainConfig(device="cpu", dtype="float16", threads=1))


def test_resume_file_holds_no_pickled_objects_and_keeps_the_dtype(tmp_path):
    """The resume checkpoint loads with weights_only=True (nothing but tensors and plain values), and
    a run resumed with --dtype auto computes in the precision it was saved from."""
    for dtype in ("float32", "bfloat16"):  # on any CPU, one of the two differs from what auto would pick
        train(tmp_path / dtype, CountingData(64), max_steps=4, stop_step=2, dtype=dtype)
        state = torch.load(tmp_path / dtype / "unit_resume.pth", weights_only=True)
        assert state["dtype"] == dtype and state["step"] == 2
        _, trainer = train(tmp_path / dtype, CountingData(64), max_steps=4, resume=True, dtype="auto")
        assert trainer.dtype == getattr(torch, dtype)


def test_a_crafted_resume_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    (tmp_path / "out").mkdir()
    torch.save({"step": Payload()}, tmp_path / "out" / "unit_resume.pth")
    with pytest.raises(MiniMindError, match="not a resume checkpoint"):
        train(tmp_path / "out", CountingData(64), max_steps=4, resume=True)
    assert not marker.exists()


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    result, trainer = train(tmp_path, CountingData(16), dtype="bfloat16", max_steps=2)
    assert trainer.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


# ----------------------------------------------------------------------------- atomic checkpoints


def test_checkpoint_survives_a_kill_in_the_middle_of_writing(tmp_path):
    """The process dies (SIGKILL) halfway through writing a new checkpoint: the old one is intact."""
    target = tmp_path / "ckpt.pth"
    atomic_torch_save({"step": 1, "w": torch.arange(1000)}, target)

    def half_then_die(tmp):
        with open(tmp, "wb") as f:
            f.write(b"PK" + b"\0" * 5000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()  # the child plays the training process that gets killed
    if pid == 0:
        atomic_write(target, half_then_die)
        os._exit(0)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    restored = torch.load(target, weights_only=True)
    assert restored["step"] == 1 and torch.equal(restored["w"], torch.arange(1000))


def test_bad_settings_are_clear_errors():
    with pytest.raises(MiniMindError, match="--batch_size must be positive, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(MiniMindError, match="--warmup_steps must be at least 0"):
        TrainConfig(warmup_steps=-5)


def test_resume_with_changed_settings_warns(tmp_path, capsys):
    data = CountingData(16)
    train(tmp_path, data, max_steps=4, stop_step=2)
    result, _ = train(tmp_path, data, max_steps=4, resume=True, learning_rate=1e-3)
    out = capsys.readouterr().out
    assert "learning_rate 0.003 -> 0.001" in out and "will not match an uninterrupted run" in out
    assert result.step == 4


def test_sigterm_finishes_the_step_saves_and_exits_nonzero(tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C's SIGINT) mid-step: the step completes, a resume checkpoint is
    written, the process exits with 128 + signal, and --resume then matches an uninterrupted run."""
    data = CountingData(28)
    full, _ = train(tmp_path / "full", data)
    calls = []

    def interrupted_loss(model, batch):
        calls.append(1)
        if len(calls) == 5:  # step 3, first micro-batch
            os.kill(os.getpid(), signal.SIGTERM)
        return next_token_loss(model, batch)

    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "split"), batch_size=4, accumulation_steps=2,
                                  learning_rate=3e-3, max_steps=8, warmup_steps=2, dtype="float32", device="cpu",
                                  threads=1, log_interval=2, eval_interval=0, save_interval=0, seed=3))
    with pytest.raises(SystemExit) as stop:
        trainer.fit(MiniMindForCausalLM(tiny_config(vocab_size=64)), data, interrupted_loss, name="unit")
    assert stop.value.code == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "split" / "unit_resume.pth", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again
    resumed, _ = train(tmp_path / "split", data, resume=True)
    a, b = state(full.model), state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_report_to_wandb_mirrors_the_log(tmp_path, monkeypatch):
    """wandb is optional and not installed here: a stand-in module records what the engine sends."""
    import types

    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, sorted(values)))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(("init", kwargs["name"])) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(tmp_path, CountingData(16), max_steps=2, log_interval=1, report_to="wandb")
    assert calls[0] == ("init", "unit") and calls[-1] == ("finish",)
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == [1, 2] and "train/loss" in logged[0][2] and "train/lr" in logged[0][2]


def test_report_to_a_missing_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(MiniMindError, match="pip install wandb"):
        train(tmp_path, CountingData(16), max_steps=1, report_to="wandb")


def test_stale_temp_files_of_the_run_are_removed_and_others_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = [out / ".unit.pth.abc123.tmp", out / ".unit_resume.pth.x9.tmp", out / ".unit.json.q.tmp"]
    others = [out / ".unit_moe.pth.abc.tmp", out / ".other.pth.abc.tmp", out / "notes.tmp"]
    for path in mine + others:
        path.write_bytes(b"torn")
    train(out, CountingData(64), max_steps=1)
    assert [p.exists() for p in mine] == [False] * 3
    assert [p.exists() for p in others] == [True] * 3


def test_an_unwritable_out_dir_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MiniMindError, match="cannot be written"):
        train(blocker / "out", CountingData(64), max_steps=1)


def test_one_flops_formula_counts_matmul_weights_and_causal_attention():
    from model.LMConfig import LMConfig
    from model.runtime import FlopsPerToken

    config = LMConfig.from_preset("tiny")
    model = MiniMindForCausalLM(config)
    d, kv, h, L, V = config.dim, config.n_kv_heads * config.head_dim, config.hidden_dim, config.n_layers, config.vocab_size
    by_hand = 6 * (L * (2 * d * d + 2 * d * kv + 3 * d * h) + d * V) + 6 * L * 256 * d
    assert FlopsPerToken(model)(256) == by_hand
    moe = MiniMindForCausalLM(tiny_config(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2))
    dense = MiniMindForCausalLM(tiny_config())
    # one shared + two of four routed experts per token: three FFNs' worth of weights, plus the router
    c = moe.config
    assert FlopsPerToken(moe)(64) - FlopsPerToken(dense)(64) == 6 * c.n_layers * (2 * 3 * c.dim * c.hidden_dim + c.dim * 4)


def test_metrics_file_records_every_log_line_and_validation_and_survives_resume(tmp_path):
    import json

    result, _ = train(tmp_path / "run", CountingData(64), max_steps=6, log_interval=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "unit_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert [r["loss"] for r in records] == [loss for _, loss in result.history["train"]]
    assert all(r["lr"] > 0 for r in records)
    assert json.loads((tmp_path / "run" / "unit_args.json").read_text())["max_steps"] == 6
    # killed after step 4 was logged but before it was saved: the resumed run logs step 4 again, once
    train(tmp_path / "split", CountingData(64), max_steps=6, log_interval=2, save_interval=2, stop_step=2)
    with open(tmp_path / "split" / "unit_metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")  # logged, then the process died
    train(tmp_path / "split", CountingData(64), max_steps=6, log_interval=2, save_interval=2, resume=True)
    resumed = [json.loads(line) for line in (tmp_path / "split" / "unit_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [2, 4, 6] and 99.0 not in [r["loss"] for r in resumed]


def test_runs_starting_together_in_one_folder_do_not_trip_each_others_write_check(tmp_path):
    # Each run probes --out_dir with a file of its own; with a shared probe name one run's unlink removed
    # the other's file and a perfectly writable folder was reported as unwritable.
    from concurrent.futures import ThreadPoolExecutor

    from engine.trainer import check_writable

    out_dir = tmp_path / "out"
    with ThreadPoolExecutor(8) as pool:
        errors = [f.exception() for f in [pool.submit(check_writable, out_dir) for _ in range(400)]]
    assert errors == [None] * 400
    assert list(out_dir.iterdir()) == []  # no probe left behind
