"""export_model.py: the remote-code folder, the plain Llama folder and the Qwen2-MoE folder reproduce our logits."""
import ast
import importlib
import json

import pytest
import torch

from conftest import tiny_config, tiny_moe_config
from model.checkpoint import save_weights
from model.generate import generate
from model.model import MiniMindForCausalLM

export_model = importlib.import_module("export_model")


def checkpoint(tmp_path, config, name="full_sft", router_std=None):
    model = MiniMindForCausalLM(config).eval()
    if router_std:  # a sharper router, so that top-k choices and weights differ clearly between tokens
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.normal_(0.0, router_std)
    path = tmp_path / f"{name}_{config.tag()}.pth"
    save_weights(model, path)
    return model, path


def absolute_imports(source: str) -> set:
    """Top-level package names a Python source imports absolutely."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def tokens(config, length, seed=1):
    return torch.randint(3, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def test_remote_code_folder_loads_with_auto_classes(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = checkpoint(tmp_path, tiny_config())
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
    x = tokens(model.config, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    chat = AutoTokenizer.from_pretrained(str(out)).apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>user\n你好</s>\n<s>assistant\n"


@pytest.mark.parametrize("rope", [None, "linear", "ntk", "yarn"])
def test_dense_exports_to_plain_llama_with_same_logits(tmp_path, tokenizer_dir, rope):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model, path = checkpoint(tmp_path, tiny_config(max_seq_len=32, rope_scaling_type=rope, rope_factor=2.0))
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "llama"), "--no_verify"])
    assert not list(out.glob("*.py")), "a native folder carries no code"
    loaded = AutoModelForCausalLM.from_pretrained(str(out))  # no trust_remote_code
    assert isinstance(loaded, LlamaForCausalLM)
    # Past the trained context when RoPE is scaled, so the scaled frequencies are what is compared.
    x = tokens(model.config, 64 if rope else 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_llama_export_generates_the_same_greedy_text(tmp_path, tokenizer_dir):
    from transformers import LlamaForCausalLM

    model, path = checkpoint(tmp_path, tiny_config())
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
    model, path = checkpoint(tmp_path, config, router_std=1.0)
    out = export_model.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--format", "native",
                             "--out", str(tmp_path / "qwen"), "--no_verify"])
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert isinstance(loaded, Qwen2MoeForCausalLM)
    x = tokens(config, 32)
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-4


def test_export_verifies_and_replaces_only_an_earlier_export(tmp_path, tokenizer_dir, capsys):
    _, path = checkpoint(tmp_path, tiny_config())
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
    (unrelated / "pretrain_64.pth").write_text("precious")
    with pytest.raises(SystemExit, match="not an exported model folder"):
        export_model.main([*argv, "--out", str(unrelated)])
    assert (unrelated / "pretrain_64.pth").read_text() == "precious"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="full_sft_64.pth not found"):
        export_model.main(["--dim", "64", "--n_heads", "4", "--n_kv_heads", "2", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="n_kv_heads"):
        export_model.main(["--dim", "64", "--n_heads", "4", "--out_dir", str(tmp_path)])
