"""What an SFT or LoRA step costs with each of sft_loss's savings, on this machine; figures, no tests.

    python tools/sft_bench.py                                         # the tool file, a rank-32 LoRA on `tiny`
    python tools/sft_bench.py --ckpt out/dpo_256x4.pth --rounds 8
    python tools/sft_bench.py --data dataset/sft_single.jsonl --lora_rank 0      # full SFT steps, unpacked

One step is forward + loss + backward + AdamW, batch --batch_size rows of --data (the first 40 batches of a
seeded shuffle). The contenders run interleaved, --steps steps each per round, for --rounds rounds; the
table gives the median and min-max seconds per step:

  all logits   the model's plain loss: logits at every position
  loss_only    logits only where there is a target (sft_loss's first saving)
  shared       sft_loss: the start every row shares runs once (the tool file's system turn)
  grouped      sft_loss on batches of rows of similar length (--group_by_length): the same rows, less padding
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from grpo_bench import cpu_facts  # noqa: E402  (this folder is on the path when a script in it runs)

from data.datasets import SFTDataset, sft_loss  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.errors import run_main  # noqa: E402
from model.LMConfig import LMConfig  # noqa: E402
from model.lora import LoraSettings, apply_lora  # noqa: E402
from model.model import MiniMindForCausalLM  # noqa: E402
from model.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="dataset/sft_tools.jsonl")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--ckpt", default=None, help="weights (default: `tiny` with random weights)")
    parser.add_argument("--lora_rank", type=int, default=32, help="0: train every weight")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.ckpt) if args.ckpt else MiniMindForCausalLM(LMConfig.from_preset("tiny"))
    data = SFTDataset(args.data, load_tokenizer(args.tokenizer), model.config.max_seq_len, verbose=False)
    if args.lora_rank:
        model = apply_lora(model, LoraSettings(rank=args.lora_rank, alpha=args.lora_rank))
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=True)

    def batches(sampler):
        order = list(sampler)
        return [SFTDataset.collate([data[i] for i in order[k * args.batch_size:(k + 1) * args.batch_size]])
                for k in range(40)]

    shuffled = batches(EpochSampler(len(data), seed=1))
    grouped = batches(EpochSampler(len(data), seed=1, lengths=data.lengths(), batch_size=args.batch_size))
    contenders = {
        "all logits": (shuffled, lambda b: model(input_ids=b[0], shift_labels=b[1]).loss),
        "loss_only": (shuffled, lambda b: model(input_ids=b[0], shift_labels=b[1], loss_only=True).loss),
        "shared": (shuffled, lambda b: sft_loss(model, b)[0]),
        "grouped": (grouped, lambda b: sft_loss(model, b)[0]),
    }
    times = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name, (rows, loss_of) in contenders.items():
            start = time.perf_counter()
            for k in range(args.steps):
                loss_of(rows[(round_ * args.steps + k) % len(rows)]).backward()
                optimizer.step()
                optimizer.zero_grad()
            times[name].append((time.perf_counter() - start) / args.steps)
    cpu = cpu_facts()
    print(f"{cpu['cpu']} (bf16 instructions: {', '.join(cpu['bf16_flags']) or 'none'}), {args.threads} threads, {args.data}, batch {args.batch_size}, "
          f"{'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'every weight'}; "
          f"{args.rounds} rounds x {args.steps} steps, interleaved\n")
    print("| loss | s/step, median | min-max | against all logits |\n|---|---:|---:|---:|")
    base = statistics.median(times["all logits"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    run_main(main)
