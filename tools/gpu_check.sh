#!/usr/bin/env bash
# MiniMind on a GPU machine: one short run (under 5 minutes) that checks the CUDA path end to end.
#
#   bash tools/gpu_check.sh                    # on the GPU machine; writes to $OUT (./gpu_check_out when unset)
#   DEVICE=cpu bash tools/gpu_check.sh         # dry run on a CPU: the same commands with 2-4 steps, --threads 1,
#                                              # float32, gloo instead of NCCL, bench.py only its matmul peaks
#
# It stops starting parts after BUDGET_S (270 s) and usually ends in 3-4 minutes.
#
# What it checks, in this order (the CPU bench runs beside the rest, pinned to its own two cores, to fit the
# time; its log is merged in afterwards):
#   1. facts: nvidia-smi -L, the CPU model and whether its flags include avx512_bf16 / amx_bf16, python,
#      torch, transformers and peft versions, torch.backends.cpu.get_cpu_capability(), and whether the
#      prepared data is there (dataset/pretrain, dataset/*.jsonl, model/minimind_tokenizer);
#   2. the real stage scripts on CUDA in bf16, into a scratch folder: 1-pretrain.py (50 steps), 3-full_sft.py
#      (30), 5-dpo_train.py (10), 4-lora_sft.py (10, --merge), 2-eval.py --auto on the DPO weights and on the
#      LoRA adapter; --resume:
#      the same 50-step pretraining stopped at step 25 (--stop_step) and resumed, its weights compared with the
#      uninterrupted run (max abs diff, reported, not asserted: bf16 on CUDA may be nondeterministic); and
#      torchrun --nproc_per_node 1 1-pretrain.py (a world of one: the engine starts no process group then);
#   3. an inline python check on CUDA (the tests have no device option): KV-cache logits == full forward
#      (fp32, TF32 off, atol 1e-4) for Dense and MoE, greedy generation with cache == recomputed (and ==
#      transformers' generate), padded batch == single prompts, a multi-token chunk fed after a filled cache,
#      SDPA == plain attention, one bf16-autocast training step (loss and gradients finite), the trained
#      checkpoint's logits in fp32 / autocast bf16 / cast to bf16 (as 2-eval.py loads it), and the engine's
#      DDP code over NCCL in a one-process group (forced, since the engine skips DDP at world size 1),
#      compared with the same run without DDP; then tests/test_model.py + tests/test_trainer.py (CPU);
#   4. bench.py on the CPU, two cores (bench.py has no GPU mode): tiny + small-T, fp32 + bf16, eager,
#      2 rounds, small-T generation, into $OUT/bench_cpu.json and $OUT/bench_cpu.md (PERF.md is not touched).
#
# Needs, built by the quickstart or data_process.py (git-ignored): dataset/pretrain, dataset/sft_single.jsonl,
# dataset/sft_multi.jsonl, dataset/sft_val.jsonl, dataset/dpo.jsonl, dataset/dpo_val.jsonl,
# dataset/lora_identity.jsonl, model/minimind_tokenizer. A part whose inputs are missing is skipped and says so.
#
# Writes to $OUT: log.txt (every command and its output), summary.tsv and summary.json (one row per part:
# exit status, seconds, note), cuda_checks.json, bench_cpu.json, bench_cpu.md. No part stops the others: each
# has its own timeout, and a part that would start after BUDGET_S seconds (default 270) is skipped.
# Environment: OUT, DEVICE (cuda|cpu), PYTHON (python3), BUDGET_S, SCRATCH (/tmp/minimind_gpu_check),
# SERIAL=1 to run the bench and the tests after the rest instead of beside it (default on a CPU dry run).

set -u -o pipefail  # deliberately no -e: one failing part must not stop the rest

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-270}
SCRATCH=${SCRATCH:-/tmp/minimind_gpu_check}
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg PY SCRATCH

