"""LoRA: only adapters learn, the base stays bit-identical, merging reproduces adapter+base exactly, an adapter
folder loads as --ckpt on the base it records, and with the adapter off the model is the base bit for bit."""
import argparse
import copy
import json

import pytest
import torch
from conftest import load_script, tiny_config, tiny_moe_config

from peft import PeftModel

from evaluation.identity import same_logits
from model.checkpoint import load_model, save_weights
from model.cli import add_model_args, load_from_args, resolve_checkpoint
from model.cli import merge_lora as cli_merge_lora
from model.errors import MiniMindError
from model.lora import BASE_FILE, LoraSettings, adapter_dir, apply_lora, save_adapter
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
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                        BASE_FILE]
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
    with pytest.raises(MiniMindError, match="wq.*not among the model's linear layers.*q_proj"):
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


@pytest.mark.parametrize("grouping", [[], ["--group_by_length", "true"]], ids=["shuffled", "grouped_by_length"])
def test_script_resumes_exactly_and_leaves_base_untouched(lora_files, tokenizer_dir, tmp_path, capsys, grouping):
    from safetensors.torch import load_file

    base, data = lora_files
    base_bytes = base.read_bytes()
    run_lora(tokenizer_dir, base, data, tmp_path / "straight", *grouping)
    assert "skipped 1" in capsys.readouterr().out  # the broken line is reported, not silently dropped
    run_lora(tokenizer_dir, base, data, tmp_path / "split", "--stop_step", "2", *grouping)
    run_lora(tokenizer_dir, base, data, tmp_path / "split", "--resume", *grouping)
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


# ----------------------------------------------------------------------------- an adapter folder as --ckpt


def trained_adapter(tmp_path, out_name="out"):
    """out/full_sft_64x2.pth and a trained adapter for it in out/lora_identity_64x2/ (base path recorded
    relative to tmp_path, as training run from the repository records out/full_sft_...)."""
    out = tmp_path / out_name
    out.mkdir()
    base_path = out / "full_sft_64x2.pth"
    save_weights(MiniMindForCausalLM(tiny_config()), base_path, "full_sft")
    model = train_steps(apply_lora(load_model(base_path), LoraSettings(rank=4, alpha=8)))
    folder = adapter_dir(out, "identity", model.config)
    save_adapter(model, folder, base_path=base_path)
    return base_path, folder


def loaded(argv, tokenizer_dir):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args([*argv, "--tokenizer", str(tokenizer_dir), "--device", "cpu", "--dtype", "float32"])
    return load_from_args(args, verbose=False)[0]


def test_adapter_folder_as_ckpt_needs_no_preset(tmp_path, tokenizer_dir):
    base_path, folder = trained_adapter(tmp_path)
    recorded = json.loads((folder / BASE_FILE).read_text())
    assert recorded["base"] == str(base_path) and recorded["stage"] == "full_sft" and recorded["config"]["dim"] == 64
    x, _ = batch(512, seed=3)
    old_way = loaded(["--weight", "lora_identity", "--out_dir", str(base_path.parent), "--dim", "64",
                      "--n_layers", "2"], tokenizer_dir)
    new_way = loaded(["--ckpt", str(folder)], tokenizer_dir)  # no --preset, no shape flags
    with torch.no_grad():
        expected, got = old_way(input_ids=x).logits, new_way(input_ids=x).logits
        base = load_model(base_path)(input_ids=x).logits
    assert torch.equal(got, expected)
    assert (got - base).abs().max() > 1e-3  # the adapter is in it


def test_adapter_folder_finds_its_base_after_a_move(tmp_path, tokenizer_dir):
    """The recorded path is relative to where training ran; moved together, the base beside the folder is found."""
    base_path, folder = trained_adapter(tmp_path)
    moved = tmp_path / "elsewhere"
    base_path.parent.rename(moved)
    path, adapter = resolve_checkpoint(argparse.Namespace(ckpt=str(moved / folder.name), out_dir="out"))
    assert path == moved / base_path.name and adapter == moved / folder.name
    loaded(["--ckpt", str(moved / folder.name)], tokenizer_dir)


def test_adapter_folder_without_its_base_is_one_clear_line(tmp_path, tokenizer_dir):
    base_path, folder = trained_adapter(tmp_path)
    base_path.unlink()
    with pytest.raises(MiniMindError) as error:
        loaded(["--ckpt", str(folder)], tokenizer_dir)
    message = str(error.value)
    assert "\n" not in message and f"its base checkpoint {base_path} is missing" in message
    assert "config.json" not in message


def test_adapter_folder_on_a_base_of_another_shape_is_refused(tmp_path, tokenizer_dir):
    base_path, folder = trained_adapter(tmp_path)
    save_weights(MiniMindForCausalLM(tiny_config(dim=32, n_heads=2, n_kv_heads=1)), base_path, "full_sft")
    with pytest.raises(MiniMindError, match=r"another shape.*dim 64 vs 32"):
        loaded(["--ckpt", str(folder)], tokenizer_dir)


@pytest.mark.parametrize("kind", CONFIGS)
def test_adapter_off_is_the_base_model_bit_for_bit(kind, tmp_path):
    base = MiniMindForCausalLM(CONFIGS[kind]()).eval()
    model = train_steps(apply_lora(copy.deepcopy(base), LoraSettings(rank=4, alpha=8)))
    x, _ = batch(model.config.vocab_size, seed=11)
    with torch.no_grad():
        with model.disable_adapter():
            off = model(input_ids=x).logits
        on, plain = model(input_ids=x).logits, base(input_ids=x).logits
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 1e-3
    # the same through a saved adapter, as the LoRA stage checks it (evaluation/identity.py)
    save_adapter(model, tmp_path / "lora")
    prompts = [x[0].tolist(), x[1, :5].tolist()]
    adapted = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "lora")).eval()
    with adapted.disable_adapter():
        assert same_logits(adapted, base, prompts)
    assert not same_logits(adapted, base, prompts)
