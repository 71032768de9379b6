"""DDP through torchrun on CPU (gloo): 2 processes train a tiny model.

Checked: the ranks hold identical weights before every step, they read disjoint samples, the result
matches one process with the same global batch, and a stopped DDP run resumes bit-exactly.
This file is also the torchrun worker (run as a script).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CountingData, tiny_config  # noqa: E402

from engine.trainer import TrainConfig, Trainer  # noqa: E402
from model.model import MiniMindForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROWS, STEPS = 4, 4  # rows per process per step; optimizer steps


def settings(out_dir, batch_size, **overrides) -> TrainConfig:
    fields = dict(out_dir=str(out_dir), batch_size=batch_size, max_steps=STEPS, learning_rate=3e-3, warmup_steps=1,
                  dtype="float32", device="cpu", threads=1, log_interval=1, eval_interval=0, save_interval=0, seed=5)
    return TrainConfig(**{**fields, **overrides})


def run(out_dir, batch_size, **overrides):
    """Train (one process or a DDP rank); returns the model, and per step: were all ranks' weights equal
    before it, and which sample indices this process read for it."""
    trainer = Trainer(settings(out_dir, batch_size, **overrides))
    model = MiniMindForCausalLM(tiny_config(vocab_size=64))
    data = CountingData(40)  # it records which indices this process read
    same_weights = []

    def loss_fn(wrapped, batch):
        if trainer.ddp:
            flat = torch.cat([p.detach().flatten() for p in wrapped.module.parameters()])
            everyone = [torch.empty_like(flat) for _ in range(trainer.world_size)]
            dist.all_gather(everyone, flat)
            same_weights.append(all(torch.equal(everyone[0], other) for other in everyone))
        x, y = batch
        return wrapped(input_ids=x, shift_labels=y).loss, {}

    result = trainer.fit(model, data, loss_fn, name="ddp")
    per_step = [data.seen[i:i + batch_size] for i in range(0, len(data.seen), batch_size)]
    return trainer, result, same_weights, per_step


def worker(out_dir: str) -> None:
    out_dir = Path(out_dir)
    trainer, full, same_weights, indices = run(out_dir / "full", ROWS)
    # The final weights too: gather once more after the last step.
    flat = torch.cat([p.detach().flatten() for p in full.model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(trainer.world_size)]
    dist.all_gather(everyone, flat)
    same_weights.append(all(torch.equal(everyone[0], other) for other in everyone))
    all_indices = [None] * trainer.world_size
    dist.all_gather_object(all_indices, indices)

    run(out_dir / "split", ROWS, stop_step=2)
    _, resumed, _, _ = run(out_dir / "split", ROWS, resume=True)
    pairs = zip(full.model.state_dict().values(), resumed.model.state_dict().values())
    exact = all(torch.equal(a, b) for a, b in pairs)
    if trainer.is_main:
        report = dict(world_size=trainer.world_size, threads=torch.get_num_threads(), same_weights=same_weights,
                      indices=all_indices, resume_exact=exact)
        (out_dir / "report.json").write_text(json.dumps(report))
    trainer.close()


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_ddp_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["threads"] == 1

    # Identical weights on both ranks before every step and after the last.
    assert report["same_weights"] == [True] * (STEPS + 1)
    # Disjoint samples within every step, and across the whole run (40 samples, 4 steps x 8 rows).
    rank0, rank1 = report["indices"]
    assert len(rank0) == len(rank1) == STEPS
    for a, b in zip(rank0, rank1):
        assert len(a) == len(b) == ROWS and not set(a) & set(b)
    seen = [i for rank in report["indices"] for step in rank for i in step]
    assert len(seen) == len(set(seen)) == 2 * ROWS * STEPS
    # Only rank 0 wrote, and the resumed DDP run equals the uninterrupted one bit for bit.
    assert report["resume_exact"]

    # One process with the same global batch (2 x ROWS) reads the same samples per step and ends
    # with the same weights, up to float summation order.
    _, single, _, single_indices = run(tmp_path / "single", 2 * ROWS)
    assert [sorted(s) for s in single_indices] == [sorted(a + b) for a, b in zip(rank0, rank1)]
    ddp_weights = torch.load(tmp_path / "full" / "ddp.pth", weights_only=True)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


if __name__ == "__main__":
    worker(sys.argv[1])