LOG=$OUT/log.txt
SUMMARY=$OUT/summary.tsv
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
rm -f "$LOG" "$SUMMARY" "$OUT/summary.json" "$OUT/cuda_checks.json" "$OUT/bench_cpu.json" "$OUT/bench_cpu.md" \
      "$OUT/log_bench.txt" "$OUT/log_pytest.txt"
O=$SCRATCH/o            # the pipeline's checkpoints
O_RESUME=$SCRATCH/o_resume
O_DDP=$SCRATCH/o_ddp

if [[ $DEVICE == cpu ]]; then  # dry run: prove that every command parses its flags and runs
    DRY=1; SERIAL=${SERIAL:-1}
    DTYPE=float32; RT=(--threads 1); BATCH=4; EB=1
    PT_STEPS=4; PT_STOP=2; SFT_STEPS=2; DPO_STEPS=2; LORA_STEPS=2; DDP_STEPS=2; GEN_TOKENS=8; EOS_CHECK=(--eos_check 2 --eos_check_tokens 8)
else
    DRY=0; SERIAL=${SERIAL:-0}
    DTYPE=bfloat16; RT=(); BATCH=16; EB=5
    PT_STEPS=50; PT_STOP=25; SFT_STEPS=30; DPO_STEPS=10; LORA_STEPS=10; DDP_STEPS=5; GEN_TOKENS=48; EOS_CHECK=(--eos_check 16 --eos_check_tokens 48)
fi
COMMON=(--preset tiny --device "$DEVICE" --dtype "$DTYPE" --eval_batches "$EB" "${RT[@]}")

T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# record NAME RC SECONDS NOTE: one row of the summary, also echoed to stdout
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
    printf '%-24s rc=%-5s %6ss  %s\n' "$1" "$2" "$3" "$4"
}

# part NAME LIMIT_S LOGFILE COMMAND...: run one check under a timeout, log it, record it
part() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        echo -e "\n=== [$name] SKIPPED: the ${BUDGET_S}s budget is spent" >>"$log"
        record "$name" skip 0 "not run: over the ${BUDGET_S}s budget"
        return 0
    fi
    ((limit > left)) && limit=$left
    printf '\n=== [%s] %s (limit %ss)\n$ %s\n' "$name" "$(date -u +%H:%M:%S)" "$limit" "$*" >>"$log"
    local start rc secs note=""
    start=$(now_ms)
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1 </dev/null
    rc=$?
    secs=$(awk -v ms=$(( $(now_ms) - start )) 'BEGIN { printf "%.1f", ms / 1000 }')
    [[ -f $SCRATCH/note.$name ]] && note=$(tr '\n\t' '  ' <"$SCRATCH/note.$name")
    ((rc == 124 || rc == 137)) && note="TIMEOUT after ${limit}s. $note"
    echo "--- [$name] rc=$rc ${secs}s $note" >>"$log"
    record "$name" "$rc" "$secs" "$note"
}

# needs NAME PATH...: true when every path exists, else records NAME as skipped
needs() {
    local name=$1 missing=()
    shift
    for p in "$@"; do [[ -e $p ]] || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    echo -e "\n=== [$name] SKIPPED: missing ${missing[*]} (build it first)" >>"$LOG"
    record "$name" skip 0 "not run: missing ${missing[*]} (build it first)"
    return 1
}

# ============================================================================ helper programs (written once)

# Two logical CPUs on different physical cores for the bench (0,1 unless they are siblings), and the
# CPUs that share no core with them for everything else. Prints "BENCH_CPUS REST_CPUS".
cat >"$SCRATCH/pick_cpus.py" <<'EOF'
import os

allowed = sorted(os.sched_getaffinity(0))


def topo(cpu, field):
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/{field}") as f:
            return f.read().strip()
    except OSError:
        return None


def core(cpu):
    return topo(cpu, "physical_package_id"), topo(cpu, "core_id") or str(cpu)


