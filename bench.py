"""Benchmark MiniMind against transformers' own models of the same shape, on this machine.

    python bench.py --quick                    # ~2 min: tiny and small-T training (fp32, eager), generation
    python bench.py                            # full (~10 min on 2 cores): + moe, bf16, torch.compile, memory
    python bench.py --presets small-T --dtypes fp32 --modes eager,compile --heavy_presets small-T

Contenders run in one process, interleaved round by round (A, B, A, B, ...), so a noisy machine
slows both alike; the tables report medians, the spread (min-max over rounds) and our/reference ratios.

  train     one optimizer step: forward + loss + backward + clip_grad_norm_(1.0) + AdamW step, with
            the training engine's parameter groups (engine/trainer.py) and fused AdamW (--optimizer:
            on CPU fused is ~6x faster than foreach, see PERF.md). MiniMind trains on `shift_labels`
            as the engine does; the reference on `labels`.
  generate  batch 1, a 32-token prompt, 256 new tokens, greedy, KV cache: ours through
            model/generate.py, the reference through its own `generate`. Time to first token is a
            separate 1-token call (prefill + one step). In fp32 a third contender, ours with int8
            weights (model/quantize.py), runs in the same rounds; its quality against ours in fp32 is
            the number of its greedy tokens that equal fp32's before the first difference, and the
            largest logit difference over the prompt. Random weights mostly repeat a token, so for
            quality figures that mean something pass trained weights with --gen_ckpt.
  peak      a (2048 x 512) @ (512 x 1408) matmul, the shape of small-T's FFN, in fp32 and bf16, at
            the start and end of the run. MFU is measured against the higher of the two.
  memory    peak RSS of a fresh process doing one small-T training step at batch 8 x 512 (full mode).

MFU counts useful FLOPs: per token 6 * N + 6 * n_layers * T * dim, where N counts the weights of
every matmul a token goes through (attention, FFN or its shared + top-k routed experts, router,
lm_head; the embedding lookup is free), and the second term is QK^T and AV over a causal context
of T keys (half the T x T square, forward + backward).

References: transformers' LlamaForCausalLM (dense; our weights load into it 1:1, checked at start)
and Qwen2MoeForCausalLM for the moe preset: the same attention and top-k softmax routing with
renormalised weights, but its one shared expert is scaled by a learned sigmoid gate, and its aux loss
is only computed on request (off here), so it does slightly less work than ours per step.

Writes out/bench.json, and the markdown tables between the bench markers in PERF.md (--md).
"""
import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads libgomp). On cores shared with
# other processes a spinning thread steals the time its partner needs: a tiny-preset step measured
# 0.9 s with PASSIVE against 5.2 s with ACTIVE on 2 busy cores. Override from the shell to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from engine.optim import param_groups
from export.native import native_config
from model.checkpoint import atomic_write, load_model
from model.errors import MiniMindError, run_main
from model.generate import generate
from model.LMConfig import LMConfig, parse_bool
from model.model import MiniMindForCausalLM
from model.quantize import INT8_THREADS, quantize_int8
from model.runtime import matmul_flops, train_flops_per_token

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MD_START, MD_END = "<!-- bench:start -->", "<!-- bench:end -->"


# ----------------------------------------------------------------------------- the contenders

def reference_model(cfg: LMConfig) -> nn.Module:
    """transformers' native model of the same shape as MiniMind `cfg` (export/native.py's config)."""
    from transformers import LlamaForCausalLM, Qwen2MoeForCausalLM

    if not cfg.use_moe:
        return LlamaForCausalLM(native_config(cfg))
    if cfg.n_shared_experts > 1:
        raise MiniMindError("the Qwen2-MoE reference has one shared expert; use --n_shared_experts 0 or 1")
    return Qwen2MoeForCausalLM(native_config(cfg))


