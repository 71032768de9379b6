"""export_model.py: the remote-code, plain Llama and Qwen2-MoE folders reproduce our logits, and read the same in
transformers 4 and 5, sample like our chat, carry a LoRA adapter peft loads, and are readable by everyone."""
import ast
import copy
import importlib
import json
import math
import stat

import pytest
import torch
from conftest import random_tokens, save_checkpoint, tiny_config, tiny_moe_config

from model.errors import MiniMindError
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P, generate

export_model = importlib.import_module("export_model")


def absolute_imports(source: str) -> set:
    """Top-level package names a Python source imports absolutely."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_remote_code_folder_loads_with_auto_classes(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = save_checkpoint(tmp_path, tiny_config())
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "hf")])
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("MiniMindForCausalLM")
    assert (out / "model.safetensors").exists()
    code = {p.name: p.read_text() for p in out.glob("*.py")}
    assert code, "the model code must travel with the folder"
    for name, text in code.items():  # a folder elsewhere cannot import this repository's `model` package
        assert "model" not in absolute_imports(text), f"{name} imports the repository's package"

    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    assert type(loaded).__module__.startswith("transformers_modules")
    x = random_tokens(model.config, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    chat = AutoTokenizer.from_pretrained(str(out)).apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>user\n你好</s>\n<s>assistant\n"


@pytest.mark.parametrize("rope", [None, "linear", "ntk", "yarn"])
def test_dense_exports_to_plain_llama_with_same_logits(tmp_path, tokenizer_dir, rope):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model, path = save_checkpoint(tmp_path, tiny_config(max_seq_len=32, rope_scaling_type=rope, rope_factor=2.0))
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "llama"), "--no_verify"])
    assert not list(out.glob("*.py")), "a native folder carries no code"
    loaded = AutoModelForCausalLM.from_pretrained(str(out))  # no trust_remote_code
    assert isinstance(loaded, LlamaForCausalLM)
    # Past the trained context when RoPE is scaled, so the scaled frequencies are what is compared.
    x = random_tokens(model.config, 64 if rope else 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_llama_export_generates_the_same_greedy_text(tmp_path, tokenizer_dir):
    from transformers import LlamaForCausalLM

    model, path = save_checkpoint(tmp_path, tiny_config())
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "llama"), "--no_verify"])
    llama = LlamaForCausalLM.from_pretrained(str(out))
    prompt = [1, 40, 41, 42, 43]
    ours = generate(model, [prompt], max_new_tokens=12)[0]
    theirs = llama.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs[:len(ours)] and len(ours) > 0


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # no shared experts: empty layers
@pytest.mark.parametrize("shared,top_k", [(1, 2), (2, 2), (0, 2), (1, 1)])
def test_moe_exports_to_qwen2_moe_with_same_logits(tmp_path, tokenizer_dir, shared, top_k):
    from transformers import AutoModelForCausalLM, Qwen2MoeForCausalLM

    config = tiny_moe_config(n_shared_experts=shared, num_experts_per_tok=top_k)
    model, path = save_checkpoint(tmp_path, config, router_std=1.0)
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "qwen"), "--no_verify"])
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert isinstance(loaded, Qwen2MoeForCausalLM)
    x = random_tokens(config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_export_verifies_and_replaces_only_an_earlier_export(tmp_path, tokenizer_dir, capsys):
    _, path = save_checkpoint(tmp_path, tiny_config())
    argv = ["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native"]
    out = tmp_path / "hf"
    export_model.main([*argv, "--out", str(out)])
    assert "OK" in capsys.readouterr().out
    (out / "stale.txt").write_text("from an earlier export")
    export_model.main([*argv, "--out", str(out), "--no_verify"])
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")], "no temporary folder left behind"

    unrelated = tmp_path / "checkpoints"
    unrelated.mkdir()
    (unrelated / "pretrain_64x2.pth").write_text("precious")
    with pytest.raises(MiniMindError, match="not an exported model folder"):
        export_model.main([*argv, "--out", str(unrelated)])
    assert (unrelated / "pretrain_64x2.pth").read_text() == "precious"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MiniMindError, match="full_sft_64x2.pth not found"):
        export_model.main(["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
                           "--out_dir", str(tmp_path)])
    with pytest.raises(MiniMindError, match="n_kv_heads"):
        export_model.main(["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--out_dir", str(tmp_path)])


# ----------------------------------------------------------------------------- what other tools read

def test_folders_read_the_same_in_transformers_4_and_5(tmp_path, tokenizer_dir):
    """The files that transformers 4.x reads differently: checked as written, then loaded by this 5.x."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = save_checkpoint(tmp_path, tiny_config(max_seq_len=32, rope_scaling_type="yarn", rope_factor=2.0))
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "llama")])
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # TokenizersBackend is 5.x only
    assert "is_local" not in tokenizer_config and "local_files_only" not in tokenizer_config
    assert tokenizer_config["model_max_length"] == 64
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 1e4  # 4.x reads these two, 5.x rope_parameters
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                      "original_max_position_embeddings": 32,
                                      "attention_factor": pytest.approx(0.1 * math.log(2.0) + 1.0)}
    assert config["rope_parameters"]["rope_type"] == "yarn"
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    x = random_tokens(model.config, 64)  # past the trained context: the scaled frequencies are what is compared
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4
    chat = AutoTokenizer.from_pretrained(str(out)).apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>user\n你好</s>\n<s>assistant\n"

    plain, path = save_checkpoint(tmp_path, tiny_config(), name="plain")
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "plain"), "--no_verify"])
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 1e4 and config["rope_scaling"] is None