def siblings(cpu):
    text = topo(cpu, "thread_siblings_list")
    if not text:
        return {cpu}
    out = set()
    for piece in text.split(","):
        a, _, b = piece.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


first = allowed[0]
same_package = [c for c in allowed[1:] if core(c) != core(first) and core(c)[0] == core(first)[0]]
other = [c for c in allowed[1:] if core(c) != core(first)]
second = (same_package or other or allowed[1:2] or [first])[0]
bench = sorted({first, second})
taken = siblings(first) | siblings(second)
rest = [c for c in allowed if c not in taken] or allowed
print(",".join(map(str, bench)), ",".join(map(str, rest)))
EOF

# Max abs difference between two weight files: usage compare.py A.pth B.pth NOTE_FILE
cat >"$SCRATCH/compare.py" <<'EOF'
import sys

import torch

a = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
b = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
assert a.keys() == b.keys(), (sorted(set(a) ^ set(b)))[:5]
diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}
worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
identical = all(torch.equal(a[k], b[k]) for k in a)
for k, d in worst:
    print(f"  {k}: max abs diff {d:.3e}")
note = (f"resumed vs uninterrupted: {'bit-identical' if identical else 'differ'}, max abs diff "
        f"{max(diffs.values()):.3e} over {len(a)} tensors")
print(note)
open(sys.argv[3], "w").write(note)
EOF

# The checks of part 3 (model + generation + one training step + DDP over NCCL), on $DEVICE.
cat >"$SCRATCH/cuda_checks.py" <<'EOF'
import datetime
import json
import math
import os
import socket
import sys
import time
import traceback

import torch

sys.path.insert(0, os.getcwd())
from model.generate import generate  # noqa: E402
from model.LMConfig import LMConfig  # noqa: E402
from model.model import KVCache, MiniMindForCausalLM  # noqa: E402

dev = torch.device(os.environ.get("DEVICE", "cuda"))
DRY = os.environ.get("DRY") == "1"
OUT, O, SCRATCH = os.environ["OUT"], os.environ["O"], os.environ["SCRATCH"]
if dev.type == "cpu":
    torch.set_num_threads(1)
results = {}


def run(name, fn):
    start = time.time()
    try:
        info = fn() or {}
        results[name] = {"ok": bool(info.pop("ok", True)), **info}
    except Exception as error:  # a failed check is a result, not the end of the run
        traceback.print_exc()
        results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:1500]}
    results[name]["seconds"] = round(time.time() - start, 2)
    shown = json.dumps({k: v for k, v in results[name].items() if k != "ok"}, default=str, ensure_ascii=False)
    print(f"[{'PASS' if results[name]['ok'] else 'FAIL'}] {name}: {shown[:800]}", flush=True)
    with open(f"{OUT}/cuda_checks.json", "w") as f:
        json.dump(results, f, indent=2, default=str)


def tiny(**overrides):  # as tests/conftest.py's tiny_config
    return LMConfig(**{**dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64), **overrides})


MOE = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
CONFIGS = {
    "dense_test": tiny(), "moe_test": tiny(**MOE),
    "dense_tiny": LMConfig.from_preset("tiny"), "moe_tiny": LMConfig.from_preset("tiny", **MOE),
}


def build(config, seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(config).to(dev).eval()


def environment():
    info = dict(device=str(dev), torch=torch.__version__, cuda=torch.version.cuda)
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), capability=torch.cuda.get_device_capability(dev),
                    bf16_supported=torch.cuda.is_bf16_supported(),
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                    cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled())
    return info


run("environment", environment)
if dev.type == "cuda":  # exact fp32 for the equality checks; the engine turns TF32 on for training
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def kv_cache(config, prompt_len):
    def check():
        model = build(config)
        total = prompt_len + 12
        x = torch.randint(0, config.vocab_size, (2, total), device=dev)
        with torch.no_grad():
            full = model(x).logits
            cache = KVCache(capacity=8)  # small, so it has to grow on the way
            steps = [model(x[:, :prompt_len], past_key_values=cache, use_cache=True).logits]
            for i in range(prompt_len, total):
                steps.append(model(x[:, i:i + 1], past_key_values=cache, use_cache=True).logits)
        stepped = torch.cat(steps, dim=1)
        return dict(ok=torch.allclose(stepped, full, atol=1e-4) and cache.get_seq_length() == total,
                    max_abs_diff=(stepped - full).abs().max().item())
    return check