def build_pair(preset: str, ckpt: str | None = None) -> dict[str, nn.Module]:
    """Ours with random weights of `preset`, or with the trained weights of `ckpt`; the reference gets ours."""
    ours = load_model(ckpt) if ckpt else MiniMindForCausalLM(LMConfig.from_preset(preset))
    cfg = ours.config
    ref = reference_model(cfg)
    if not cfg.use_moe:  # same weights -> same loss, which shows the two compute the same function
        missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        x = torch.randint(0, cfg.vocab_size, (1, 64))
        with torch.no_grad():
            a, b = ours(x, labels=x).loss, ref(input_ids=x, labels=x).loss
        if abs(a - b) > 1e-3:
            raise MiniMindError(f"{preset}: MiniMind and the Llama reference disagree (loss {a:.5f} vs {b:.5f})")
    return {"ours": ours, "reference": ref}


# ----------------------------------------------------------------------------- measurements

def matmul_peaks() -> dict[str, float]:
    """FLOP/s per dtype of the median of 5 (2048 x 512) @ (512 x 1408) matmuls, small-T's FFN shape."""
    return {name: matmul_flops(torch.device("cpu"), dtype, 2048, 512, 1408, reps=5, statistic=statistics.median)
            for name, dtype in DTYPES.items()}


