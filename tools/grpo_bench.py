"""What GRPO costs on this machine: rollout throughput, the time and peak memory of a step; figures, no tests.

    python tools/grpo_bench.py                                   # all three parts, ~5 min on 2 cores
    python tools/grpo_bench.py --parts rollout --rounds 5        # one part
    python tools/grpo_bench.py --parts step --ckpt out/dpo_256x4.pth   # the quickstart's step from trained weights

  rollout   batched generation, `tiny` with random weights (or --gen_ckpt): --batch prompts (the first word
            problems of the training families, each in the chat template after the system turn that offers the
            calculator), --new_tokens greedy tokens with the KV cache. Ours through model/generate.generate,
            transformers' LlamaForCausalLM (export/native.py's config, our weights loaded into it, as bench.py)
            through its own `generate` at the same batch (left padding, attention mask, use_cache=True).
            The length is fixed on both sides: ours gets eos_token_id=-1, an id no token has, so every row runs
            all the steps; the reference gets eos_token_id=None and min_new_tokens=max_new_tokens. Interleaved
            (ours, reference, ours, ...) for --rounds rounds; medians and min-max. Tokens/s count the new tokens
            of every row, prefill included; `prefill` is a separate 1-token call.
  step      one GRPO step of `tiny` at the quickstart's settings (8 problems x 8 replies, 64 tokens per turn,
            up to 2 calls, rollouts scored 16 at a time), run by 6-grpo.py's own functions (setup,
            sample_replies, score_replies, update), in a fresh process. From random weights (--ckpt: given
            ones) the replies are forced to their full length as above (each turn runs 64 tokens, so no turn
            ends and no call is made: one round); with --ckpt they end and call as the model decides.
  upstream  one step of `small-T` (26.88M) at upstream MiniMind's GRPO settings: 2 prompts x 6 replies of
            1024 tokens (forced), one turn (--max_calls 0: upstream has no tool loop), max_seq_len 2048, float32.

Times of a step: rollouts (6-grpo.sample_replies); rewards and advantages (score_replies); the reference's
forward (token_logps on the frozen copy); the policy's forward (token_logps with grad); backward (the loss,
its backward and the gradient clip: what is left of update); the optimizer step (AdamW's step, timed by
wrapping each optimizer's `step`).

Memory is the process's resident memory (Linux /proc/self/status): VmRSS once the run is set up (model,
reference copy, optimizer, tokenizer, torch), then the high-water mark VmHWM is reset (writing 5 to
/proc/self/clear_refs) and read again after the step: `step peak` is the most the process held during the
step, `step extra` that minus the resident memory before it. RSS counts every allocation torch made,
including what the allocator has not returned; tracemalloc does not see torch's tensors at all.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as every script sets it, before torch loads

import argparse
import functools
import importlib.util
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import tooluse.agent  # noqa: E402  (its `generate` is replaced to force the replies' length)
from export.native import native_config  # noqa: E402
from model.chat import build_prompt  # noqa: E402
from model.checkpoint import load_model, save_weights  # noqa: E402
from model.errors import MiniMindError, run_main  # noqa: E402
from model.generate import generate, left_pad  # noqa: E402
from model.LMConfig import LMConfig  # noqa: E402
from model.model import MiniMindForCausalLM  # noqa: E402
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer  # noqa: E402
from tooluse.calculator import CALCULATOR  # noqa: E402
from tooluse.problems import generate as make_problems  # noqa: E402

NEVER = -1  # an eos id no token has: generation runs every step
UPSTREAM_GB = 23.4  # the peak the issue quotes for upstream's GRPO of small-T (GPU, with its 1.8B reward model)


# ----------------------------------------------------------------------------- the machine


def cpu_facts() -> dict:
    """The CPU's model name (lscpu) and whether it has bf16 instructions (AVX512_BF16, AMX)."""
    name, flags = "", ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and not name:
                name = value.strip()
            elif key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.SubprocessError):
        pass
    if not flags or not name:
        try:
            info = Path("/proc/cpuinfo").read_text()
            name = name or re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
            flags = flags or re.search(r"flags\s*:\s*(.*)", info).group(1)
        except (OSError, AttributeError):
            name = name or platform.processor() or platform.machine()
    have = set(flags.split())
    bf16 = sorted(f for f in have if f == "avx512_bf16" or f.startswith("amx"))
    return {"cpu": name, "bf16_flags": bf16, "avx512": any(f.startswith("avx512") for f in have),
            "avx2": "avx2" in have, "cores": len(os.sched_getaffinity(0))}