for cname in CONFIGS:
    for prompt_len in (1, 37):
        run(f"kv_cache_{cname}_p{prompt_len}", kv_cache(CONFIGS[cname], prompt_len))


def greedy(config):
    def check():
        model = build(config)
        prompt = torch.randint(3, config.vocab_size, (9,)).tolist()
        cached = generate(model, [prompt], max_new_tokens=20, eos_token_id=-1)[0]
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(20):  # everything recomputed at every step
                ids.append(int(model(torch.tensor([ids], device=dev)).logits[0, -1].argmax()))
        hf = model.generate(torch.tensor([prompt], device=dev), max_new_tokens=20, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        return dict(ok=cached == ids[len(prompt):], same_as_transformers_generate=hf == cached)
    return check


for cname in ("dense_test", "moe_test", "dense_tiny"):
    run(f"greedy_cache_vs_recompute_{cname}", greedy(CONFIGS[cname]))


def padded_batch():
    model = build(CONFIGS["dense_test"])
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (3, 11, 6)]
    batched = generate(model, prompts, max_new_tokens=8, eos_token_id=-1)
    singles = [generate(model, [p], max_new_tokens=8, eos_token_id=-1)[0] for p in prompts]
    return dict(ok=batched == singles)


run("padded_batch_generation", padded_batch)


def chunk_after_cache(with_mask):
    """A multi-token chunk after a filled cache (chunked prefill, speculative decoding): the model then
    builds a causal mask itself (model.attention_mask_4d)."""
    def check():
        model = build(CONFIGS["dense_test"])
        x = torch.randint(3, 512, (2, 30), device=dev)
        with torch.no_grad():
            full = model(x).logits
            cache = KVCache()
            first = model(x[:, :20], past_key_values=cache, use_cache=True).logits
            mask = torch.ones_like(x) if with_mask else None
            second = model(x[:, 20:], attention_mask=mask, past_key_values=cache, use_cache=True).logits
        stepped = torch.cat([first, second], dim=1)
        return dict(ok=torch.allclose(stepped, full, atol=1e-4), max_abs_diff=(stepped - full).abs().max().item())
    return check


run("chunk_after_cache_no_mask", chunk_after_cache(False))
run("chunk_after_cache_all_ones_mask", chunk_after_cache(True))


def sdpa_vs_plain():
    sdpa = build(CONFIGS["dense_tiny"])
    plain = build(LMConfig.from_preset("tiny", flash_attn=False))
    plain.load_state_dict(sdpa.state_dict())
    x = torch.randint(3, 6400, (2, 128), device=dev)
    mask = torch.ones_like(x)
    mask[0, :17] = 0  # left padding on one row: the masked path
    with torch.no_grad():
        a, b = sdpa(x).logits, plain(x).logits
        c, d = sdpa(x, attention_mask=mask).logits[:, 17:], plain(x, attention_mask=mask).logits[:, 17:]
    return dict(ok=torch.allclose(a, b, atol=1e-4) and torch.allclose(c, d, atol=1e-4),
                max_abs_diff_causal=(a - b).abs().max().item(), max_abs_diff_padded=(c - d).abs().max().item())


run("sdpa_vs_plain_attention_fp32", sdpa_vs_plain)