def make_train_step(name: str, model: nn.Module, dtype: torch.dtype, compiled: bool, adamw: str = "fused"):
    """A closure doing one full optimizer step on (x, y); fp32 master weights, autocast for bf16."""
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, **{adamw: True})
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)

    def step(x, y):
        with autocast:
            if name == "ours":
                loss = forward(input_ids=x, shift_labels=y).loss
            else:
                loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def bench_train(preset, dtype_name, mode, batch, seq, rounds, steps, optimizer, log) -> list[dict]:
    cfg = LMConfig.from_preset(preset)
    seq = min(seq, cfg.max_seq_len)
    dtype = DTYPES[dtype_name]
    models = build_pair(preset)
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    steppers, warmup = {}, {}
    for name, model in models.items():
        steppers[name] = make_train_step(name, model, dtype, mode == "compile", optimizer)
        start = time.perf_counter()
        for _ in range(2):  # the first steps compile, allocate optimizer state and warm the allocator
            steppers[name](x, y)
        warmup[name] = time.perf_counter() - start
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, step in steppers.items():
            for _ in range(steps):
                start = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - start)
    rows = []
    for name in models:
        s = spread(times[name])
        tokens = batch * seq
        row = dict(kind="train", preset=preset, dtype=dtype_name, mode=mode, contender=name, batch=batch, seq=seq,
                   step_s=s, tok_s=tokens / s["median"], tok_s_min=tokens / s["max"], tok_s_max=tokens / s["min"],
                   warmup_s=warmup[name], flops_per_token=train_flops_per_token(cfg, seq))
        rows.append(row)
        log(f"  train {preset:8s} {dtype_name} {mode:7s} {name:9s} {row['tok_s']:8.0f} tok/s "
            f"(step {s['median']:.3f}s, {s['min']:.3f}-{s['max']:.3f}; warmup {warmup[name]:.1f}s)")
    return rows


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_generate(preset, dtype_name, rounds, prompt_len, new_tokens, log, ckpt=None) -> list[dict]:
    dtype = DTYPES[dtype_name]
    models = {name: m.to(dtype).eval() for name, m in build_pair(preset, ckpt).items()}
    if dtype_name == "fp32":
        models["ours_int8"] = quantize_int8(models["ours"])
    cfg = models["ours"].config
    label = Path(ckpt).stem if ckpt else preset
    prompt = torch.randint(3, cfg.vocab_size, (prompt_len,)).tolist()

    def run(name, n):
        model = models[name]
        if name == "ours_int8":
            with torch_threads(INT8_THREADS):  # as load_from_args runs it (model/quantize.py says why)
                out = generate(model, [prompt], max_new_tokens=n, eos_token_id=-1)[0]
        elif name == "ours":
            out = generate(model, [prompt], max_new_tokens=n, eos_token_id=-1)[0]
        else:
            ids = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            out = ids[0, prompt_len:].tolist()
        assert len(out) == n, (name, len(out))
        return out

    for name in models:
        run(name, 4)  # warm up
    total, first = {n: [] for n in models}, {n: [] for n in models}
    outputs = {}
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            run(name, 1)
            first[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            outputs[name] = run(name, new_tokens)
            total[name].append(time.perf_counter() - start)
    rows = []
    for name in models:
        s, f = spread(total[name]), spread(first[name])
        row = dict(kind="generate", preset=label, dtype=dtype_name, contender=name, prompt=prompt_len,
                   new_tokens=new_tokens, total_s=s, ttft_s=f, tok_s=new_tokens / s["median"],
                   tok_s_min=new_tokens / s["max"], tok_s_max=new_tokens / s["min"])
        quality = ""
        if name == "ours_int8":
            with torch.inference_mode():
                x = torch.tensor([prompt])
                exact, int8 = models["ours"](x).logits, models["ours_int8"](x).logits
            same = [a == b for a, b in zip(outputs[name], outputs["ours"])]
            row.update(greedy_agree=same.index(False) if False in same else len(same),
                       max_logit_diff=(int8 - exact).abs().max().item(), max_abs_logit=exact.abs().max().item())
            quality = (f"; first {row['greedy_agree']}/{new_tokens} tokens equal fp32's, logits within "
                       f"{row['max_logit_diff']:.3f} (largest fp32 logit {row['max_abs_logit']:.2f})")
        rows.append(row)
        log(f"  generate {label:8s} {dtype_name} {name:9s} {row['tok_s']:7.1f} tok/s "
            f"({s['min']:.2f}-{s['max']:.2f}s per {new_tokens}); first token {f['median'] * 1e3:.0f} ms{quality}")
    return rows


def peak_rss_of_training(contender: str, preset: str, batch: int, seq: int, optimizer: str) -> dict:
    """Run one training step in a fresh process and read its peak resident memory."""
    cmd = [sys.executable, __file__, "--_rss_child", contender, "--presets", preset,
           "--batch", str(batch), "--seq", str(seq), "--optimizer", optimizer]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"memory run for {contender} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_child(contender: str, preset: str, batch: int, seq: int, optimizer: str) -> None:
    cfg = LMConfig.from_preset(preset)
    model = MiniMindForCausalLM(cfg) if contender == "ours" else reference_model(cfg)
    step = make_train_step(contender, model, torch.float32, False, optimizer)
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    start = time.perf_counter()
    step(data[:, :-1].contiguous(), data[:, 1:].contiguous())
    print(json.dumps({"contender": contender, "preset": preset, "batch": batch, "seq": seq,
                      "peak_rss_mib": peak_rss_mib(), "step_s": time.perf_counter() - start}))


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the
    parent's peak through fork + exec, so a child of a big process would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


# ----------------------------------------------------------------------------- report

def markdown(result: dict) -> str:
    peak = result["peak_flops"]
    lines = [f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, torch "
             f"{result['machine']['torch']}, transformers {result['machine']['transformers']}; "
             f"{result['date']}, `python bench.py {result['args']}`.", "",
             "| matmul peak (GFLOP/s) | fp32 | bf16 |", "|---|---|---|"]
    for when in ("start", "end"):
        lines.append(f"| {when} | {result['peaks'][when]['fp32'] / 1e9:.1f} | {result['peaks'][when]['bf16'] / 1e9:.1f} |")
    train = [r for r in result["rows"] if r["kind"] == "train"]
    if train:
        lines += ["", "Training step (forward + backward + clip + AdamW), tokens/s median (min-max over rounds):", "",
                  "| preset | dtype | mode | batch x seq | ours tok/s | reference tok/s | ours/ref | ours MFU | ref MFU | warmup ours / ref (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for ours in (r for r in train if r["contender"] == "ours"):
            ref = next(r for r in train if r["contender"] == "reference" and
                       all(r[k] == ours[k] for k in ("preset", "dtype", "mode")))
            mfu = lambda r: r["tok_s"] * r["flops_per_token"] / peak[r["dtype"]]
            lines.append(
                f"| {ours['preset']} | {ours['dtype']} | {ours['mode']} | {ours['batch']}x{ours['seq']} | "
                f"{ours['tok_s']:.0f} ({ours['tok_s_min']:.0f}-{ours['tok_s_max']:.0f}) | "
                f"{ref['tok_s']:.0f} ({ref['tok_s_min']:.0f}-{ref['tok_s_max']:.0f}) | {ours['tok_s'] / ref['tok_s']:.2f}x | "
                f"{mfu(ours):.0%} | {mfu(ref):.0%} | {ours['warmup_s']:.1f} / {ref['warmup_s']:.1f} |")
    gen = [r for r in result["rows"] if r["kind"] == "generate"]
    if gen:
        lines += ["", "Generation, batch 1, greedy, KV cache (new tokens/s including prefill; first token = prefill + 1 step). "
                  "int8: ours with int8 weights (model/quantize.py) in the same rounds, against the fp32 reference; "
                  "its last column compares it with ours in fp32 (greedy tokens equal before the first difference; "
                  "largest logit difference over the prompt):", "",
                  "| preset | dtype | prompt + new | ours tok/s | reference tok/s | ours/ref | ours first token | ref first token | int8 vs fp32 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for ours in (r for r in gen if r["contender"] in ("ours", "ours_int8")):
            ref = next(r for r in gen if r["contender"] == "reference" and
                       all(r[k] == ours[k] for k in ("preset", "dtype")))
            int8 = ours["contender"] == "ours_int8"
            quality = (f"{ours['greedy_agree']}/{ours['new_tokens']} tokens, logits ±{ours['max_logit_diff']:.3f} "
                       f"(of {ours['max_abs_logit']:.2f})" if int8 else "")
            lines.append(
                f"| {ours['preset']} | {'int8' if int8 else ours['dtype']} | {ours['prompt']} + {ours['new_tokens']} | "
                f"{ours['tok_s']:.1f} ({ours['tok_s_min']:.1f}-{ours['tok_s_max']:.1f}) | "
                f"{ref['tok_s']:.1f} ({ref['tok_s_min']:.1f}-{ref['tok_s_max']:.1f}) | {ours['tok_s'] / ref['tok_s']:.2f}x | "
                f"{ours['ttft_s']['median'] * 1e3:.0f} ms | {ref['ttft_s']['median'] * 1e3:.0f} ms | {quality} |")
    if result.get("memory"):
        lines += ["", "| peak RSS, one training step, fp32 | batch x seq | MiB |", "|---|---|---|"]
        for m in result["memory"]:
            lines.append(f"| {m['preset']} {m['contender']} | {m['batch']}x{m['seq']} | {m['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def write_markdown(path: Path, table: str) -> None:
    """Replace the text between the bench markers in `path` (append the markers when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{MD_START}\n{table}\n{MD_END}"
    if MD_START in text and MD_END in text:
        head, rest = text.split(MD_START, 1)
        text = head + block + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny + small-T, fp32 eager, 3 rounds (~2 min)")
    parser.add_argument("--presets", default=None, help="comma list, '' for none (default: tiny,small-T,moe; quick: tiny,small-T)")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (default: fp32,bf16; quick: fp32)")
    parser.add_argument("--modes", default=None, help="comma list of eager,compile (default: both; quick: eager)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (sequences)")
    parser.add_argument("--seq", type=int, default=256, help="training sequence length")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 3)")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per contender per round")
    parser.add_argument("--optimizer", choices=["fused", "foreach"], default="fused", help="AdamW implementation")
    parser.add_argument("--gen_preset", default="small-T", help="preset for the generation benchmark ('' to skip)")
    parser.add_argument("--gen_ckpt", default=None,
                        help="generate with these trained weights (a .pth with its .json) instead of random ones of "
                             "--gen_preset: int8's agreement with fp32 then measures a real model")
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--heavy_presets", default="tiny",
                        help="presets that also run torch.compile, and bf16 where it is emulated (minutes each)")
    parser.add_argument("--memory", type=parse_bool, default=None,
                        help="true/false: peak-RSS runs at batch 8 x 512 (default: not in quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per available core)")
    parser.add_argument("--json", default="out/bench.json")
    parser.add_argument("--md", default="PERF.md", help="file whose bench block is replaced with the tables ('' to skip)")
    parser.add_argument("--_rss_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args._rss_child:
        return rss_child(args._rss_child, args.presets, args.batch, args.seq, args.optimizer)
    quick = args.quick
    presets = [p for p in (args.presets if args.presets is not None else
                           ("tiny,small-T" if quick else "tiny,small-T,moe")).split(",") if p]
    dtypes = (args.dtypes or ("fp32" if quick else "fp32,bf16")).split(",")
    modes = (args.modes or ("eager" if quick else "eager,compile")).split(",")
    rounds = args.rounds or (3 if quick else 5)
    heavy = (args.heavy_presets or "").split(",")
    memory = args.memory if args.memory is not None else not quick
    for name, values, allowed in (("dtypes", dtypes, DTYPES), ("modes", modes, ("eager", "compile"))):
        if bad := [v for v in values if v not in allowed]:
            raise MiniMindError(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    log = lambda text: print(text, flush=True)
    started = time.perf_counter()

    import transformers
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": " ".join(sys.argv[1:]),
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "python": platform.python_version(),
                          "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "optimizer": args.optimizer,
                          "load_avg": os.getloadavg()},
              "peaks": {}, "rows": [], "memory": []}
    result["peaks"]["start"] = matmul_peaks()
    log(f"matmul peak at start: fp32 {result['peaks']['start']['fp32'] / 1e9:.1f}, "
        f"bf16 {result['peaks']['start']['bf16'] / 1e9:.1f} GFLOP/s")
    # Without bf16 instructions (AVX-512 BF16 / AMX) bf16 matmuls are emulated and several times slower
    # than fp32; a bf16 step of a 26M model would then take minutes, so bf16 training runs on tiny only.
    bf16_slow = result["peaks"]["start"]["bf16"] < 0.5 * result["peaks"]["start"]["fp32"]

    torch.manual_seed(0)
    for preset in presets:
        for dtype_name in dtypes:
            if dtype_name == "bf16" and bf16_slow and preset not in heavy:
                log(f"  train {preset} bf16: skipped, bf16 matmuls are emulated on this CPU (see the peaks)")
                continue
            for mode in modes:
                if mode == "compile" and preset not in heavy:
                    continue
                result["rows"] += bench_train(preset, dtype_name, mode, args.batch, args.seq, rounds, args.steps,
                                              args.optimizer, log)
    if args.gen_preset:
        for dtype_name in dtypes:
            gen_rounds = rounds if not (dtype_name == "bf16" and bf16_slow) else 1
            result["rows"] += bench_generate(args.gen_preset, dtype_name, gen_rounds, args.prompt_len,
                                             args.new_tokens, log, args.gen_ckpt)
    if memory:
        for contender in ("ours", "reference"):
            result["memory"].append(peak_rss_of_training(contender, "small-T", 8, 512, args.optimizer))
            log(f"  memory {contender}: peak RSS {result['memory'][-1]['peak_rss_mib']:.0f} MiB")

    result["peaks"]["end"] = matmul_peaks()
    result["peak_flops"] = {name: max(result["peaks"][w][name] for w in ("start", "end")) for name in DTYPES}
    result["seconds"] = time.perf_counter() - started
    log(f"matmul peak at end: fp32 {result['peaks']['end']['fp32'] / 1e9:.1f}, "
        f"bf16 {result['peaks']['end']['bf16'] / 1e9:.1f} GFLOP/s; bench took {result['seconds']:.0f}s")

    table = markdown(result)
    print("\n" + table)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2), encoding="utf-8"))
    if args.md:
        write_markdown(Path(args.md), table)
    log(f"wrote {args.json}" + (f" and the bench block of {args.md}" if args.md else ""))


if __name__ == "__main__":
    run_main(main)
