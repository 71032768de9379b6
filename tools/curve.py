"""Quality against training minutes for the quickstart's recipe: the pretrain and SFT stages of a recipe,
with their steps scaled, each run scored; a table and a plot.

    python tools/curve.py --scales 0.25 0.5 1            # after a quickstart: its data and tokenizer are reused
    python tools/curve.py --recipe long --scales 0.5 1 --out out/curve_long

Each scale runs the recipe's own pretraining and SFT commands (quickstart.stages) with the step counts
multiplied by the scale, into {out}/x{scale}/, then `score.py` on the SFT model. Minutes are the measured
wall time of the two training stages; the table (curve.md), the scores (curve.json) and the plot
(curve.png) go to --out. Runs that finished before are read back, not repeated.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import quickstart  # noqa: E402  (the recipes and their stage commands)
from model.checkpoint import atomic_write  # noqa: E402
from model.errors import MiniMindError, run_main  # noqa: E402
from model.LMConfig import LMConfig  # noqa: E402


def run(argv: list[str], log: Path) -> float:
    """Run one stage script, its output to `log`; the wall time in seconds."""
    print(f"$ python {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise MiniMindError(f"failed (exit {code}): see {log}")
    return time.perf_counter() - start


def point(recipe: dict, scale: float, out: Path, score_limit: int) -> dict:
    """Train and score one scaled copy of the recipe (or read back its earlier result)."""
    folder = out / f"x{scale:g}"
    result_file = folder / "point.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    scaled = dict(recipe, pretrain_steps=max(1, round(recipe["pretrain_steps"] * scale)),
                  sft_steps=max(1, round(recipe["sft_steps"] * scale)))
    args = argparse.Namespace(out=str(folder), preset=None, fast=False, mirror=None)
    stages = dict(quickstart.stages(args, scaled))
    seconds = run(stages["pretrain"], folder / "pretrain.log") + run(stages["full SFT"], folder / "sft.log")
    tag = LMConfig.from_preset(recipe["preset"]).tag()
    board_file = folder / f"score_full_sft_{tag}.json"
    score = list(stages["scoreboard: final model"])
    score[score.index("--limit") + 1] = str(score_limit)
    score = score[:score.index("--weight")] + ["--weight", "full_sft", "--json", str(board_file)]
    run(score, folder / "score.log")
    board = json.loads(board_file.read_text())
    result = {"scale": scale, "pretrain_steps": scaled["pretrain_steps"], "sft_steps": scaled["sft_steps"],
              "training_minutes": seconds / 60, "bits_per_char": board["loss"]["bits_per_char"],
              "on_topic": board["held_out"]["on_topic"], "on_topic_count": board["held_out"]["on_topic_count"],
              "questions": board["held_out"]["questions"], "demo_on_topic": board["demo"]["on_topic_count"],
              "ended": board["held_out"]["ended"], "looped": board["held_out"]["looped"]}
    text = json.dumps(result, indent=1)
    atomic_write(result_file, lambda tmp: Path(tmp).write_text(text))
    return result


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["training_minutes"] for p in points]
    fig, left = plt.subplots(figsize=(6, 3.6))
    left.plot(minutes, [100 * p["on_topic"] for p in points], "o-", label="on topic (held-out), %")
    left.set(xlabel="training minutes (pretrain + SFT)", ylabel="on topic, %", title=title)
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(minutes, [p["bits_per_char"] for p in points], "s--", color="gray")
    right.set_ylabel("held-out bits per character (dashed)", color="gray")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="full", choices=["full", "long", "gpu"])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--score_limit", type=int, default=150, help="held-out questions asked per point")
    parser.add_argument("--out", default=None, help="default out/curve_{recipe}")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(s <= 0 for s in args.scales) or args.score_limit < 0:
        parser.error("--scales must be positive and --score_limit at least 0")
    os.chdir(ROOT)
    recipe = quickstart.for_this_machine(quickstart.RECIPES[args.recipe])
    out = Path(args.out or f"out/curve_{args.recipe}")
    points = [point(recipe, scale, out, args.score_limit) for scale in sorted(args.scales)]
    lines = ["| scale | pretrain / SFT steps | training minutes | held-out bits/char | on topic (held-out) | demo on topic |"
             " ended | looped |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['scale']:g} | {p['pretrain_steps']} / {p['sft_steps']} | {p['training_minutes']:.1f} | "
                     f"{p['bits_per_char']:.3f} | {p['on_topic_count']} of {p['questions']} ({100 * p['on_topic']:.1f}%) | "
                     f"{p['demo_on_topic']} of 8 | {100 * p['ended']:.0f}% | {100 * p['looped']:.1f}% |")
    table = "\n".join(lines) + "\n"
    atomic_write(out / "curve.md", lambda tmp: Path(tmp).write_text(table))
    atomic_write(out / "curve.json", lambda tmp: Path(tmp).write_text(json.dumps(points, indent=1)))
    plot(points, out / "curve.png", f"quickstart recipe '{args.recipe}'")
    print(table + f"wrote {out}/curve.md, curve.json, curve.png")


if __name__ == "__main__":
    run_main(main)