@pytest.mark.parametrize("fmt", ["remote", "native"])
def test_generation_config_samples_like_our_chat(tmp_path, tokenizer_dir, fmt):
    from transformers import AutoModelForCausalLM

    _, path = save_checkpoint(tmp_path, tiny_config())
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", fmt,
                             "--out", str(tmp_path / fmt), "--no_verify"])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is True
    assert generation["temperature"] == CHAT_TEMPERATURE and generation["top_p"] == CHAT_TOP_P
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=fmt == "remote")
    assert loaded.generation_config.do_sample and loaded.generation_config.top_p == CHAT_TOP_P
    prompt = torch.tensor([[1, 40, 41, 42]])
    runs = []
    for seed in (0, 1):  # generate() with no sampling arguments now samples: two seeds, two continuations
        torch.manual_seed(seed)
        runs.append(loaded.generate(prompt, max_new_tokens=16, eos_token_id=None)[0].tolist())
    assert runs[0] != runs[1]


def modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def lora_checkpoint(tmp_path):
    """A base stage checkpoint in tmp_path and a trained-looking LoRA adapter on it, lora_demo_64x2/."""
    from model.lora import LoraSettings, apply_lora, save_adapter

    base, base_path = save_checkpoint(tmp_path, tiny_config())
    peft_model = apply_lora(copy.deepcopy(base), LoraSettings(rank=4, alpha=8.0))  # wraps its argument in place
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # B is zero only before training
    save_adapter(peft_model, tmp_path / "lora_demo_64x2", base_path=base_path)
    return base, peft_model.merge_and_unload().eval()


LORA_ARGS = ["--weight", "lora_demo", "--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2"]


@pytest.mark.parametrize("fmt", ["remote", "native"])
def test_lora_adapter_exported_with_its_base_loads_with_auto_peft(tmp_path, tokenizer_dir, monkeypatch, fmt):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    base, merged = lora_checkpoint(tmp_path)
    out = export_model.main([*LORA_ARGS, "--out_dir", str(tmp_path), "--tokenizer", str(tokenizer_dir),
                             "--format", fmt, "--keep_adapter", "--out", str(tmp_path / "hf")])  # verifies too
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(out.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the recorded base is found from any working folder
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter"), trust_remote_code=fmt == "remote")
    x = random_tokens(base.config, 24)
    with torch.no_grad():
        assert (loaded(x).logits - merged(x).logits).abs().max() < 1e-4
        assert (merged(x).logits - base(x).logits).abs().max() > 1e-3, "the adapter must change the model"
        # the folder itself holds the base, unmerged
        plain = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=fmt == "remote")
        assert (plain(x).logits - base(x).logits).abs().max() < 1e-4
    assert all(mode == (0o755 if (out / name).is_dir() else 0o644) for name, mode in modes(out).items())


