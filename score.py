"""The scoreboard of one checkpoint: held-out bits per character, then on-topic, ended, distinct-2 and
looped shares of its sampled answers to the held-out questions and to the demo questions.

    python score.py --preset tiny --weight full_sft                   # prints the board
    python score.py --preset tiny --weight pretrain --json out/score_pretrain.json
    python score.py --ckpt out/dpo_256x4.pth --val_data dataset/sft_val.jsonl --limit 50 --show 3

A pretrained model (--weight pretrain, or a --ckpt named pretrain_*) is given the bare question to
continue, as 2-eval.py does, unless --prompt chat says it learned the chat template in pretraining
(`1-pretrain.py --chat_data`, as the quickstart pretrains). The rules behind every figure are in evaluation/scoreboard.py and evaluation/ontopic.py.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import json
import time
from pathlib import Path

from evaluation.scoreboard import first_question, judge_data, read_conversations, score
from evaluation.tools import accuracy, solve, tool_board
from model.checkpoint import atomic_write
from model.cli import (
    DEMO_QUESTIONS,
    ROOT,
    add_model_args,
    is_pretrain_checkpoint,
    load_from_args,
)
from model.errors import MiniMindError, run_main
from tooluse.problems import generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_model_args(parser, default_weight="full_sft")
    parser.add_argument("--val_data", default=str(ROOT / "dataset" / "sft_val.jsonl"),
                        help="held-out chat jsonl: its answers give bits per character, its first questions are asked")
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N held-out questions (0 = all)")
    parser.add_argument("--max_new_tokens", type=int, default=100, help="token budget per answer")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed (temperature and top-p of the chat)")
    parser.add_argument("--prompt", default="auto", choices=["auto", "chat", "raw"],
                        help="chat: the question in the chat template; raw: the bare question to continue; "
                             "auto: raw for a pretrain checkpoint, chat otherwise (default %(default)s)")
    parser.add_argument("--tool_problems", type=int, default=0,
                        help="also score N word problems in held-out phrasings with the calculator (and without it), N of "
                             "held-out families with it, and the "
                             "false-call rate on the held-out questions asked with it offered (0 = skip)")
    parser.add_argument("--tool_seed", type=int, default=1, help="seed of the held-out word problems")
    parser.add_argument("--only_tools", action="store_true",
                        help="skip the chat scoreboard (bits per character, on topic): only the tool figures")
    parser.add_argument("--json", default=None, help="also write the board, answers included, to this file")
    parser.add_argument("--show", type=int, default=0, help="print the first N answers of each question set")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit < 0 or args.max_new_tokens < 1 or args.show < 0 or args.tool_problems < 0:
        parser.error("need --limit >= 0, --max_new_tokens >= 1, --show >= 0 and --tool_problems >= 0")
    if args.only_tools and not args.tool_problems:
        parser.error("--only_tools needs --tool_problems N")
    return args


def print_board(board: dict, name: str) -> None:
    loss = board["loss"]
    print(f"{name}: held-out answers {loss['bits_per_char']:.3f} bits per character "
          f"({loss['nats_per_token']:.3f} nats per token, {loss['conversations']} conversations"
          + (f", {loss['left_out']} longer than the context left out" if loss["left_out"] else "") + ")")
    for kind in ("held_out", "demo"):
        s = board[kind]
        print(f"  {kind:<8} on topic {100 * s['on_topic']:5.1f}% ({s['on_topic_count']} of {s['questions']}) | "
              f"echo {100 * s['echo']:4.1f}% | ended {100 * s['ended']:5.1f}% | distinct-2 {s['distinct_2']:.3f} | "
              f"looped {100 * s['looped']:4.1f}% | {s['mean_tokens']:.0f} tokens per answer")
    data = board["held_out_data"]
    print(f"  {'data':<8} on topic {100 * data['on_topic']:5.1f}% ({data['on_topic_count']} of {data['questions']}) | "
          f"echo {100 * data['echo']:4.1f}% (the held-out replies themselves, judged by the same rule)")


def print_tool_board(tools: dict, name: str, show: int) -> None:
    def figure(s):
        return f"{100 * s['share']:5.1f}% ({s['right']} of {s['of']})"
    print(f"{name}: word problems in held-out phrasings right with the calculator {figure(tools['with_tools'])}, "
          f"with free numbers {figure(tools['free_numbers'])}, without it {figure(tools['without_tools'])}; "
          f"called it on {figure(tools['called'])}")
    print("  by kind: " + ", ".join(f"{kind} {figure(s)}" for kind, s in tools["by_kind"].items()))
    if "held_out_families" in tools:
        new = tools["held_out_families"]
        print(f"  kinds of problem never trained on (held-out families), with the calculator: "
              f"{figure(new['with_tools'])}; " + ", ".join(f"{k} {figure(s)}" for k, s in new["by_kind"].items()))
    print(f"  ordinary questions with the calculator offered that called it: {figure(tools['false_calls'])}")
    for item in tools["problems"][:show]:
        print(f"  👶 {item['question']}\n  🔧 {item['call']}\n  🤖 {item['final']}  "
              f"[{'right' if item['right'] else 'wrong'}: {item['answer']:g}]")


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load_from_args(args)
    raw_text = args.prompt == "raw" or (args.prompt == "auto" and is_pretrain_checkpoint(args))
    val_path = Path(args.val_data)
    if not val_path.exists():
        raise MiniMindError(f"--val_data {val_path} not found: build it with `python data_process.py sft`")
    conversations, skips = read_conversations(val_path)
    if skips.total():
        print(f"{val_path}: skipped {skips.total()} lines ({skips.summary()})")
    if not conversations:
        raise MiniMindError(f"--val_data {val_path} holds no usable conversations")
    asked = conversations[:args.limit] if args.limit else conversations
    question_sets = {"held_out": [first_question(m) for m in asked], "demo": list(DEMO_QUESTIONS)}
    name = args.ckpt or args.weight
    start = time.perf_counter()
    board = {}
    if not args.only_tools:
        board = score(model, tokenizer, conversations, question_sets, raw_text, args.max_new_tokens, args.seed)
        board["held_out_data"] = judge_data(asked)  # the rule's ceiling on the questions asked
    if args.tool_problems:
        problems = generate(args.tool_problems, args.tool_seed, "held_out")
        board["tools"] = tool_board(model, tokenizer, problems, question_sets["held_out"])
        new_kinds = solve(model, tokenizer, generate(args.tool_problems, args.tool_seed, "held_out_families"))
        board["tools"]["held_out_families"] = {**accuracy(new_kinds), "problems": new_kinds}
    board.update(checkpoint=str(name), raw_text=raw_text, seed=args.seed, max_new_tokens=args.max_new_tokens,
                 val_data=str(val_path), seconds=round(time.perf_counter() - start, 1))
    if not args.only_tools:
        print_board(board, name)
        for kind in ("held_out", "demo"):
            for item in board["answers"][kind][:args.show]:
                word = f" ({item['topic_word']})" if item["topic_word"] else ""
                print(f"  👶 {item['question']}\n  🤖 {item['answer']}\n  [{item['verdict']}{word}]")
    if args.tool_problems:
        print_tool_board(board["tools"], name, args.show)
    if args.json:
        text = json.dumps(board, ensure_ascii=False, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_main(main)
