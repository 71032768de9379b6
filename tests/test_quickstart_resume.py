"""The quickstart killed in the middle of a training stage, then run again: finished stages are skipped,
the interrupted one continues from its resume checkpoint, and the run ends with every stage done.

One `quickstart.py --fast` in all (the killed run plus the second run), into a temporary folder, on the
demo data mirror. --fast keeps its tokenizer and data under --out; the only file it shares with a real
run is the fetch stage's dataset/raw/, which holds only sha256-verified pinned bytes (already there: left
untouched).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # seconds, per run; a --fast run takes ~2.5 min on 2 idle cores
INTERRUPTED = "pretrain"


def _mirror() -> str:
    mirror = os.environ.get("MINIMIND_MIRROR") or str(REPO.parent / "shared" / "data")
    if not re.match(r"https?://", mirror) and not Path(mirror).is_dir():
        pytest.skip("needs the demo data mirror (../shared/data or MINIMIND_MIRROR)")
    return mirror if re.match(r"https?://", mirror) else str(Path(mirror).resolve())


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:]


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL quickstart.py and the stage script it is running (one session, one process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)
    deadline = time.time() + 30  # the orphaned stage script is reaped by init
    while time.time() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("a process of the killed quickstart is still running")


def test_quickstart_killed_during_training_resumes(tmp_path):
    mirror = _mirror()
    quickstart = load_script("quickstart.py")
    out = tmp_path / "quickstart"
    command = [sys.executable, "quickstart.py", "--fast", "--mirror", mirror, "--out", str(out)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    plan = quickstart.stages(argparse.Namespace(out=str(out), preset="tiny", fast=True, mirror=mirror), quickstart.FAST)
    names = [name for name, _ in plan]
    before = names[: names.index(INTERRUPTED)]  # fetch, tokenizer, SFT, DPO and pretraining data
    tag = quickstart.LMConfig.from_preset("tiny").tag()
    resume_file = out / f"{INTERRUPTED}_{tag}_resume.pth"
    record_path = out / "quickstart.json"

    # 1. Run until pretraining has written a resume checkpoint part-way (every 2 of its 6 steps), then
    #    SIGKILL the whole process group: no handler runs, nothing gets to save on the way out.
    log1 = tmp_path / "run1.log"
    with open(log1, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while not resume_file.exists():
            assert process.poll() is None, f"quickstart ended (exit {process.returncode}) before pretraining " \
                                           f"saved a checkpoint:\n{_tail(log1)}"
            assert time.time() < deadline, f"no {resume_file.name} after {TIMEOUT}s:\n{_tail(log1)}"
            time.sleep(0.1)
    finally:
        _kill_group(process)

    record1 = json.loads(record_path.read_text())
    assert list(record1) == before, f"killed with these stages recorded: {list(record1)}\n{_tail(log1)}"
    assert all(entry["done"] for entry in record1.values())
    step = torch.load(resume_file, map_location="cpu", weights_only=True)["step"]
    assert 0 < step < quickstart.FAST["pretrain_steps"], f"killed with the checkpoint at step {step}"

    # 2. The same command again, to the end.
    second = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=TIMEOUT)
    log2 = second.stdout
    (tmp_path / "run2.log").write_text(log2)
    assert second.returncode == 0, log2[-4000:]

    # Stages finished before the kill: reported as skipped, not run, and their record untouched.
    record2 = json.loads(record_path.read_text())
    for number, name in enumerate(names, 1):
        header = f"[{number}/{len(names)}] {name}"
        if name in before:
            assert f"{header}: done before ({record1[name]['seconds']:.0f}s), skipped" in log2
            assert f"{header}\n$ " not in log2, f"{name} ran again"
            assert record2[name] == record1[name]
        else:
            assert f"{header}\n$ " in log2, f"{name} did not run"
    # The interrupted stage continued from its checkpoint instead of starting over.
    resumed = re.findall(rf"resumed from \S*{re.escape(resume_file.name)} at step (\d+)", log2)
    assert resumed == [str(step)], log2[-4000:]

    # Every stage done, and the final artifacts there.
    assert list(record2) == names and all(entry["done"] for entry in record2.values())
    assert f"All {len(names)} stages done" in log2
    for artifact in (f"pretrain_{tag}.pth", f"full_sft_{tag}.pth", f"lora_identity_{tag}/adapter_model.safetensors",
                     f"dpo_{tag}.pth", f"grpo_{tag}.pth", f"ceval_grpo_{tag}/summary.json",
                     f"score_grpo_{tag}.json", f"score_tools_lora_tools_{tag}.json", f"lora_tools_{tag}.pth"):
        assert (out / artifact).is_file(), artifact
    assert torch.load(resume_file, map_location="cpu", weights_only=True)["step"] == quickstart.FAST["pretrain_steps"]
