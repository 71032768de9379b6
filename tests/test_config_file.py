"""--config FILE on the training scripts (engine/config_file.py): the file fills the flags, flags given win,
unknown keys and bad values are refused naming key and file, and a run's _args.json reads back as a config."""
import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from conftest import load_script, write_file

from engine.runlog import RunLog
from engine.trainer import TrainConfig
from model.errors import MiniMindError

ROOT = Path(__file__).resolve().parent.parent
TRAINING_SCRIPTS = ["1-pretrain.py", "3-full_sft.py", "4-lora_sft.py", "5-dpo_train.py"]


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in TRAINING_SCRIPTS}


def test_json_file_sets_flags_of_every_kind(scripts, tmp_path):
    config = write_file(tmp_path / "sft.json", {
        "preset": "tiny", "dim": 128, "use_moe": True,               # model fields
        "batch_size": 3, "learning_rate": 2e-4, "schedule": "wsd",   # TrainConfig fields
        "data": ["a.jsonl", "b.jsonl"], "pack": True, "seq_len": 96, "min_lr": None,  # the script's own
    })
    args = scripts["3-full_sft.py"].parse_args(["--config", str(config)])
    assert (args.preset, args.dim, args.use_moe) == ("tiny", 128, True)
    assert (args.batch_size, args.learning_rate, args.schedule) == (3, 2e-4, "wsd")
    assert args.data == ["a.jsonl", "b.jsonl"] and args.pack is True and args.seq_len == 96
    assert args.min_lr is None
    assert args.config == str(config)
    # What the file does not name keeps the script's own default.
    assert args.weight_decay == 0.01 and args.eos_check == 50


def test_command_line_flags_win_wherever_they_stand(scripts, tmp_path):
    config = write_file(tmp_path / "run.json", {"batch_size": 3, "learning_rate": 2e-4, "preset": "tiny", "pack": True})
    parse = scripts["3-full_sft.py"].parse_args
    after = parse(["--config", str(config), "--batch_size", "7", "--preset", "mini"])
    before = parse(["--learning_rate", "1e-3", f"--config={config}"])
    assert (after.batch_size, after.preset, after.learning_rate) == (7, "mini", 2e-4)
    assert (before.batch_size, before.learning_rate) == (3, 1e-3)
    assert after.pack is True
    # Without --config the script's defaults are untouched (the parser is built afresh per call).
    plain = parse([])
    assert (plain.batch_size, plain.learning_rate, plain.pack, plain.config) == (16, 1e-4, False, None)


def test_yaml_file(scripts, tmp_path):
    # PyYAML reads 5e-4 (no dot) as a string: the flag's own type turns it into the number.
    config = write_file(tmp_path / "dpo.yaml", "preset: tiny\nlora: true\nbeta: 0.2\nlearning_rate: 5e-4\n"
                                          "lora_rank: 4\nval_data: none\nnorm_topk_prob: false\n")
    args = scripts["5-dpo_train.py"].parse_args(["--config", str(config)])
    assert args.lora is True and args.beta == 0.2 and args.lora_rank == 4 and args.val_data == "none"
    assert args.learning_rate == 5e-4 and isinstance(args.learning_rate, float)
    assert args.norm_topk_prob is False
    # The script's own rule still runs after the file: no learning rate named -> the LoRA default.
    write_file(config, "lora: true\n")
    assert scripts["5-dpo_train.py"].parse_args(["--config", str(config)]).learning_rate == 5e-5
    yml = write_file(tmp_path / "pre.yml", "max_steps: 12\nchat_data: [x.jsonl]\n")
    args = scripts["1-pretrain.py"].parse_args(["--config", str(yml)])
    assert args.max_steps == 12 and args.chat_data == ["x.jsonl"]


def test_unknown_key_is_refused_naming_key_and_file(scripts, tmp_path):
    config = write_file(tmp_path / "typo.json", {"batch_size": 4, "learning_rat": 1e-4})
    with pytest.raises(MiniMindError) as caught:
        scripts["1-pretrain.py"].parse_args(["--config", str(config)])
    message = str(caught.value)
    assert "'learning_rat'" in message and str(config) in message and "'learning_rate'" in message  # the near miss
    assert "\n" not in message
    # A flag of another script is unknown here: pretraining has no --pack.
    with pytest.raises(MiniMindError, match=r"unknown key 'pack'"):
        scripts["1-pretrain.py"].parse_args(["--config", str(write_file(tmp_path / "p.json", {"pack": True}))])
    # --config and --help are not keys a file can set.
    with pytest.raises(MiniMindError, match=r"unknown key 'config'"):
        scripts["1-pretrain.py"].parse_args(["--config", str(write_file(tmp_path / "c.json", {"config": "x.json"}))])


