"""The whole MiniMind pipeline on a CPU, one stage after another, with the `tiny` preset and demo data.

    bash quickstart.sh                          # installs what is missing, then runs this
    python quickstart.py                        # fetch -> tokenizer -> data -> pretrain -> SFT -> LoRA -> DPO -> C-Eval -> judged answers
    python quickstart.py --mirror ../shared/data   # read the source files from a local copy (or MINIMIND_MIRROR=...)
    python quickstart.py --fast                 # every stage for a handful of steps, into out/fast/ (the CI end-to-end test)

Each stage is one of the numbered scripts, run as a subprocess with the flags printed before it runs,
so anything here can be repeated by hand. A stage that finished is recorded in `{out}/quickstart.json`
and skipped next time; a training stage that was interrupted continues from its resume checkpoint.
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
from model.LMConfig import LMConfig

# How long each stage runs in the full quickstart (chosen by measurement; see README "Results"),
# and in --fast mode, which only proves that every stage runs.
# Pretraining reads the text of the SFT and DPO training conversations (question, then answer), as upstream
# MiniMind's pretrain_hq is made: 20 minutes see about 1.2M tokens, and spent on that text they left the SFT
# held-out loss lower than on Wikipedia and abstracts as well (4.91 against 5.05), or on the history-heavy
# full corpus (5.85) (README "Results").
FULL = dict(pretrain_steps=600, pretrain_batch=8, sft_steps=200, lora_steps=40, dpo_steps=60, ceval_limit=0,
            tokenizer_mb=8, tokenizer_sources=[],
            generate_tokens=100, eval_batches=10, eos_check=50, save_interval=50, judge_questions=0)
FAST = dict(pretrain_steps=6, pretrain_batch=16, sft_steps=4, lora_steps=3, dpo_steps=3, ceval_limit=1,
            tokenizer_mb=1, tokenizer_sources=["cmrc2018_wiki", "csl_abstracts"],
            generate_tokens=12, eval_batches=2, eos_check=2, save_interval=2, judge_questions=4)


def stages(args, n):
    """(name, argv) for every stage, in order. `n` holds the stage lengths (FULL or FAST)."""
    out, preset = args.out, args.preset
    tag = LMConfig.from_preset(preset).tag()
    # --fast keeps its tokenizer and data under out/fast/, so it never touches a real run's files.
    data = f"{out}/dataset" if args.fast else "dataset"
    tok = f"{out}/tokenizer" if args.fast else "model/minimind_tokenizer"
    tokenizer_sources = ["--sources", *n["tokenizer_sources"]] if n["tokenizer_sources"] else []
    chat_text = [f"{data}/sft_single.jsonl", f"{data}/sft_multi.jsonl", f"{data}/dpo.jsonl"]
    model = ["--preset", preset, "--out_dir", out, "--tokenizer", tok]
    train = model + ["--resume", "--eval_batches", str(n["eval_batches"]), "--save_interval", str(n["save_interval"])]
    judged = ["--judge", "--seed", "1", "--max_new_tokens", str(n["generate_tokens"])]
    held_out = ["--questions", f"{data}/sft_val.jsonl", "--limit", str(n["judge_questions"]), "--quiet"]
    return [
        ("fetch demo data", ["data_process.py", "fetch", "--set", "demo"] + (["--mirror", args.mirror] if args.mirror else [])),
        ("train tokenizer", ["train_tokenizer.py", "--out", tok, "--sample_mb", str(n["tokenizer_mb"]), *tokenizer_sources]),
        ("build SFT conversations", ["data_process.py", "sft", "--out", data]),
        ("build DPO pairs", ["data_process.py", "dpo", "--out", data]),
        ("build pretraining shards", ["data_process.py", "pretrain", "--tokenizer", tok, "--out", f"{data}/pretrain",
                                      "--sources", "--chat_jsonl", *chat_text]),  # no built-in corpus, the chat text only
        ("pretrain", ["1-pretrain.py", *train, "--data_dir", f"{data}/pretrain", "--max_steps", str(n["pretrain_steps"]),
                      "--batch_size", str(n["pretrain_batch"]), "--learning_rate", "2e-3"]),
        ("continue text with the pretrained model",
         ["0-eval_pretrain.py", *model, "--data_dir", f"{data}/pretrain", "--val", "--val_batches", str(n["eval_batches"]),
          "--max_new_tokens", str(n["generate_tokens"])]),
        ("full SFT", ["3-full_sft.py", *train, "--data", f"{data}/sft_single.jsonl", f"{data}/sft_multi.jsonl",
                      "--val_data", f"{data}/sft_val.jsonl", "--max_steps", str(n["sft_steps"]), "--learning_rate", "1e-3",
                      "--eos_check", str(n["eos_check"]), "--eos_check_tokens", str(n["generate_tokens"])]),
        ("LoRA on the identity set", ["4-lora_sft.py", *train, "--data", f"{data}/lora_identity.jsonl", "--name", "identity",
                                      "--max_steps", str(n["lora_steps"])]),
        ("DPO", ["5-dpo_train.py", *train, "--data", f"{data}/dpo.jsonl", "--val_data", f"{data}/dpo_val.jsonl",
                 "--max_steps", str(n["dpo_steps"])]),
        ("C-Eval", ["eval_ceval.py", *model, "--weight", "dpo", "--out", f"{out}/ceval_dpo_{tag}"]
         + (["--limit", str(n["ceval_limit"])] if n["ceval_limit"] else [])),
        # The demo questions, then the held-out questions, for the pretrain-only model (given the bare question
        # to continue) and the final model, each answer judged on topic or not by the same rule (model/ontopic.py).
        ("the demo questions, pretrain-only model (for comparison)",
         ["2-eval.py", *model, "--weight", "pretrain", "--auto", "--demo_questions", *judged]),
        ("chat: the demo questions", ["2-eval.py", *model, "--weight", "dpo", "--auto", *judged]),
        ("on topic? held-out questions, pretrain-only model",
         ["2-eval.py", *model, "--weight", "pretrain", "--auto", *judged, *held_out]),
        ("on topic? held-out questions, final model", ["2-eval.py", *model, "--weight", "dpo", "--auto", *judged, *held_out]),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("MINIMIND_MIRROR"),
                        help="local folder laid out like the source URLs (default: $MINIMIND_MIRROR, else download)")
    parser.add_argument("--fast", action="store_true", help="a few steps per stage, into out/fast/")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", default=None, help="output folder (default out/, or out/fast/ with --fast)")
    parser.add_argument("--redo", action="store_true", help="run every stage again, even those recorded as done")
    args = parser.parse_args()
    args.out = args.out or ("out/fast" if args.fast else "out")
    os.chdir(Path(__file__).resolve().parent)
    # Idle OpenMP threads sleep instead of spinning: on a laptop with other work going on, spinning
    # threads made training steps up to 6x slower (PERF.md). It must be set before torch starts.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    record_path = Path(args.out) / "quickstart.json"
    record = {} if args.redo or not record_path.exists() else json.loads(record_path.read_text())
    plan = stages(args, FAST if args.fast else FULL)
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

    tag = LMConfig.from_preset(args.preset).tag()
    print(f"\nAll {len(plan)} stages done in {time.time() - started:.0f}s this run (stage times: {record_path}).")
    print(f"Checkpoints: {args.out}/pretrain_{tag}.pth, full_sft_{tag}.pth, lora_identity_{tag}/, dpo_{tag}.pth")
    print(f"Chat:   python 2-eval.py --preset {args.preset} --out_dir {args.out} --weight dpo")
    print(f"Serve:  python my_openai_api.py --preset {args.preset} --out_dir {args.out} --weight dpo"
          f"   then open http://127.0.0.1:8000/")


if __name__ == "__main__":
    main()