def memory_kib() -> dict:
    """This process's resident memory now (VmRSS) and its high-water mark (VmHWM), in KiB."""
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) for key in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    """Set the high-water mark back to the resident memory now (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def spread(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------- 1. rollout throughput


def problem_prompts(tokenizer, n: int) -> list:
    """The chat-template prompts of the first n training problems with the calculator offered: what a rollout
    starts from (the system turn offering the tool, then the question, then the assistant's header)."""
    return [build_prompt(tokenizer, [{"role": "user", "content": p.question}], 10 ** 9, tools=[CALCULATOR])[0]
            for p in make_problems(n, seed=0, split="train")]


def llama_of(ours):
    """transformers' LlamaForCausalLM of the same shape, holding our weights (as bench.py and export_model.py)."""
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM(native_config(ours.config))
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or not all("lm_head" in k for k in missing):
        raise MiniMindError(f"our weights do not fit the Llama: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return ref.eval()


def bench_rollout(args, log) -> dict:
    torch.manual_seed(0)
    ours = (load_model(args.gen_ckpt) if args.gen_ckpt else MiniMindForCausalLM(LMConfig.from_preset("tiny"))).eval()
    ref = llama_of(ours)
    tokenizer = load_tokenizer(args.tokenizer)
    prompts = problem_prompts(tokenizer, args.batch)
    tokens, mask = left_pad(prompts)
    with torch.inference_mode():  # the same function: logits of the padded batch agree
        a = ours(tokens, attention_mask=mask).logits
        b = ref(input_ids=tokens, attention_mask=mask).logits
        diff = ((a - b).abs().amax(-1) * mask).max().item()
    lengths = [len(p) for p in prompts]
    log(f"rollout: tiny ({'random weights' if not args.gen_ckpt else args.gen_ckpt}), {len(prompts)} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), {args.new_tokens} new tokens, "
        f"greedy; largest logit difference ours/Llama over the prompts {diff:.2e}")

    def run(name: str, n: int) -> list:
        if name == "ours":
            out = generate(ours, prompts, max_new_tokens=n, eos_token_id=NEVER)
        else:
            with torch.inference_mode():
                ids = ref.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
            out = ids[:, tokens.shape[1]:].tolist()
        if any(len(row) != n for row in out):
            raise MiniMindError(f"{name}: a row stopped before {n} tokens; the length is not fixed")
        return out

    names = ("ours", "reference")
    for name in names:
        run(name, 2)  # warm up: first calls allocate, pick kernels
    total, prefill, outputs = {n: [] for n in names}, {n: [] for n in names}, {}
    for round_ in range(args.rounds):
        for name in names:
            start = time.perf_counter()
            run(name, 1)
            prefill[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            outputs[name] = run(name, args.new_tokens)
            total[name].append(time.perf_counter() - start)
        log(f"  round {round_ + 1}: ours {total['ours'][-1]:.2f}s, reference {total['reference'][-1]:.2f}s")
    new = len(prompts) * args.new_tokens
    result = {"batch": len(prompts), "prompt_tokens": [min(lengths), max(lengths), statistics.mean(lengths)],
              "new_tokens": args.new_tokens, "logit_diff": diff,
              "same_rows": sum(x == y for x, y in zip(outputs["ours"], outputs["reference"]))}
    for name in names:
        s = spread(total[name])
        result[name] = {"total_s": s, "prefill_s": spread(prefill[name]), "tok_s": new / s["median"],
                        "tok_s_min": new / s["max"], "tok_s_max": new / s["min"]}
        log(f"  {name:9s} {result[name]['tok_s']:7.0f} tok/s ({result[name]['tok_s_min']:.0f}-"
            f"{result[name]['tok_s_max']:.0f}); {s['median']:.2f}s per batch; prefill + 1 token "
            f"{result[name]['prefill_s']['median']:.2f}s")
    log(f"  ours/reference {result['ours']['tok_s'] / result['reference']['tok_s']:.2f}x; greedy rows identical "
        f"{result['same_rows']}/{len(prompts)}")
    return result


# ----------------------------------------------------------------------------- 2 and 3. one GRPO step


def load_script(filename: str):
    """A numbered stage script (not importable by name) as a module, as tests/conftest.py loads them."""
    spec = importlib.util.spec_from_file_location(filename.removesuffix(".py").replace("-", "_"), ROOT / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_child(spec: dict) -> None:
    """In a fresh process: set up 6-grpo.py's run from `spec["flags"]`, then run spec["steps"] steps, timing
    each part; prints one JSON line (the parent reads the last line of stdout)."""
    grpo = load_script("6-grpo.py")
    from engine.runlog import MetricWindow

    run = grpo.setup(grpo.parse_args(spec["flags"]))
    if spec["force"]:  # every turn runs max_new_tokens: no turn ends, so no call is made
        tooluse.agent.generate = functools.partial(generate, eos_token_id=NEVER)
    clock = {}

    def add(key, seconds):
        clock[key] = clock.get(key, 0.0) + seconds

    token_logps = grpo.token_logps

    def timed_logps(model, batch, group_size, temperature=1.0):
        start = time.perf_counter()
        out = token_logps(model, batch, group_size, temperature)
        add("reference" if model is run.reference else "policy_forward", time.perf_counter() - start)
        return out

    grpo.token_logps = timed_logps  # update() looks it up in the script's namespace
    for opt in run.optimizers:
        def timed_step(*a, _step=opt.step, **k):
            start = time.perf_counter()
            out = _step(*a, **k)
            add("optimizer", time.perf_counter() - start)
            return out
        opt.step = timed_step

    loaded = memory_kib()
    peak_reset = reset_peak()
    steps = []
    for step in range(spec["steps"]):
        clock.clear()
        lr = grpo.set_learning_rate(run)
        problems = grpo.problems_for_step(run.cfg.seed, step, run.args.prompts_per_step, 1, 0)
        start = time.perf_counter()
        rollouts = grpo.sample_replies(run, problems)
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        advantages, metrics, written = grpo.score_replies(run, problems, rollouts)
        rewards_s = time.perf_counter() - start
        start = time.perf_counter()
        grpo.update(run, rollouts, advantages, MetricWindow())
        update_s = time.perf_counter() - start
        run.state.step += 1
        scored = sum(len(r.ids) for r in rollouts) + sum(len(r.prompt_ids) for r in rollouts[::run.args.group_size])
        steps.append({
            "lr": lr, "rollouts": len(rollouts), "sampled_tokens": written, "scored_tokens": scored,
            "rounds": max(sum(m["role"] == "assistant" for m in r.messages) for r in rollouts),
            "reply_tokens": float(metrics["reply_tokens"]), "called": float(metrics["called"]),
            "ended": float(metrics["ended"]), "cut": float(metrics["cut"]),
            "rollout_s": rollout_s, "rewards_s": rewards_s, "reference_s": clock.get("reference", 0.0),
            "policy_forward_s": clock.get("policy_forward", 0.0), "optimizer_s": clock.get("optimizer", 0.0),
            "backward_s": update_s - sum(clock.values()), "step_s": rollout_s + rewards_s + update_s,
            "learned_tokens": sum(sum(r.learn) for r in rollouts)})
    after = memory_kib()
    raw = run.raw
    print(json.dumps({"loaded_rss_mib": loaded["VmRSS"] / 1024, "load_peak_mib": loaded["VmHWM"] / 1024,
                      "step_peak_mib": after["VmHWM"] / 1024, "peak_reset": peak_reset,
                      "step_extra_mib": (after["VmHWM"] - loaded["VmRSS"]) / 1024,
                      "params": sum(p.numel() for p in raw.parameters()), "tag": raw.config.tag(),
                      "max_seq_len": raw.config.max_seq_len, "dtype": str(run.trainer.dtype).removeprefix("torch."),
                      "threads": torch.get_num_threads(), "steps": steps}))


def one_step(flags: list, force: bool, steps: int, log) -> dict:
    """Run step_child in a fresh process; its JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(
        {"flags": flags, "force": force, "steps": steps})]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if result.returncode != 0:
        raise MiniMindError(f"the step's process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def random_checkpoint(folder: Path, preset: str, **fields) -> str:
    """A checkpoint of `preset` with random weights (seed 0), as 6-grpo.py's --ckpt reads one."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(LMConfig.from_preset(preset, **fields))
    path = folder / f"random_{model.config.tag()}.pth"
    save_weights(model, path)
    return str(path)


def describe_step(label: str, result: dict, log) -> None:
    log(f"{label}: {result['tag']} ({result['params'] / 1e6:.2f}M), {result['dtype']}, {result['threads']} threads; "
        f"memory: {result['loaded_rss_mib']:.0f} MiB resident once set up, step peak {result['step_peak_mib']:.0f} "
        f"MiB (+{result['step_extra_mib']:.0f} MiB)" + ("" if result["peak_reset"] else " (peak not reset: "
                                                          "includes set-up)"))
    for k, s in enumerate(result["steps"]):
        log(f"  step {k + 1}: {s['step_s']:.1f}s = rollouts {s['rollout_s']:.1f}s ({s['sampled_tokens'] / s['rollout_s']:.0f} "
            f"sampled tok/s) + rewards {s['rewards_s']:.2f}s + reference forward {s['reference_s']:.1f}s + policy "
            f"forward {s['policy_forward_s']:.1f}s + backward {s['backward_s']:.1f}s + optimizer {s['optimizer_s']:.2f}s; "
            f"{s['rollouts']} replies, {s['reply_tokens']:.0f} tokens each on average, {s['rounds']} round(s), "
            f"called {s['called']:.2f}, ended {s['ended']:.2f}, cut {s['cut']:.2f}; scored {s['scored_tokens']} tokens")


# ----------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({'bf16: ' + ', '.join(m['bf16_flags']) if m['bf16_flags'] else 'no AVX512_BF16 / AMX'}"
             f"{', AVX-512' if m['avx512'] else ''}{', AVX2' if m['avx2'] else ''}), torch {m['torch']}, "
             f"transformers {m['transformers']}; load average {m['load_start'][0]:.1f} at start, "
             f"{m['load_end'][0]:.1f} at end; `python tools/grpo_bench.py {result['args']}`."]
    r = result.get("rollout")
    if r:
        lines += ["", f"Rollout throughput, `tiny`, batch {r['batch']} (prompts {r['prompt_tokens'][0]}-"
                      f"{r['prompt_tokens'][1]} tokens), {r['new_tokens']} new tokens each, greedy, KV cache, length "
                      f"forced; new tokens/s of the whole batch, median (min-max) of {r['ours']['total_s']['n']} "
                      f"interleaved rounds:", "",
                  "| contender | tok/s | s per batch | prefill + 1 token (s) |", "|---|---|---|---|"]
        for name, label in (("ours", "ours, `model/generate.generate`"),
                            ("reference", "transformers `LlamaForCausalLM.generate`")):
            x = r[name]
            lines.append(f"| {label} | {x['tok_s']:.0f} ({x['tok_s_min']:.0f}-{x['tok_s_max']:.0f}) | "
                         f"{x['total_s']['median']:.2f} | {x['prefill_s']['median']:.2f} |")
        lines.append(f"| ours / reference | {r['ours']['tok_s'] / r['reference']['tok_s']:.2f}x | | |")
    steps = [(k, result[k]) for k in ("step", "step_ckpt", "upstream") if result.get(k)]
    if steps:
        lines += ["", "One GRPO step (6-grpo.py's functions, a fresh process; seconds; memory is resident memory):", "",
                  "| run | replies x sampled tokens | rounds, called | rollouts (sampled tok/s) | rewards | reference fwd | "
                  "policy fwd | backward | optimizer | step | RSS set up | step peak RSS | step extra |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, x in steps:
            s = x["steps"][0]
            lines.append(
                f"| {x['label']} | {s['rollouts']} x {s['reply_tokens']:.0f} | {s['rounds']}, {s['called']:.2f} | {s['rollout_s']:.1f} "
                f"({s['sampled_tokens'] / s['rollout_s']:.0f}) | {s['rewards_s']:.2f} | {s['reference_s']:.1f} | "
                f"{s['policy_forward_s']:.1f} | {s['backward_s']:.1f} | {s['optimizer_s']:.2f} | {s['step_s']:.1f} | "
                f"{x['loaded_rss_mib']:.0f} MiB | {x['step_peak_mib']:.0f} MiB | {x['step_extra_mib']:.0f} MiB |")
            for k, later in enumerate(x["steps"][1:], start=2):
                lines.append(f"| {x['label']}, step {k} | {later['rollouts']} x {later['reply_tokens']:.0f} | "
                             f"{later['rounds']}, {later['called']:.2f} | "
                             f"{later['rollout_s']:.1f} ({later['sampled_tokens'] / later['rollout_s']:.0f}) | "
                             f"{later['rewards_s']:.2f} | {later['reference_s']:.1f} | {later['policy_forward_s']:.1f} | "
                             f"{later['backward_s']:.1f} | {later['optimizer_s']:.2f} | {later['step_s']:.1f} | | | |")
    u = result.get("upstream")
    if u:
        lines += ["", f"`small-T` at upstream's settings: peak {u['step_peak_mib'] / 1024:.2f} GiB resident for the "
                      f"whole process ({u['step_extra_mib'] / 1024:.2f} GiB of it the step's), against upstream's "
                      f"{UPSTREAM_GB} GB, a GPU figure that also holds its 1.8B reward model."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="rollout,step,upstream", help="comma list of rollout, step, upstream")
    parser.add_argument("--batch", type=int, default=64, help="rollout: prompts in the batch (default 64)")
    parser.add_argument("--new_tokens", type=int, default=64, help="rollout: new tokens per prompt (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rollout: interleaved rounds (default 3)")
    parser.add_argument("--gen_ckpt", default=None, help="rollout: these weights instead of random ones of tiny")
    parser.add_argument("--ckpt", default=None,
                        help="step: also one step from these tiny weights (replies end and call as the model decides)")
    parser.add_argument("--steps", type=int, default=1, help="step: steps in the tiny runs' process (default 1)")
    parser.add_argument("--dtype", default="auto", help="step: the tiny runs' --dtype (default auto, as the quickstart)")
    parser.add_argument("--upstream_tokens", type=int, default=1024, help="upstream: reply length (default 1024)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._child:
        return step_child(json.loads(args._child))
    parts = [p for p in args.parts.split(",") if p]
    if bad := [p for p in parts if p not in ("rollout", "step", "upstream")]:
        raise MiniMindError(f"--parts: unknown {bad}; choose from rollout, step, upstream")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    log = lambda text: print(text, flush=True)
    import transformers

    transformers.logging.set_verbosity_error()
    machine = {**cpu_facts(), "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "load_start": os.getloadavg()}
    log(f"CPU {machine['cpu']}, {machine['cores']} cores; bf16 instructions: "
        f"{', '.join(machine['bf16_flags']) or 'none (no avx512_bf16, no amx)'}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}; load average {' '.join(f'{x:.2f}' for x in machine['load_start'])}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": " ".join(sys.argv[1:]), "machine": machine}
    started = time.perf_counter()
    if "rollout" in parts:
        result["rollout"] = bench_rollout(args, log)
    with tempfile.TemporaryDirectory(prefix="grpo_bench_") as tmp:
        tmp = Path(tmp)
        common = ["--out_dir", str(tmp), "--eval_problems", "0", "--tokenizer", args.tokenizer]
        if "step" in parts:  # the quickstart's settings are 6-grpo.py's defaults (8 x 8, 64 tokens, 2 calls)
            runs = [("step", "tiny, quickstart (8 x 8, 64 tokens/turn, 2 calls), random weights, length forced",
                     random_checkpoint(tmp, "tiny"), True)]
            if args.ckpt:
                runs.append(("step_ckpt", f"tiny, quickstart, {Path(args.ckpt).name}", args.ckpt, False))
            for key, label, ckpt, force in runs:
                flags = ["--preset", "tiny", "--ckpt", ckpt, "--dtype", args.dtype, *common]
                result[key] = {"label": label, **one_step(flags, force, args.steps, log)}
                describe_step(label, result[key], log)
        if "upstream" in parts:
            ckpt = random_checkpoint(tmp, "small-T", max_seq_len=2048)
            flags = ["--preset", "small-T", "--ckpt", ckpt, "--max_seq_len", "2048", "--prompts_per_step", "2",
                     "--group_size", "6", "--max_new_tokens", str(args.upstream_tokens), "--max_calls", "0",
                     "--dtype", "float32", *common]
            label = f"small-T, upstream (2 x 6, {args.upstream_tokens} tokens, 1 turn), random weights, fp32"
            result["upstream"] = {"label": label, **one_step(flags, True, 1, log)}
            describe_step(label, result["upstream"], log)
            log(f"  against upstream's {UPSTREAM_GB} GB: {result['upstream']['step_peak_mib'] / 1024:.2f} GiB here "
                f"(CPU resident memory of the whole process; upstream's is GPU memory and includes a 1.8B reward model)")
    machine["load_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    log(f"took {result['seconds']:.0f}s; load average at end {' '.join(f'{x:.2f}' for x in machine['load_end'])}")
    print("\n" + markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    run_main(main)