@pytest.mark.parametrize("fields_, expected", [
    ({"batch_size": 8.5}, r"'batch_size': 8.5 is not a valid int"),
    ({"batch_size": True}, r"'batch_size': True is not a valid int"),
    ({"learning_rate": "fast"}, r"'learning_rate': 'fast' is not a valid float"),
    ({"optimizer": "sgd"}, r"'optimizer' must be one of adamw, muon"),
    ({"preset": "huge"}, r"'preset' must be one of small-T"),
    ({"pack": "yes"}, r"'pack' is an on/off flag"),
    ({"use_moe": "maybe"}, r"'use_moe': 'maybe' is not a valid"),
    ({"data": {"a": 1}}, r"'data' takes a list"),
    ({"tokenizer": 5}, r"'tokenizer' must be a string"),
])
def test_bad_values_are_refused_as_the_flag_would(scripts, tmp_path, fields_, expected):
    config = write_file(tmp_path / "bad.json", fields_)
    with pytest.raises(MiniMindError, match=expected):
        scripts["3-full_sft.py"].parse_args(["--config", str(config)])


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", r"expected a JSON object"),
    ("{\"batch_size\": 4,", r"bad.json"),
])
def test_files_that_are_not_a_mapping(scripts, tmp_path, text, expected):
    with pytest.raises(MiniMindError, match=expected):
        scripts["4-lora_sft.py"].parse_args(["--config", str(write_file(tmp_path / "bad.json", text))])
    with pytest.raises(MiniMindError, match=r"bad.yaml: expected a mapping"):
        scripts["4-lora_sft.py"].parse_args(["--config", str(write_file(tmp_path / "bad.yaml", "- 1\n- 2\n"))])
    with pytest.raises(MiniMindError, match=r"missing.json: cannot read it"):
        scripts["4-lora_sft.py"].parse_args(["--config", str(tmp_path / "missing.json")])


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_a_runs_args_json_round_trips(scripts, tmp_path, script):
    """The engine writes {name}_args.json at a run's start; given back as --config, it rebuilds the same
    TrainConfig in every training script, whatever that script's own defaults are."""
    original = TrainConfig(out_dir=str(tmp_path / "elsewhere"), epochs=3, max_steps=40, stop_step=20, batch_size=5,
                           accumulation_steps=2, optimizer="muon", learning_rate=3e-4, muon_lr=0.01, schedule="wsd",
                           decay_fraction=0.3, min_lr=1e-5, warmup_steps=None, weight_decay=0.05, beta1=0.8,
                           beta2=0.99, grad_clip=0.5, device="cpu", dtype="float32", compile=False, threads=1,
                           num_workers=0, seed=7, log_interval=2, eval_interval=4, eval_batches=0, save_interval=0,
                           resume=True, report_to="none")
    with RunLog(tmp_path, "stage_64", 40, 0, True, "none", asdict(original)):
        pass
    written = tmp_path / "stage_64_args.json"
    assert json.loads(written.read_text())["warmup_steps"] is None  # nulls too
    args = scripts[script].parse_args(["--config", str(written)])
    assert TrainConfig.from_args(args) == original
    # ... and a flag on top changes that one field only.
    args = scripts[script].parse_args(["--config", str(written), "--seed", "8", "--resume", "false"])
    changed = {f.name for f in fields(TrainConfig) if getattr(TrainConfig.from_args(args), f.name) != getattr(original, f.name)}
    assert changed == {"seed", "resume"}


def test_script_ends_with_one_line(tmp_path):
    config = write_file(tmp_path / "typo.yaml", "batch_sise: 4\n")
    done = subprocess.run([sys.executable, str(ROOT / "1-pretrain.py"), "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"--config {config}: unknown key 'batch_sise': 1-pretrain.py has no --batch_sise flag (did you mean 'batch_size'?)"]
    assert not (tmp_path / "out").exists()


def test_help_names_the_flag(scripts, capsys):
    with pytest.raises(SystemExit):
        scripts["4-lora_sft.py"].parse_args(["--help"])
    assert "--config FILE" in capsys.readouterr().out


def test_every_model_flag_has_help_with_its_default():
    import argparse

    from model.LMConfig import _FIELDS, add_config_args

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    actions = {a.dest: a for a in parser._actions}
    assert len(_FIELDS) == 21 and "preset" in actions  # 22 flags with --preset
    for name in ["preset", *_FIELDS]:
        assert "default" in (actions[name].help or ""), name
    assert "small-T 512" in actions["dim"].help and "true/false" in actions["use_moe"].help
    assert "one of linear, ntk, yarn" in actions["rope_scaling_type"].help
    with pytest.raises(SystemExit):
        parser.parse_args(["--rope_scaling_type", "cubic"])  # argparse's choices, before any model is built
    parser.format_help()  # every help string formats (no stray %)