def bf16_train_step(config_name):
    def check():
        from model.trainer import param_groups
        config = CONFIGS[config_name]
        torch.manual_seed(0)
        model = MiniMindForCausalLM(config).to(dev).train()
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=True)
        rows, width = (1, 64) if DRY else (4, config.max_seq_len)
        data = torch.randint(0, config.vocab_size, (rows, width + 1), device=dev)
        x, y = data[:, :-1], data[:, 1:]
        losses, norms = [], []
        for _ in range(2):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out = model(input_ids=x, shift_labels=y)
            out.loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        return dict(ok=all(map(math.isfinite, losses + norms)) and dtypes == ["torch.float32"],
                    logits_dtype=str(out.logits.dtype), losses=losses, grad_norms=norms, param_dtypes=dtypes,
                    expected_first_loss=round(math.log(config.vocab_size), 3))
    return check


run("bf16_autocast_train_step_dense_tiny", bf16_train_step("dense_tiny"))
run("bf16_autocast_train_step_moe_tiny", bf16_train_step("moe_tiny"))


def trained_checkpoint_precision():
    """The pipeline's DPO weights on a held-out window: fp32, bf16 autocast, and cast to bf16 as
    2-eval.py / the server load it (model.to(dtype)); the cast also turns the RoPE inv_freq buffer to bf16."""
    import numpy as np
    from model.checkpoint import load_model
    path = os.path.join(O, "dpo_256.pth")
    if not os.path.exists(path):
        return dict(ok=False, error=f"{path} missing (the pipeline stages did not run)")
    shard = "dataset/pretrain/val_0000.bin"
    if os.path.exists(shard):  # held-out text: a trained model's predictions mean something there
        x = torch.from_numpy(np.fromfile(shard, dtype=np.uint16)[:256].astype(np.int64))[None].to(dev)
    else:
        x = torch.randint(3, 6400, (1, 256), device=dev)
    fp32 = load_model(path, device=dev)
    cast = load_model(path, device=dev, dtype=torch.bfloat16)
    info = dict(inv_freq_dtype_after_cast=str(cast.model.inv_freq.dtype))
    with torch.no_grad():
        ref = fp32(x, labels=x)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            auto = fp32(x, labels=x)
        bf = cast(x, labels=x)
        cast.model.inv_freq = fp32.model.inv_freq.clone()  # the same cast model, RoPE frequencies kept fp32
        bf_rope32 = cast(x, labels=x)
    for label, out in (("autocast_bf16", auto), ("cast_bf16", bf), ("cast_bf16_rope_fp32", bf_rope32)):
        diff = (out.logits.float() - ref.logits).abs()
        agree = (out.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean().item()
        info[label] = dict(loss=round(out.loss.item(), 4), max_abs_logit_diff=round(diff.max().item(), 4),
                           last_64_positions_max_diff=round(diff[:, -64:].max().item(), 4), argmax_agreement=agree)
    info["fp32_loss"] = round(ref.loss.item(), 4)
    return info


run("trained_checkpoint_fp32_vs_bf16", trained_checkpoint_precision)


def ddp_world_of_one():
    """The engine's DDP code (DDP wrapper, no_sync over 2 micro-steps, all_reduce of the logged sums,
    all_gather_object of RNG states, barrier) in a real one-process NCCL group, against a plain run."""
    import torch.distributed as dist
    from torch.utils.data import Dataset
    from model.trainer import TrainConfig, Trainer

    class Counting(Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            row = (i * 7919 + torch.arange(17)) % 64
            return row[:-1], row[1:]

    def loss_fn(model, batch):
        x, y = batch
        out = model(input_ids=x, shift_labels=y)
        return out.loss, {"aux_loss": out.aux_loss}

    backend = "nccl" if dev.type == "cuda" else "gloo"

    def train(ddp):
        cfg = TrainConfig(out_dir=os.path.join(SCRATCH, "ddp1" if ddp else "plain1"), batch_size=4,
                          accumulation_steps=2, max_steps=3, learning_rate=3e-3, warmup_steps=1,
                          dtype="bfloat16" if dev.type == "cuda" else "float32", device=dev.type, threads=1,
                          log_interval=1, eval_interval=0, save_interval=0, seed=5)
        trainer = Trainer(cfg)
        if ddp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            dist.init_process_group(backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
            trainer.ddp = True  # the engine only wraps in DDP when WORLD_SIZE > 1
        model = MiniMindForCausalLM(tiny(vocab_size=64, **MOE))  # MoE: an idle expert must still get a gradient
        result = trainer.fit(model, Counting(), loss_fn, name="ddp_check")
        wrapped = dist.is_initialized()
        trainer.close()
        return {k: v.detach().float().cpu() for k, v in result.model.state_dict().items()}, wrapped

    plain, _ = train(False)
    ddp, was_ddp = train(True)
    diff = max((plain[k] - ddp[k]).abs().max().item() for k in plain)
    return dict(backend=backend, process_group_was_up=was_ddp, closed=not dist.is_initialized(),
                max_abs_diff_vs_plain=diff)


run("engine_ddp_world_of_one", ddp_world_of_one)

failed = [name for name, r in results.items() if not r["ok"]]
note = f"{len(results) - len(failed)}/{len(results)} passed" + (f"; FAILED: {', '.join(failed)}" if failed else "")
print(note)
open(os.path.join(SCRATCH, "note.cuda_checks"), "w").write(note)
sys.exit(1 if failed else 0)
EOF

# ============================================================================ 1. facts

{
    echo "MiniMind device check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), DEVICE=$DEVICE, budget ${BUDGET_S}s"
    echo "repo: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git status --short 2>/dev/null | wc -l | tr -d ' ') changed files"
} | tee -a "$LOG"

facts() {
    echo "--- nvidia-smi -L"; nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    echo "--- CPU"; lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|On-line CPU|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\)|L2 cache|L3 cache|Hypervisor vendor)'
    local flags
    flags=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)
    for f in avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 avx_vnni; do
        if grep -qw "$f" <<<"$flags"; then echo "cpu flag $f: yes"; else echo "cpu flag $f: no"; fi
    done
    echo "cpu0 siblings: $(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null)," \
         "cpu1 siblings: $(cat /sys/devices/system/cpu/cpu1/topology/thread_siblings_list 2>/dev/null)"
    echo "nproc $(nproc); $(uptime); kernel $(uname -r)"
    free -g | head -2
    echo "--- python"
    "$PY" - <<'EOF'
import os, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cpu capability", torch.backends.cpu.get_cpu_capability(), "| torch threads", torch.get_num_threads(),
      "| affinity", len(os.sched_getaffinity(0)))
