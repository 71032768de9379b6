"""The table of bad command lines: each one ends with a clear line naming the file or field, a non-zero
exit, and no traceback. A crafted checkpoint (a pickle that would run a shell command) is refused by
every loader and its command never runs.

The commands run as subprocesses, several at a time, once per test session (a fixture), since each
one starts a fresh Python that imports torch."""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from model.checkpoint import load_model, save_weights
from model.errors import MiniMindError

ROOT = Path(__file__).resolve().parent.parent


class RunsAShellCommand:
    """Pickles as a call to os.system: loading it with plain pickle would touch `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def make_files(folder: Path) -> dict:
    """Checkpoints and data folders, good and bad. Returns name -> path."""
    from model.model import MiniMindForCausalLM

    torch.manual_seed(0)
    config = tiny_config()
    files = {"good": folder / "good.pth", "marker": folder / "PWNED"}
    save_weights(MiniMindForCausalLM(config), files["good"])
    good_bytes, good_json = files["good"].read_bytes(), files["good"].with_suffix(".json").read_text()

    def pair(name, weights: bytes | None = None, config_text: str | None = None) -> Path:
        path = folder / f"{name}.pth"
        path.write_bytes(good_bytes if weights is None else weights)
        path.with_suffix(".json").write_text(good_json if config_text is None else config_text)
        files[name] = path
        return path

    pair("garbage", os.urandom(4096))
    pair("empty", b"")
    pair("truncated", good_bytes[: len(good_bytes) // 2])
    pair("config_not_json", config_text="{not json")
    pair("config_dim_abc", config_text=json.dumps({**json.loads(good_json), "dim": "abc"}))
    pair("config_deep", config_text="[" * 100_000 + "]" * 100_000)
    pair("config_heads", config_text=json.dumps({**json.loads(good_json), "n_heads": 0}))
    pair("shapes", config_text=json.dumps({**json.loads(good_json), "dim": 32, "hidden_dim": 96}))
    pair("not_state_dict", weights=b"")
    torch.save([1, 2, 3], files["not_state_dict"])
    crafted = pair("crafted")
    torch.save({"model.embed_tokens.weight": RunsAShellCommand(files["marker"])}, crafted)

    for name, meta in {
        "meta_not_json": "{broken",
        "meta_dtype": json.dumps({"dtype": "abc", "shards": {}}),
        "meta_shards": json.dumps({"dtype": "uint16", "shards": {"../../etc/passwd": {"tokens": 1}}}),
        "meta_tokens": json.dumps({"dtype": "uint16", "shards": {"train_0000.bin": {"tokens": "many"}}}),
    }.items():
        files[name] = folder / name
        files[name].mkdir()
        (files[name] / "meta.json").write_text(meta)
    files["meta_unreadable"] = folder / "meta_unreadable"
    files["meta_unreadable"].mkdir()
    (files["meta_unreadable"] / "meta.json").mkdir()  # a folder where the file should be

    ceval = folder / "ceval"
    (ceval / "val").mkdir(parents=True)
    (ceval / "val" / "art_val.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n")
    (ceval / "subject_mapping.json").write_text('{"art": ' + "1" * 5000 + "}")
    files["ceval"] = ceval
    files["missing"] = folder / "does_not_exist"
    files["out"] = folder / "out"
    return files


# (id, command line with {placeholders} from make_files, text the message must contain). Each kind of
# problem appears once per way in (--ckpt through model/cli.py and through a training script, a data
# folder, a data or tokenizer command); the loaders behind them are checked on every bad file in-process below.
TABLE = [
    ("chat garbage .pth", "2-eval.py --ckpt {garbage}", "garbage.pth: cannot read the weights"),
    ("chat empty .pth", "2-eval.py --ckpt {empty}", "empty.pth: cannot read the weights: an empty file"),
    ("chat truncated .pth", "2-eval.py --ckpt {truncated}", "truncated.pth: cannot read the weights"),
    ("chat .json not JSON", "2-eval.py --ckpt {config_not_json}", "config_not_json.json: not valid JSON"),
    ("chat .json dim abc", "2-eval.py --ckpt {config_dim_abc}", "config_dim_abc.json: 'dim' must be an integer"),
    ("chat shapes", "2-eval.py --ckpt {shapes}", "shapes.pth: the weights do not match the config"),
    ("chat --dim 100 heads 8", "2-eval.py --preset tiny --dim 100 --n_heads 8 --out_dir {out}",
     "--dim 100 --n_heads 8: dim (100) must divide by n_heads (8)"),
    ("chat missing --tokenizer", "2-eval.py --ckpt {good} --tokenizer {missing}", "no tokenizer at"),
    ("server crafted .pth", "my_openai_api.py --ckpt {crafted}", "crafted.pth: refused to load"),
    ("ceval mapping number", "eval_ceval.py --data_dir {ceval} --ckpt {good}",
     "subject_mapping.json: unreadable JSON value"),
    ("pretrain --ckpt crafted", "1-pretrain.py --ckpt {crafted} --out_dir {out}",
     "crafted.pth: refused to load"),
    ("pretrain --dim 100 heads 8", "1-pretrain.py --preset tiny --dim 100 --n_heads 8 --out_dir {out}",
     "dim (100) must divide by n_heads (8)"),
    ("pretrain meta not JSON", "1-pretrain.py --preset tiny --data_dir {meta_not_json} --out_dir {out}",
     "meta.json: not valid JSON"),
    ("pretrain meta unreadable", "1-pretrain.py --preset tiny --data_dir {meta_unreadable} --out_dir {out}",
     "meta.json: cannot read it"),
    ("sft --ckpt crafted", "3-full_sft.py --ckpt {crafted} --out_dir {out}", "crafted.pth: refused to load"),
    ("dpo --ckpt garbage", "5-dpo_train.py --ckpt {garbage} --out_dir {out}",
     "garbage.pth: cannot read the weights"),
    ("data sft missing --jsonl", "data_process.py sft --raw {missing} --jsonl {missing} --out {out}",
     "does_not_exist: no such file"),
    ("tokenizer vocab 10", "train_tokenizer.py --raw {missing} --vocab_size 10 --out {out}/tok", "--vocab_size 10"),
    ("pretrain missing --tokenizer", "1-pretrain.py --preset tiny --tokenizer {missing} --out_dir {out}",
     "no tokenizer.json there"),
    ("pretrain unwritable --out_dir", "1-pretrain.py --preset tiny --out_dir {garbage}/out", "cannot be written"),
    ("server --port 99999", "my_openai_api.py --ckpt {good} --port 99999", "--port 99999 is not a TCP port"),
] + ([] if torch.cuda.is_available() else [  # without a GPU, asking for one must stop before any work
    ("pretrain --device cuda", "1-pretrain.py --preset tiny --device cuda --out_dir {out}", "--device cuda"),
])

# The same bad checkpoints through load_model in-process: (file, text the MiniMindError must contain).
BAD_CHECKPOINTS = [
    ("garbage", "garbage.pth: cannot read the weights"),
    ("empty", "empty.pth: cannot read the weights: an empty file"),
    ("truncated", "truncated.pth: cannot read the weights"),
    ("config_not_json", "config_not_json.json: not valid JSON"),
    ("config_dim_abc", "config_dim_abc.json: 'dim' must be an integer, found 'abc'"),
    ("config_deep", "config_deep.json: JSON nested too deeply"),
    ("config_heads", "config_heads.json: 'n_heads' must be a positive integer"),
    ("shapes", "shapes.pth: the weights do not match the config in shapes.json"),
    ("not_state_dict", "not_state_dict.pth: expected a state dict"),
    ("crafted", "crafted.pth: refused to load: its pickle would call"),
    ("missing", "does_not_exist does not exist"),
]

# Bad pretraining folders through PretrainDataset in-process.
BAD_META = [
    ("meta_not_json", "meta.json: not valid JSON"),
    ("meta_dtype", "meta.json: 'dtype' must be"),
    ("meta_shards", "is not train_NNNN.bin or val_NNNN.bin"),
    ("meta_tokens", "shards.train_0000.bin.tokens must be a token count, found 'many'"),
    ("meta_unreadable", "meta.json: cannot read it"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad_files"))


@pytest.mark.parametrize("name,expected", BAD_CHECKPOINTS, ids=[row[0] for row in BAD_CHECKPOINTS])
def test_load_model_names_the_bad_file(bad_files, name, expected):
    with pytest.raises(MiniMindError) as caught:
        load_model(bad_files[name])
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not bad_files["marker"].exists()


@pytest.mark.parametrize("name,expected", BAD_META, ids=[row[0] for row in BAD_META])
def test_pretrain_dataset_names_the_bad_meta(bad_files, name, expected):
    from data.datasets import PretrainDataset

    with pytest.raises(MiniMindError, match=re.escape(expected)):
        PretrainDataset(bad_files[name], seq_len=16)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tokenizer_dir):
    folder = tmp_path_factory.mktemp("bad_commands")
    files = make_files(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(row):
        name, command, _ = row
        argv = [part.format(**files) for part in command.split()]
        if argv[0] != "data_process.py" and argv[0] != "train_tokenizer.py" and "--tokenizer" not in argv:
            argv += ["--tokenizer", str(tokenizer_dir)]
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        return name, done

    with ThreadPoolExecutor(3) as pool:
        outcome = dict(pool.map(run, TABLE))
    return files, outcome


@pytest.mark.parametrize("name,command,expected", TABLE, ids=[row[0] for row in TABLE])
def test_bad_command_ends_with_one_clear_line(results, name, command, expected):
    files, outcome = results
    done = outcome[name]
    assert done.returncode != 0, f"{command} exited 0:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert expected in done.stderr, f"{command}: {done.stderr[-2000:]}"
    assert not files["marker"].exists(), "the crafted pickle's command ran"


def test_crafted_pickle_is_refused_by_every_loader_in_process(tmp_path):
    """load_model (--ckpt, --weight, --ckpt all go through it) and the LoRA merge refuse the file;
    the marker the pickle would create never appears."""
    from model.checkpoint import read_state_dict

    marker = tmp_path / "PWNED"
    path = tmp_path / "crafted.pth"
    torch.save({"w": RunsAShellCommand(marker)}, path)
    path.with_suffix(".json").write_text(json.dumps(tiny_config().to_dict(), default=str))
    for load in (load_model, read_state_dict):
        with pytest.raises(MiniMindError, match="refused to load"):
            load(path)
    assert not marker.exists()


def test_a_minimind_error_is_a_plain_exception_that_scripts_end_on_in_one_line(capsys):
    """Library callers catch MiniMindError by name (it is no ValueError or SystemExit); a script's entry point,
    run_main, turns it into its one line on stderr and exit status 1."""
    from model.errors import run_main

    assert MiniMindError.__bases__ == (Exception,)

    def main(name):
        raise MiniMindError(f"{name}: refused to load\n(second line)")

    with pytest.raises(SystemExit) as stop:
        run_main(main, "x.pth")
    assert stop.value.code == 1
    assert capsys.readouterr().err == "x.pth: refused to load (second line)\n"
    assert run_main(lambda: 7) == 7
    with pytest.raises(KeyError):  # anything else is a bug, and keeps its traceback
        run_main(lambda: {}["missing"])


def test_wrong_shapes_are_refused_before_the_model_is_built(tmp_path):
    """A .json that claims a huge model beside small weights fails on the meta-device check, without
    allocating the claimed size (vocab 10^9 x dim 4096 would need 16 TB)."""
    from model.model import MiniMindForCausalLM

    path = tmp_path / "m.pth"
    save_weights(MiniMindForCausalLM(tiny_config()), path)
    fields = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**fields, "vocab_size": 10**9, "dim": 4096, "n_heads": 4,
                                                     "n_kv_heads": 2, "hidden_dim": None}))
    with pytest.raises(MiniMindError, match=r"m\.pth: the weights do not match the config in m\.json \(.*shape"):
        load_model(path)
