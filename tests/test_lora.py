"""LoRA: only adapters learn, the base stays bit-identical, merging reproduces adapter+base exactly."""
import json

import pytest
import torch
from conftest import load_script, tiny_config, tiny_moe_config

from model.checkpoint import load_model, save_weights
from model.cli import merge_lora as cli_merge_lora
from model.lora import LoraSettings, adapter_dir, apply_lora, save_adapter
from model.model import MiniMindForCausalLM

CONFIGS = {"dense": tiny_config, "moe": tiny_moe_config}


def batch(vocab: int, rows: int = 2, length: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (rows, length), generator=g)
    y = x.roll(-1, dims=1)
    y[:, : length // 2] = -100  # only the second half are "assistant" targets, as in SFT
    return x, y


def train_steps(model, steps: int = 3, lr: float = 1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)  # weight decay would move a leaked base weight
    model.train()
    for step in range(steps):
        x, y = batch(model.config.vocab_size, seed=step)
        model(input_ids=x, shift_labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def lora_model(kind: str, dropout: float = 0.1):
    base = MiniMindForCausalLM(CONFIGS[kind]())
    return apply_lora(base, LoraSettings(rank=4, alpha=8, dropout=dropout))


@pytest.mark.parametrize("kind", CONFIGS)
def test_only_adapter_parameters_receive_gradients(kind):
    model = lora_model(kind)
    model.train()
    x, y = batch(model.config.vocab_size)
    model(input_ids=x, shift_labels=y).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    # every default target got an adapter, in every layer (and every expert for MoE)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in with_grad}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # B starts at zero, so B carries the first gradient (A's is exactly zero at step 0)
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    # the MoE router is not a target: it stays frozen
    assert not any(".mlp.gate." in n for n in trainable)


@pytest.mark.parametrize("kind", CONFIGS)
def test_base_weights_bit_identical_after_training(kind):
    model = lora_model(kind)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model)
    for name, param in model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), f"base weight {name} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if ".lora_A." in n)
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if ".lora_B." in n)


@pytest.mark.parametrize("kind", CONFIGS)
def test_merged_weights_reproduce_adapter_logits(kind, tmp_path):
    model = train_steps(lora_model(kind))
    x, _ = batch(model.config.vocab_size, seed=99)
    with torch.no_grad():
        adapter_logits = model(input_ids=x).logits
        with model.disable_adapter():
            base_logits = model(input_ids=x).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter really changes the output

    # the same path as `--merge`: fold in, save as a stage checkpoint, load back as a plain model
    merged = model.merge_and_unload()
    assert isinstance(merged, MiniMindForCausalLM)
    assert not any("lora" in n for n in merged.state_dict())
    save_weights(merged, tmp_path / "merged.pth")
    reloaded = load_model(tmp_path / "merged.pth")
    with torch.no_grad():
        merged_logits = reloaded(input_ids=x).logits
    assert (merged_logits - adapter_logits).abs().max() < 1e-5


def test_saved_adapter_holds_only_adapter_and_reloads(tmp_path):
    base_path = tmp_path / "full_sft_64x2.pth"
    save_weights(MiniMindForCausalLM(tiny_config()), base_path)
    model = apply_lora(load_model(base_path), LoraSettings(rank=4, alpha=8))
    train_steps(model)
    x, _ = batch(model.config.vocab_size, seed=7)
    with torch.no_grad():
        expected = model(input_ids=x).logits

    folder = adapter_dir(tmp_path, "identity", model.config)
    assert folder.name == "lora_identity_64x2"
    save_adapter(model, folder, base_path=base_path)
    save_adapter(model, folder, base_path=base_path)  # overwriting an existing adapter works too
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not list(tmp_path.glob(".lora_*"))  # no temporary folders left behind

    from safetensors.torch import load_file
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(base_path)

    # the chat/eval scripts' loader (model/cli.py) folds the saved adapter into a fresh base
    with torch.no_grad():
        got = cli_merge_lora(load_model(base_path), folder)(input_ids=x).logits
    assert (got - expected).abs().max() < 1e-5


def test_unknown_target_is_a_clear_error():
    model = MiniMindForCausalLM(tiny_config())
    with pytest.raises(SystemExit, match="wq.*not among the model's linear layers.*q_proj"):
        apply_lora(model, LoraSettings(targets=("q_proj", "wq")))


# ----------------------------------------------------------------------------- the stage script


@pytest.fixture
def lora_files(tmp_path):
    base = tmp_path / "full_sft_64x2.pth"
    save_weights(MiniMindForCausalLM(tiny_config()), base)
    data = tmp_path / "lora_identity.jsonl"
    questions = ["你是谁？", "你叫什么名字？", "介绍一下你自己。", "你是谁开发的？"]
    with open(data, "w", encoding="utf-8") as f:
        for i in range(24):
            messages = [{"role": "user", "content": questions[i % 4]},
                        {"role": "assistant", "content": "我是MiniMind，一个小小的语言模型。"}]
            f.write(json.dumps({"conversations": messages}, ensure_ascii=False) + "\n")
        f.write('{"conversations": "broken"}\n')
    return base, data


def run_lora(tokenizer_dir, base, data, out_dir, *extra):
    load_script("4-lora_sft.py").main([
        "--ckpt", str(base), "--data", str(data), "--tokenizer", str(tokenizer_dir), "--out_dir", str(out_dir),
        "--batch_size", "4", "--learning_rate", "1e-2", "--warmup_steps", "1", "--max_steps", "4",
        "--log_interval", "2", "--save_interval", "0", "--lora_rank", "4",
        "--device", "cpu", "--dtype", "float32", "--threads", "1", *extra])


def test_script_resumes_exactly_and_leaves_base_untouched(lora_files, tokenizer_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    base, data = lora_files
    base_bytes = base.read_bytes()
    run_lora(tokenizer_dir, base, data, tmp_path / "straight")
    assert "skipped 1" in capsys.readouterr().out  # the broken line is reported, not silently dropped
    run_lora(tokenizer_dir, base, data, tmp_path / "split", "--stop_step", "2")
    run_lora(tokenizer_dir, base, data, tmp_path / "split", "--resume")
    # the adapter is named after the data file, and holds only the adapter
    a = load_file(tmp_path / "straight" / "lora_identity_64x2" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "lora_identity_64x2" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(".lora_" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert base.read_bytes() == base_bytes
    assert not (tmp_path / "straight" / "lora_identity_64x2.pth").exists()  # merged weights only with --merge


def test_script_merge_writes_equivalent_full_weights(lora_files, tokenizer_dir, tmp_path):
    from peft import PeftModel

    base, data = lora_files
    run_lora(tokenizer_dir, base, data, tmp_path, "--merge", "--name", "me")
    folder = tmp_path / "lora_me_64x2"
    x, _ = batch(512, seed=5)
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(load_model(base), str(folder))(input_ids=x).logits  # unmerged
        merged = load_model(tmp_path / "lora_me_64x2.pth")(input_ids=x).logits
        untouched = load_model(base)(input_ids=x).logits
    assert (merged - with_adapter).abs().max() < 1e-5
    assert (merged - untouched).abs().max() > 1e-3
