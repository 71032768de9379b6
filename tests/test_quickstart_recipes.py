"""The quickstart's budgets (full, --long, --gpu, --fast): every stage command of every recipe is one its
script accepts, and a CPU without bf16 instructions gets the scaled-down step counts."""
import argparse

import pytest
import torch
from conftest import load_script

quickstart = load_script("quickstart.py")
PARSERS = {name: load_script(name).parse_args for name in
           ("0-eval_pretrain.py", "1-pretrain.py", "3-full_sft.py", "4-lora_sft.py", "5-dpo_train.py", "eval_ceval.py",
            "score.py", "6-grpo.py")}


@pytest.mark.parametrize("recipe", sorted(quickstart.RECIPES))
def test_every_stage_command_parses(recipe):
    args = argparse.Namespace(out="out/x", preset=None, fast=recipe == "fast", mirror=None)
    plan = quickstart.stages(args, quickstart.RECIPES[recipe])
    checked = 0
    for name, argv in plan:
        script, flags = argv[0], argv[1:]
        if script in PARSERS:
            parsed = PARSERS[script](flags)  # argparse exits on an unknown flag or a bad value
            assert parsed.preset == quickstart.RECIPES[recipe]["preset"], (name, parsed.preset)
            checked += 1
    assert checked == 11  # pretrain, continuation, SFT, two LoRAs, DPO, GRPO, C-Eval, two scoreboards, the tool scoreboard
    training = {name: argv for name, argv in plan if name in ("pretrain", "full SFT")}
    assert all("--resume" in argv and "muon" in argv for argv in training.values())


def test_float32_cpus_get_fewer_steps(monkeypatch):
    monkeypatch.setattr(quickstart, "pick_dtype", lambda name, device: (torch.float32, "no bf16"))
    scaled = quickstart.for_this_machine(quickstart.FULL)
    assert scaled["pretrain_steps"] == round(quickstart.FULL["pretrain_steps"] * quickstart.FP32_STEP_SHARE)
    assert scaled["sft_steps"] == round(quickstart.FULL["sft_steps"] * quickstart.FP32_STEP_SHARE)
    assert quickstart.for_this_machine(quickstart.GPU) is quickstart.GPU  # a GPU recipe is never scaled
    monkeypatch.setattr(quickstart, "pick_dtype", lambda name, device: (torch.bfloat16, "bf16"))
    assert quickstart.for_this_machine(quickstart.FULL) is quickstart.FULL
