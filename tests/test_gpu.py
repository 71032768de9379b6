"""The device checks: the model, generation and training on the device named by --device.

    python -m pytest -m gpu --device cuda tests/test_gpu.py     # on a GPU machine, a minute or two
    python -m pytest tests/test_gpu.py                           # anywhere: the same checks on the CPU

Every test here is marked `gpu`. Most take the `device` fixture (tests/conftest.py): without --device
they run on the CPU with small shapes, so the checks themselves are exercised by every test run and
cannot rot; with --device cuda they run on the GPU, some at the `tiny` preset's size as well. A few
only mean something on a GPU (NCCL, TF32, the GPU's own choice of bf16, the stage scripts and torchrun
on CUDA); those take `cuda_device` and are skipped elsewhere with the reason.

What a GPU changes, and so what is checked here rather than only in tests/test_model.py:
- other kernels: SDPA's flash / memory-efficient attention, cuBLAS matmuls, fused AdamW. Exact fp32
  comparisons therefore run with TF32 off (the training engine turns it on, see `exact_fp32`).
- bf16 autocast on real bf16 hardware, and a checkpoint cast to bf16 as 2-eval.py and the server load it.
- NCCL instead of gloo under DDP, and CUDA's RNG state in the resume file.
- some kernels add in a varying order (atomic adds in backward passes), so two runs that a CPU makes
  bit-identical may differ in the last bits: see `assert_same_training`.
"""
import copy
import datetime
import math
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import (
    CountingData,
    greedy_by_recompute,
    load_script,
    next_token_loss,
    qa_conversation,
    tiny_config,
    tiny_moe_config,
    write_jsonl,
    write_pairs,
    write_pretrain_shards,
)

from engine.trainer import TrainConfig, Trainer
from model.checkpoint import load_model, weights_path
from model.cli import DEMO_QUESTIONS
from model.generate import generate
from model.LMConfig import LMConfig
from model.model import KVCache, MiniMindForCausalLM

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent
MOE = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)