def test_keep_adapter_needs_an_adapter(tmp_path, tokenizer_dir):
    _, path = save_checkpoint(tmp_path, tiny_config())
    with pytest.raises(MiniMindError, match="--weight lora_NAME"):
        export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--keep_adapter"])


@pytest.mark.parametrize("fmt,dtype", [("remote", "float32"), ("native", "bfloat16")])
def test_exports_are_readable_by_everyone(tmp_path, tokenizer_dir, fmt, dtype):
    _, path = save_checkpoint(tmp_path, tiny_config())
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", fmt,
                             "--dtype_out", dtype, "--out", str(tmp_path / "hf"), "--no_verify"])
    found = modes(out)
    assert found["model.safetensors"] == 0o644, "transformers writes weights 0600"
    assert all(mode == (0o755 if (out / name).is_dir() else 0o644) for name, mode in found.items())


# ----------------------------------------------------------------------------- the model card


def front_matter(folder) -> tuple[dict, str]:
    """The YAML block at the top of folder/README.md, as the Hub reads it, and the text after it."""
    import yaml

    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    block, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(block), body


def test_remote_export_carries_a_model_card_the_hub_reads(tmp_path, tokenizer_dir):
    from data.fetch import source_repositories

    _, path = save_checkpoint(tmp_path, tiny_config())
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "hf"),
                             "--no_verify"])
    meta, body = front_matter(out)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["zh"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"minimind", "from-scratch", "custom_code"} <= set(meta["tags"]) and "llama" not in meta["tags"]
    assert meta["datasets"] == source_repositories() and "NiuTrans/Classical-Modern" in meta["datasets"]
    assert not any("ceval" in name.lower() for name in meta["datasets"])  # evaluated on, never trained on
    assert "base_model" not in meta  # trained from scratch
    assert "model-index" not in meta and "## Scoreboard" not in body  # no score_full_sft_64x2.json beside it
    assert "# MiniMind full_sft_64x2" in body and "trust_remote_code=True" in body


def test_native_export_card_carries_the_runs_scoreboard(tmp_path, tokenizer_dir):
    _, path = save_checkpoint(tmp_path, tiny_config())
    board = {"loss": {"bits_per_char": 3.75123, "nats_per_token": 4.1}, "held_out": {"on_topic": 0.376},
             "demo": {"on_topic": 0.375}, "tools": {"with_tools": {"share": 0.5, "right": 10, "of": 20}},
             "answers": {"held_out": []}}
    (tmp_path / "score_full_sft_64x2.json").write_text(json.dumps(board), encoding="utf-8")
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "hf"), "--no_verify"])
    meta, body = front_matter(out)
    assert "llama" in meta["tags"] and "custom_code" not in meta["tags"] and "base_model" not in meta
    [entry] = meta["model-index"]
    assert entry["name"] == "MiniMind full_sft_64x2"
    figures = {(result["dataset"]["type"], metric["name"]): metric["value"]
               for result in entry["results"] for metric in result["metrics"]}
    assert figures == {("minimind-sft-val", "held-out bits per character"): 3.7512,
                       ("minimind-sft-val", "on topic, held-out questions"): 0.376,
                       ("minimind-sft-val", "on topic, demo questions"): 0.375,
                       ("minimind-tool-problems", "tool accuracy: word problems right with the calculator"): 0.5}
    assert all(result["task"]["type"] == "text-generation" and result["dataset"]["name"] for result in entry["results"])
    assert "| held-out bits per character | 3.7512 |" in body and "trust_remote_code" not in body


def test_card_of_a_moe_model_without_a_tool_score():
    from export.card import card_metadata

    meta = card_metadata("dpo_64x2_moe", tiny_moe_config(), remote=False, datasets=[],
                         board={"loss": {"bits_per_char": float("nan")}, "held_out": {"on_topic": 0.25}})
    assert meta["tags"][-2:] == ["qwen2_moe", "moe"] and "datasets" not in meta
    [result] = meta["model-index"][0]["results"]  # the NaN and the absent tool figure are left out
    assert [m["name"] for m in result["metrics"]] == ["on topic, held-out questions"]
