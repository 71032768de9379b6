"""The whole MiniMind pipeline, one stage after another: fetch -> chat and tool-use data -> tokenizer -> pretrain
-> SFT -> LoRA -> DPO -> tool LoRA -> GRPO (word problems with the calculator) -> C-Eval -> scoreboards of the pretrain-only,
SFT and final models, with a few answers printed.

    bash quickstart.sh                          # installs what is missing, then runs this
    python quickstart.py                        # the `tiny` model: about 44 minutes on 2 quiet AVX2 cores (fp32; docs/results.md)
    python quickstart.py --long                 # about 2 hours on 2 CPU cores: a larger model, longer
    python quickstart.py --gpu                  # the 26.88M `small-T` model on one GPU, about 10 minutes
    python quickstart.py --mirror ../shared/data   # read the source files from a local copy (or MINIMIND_MIRROR=...)
    python quickstart.py --fast                 # every stage for a handful of steps, into out/fast/ (the CI end-to-end test)

Each stage is one of the numbered scripts, run as a subprocess with the flags printed before it runs,
so anything here can be repeated by hand. A stage that finished is recorded in `{out}/quickstart.json`
and skipped next time; a training stage that was interrupted continues from its resume checkpoint.

The recipe (chosen by measurement; docs/LOG.md): the tokenizer is trained on the chat text itself (1.54
characters per token on held-out conversations, against 1.14 for one trained on prose); pretraining
learns the full set's training conversations token by token in the chat template, packed into windows;
SFT packs whole conversations into rows; both use Muon for the weight matrices and AdamW for the rest.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from model.checkpoint import atomic_write
from model.errors import run_main
from model.LMConfig import LMConfig
from model.runtime import pick_dtype

# The budgets. Steps are for a CPU with bf16 instructions (AVX512_BF16 or AMX); on a CPU without them the
# model trains in float32, about half as fast, and the CPU recipes scale their training steps by
# FP32_STEP_SHARE so that the wall time stays about the same.
FULL = dict(preset="tiny", data="full", tokenizer_mb=8, pretrain_steps=600, pretrain_batch=16, pretrain_lr=2e-2,
            muon_lr=0.01, sft_steps=250, sft_batch=16, sft_lr=1e-3, sft_muon_lr=0.01, lora_steps=40, lora_lr=5e-3, dpo_steps=30,
            tools_lora_steps=1600, tools_lora_rank=32,
            ceval_limit=0, score_limit=150, generate_tokens=100, eval_batches=10, save_interval=50, scale_steps=True,
            tool_problems=10_000, tool_ordinary=3_000, score_tool_problems=200, grpo_steps=30, grpo_prompts=16,
            grpo_temperature=0.7, grpo_kinds="two_step,three_step")
# --long: the 11.9M `mini` preset, about 1.9x the time per token of `tiny`: 8.6M pretraining tokens (2.7 passes
# over the conversations) and 2.9M of SFT. SFT runs at lower learning rates than the quickstart's (AdamW 3e-4 and
# Muon 0.002 against 1e-3 and 0.01): the pretrained model already answers in the chat template, and at the full
# rates SFT first pushed the held-out loss up and ended 43 answers on topic behind the pretrain-only model; at
# these it ends 13 behind, within sampling noise. Measured on a 2-core AVX512_BF16 CPU: 1 h 43 min end to end,
# 56.1% of the held-out questions on topic (README, Results; docs/LOG.md).
LONG = dict(FULL, preset="mini", pretrain_steps=2100, sft_steps=700, sft_lr=3e-4, sft_muon_lr=0.002, lora_steps=60,
            dpo_steps=60, score_limit=0, save_interval=100)
# --gpu: the 26.88M `small-T` preset at batch 64 x 512 on one GPU: 16M pretraining tokens, a few minutes.
GPU = dict(FULL, preset="small-T", pretrain_steps=500, pretrain_batch=64, sft_steps=200, sft_batch=64,
           lora_steps=60, dpo_steps=100, score_limit=0, save_interval=100, scale_steps=False)
FAST = dict(FULL, data="demo", tokenizer_mb=1, pretrain_steps=6, pretrain_batch=16, sft_steps=4, sft_batch=16,
            lora_steps=3, dpo_steps=3, ceval_limit=1, score_limit=4, generate_tokens=12, eval_batches=2,
            save_interval=2, scale_steps=False, tools_lora_steps=3, tool_problems=200, tool_ordinary=50, score_tool_problems=4, grpo_steps=2, grpo_prompts=2)
RECIPES = {"full": FULL, "long": LONG, "gpu": GPU, "fast": FAST}
FP32_STEP_SHARE = 0.5


def for_this_machine(recipe: dict) -> dict:
    """The recipe with its training steps scaled down on a CPU that trains in float32 (no bf16 instructions)."""
    import torch


    if not recipe["scale_steps"] or pick_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16:
        return recipe
    scaled = dict(recipe)
    for key in ("pretrain_steps", "sft_steps"):
        scaled[key] = max(1, round(recipe[key] * FP32_STEP_SHARE))
    return scaled


def stages(args, n):
    """(name, argv) for every stage, in order. `n` is the recipe (FULL, LONG, GPU or FAST)."""
    out = args.out
    preset = getattr(args, "preset", None) or n["preset"]
    tag = LMConfig.from_preset(preset).tag()
    # --fast keeps its tokenizer and data under out/fast/, so it never touches a real run's files.
    data = f"{out}/dataset" if args.fast else "dataset"
    tok = f"{out}/tokenizer" if args.fast else "model/minimind_tokenizer"
    chat = [f"{data}/sft_single.jsonl", f"{data}/sft_multi.jsonl", f"{data}/sft_tools.jsonl"]
    model = ["--preset", preset, "--out_dir", out, "--tokenizer", tok]
    train = model + ["--resume", "--eval_batches", str(n["eval_batches"]), "--save_interval", str(n["save_interval"])]
    muon = ["--optimizer", "muon"]
    scored = ["score.py", *model, "--val_data", f"{data}/sft_val.jsonl", "--limit", str(n["score_limit"]),
              "--max_new_tokens", str(n["generate_tokens"]), "--seed", "1", "--show", "2"]
    return [
        (f"fetch the {n['data']} data",
         ["data_process.py", "fetch", "--set", n["data"]] + (["--mirror", args.mirror] if args.mirror else [])),
        ("build SFT conversations", ["data_process.py", "sft", "--out", data]),
        ("build DPO pairs", ["data_process.py", "dpo", "--out", data]),
        ("build tool-use conversations", ["data_process.py", "tools", "--out", data, "--problems",
                                          str(n["tool_problems"]), "--ordinary", str(n["tool_ordinary"])]),
        ("train the tokenizer on the chat text",
         ["train_tokenizer.py", "--out", tok, "--sample_mb", str(n["tokenizer_mb"]), "--sources",
          "--chat_jsonl", *chat, f"{data}/dpo.jsonl"]),
        ("pretrain", ["1-pretrain.py", *train, *muon, "--chat_data", *chat, "--chat_val", f"{data}/sft_val.jsonl",
                      "--max_steps", str(n["pretrain_steps"]), "--batch_size", str(n["pretrain_batch"]),
                      "--learning_rate", str(n["pretrain_lr"]), "--muon_lr", str(n["muon_lr"])]),
        ("continue text with the pretrained model",
         ["0-eval_pretrain.py", *model, "--max_new_tokens", str(n["generate_tokens"])]),
        ("full SFT", ["3-full_sft.py", *train, *muon, "--pack", "--data", *chat, "--val_data", f"{data}/sft_val.jsonl",
                      "--max_steps", str(n["sft_steps"]), "--batch_size", str(n["sft_batch"]),
                      "--learning_rate", str(n["sft_lr"]), "--muon_lr", str(n["sft_muon_lr"]),
                      "--eos_check", "0"]),
        ("LoRA on the identity set", ["4-lora_sft.py", *train, "--data", f"{data}/lora_identity.jsonl", "--name", "identity",
                                      "--max_steps", str(n["lora_steps"]), "--learning_rate", str(n["lora_lr"]),
                                      "--identity_json", f"{out}/score_lora_identity_{tag}.json"]),
        ("DPO", ["5-dpo_train.py", *train, "--data", f"{data}/dpo.jsonl", "--val_data", f"{data}/dpo_val.jsonl",
                 "--max_steps", str(n["dpo_steps"])]),
        # The word problems are taught by an adapter on the chat model, merged into it: low-rank steps on the
        # tool file keep the chat within noise where full steps on it cost the chat (docs/LOG.md, 2026-12-07).
        # Its rows share their system turn (run once per batch, data/datasets.sft_loss) and are batched by
        # length: a step costs about 2.5x less than a plain one (PERF.md).
        ("LoRA on the tool conversations, merged",
         ["4-lora_sft.py", *train, "--ckpt", f"{out}/dpo_{tag}.pth", "--data", f"{data}/sft_tools.jsonl",
          "--name", "tools", "--max_steps", str(n["tools_lora_steps"]), "--learning_rate", str(n["lora_lr"]),
          "--lora_rank", str(n["tools_lora_rank"]), "--lora_alpha", str(n["tools_lora_rank"]), "--merge",
          "--group_by_length", "true"]),
        # GRPO on the two- and three-step problems, where the adapter is weakest, 16 a step at temperature 0.7:
        # 8 a step of every kind at temperature 1 flipped close multi-step answers to wrong (docs/LOG.md).
        ("GRPO on word problems with the calculator",
         ["6-grpo.py", *model, "--weight", "lora_tools", "--resume", "--max_steps", str(n["grpo_steps"]),
          "--prompts_per_step", str(n["grpo_prompts"]), "--temperature", str(n["grpo_temperature"]),
          "--kinds", n["grpo_kinds"], "--eval_problems", "0",
          "--save_interval", str(n["save_interval"])]),
        ("C-Eval", ["eval_ceval.py", *model, "--weight", "grpo", "--out", f"{out}/ceval_grpo_{tag}"]
         + (["--limit", str(n["ceval_limit"])] if n["ceval_limit"] else [])),
        # The same questions for the pretrain-only model and the final model, every answer judged by the same
        # rule (evaluation/scoreboard.py). Pretraining read the conversations in the chat template, so the
        # pretrain-only model is asked in it too (given a bare question, it ends the "user turn" at once).
        ("scoreboard: pretrain-only model", [*scored, "--weight", "pretrain", "--prompt", "chat",
                                             "--json", f"{out}/score_pretrain_{tag}.json"]),
        ("scoreboard: final model", [*scored, "--weight", "grpo", "--tool_problems", str(n["score_tool_problems"]),
                                     "--json", f"{out}/score_grpo_{tag}.json"]),
        # Being right: held-out word problems through the tool loop, before RL and after it (the final model).
        ("tool scoreboard: before RL", [*scored, "--weight", "lora_tools", "--only_tools", "--tool_problems",
                                        str(n["score_tool_problems"]), "--json", f"{out}/score_tools_lora_tools_{tag}.json"]),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("MINIMIND_MIRROR"),
                        help="local folder laid out like the source URLs (default: $MINIMIND_MIRROR, else download)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--long", action="store_true", help="the 2-hour CPU recipe, into out/long/")
    budget.add_argument("--gpu", action="store_true", help="the small-T recipe for one GPU, into out/gpu/")
    budget.add_argument("--fast", action="store_true", help="a few steps per stage, into out/fast/")
    parser.add_argument("--preset", default=None, help="model preset (default: the recipe's)")
    parser.add_argument("--out", default=None, help="output folder (default out/, out/long/, out/gpu/ or out/fast/)")
    parser.add_argument("--redo", action="store_true", help="run every stage again, even those recorded as done")
    args = parser.parse_args()
    name = "fast" if args.fast else "long" if args.long else "gpu" if args.gpu else "full"
    args.out = args.out or ("out" if name == "full" else f"out/{name}")
    os.chdir(Path(__file__).resolve().parent)
    # Idle OpenMP threads sleep instead of spinning: on a laptop with other work going on, spinning
    # threads made training steps up to 6x slower (PERF.md). It must be set before torch starts.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    record_path = Path(args.out) / "quickstart.json"
    record = {} if args.redo or not record_path.exists() else json.loads(record_path.read_text())
    recipe = for_this_machine(RECIPES[name])
    if recipe is not RECIPES[name]:
        print(f"this CPU has no bf16 instructions: training in float32 with {FP32_STEP_SHARE:.0%} of the steps")
    plan = stages(args, recipe)
    started = time.time()
    for number, (name, argv) in enumerate(plan, 1):
        header = f"[{number}/{len(plan)}] {name}"
        if record.get(name, {}).get("done"):
            print(f"{header}: done before ({record[name]['seconds']:.0f}s), skipped", flush=True)
            continue
        command = [sys.executable, *argv]
        print(f"\n{header}\n$ {shlex.join(['python', *argv])}", flush=True)
        t0 = time.time()
        stage = subprocess.Popen(command)
        try:
            returncode = stage.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the stage as well (same process group). A training stage finishes its step
            # and saves its resume checkpoint before it exits, so wait for it instead of killing it.
            print(f"\n{header} interrupted: letting it save its progress...", file=sys.stderr, flush=True)
            stage.wait()
            print("Stopped. Run the quickstart again to continue: finished stages are skipped and training"
                  " resumes where it stopped.", file=sys.stderr)
            sys.exit(130)
        if returncode != 0:
            print(f"\n{header} failed (exit {returncode}). Fix the cause above and run the quickstart again:"
                  f" finished stages are skipped and training resumes where it stopped.", file=sys.stderr)
            sys.exit(returncode)
        record[name] = {"done": True, "seconds": round(time.time() - t0, 1), "command": shlex.join(["python", *argv])}
        text = json.dumps(record, indent=2, ensure_ascii=False)
        atomic_write(record_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    preset = args.preset or recipe["preset"]
    tag = LMConfig.from_preset(preset).tag()
    print(f"\nAll {len(plan)} stages done in {time.time() - started:.0f}s this run (stage times: {record_path}).")
    print(f"Checkpoints: {args.out}/pretrain_{tag}.pth, full_sft_{tag}.pth, lora_identity_{tag}/, dpo_{tag}.pth, "
          f"lora_tools_{tag}.pth, "
          f"grpo_{tag}.pth (the final model)")
    print(f"Scores: {args.out}/score_pretrain_{tag}.json, score_grpo_{tag}.json, score_tools_lora_tools_{tag}.json, "
          f"score_lora_identity_{tag}.json")
    print(f"Chat:   python 2-eval.py --preset {preset} --out_dir {args.out} --weight grpo")
    print(f"Serve:  python my_openai_api.py --preset {preset} --out_dir {args.out} --weight grpo"
          f"   then open http://127.0.0.1:8000/")


if __name__ == "__main__":
    run_main(main)