print("cuda available", torch.cuda.is_available(), "| devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", f"{p.major}.{p.minor}",
          p.multi_processor_count, "SMs | bf16", torch.cuda.is_bf16_supported(),
          "| nccl", torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else "?")
for name in ("transformers", "peft", "tokenizers", "numpy", "matplotlib", "tqdm", "pytest", "flask", "trl", "opencc"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"{name}: not importable ({type(error).__name__})")
EOF
}
export -f facts
part facts 60 "$LOG" bash -c facts

# Prepared data: list it, and say clearly what is missing.
PT=dataset/pretrain/meta.json
TOK=model/minimind_tokenizer/tokenizer.json
prepared_data() {
    local missing=()
    for p in dataset/pretrain/meta.json dataset/pretrain/train_0000.bin dataset/pretrain/val_0000.bin \
             dataset/sft_single.jsonl dataset/sft_multi.jsonl dataset/sft_val.jsonl dataset/dpo.jsonl dataset/dpo_val.jsonl \
             dataset/lora_identity.jsonl model/minimind_tokenizer/tokenizer.json model/minimind_tokenizer/tokenizer_config.json; do
        if [[ -e $p ]]; then
            echo "present  $p ($(du -h "$p" | cut -f1))"
        else
            echo "MISSING  $p: not found (build it first)"
            missing+=("$p")
        fi
    done
    if ((${#missing[@]})); then
        echo "MISSING, build them first: ${missing[*]}" >"$SCRATCH/note.prepared_data"
        return 1
    fi
    echo "all present" >"$SCRATCH/note.prepared_data"
}
printf '\n=== [prepared_data]\n' >>"$LOG"
prepared_data >>"$LOG" 2>&1
record prepared_data $? 0 "$(cat "$SCRATCH/note.prepared_data")"

# Pinning: the bench gets two cores of its own; everything else the cores that share none with them.
BENCH_PIN=(); REST_PIN=()
if (($(nproc) >= 6)); then
    read -r BENCH_CPUS REST_CPUS < <("$PY" "$SCRATCH/pick_cpus.py")
    BENCH_PIN=(taskset -c "$BENCH_CPUS"); REST_PIN=(taskset -c "$REST_CPUS")
    echo "bench on CPUs $BENCH_CPUS; everything else on $REST_CPUS" | tee -a "$LOG"
fi

# ============================================================================ 4 and 3b, beside the rest

BENCH_LOG=$OUT/log_bench.txt
PYTEST_LOG=$OUT/log_pytest.txt
bench() {
    if ((DRY)); then  # only the matmul peaks: the flags, the JSON and the markdown block
        part bench_cpu 120 "$BENCH_LOG" env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE "$PY" bench.py --presets '' \
            --gen_preset '' --dtypes fp32 --modes eager --rounds 1 --memory false --threads 1 \
            --json "$OUT/bench_cpu.json" --md "$SCRATCH/bench.md"
    else
        part bench_cpu 180 "$BENCH_LOG" "${BENCH_PIN[@]}" env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE "$PY" bench.py \
            --presets tiny,small-T --dtypes fp32,bf16 --modes eager --rounds 2 --gen_preset small-T --memory false --threads 2 \
            --json "$OUT/bench_cpu.json" --md "$SCRATCH/bench.md"
    fi
    [[ -f $SCRATCH/bench.md ]] && cp "$SCRATCH/bench.md" "$OUT/bench_cpu.md"
}
pytests() {
    local select=()
    ((DRY)) && select=(-k "kv_cache_matches_full_forward and dense or lr_schedule")
    part pytest_model_trainer 120 "$PYTEST_LOG" "${REST_PIN[@]}" "$PY" -m pytest -q -p no:cacheprovider -rfE \
        --durations=5 tests/test_model.py tests/test_trainer.py "${select[@]}"
}
BG=()
if ((!SERIAL)); then
    bench & BG+=($!)
    pytests & BG+=($!)
fi

# ============================================================================ 2. the stage scripts

RUN=("${REST_PIN[@]}" "$PY")
SFT_DATA=()
for f in dataset/sft_single.jsonl dataset/sft_multi.jsonl; do [[ -e $f ]] && SFT_DATA+=("$f"); done
PRETRAIN_ARGS=(1-pretrain.py "${COMMON[@]}" --max_steps "$PT_STEPS" --batch_size "$BATCH" --learning_rate 2e-3)

needs pretrain "$PT" "$TOK" &&
    part pretrain 90 "$LOG" "${RUN[@]}" "${PRETRAIN_ARGS[@]}" --out_dir "$O"
needs full_sft "$TOK" dataset/sft_single.jsonl dataset/sft_val.jsonl &&
    part full_sft 90 "$LOG" "${RUN[@]}" 3-full_sft.py "${COMMON[@]}" --out_dir "$O" --data "${SFT_DATA[@]}" \
        --val_data dataset/sft_val.jsonl --max_steps "$SFT_STEPS" --batch_size "$BATCH" --learning_rate 5e-4 "${EOS_CHECK[@]}"
needs dpo "$TOK" dataset/dpo.jsonl dataset/dpo_val.jsonl &&
    part dpo 90 "$LOG" "${RUN[@]}" 5-dpo_train.py "${COMMON[@]}" --out_dir "$O" --data dataset/dpo.jsonl \
        --val_data dataset/dpo_val.jsonl --max_steps "$DPO_STEPS"
needs lora_sft "$TOK" dataset/lora_identity.jsonl &&
    part lora_sft 90 "$LOG" "${RUN[@]}" 4-lora_sft.py "${COMMON[@]}" --out_dir "$O" --data dataset/lora_identity.jsonl \
        --name identity --max_steps "$LORA_STEPS" --merge
needs eval_dpo_auto "$TOK" &&
    part eval_dpo_auto 60 "$LOG" "${RUN[@]}" 2-eval.py --preset tiny --out_dir "$O" --weight dpo --auto \
        --device "$DEVICE" --max_new_tokens "$GEN_TOKENS" --seed 0
needs eval_lora_auto "$TOK" &&
    part eval_lora_auto 60 "$LOG" "${RUN[@]}" 2-eval.py --preset tiny --out_dir "$O" --weight lora_identity --auto \
        --device "$DEVICE" --max_new_tokens "$GEN_TOKENS" --seed 0

# --resume: the same run as `pretrain`, stopped half way (--stop_step keeps the schedule), then resumed.
if needs resume "$PT" "$TOK"; then
    part resume_stop 60 "$LOG" "${RUN[@]}" "${PRETRAIN_ARGS[@]}" --out_dir "$O_RESUME" --stop_step "$PT_STOP"
    part resume_continue 60 "$LOG" "${RUN[@]}" "${PRETRAIN_ARGS[@]}" --out_dir "$O_RESUME" --resume
    part resume_compare 30 "$LOG" "$PY" "$SCRATCH/compare.py" "$O/pretrain_256.pth" "$O_RESUME/pretrain_256.pth" \
        "$SCRATCH/note.resume_compare"
fi

# torchrun with one process: WORLD_SIZE=1, so the engine starts no process group (no NCCL here; the
# engine's DDP code over NCCL is exercised in cuda_checks below).
needs torchrun_1proc "$PT" "$TOK" &&
    part torchrun_1proc 90 "$LOG" "${RUN[@]}" -m torch.distributed.run --standalone --nproc_per_node 1 1-pretrain.py \
        "${COMMON[@]}" --out_dir "$O_DDP" --max_steps "$DDP_STEPS" --batch_size "$BATCH"

# ============================================================================ 3. the model on the device

part cuda_checks 120 "$LOG" env DEVICE="$DEVICE" DRY="$DRY" OUT="$OUT" O="$O" SCRATCH="$SCRATCH" \
    "${RUN[@]}" "$SCRATCH/cuda_checks.py"

if ((SERIAL)); then
    pytests
    bench
fi
((${#BG[@]})) && wait "${BG[@]}"

# ============================================================================ gather

for f in "$PYTEST_LOG" "$BENCH_LOG"; do
    if [[ -f $f ]]; then
        cat "$f" >>"$LOG"
        rm -f "$f"
    fi
done
if [[ -f $OUT/bench_cpu.md ]]; then
    printf '\n=== bench_cpu.md (the block bench.py would write into PERF.md)\n' >>"$LOG"
    cat "$OUT/bench_cpu.md" >>"$LOG"
fi
"$PY" - "$SUMMARY" "$OUT/summary.json" "$DEVICE" "$(($(date +%s) - T0))" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
parts = [dict(part=r[0], rc=r[1], seconds=float(r[2]), note=r[3] if len(r) > 3 else "") for r in rows]
summary = dict(device=sys.argv[3], wall_s=int(sys.argv[4]), parts=parts,
               failed=[p["part"] for p in parts if p["rc"] not in ("0", "skip")],
               skipped=[p["part"] for p in parts if p["rc"] == "skip"])
json.dump(summary, open(sys.argv[2], "w"), indent=2, ensure_ascii=False)
EOF
{
    printf '\n=== summary (%ss wall)\n' "$(($(date +%s) - T0))"
    column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
} | tee -a "$LOG"
exit 0