@contextmanager
def tf32_restored():
    """Put the process-wide TF32 switches back as they were on the way out (a Trainer on a GPU sets them)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def exact_fp32():
    """Equality checks need true fp32 matmuls. The engine (engine/trainer.py) turns TF32 on for training
    on a GPU, which rounds matmul inputs to 10 mantissa bits; so every test here starts with it off, and
    the switches are put back afterwards. (On a CPU they change nothing.)"""
    with tf32_restored():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield


def model_configs(device) -> dict[str, LMConfig]:
    """The shapes to check on `device`: the tests' tiny ones everywhere (milliseconds on a CPU), and on a
    GPU also the `tiny` preset (4.6M parameters, vocab 6400), large enough for the GPU to pick its fast
    attention and matmul kernels."""
    configs = {"dense": tiny_config(), "moe": tiny_moe_config()}
    if device.type == "cuda":
        configs.update(dense_tiny=LMConfig.from_preset("tiny"), moe_tiny=LMConfig.from_preset("tiny", **MOE))
    return configs


def build(config: LMConfig, device, seed: int = 0) -> MiniMindForCausalLM:
    torch.manual_seed(seed)  # the same weights for the same config, so that two builds can be compared
    return MiniMindForCausalLM(config).to(device).eval()


def assert_same_training(a: dict, b: dict, start: dict, device) -> None:
    """Two runs (state dicts `a`, `b`) that should have computed the same thing; `start` is a state both
    passed through (the initial weights, or a half-way checkpoint), to measure how far training moved.

    On a CPU every kernel here is deterministic, so the weights must be bit-identical. On a GPU some
    kernels add in a varying order, and AdamW can turn such last-bit differences into larger ones on
    weights whose gradients are near zero; there the two runs must lie far closer to each other than to
    where they started. A resume that lost its optimizer state or its place in the data is off by a
    sizeable fraction of what training moved, and fails both ways."""
    assert a.keys() == b.keys()
    if device.type == "cpu":
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"not bit-identical: {differ[:5]}"
        return
    apart = math.sqrt(sum((a[k].double() - b[k].double()).square().sum().item() for k in a))
    moved = math.sqrt(sum((a[k].double() - start[k].double()).square().sum().item() for k in a))
    assert moved > 0 and apart < 1e-3 * moved, f"the runs are {apart:.3e} apart; training moved {moved:.3e}"


def cpu_state(model_or_state) -> dict:
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


# ----------------------------------------------------------------------------- the model and generation


@pytest.mark.parametrize("prompt_len", [1, 37])
def test_kv_cache_matches_full_forward(device, prompt_len):
    """Reading a sequence token by token through the KV cache gives the logits of one full forward pass."""
    for name, config in model_configs(device).items():
        model = build(config, device)
        total = prompt_len + 12
        x = torch.randint(0, config.vocab_size, (2, total), device=device)
        with torch.no_grad():
            full = model(x).logits
            cache = KVCache(capacity=8)  # small, so the cache has to grow on the way
            steps = [model(x[:, :prompt_len], past_key_values=cache, use_cache=True).logits]
            for i in range(prompt_len, total):
                steps.append(model(x[:, i:i + 1], past_key_values=cache, use_cache=True).logits)
        stepped = torch.cat(steps, dim=1)
        assert cache.get_seq_length() == total, name
        assert torch.allclose(stepped, full, atol=1e-4), f"{name}: max diff {(stepped - full).abs().max():.2e}"


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "all_ones_mask"])
def test_chunk_after_a_filled_cache_matches_full_forward(device, with_mask):
    """Several tokens at once after a filled cache (chunked prefill, speculative decoding): the model then
    builds the causal mask over cache + chunk itself, with or without an attention mask given."""
    for name, config in model_configs(device).items():
        model = build(config, device)
        x = torch.randint(3, config.vocab_size, (2, 30), device=device)
        with torch.no_grad():
            full = model(x).logits
            cache = KVCache()
            first = model(x[:, :20], past_key_values=cache, use_cache=True).logits
            mask = torch.ones_like(x) if with_mask else None
            second = model(x[:, 20:], attention_mask=mask, past_key_values=cache, use_cache=True).logits
        stepped = torch.cat([first, second], dim=1)
        assert torch.allclose(stepped, full, atol=1e-4), f"{name}: max diff {(stepped - full).abs().max():.2e}"


def test_greedy_generation_with_cache_equals_recomputing(device):
    """Our cached generation, reading everything again at every step, and transformers' generate (its own
    cache) all pick the same greedy tokens."""
    for name, config in model_configs(device).items():
        model = build(config, device)
        prompt = torch.randint(3, config.vocab_size, (9,)).tolist()
        cached = generate(model, [prompt], max_new_tokens=20, eos_token_id=-1)[0]
        assert cached == greedy_by_recompute(model, prompt, 20), name
        hf = model.generate(torch.tensor([prompt], device=device), max_new_tokens=20, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
        assert hf[0, len(prompt):].tolist() == cached, name


def test_left_padded_batch_generates_as_single_prompts(device):
    """Prompts of different lengths in one batch (left-padded and masked) get the tokens they get alone."""
    model = build(tiny_config(), device)
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (3, 11, 6)]
    batched = generate(model, prompts, max_new_tokens=8, eos_token_id=-1)
    assert batched == [generate(model, [p], max_new_tokens=8, eos_token_id=-1)[0] for p in prompts]


def test_sdpa_matches_plain_attention(device):
    """torch's scaled_dot_product_attention (flash / memory-efficient kernels on a GPU) against attention
    written out as softmax(QK^T)V, causal and with left padding (the masked path)."""
    for name, config in model_configs(device).items():
        if config.use_moe:
            continue  # attention is the same module in both; the dense models cover it
        sdpa = build(config, device)
        plain_config = copy.deepcopy(config)
        plain_config.flash_attn = False
        plain = build(plain_config, device)
        plain.load_state_dict(sdpa.state_dict())
        length = min(128, config.max_seq_len)
        x = torch.randint(3, config.vocab_size, (2, length), device=device)
        mask = torch.ones_like(x)
        mask[0, :17] = 0  # 17 padding tokens on the first row
        with torch.no_grad():
            causal = sdpa(x).logits, plain(x).logits
            padded = sdpa(x, attention_mask=mask).logits[:, 17:], plain(x, attention_mask=mask).logits[:, 17:]
        assert torch.allclose(*causal, atol=1e-4), f"{name}: max diff {(causal[0] - causal[1]).abs().max():.2e}"
        assert torch.allclose(*padded, atol=1e-4), f"{name}: max diff {(padded[0] - padded[1]).abs().max():.2e}"


# ----------------------------------------------------------------------------- training in bf16


BF16_STEPS = 30


@pytest.fixture(scope="module")
def bf16_run(device, tmp_path_factory):
    """One short training run through the engine in bf16 autocast on `device`; the tests below read it."""
    out_dir = tmp_path_factory.mktemp("bf16_run")
    config = tiny_config(vocab_size=64, max_seq_len=32)
    with tf32_restored():  # set up before, and so outside, the first test's `exact_fp32`
        trainer = Trainer(TrainConfig(out_dir=str(out_dir), device=str(device), dtype="bfloat16", batch_size=8,
                                      max_steps=BF16_STEPS, learning_rate=3e-3, warmup_steps=2, log_interval=1,
                                      eval_interval=0, save_interval=0, threads=1, seed=0))
        result = trainer.fit(MiniMindForCausalLM(config), CountingData(), next_token_loss,
                             name=f"pretrain_{config.tag()}")
        trainer.close()
    return trainer, result, weights_path(out_dir, "pretrain", config)


def test_bf16_autocast_training_learns_with_fp32_master_weights(bf16_run, device):
    trainer, result, _ = bf16_run
    assert trainer.dtype == torch.bfloat16
    losses = [loss for _, loss in result.history["train"]]
    assert len(losses) == BF16_STEPS and all(map(math.isfinite, losses))
    # A fresh model spreads its bets evenly: its first loss is close to ln(vocab).
    assert losses[0] == pytest.approx(math.log(64), abs=0.3)
    assert losses[-1] < 0.5 * losses[0], losses
    # The weights the optimizer updates stay fp32; only the math inside autocast is bf16.
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    x = torch.arange(16, device=device)[None]
    with trainer.autocast:
        assert result.model(x).logits.dtype == torch.bfloat16


def test_bf16_copy_of_a_trained_checkpoint_predicts_as_fp32(bf16_run, device):
    """2-eval.py and the server may load a checkpoint cast to bf16 (half the memory). On rows of the task
    it learned, it must predict as the fp32 model does, and so must fp32 weights under autocast.
    The RoPE frequencies stay fp32 in the cast model: in bf16 the angles of far positions would drift."""
    _, _, path = bf16_run
    fp32 = load_model(path, device=device)
    cast = load_model(path, device=device, dtype=torch.bfloat16)
    assert cast.model.embed_tokens.weight.dtype == torch.bfloat16
    assert cast.model.inv_freq.dtype == torch.float32
    x, y = (torch.stack(part).to(device) for part in zip(*[CountingData()[i] for i in range(32)]))
    with torch.no_grad():
        reference = fp32(input_ids=x, shift_labels=y)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            autocast = fp32(input_ids=x, shift_labels=y)
        bf16 = cast(input_ids=x, shift_labels=y)
    assert reference.loss < 0.5 * math.log(64)  # it did learn, so its predictions mean something
    for name, out in (("autocast", autocast), ("cast to bf16", bf16)):
        agree = (out.logits.argmax(-1) == reference.logits.argmax(-1)).float().mean().item()
        assert agree > 0.95, f"{name}: argmax agrees with fp32 on {agree:.1%} of positions"
        assert out.loss.item() == pytest.approx(reference.loss.item(), rel=0.05, abs=0.02), name


def test_ddp_in_a_one_process_group_matches_a_plain_run(device, tmp_path, monkeypatch):
    """The engine's DDP code (the DDP wrapper, no_sync over two micro-steps, all-reduced logging, gathered
    RNG states, barriers) in a real process group of one, NCCL on a GPU, gloo on a CPU, against the same
    run without DDP. A world of one averages each gradient with itself, so nothing may change. The MoE
    model makes an idle expert possible, which DDP refuses unless it still gets a (zero) gradient."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dtype = "bfloat16" if device.type == "cuda" else "float32"

    def train(ddp: bool):
        trainer = Trainer(TrainConfig(out_dir=str(tmp_path / ("ddp" if ddp else "plain")), device=str(device),
                                      dtype=dtype, batch_size=4, accumulation_steps=2, max_steps=3,
                                      learning_rate=3e-3, warmup_steps=1, log_interval=1, eval_interval=0,
                                      save_interval=0, threads=1, seed=5))
        if ddp:
            with socket.socket() as s:  # a free port for the group's rendezvous
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
            monkeypatch.setenv("MASTER_PORT", str(port))
            dist.init_process_group(backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
            trainer.ddp = True  # the engine itself only turns DDP on when WORLD_SIZE > 1
        try:
            model = MiniMindForCausalLM(tiny_config(vocab_size=64, **MOE))  # after Trainer: seeded
            start = cpu_state(model)
            result = trainer.fit(model, CountingData(), next_token_loss, name="ddp_check")
            assert dist.is_initialized() == ddp
            trainer.close()
            assert not dist.is_initialized()  # close() left the group
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return start, cpu_state(result.model)

    start, plain = train(ddp=False)
    start_ddp, ddp = train(ddp=True)
    assert all(torch.equal(start[k], start_ddp[k]) for k in start)  # the same seed built the same model
    assert_same_training(plain, ddp, start, device)


# ----------------------------------------------------------------------------- the stage scripts

PRETRAIN_SHAPE = ["--vocab_size", "512", "--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2",
                  "--max_seq_len", "32"]
PRETRAIN_CONFIG = tiny_config(max_seq_len=32)  # the shape the flags above describe, for file names


@pytest.fixture(scope="module")
def pretrain_shards(tmp_path_factory, tokenizer, tokenizer_dir):
    folder = tmp_path_factory.mktemp("shards")
    write_pretrain_shards(folder, tokenizer, tokenizer_dir)
    return folder


def stage_flags(device) -> list[str]:
    """What every stage script gets here: the device, and bf16 on a GPU (as a GPU run would use it)."""
    return ["--device", str(device), "--dtype", "bfloat16" if device.type == "cuda" else "float32",
            "--threads", "1", "--log_interval", "5"]


def test_pretrain_script_resumed_run_matches_uninterrupted(device, pretrain_shards, tokenizer_dir, tmp_path):
    """1-pretrain.py stopped half way (--stop_step) and continued (--resume) ends where one run ends: the
    resume file carries the weights, AdamW's moments, the data position and every RNG, CUDA's included."""
    pretrain = load_script("1-pretrain.py")

    def run(out_dir, *extra):
        pretrain.main([*PRETRAIN_SHAPE, *stage_flags(device), "--data_dir", str(pretrain_shards),
                       "--tokenizer", str(tokenizer_dir), "--out_dir", str(out_dir), "--batch_size", "8",
                       "--max_steps", "8", "--learning_rate", "3e-3", "--eval_interval", "0", *extra])
        return cpu_state(torch.load(weights_path(out_dir, "pretrain", PRETRAIN_CONFIG), weights_only=True))

    whole = run(tmp_path / "whole")
    half_way = run(tmp_path / "split", "--stop_step", "4")
    resumed = run(tmp_path / "split", "--resume")
    assert_same_training(whole, resumed, half_way, device)
    assert not all(torch.equal(half_way[k], resumed[k]) for k in half_way)  # the second half did train


def test_stage_scripts_chain_on_the_gpu(cuda_device, pretrain_shards, tokenizer_dir, tmp_path, capsys):
    """Every stage on the GPU in bf16, each starting from the previous stage's file in --out_dir as a user
    runs them: pretrain, full SFT, DPO (its frozen reference moved to the GPU too), LoRA with --merge,
    then 2-eval.py --auto answering on the DPO weights and on the LoRA adapter."""
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [qa_conversation(i) for i in range(32)])
    dpo_data = write_pairs(tmp_path / "dpo.jsonl", 32, seed=1)
    dpo_val = write_pairs(tmp_path / "dpo_val.jsonl", 8, seed=2)
    out = tmp_path / "out"
    common = [*PRETRAIN_SHAPE, *stage_flags(cuda_device), "--tokenizer", str(tokenizer_dir), "--out_dir", str(out),
              "--batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "1", "--eval_interval", "0"]

    def weights(stage):
        return cpu_state(torch.load(weights_path(out, stage, PRETRAIN_CONFIG), weights_only=True))

    load_script("1-pretrain.py").main([*common, "--data_dir", str(pretrain_shards), "--max_steps", "6"])
    load_script("3-full_sft.py").main([*common, "--data", str(sft_data), "--val_data", str(sft_data),
                                       "--seq_len", "32", "--max_steps", "4", "--eos_check", "0"])
    load_script("5-dpo_train.py").main([*common, "--data", str(dpo_data), "--val_data", str(dpo_val),
                                        "--seq_len", "32", "--max_steps", "3"])
    load_script("4-lora_sft.py").main([*common, "--data", str(sft_data), "--name", "identity", "--seq_len", "32",
                                       "--max_steps", "3", "--lora_rank", "4", "--merge"])
    stages = {stage: weights(stage) for stage in ("pretrain", "full_sft", "dpo", "lora_identity")}
    for stage, state in stages.items():
        assert all(torch.isfinite(v).all() for v in state.values()), f"{stage}: non-finite weights"
    for before, after in (("pretrain", "full_sft"), ("full_sft", "dpo"), ("full_sft", "lora_identity")):
        key = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(stages[before][key], stages[after][key]), f"{after} did not move {before}'s weights"

    chat = load_script("2-eval.py")
    for weight in ("dpo", "lora_identity"):
        capsys.readouterr()
        chat.main([*PRETRAIN_SHAPE, "--out_dir", str(out), "--tokenizer", str(tokenizer_dir), "--weight", weight,
                   "--device", str(cuda_device), "--dtype", "bfloat16", "--auto", "--max_new_tokens", "8",
                   "--temperature", "0"])
        printed = capsys.readouterr().out
        assert all(f"👶 {question}" in printed for question in DEMO_QUESTIONS), weight
        assert f"{len(DEMO_QUESTIONS)} answers, " in printed, weight


def test_torchrun_with_one_process_trains_on_the_gpu(cuda_device, pretrain_shards, tokenizer_dir, tmp_path):
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE=1: the engine takes the GPU of its local rank and
    starts no process group (there is nobody to talk to)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "1-pretrain.py", *PRETRAIN_SHAPE, "--device", "cuda", "--dtype", "bfloat16", "--threads", "1",
               "--data_dir", str(pretrain_shards), "--tokenizer", str(tokenizer_dir), "--out_dir", str(tmp_path),
               "--batch_size", "8", "--max_steps", "4", "--eval_interval", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "device cuda:0" in done.stdout and "DDP" not in done.stdout
    state = torch.load(weights_path(tmp_path, "pretrain", PRETRAIN_CONFIG), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_auto_precision_on_the_gpu_is_bf16_and_training_uses_tf32(cuda_device, tmp_path):
    """--dtype auto on a GPU: bf16 from Ampere (compute capability 8.0) on, where the tensor cores have it,
    else fp16 with a gradient scaler. The engine also lets fp32 matmuls use TF32 tensor cores."""
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), device=str(cuda_device), dtype="auto"))
    major, _ = torch.cuda.get_device_capability(cuda_device)
    assert trainer.dtype == (torch.bfloat16 if major >= 8 else torch.float16), trainer.dtype_reason
    assert torch.backends.cuda.matmul.allow_tf32  # set by Trainer(); `exact_fp32` puts it back afterwards
    a = torch.randn(64, 64, device=cuda_device)
    with trainer.autocast:
        assert (a @ a).dtype == trainer.dtype
