"""The tool-use SFT file: word problems solved through the calculator, mixed with ordinary conversations
that offer the calculator and do not call it, so the model learns both when to call and when not to.

    dataset/sft_tools.jsonl   {"tools": [calculator], "conversations": [user, assistant call, tool, answer]}
                              and {"tools": [calculator], "conversations": <an ordinary SFT conversation>}

The problems come from the "train" split only (tooluse/problems.py); the held-out phrasings and families
never reach a training file. The ordinary conversations are drawn from the SFT training file itself
(never from the held-out file), so they add no new text, only the tools in front of it.
"""
import random
from pathlib import Path

from data.datasets import Skips, conversation_of, read_jsonl
from data.read import write_jsonl
from model.errors import MiniMindError
from tooluse.calculator import CALCULATOR
from tooluse.problems import conversation, generate


def build_tools(out, chat_jsonl, problems: int = 20_000, ordinary: int = 5_000, seed: int = 0) -> Path:
    """Write `out`/sft_tools.jsonl: `problems` tool conversations and `ordinary` conversations from
    `chat_jsonl` with the calculator offered, shuffled together. Returns the path."""
    skips = Skips(show=0)
    pool = [row["conversations"] for _, row in read_jsonl(chat_jsonl, skips) if not conversation_of(row)[1]]
    if ordinary and not pool:
        raise MiniMindError(f"{chat_jsonl}: no usable conversations to offer the calculator in")
    rng = random.Random(seed)
    rows = [conversation(p) for p in generate(problems, seed, "train")]
    rows += [{"tools": [CALCULATOR], "conversations": c} for c in rng.sample(pool, min(ordinary, len(pool)))]
    rng.shuffle(rows)
    path = Path(out) / "sft_tools.jsonl"
    write_jsonl(path, rows)
    print(f"{path}: {problems} word problems with calculator calls + {min(ordinary, len(pool))} ordinary "
          f"conversations with the calculator offered and not called ({skips.total()} unusable lines of "
          f"{chat_jsonl} skipped)")
    return path
