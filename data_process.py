"""Data pipeline: public source files -> training-ready pretraining shards, SFT and DPO jsonl.

    python data_process.py fetch --set demo --mirror ../shared/data   # or without --mirror: download
    python train_tokenizer.py                                         # needs the fetched text
    python data_process.py pretrain                                   # token shards for 1-pretrain.py
    python data_process.py sft                                        # chat jsonl for 3-full_sft.py
    python data_process.py dpo                                        # preference jsonl for 5-dpo_train.py

Every subcommand prints what it read, wrote and skipped per source with reasons: every record read is
either kept or skipped and counted (read = kept + skipped), and the first few of each reason are shown
as file:line (`--show_skips N` shows more); `--strict` stops at the first problem instead. Lines no
reader can use (not UTF-8 or JSON, blank, nested too deeply, a number too long, a lone surrogate) are
skipped like any other bad record: the jsonl reader is data/datasets.py's, shared with training.

This file is the command line only; the pipelines are the model/data package, one module each
(fetch, read, clean, pretrain, sft, dpo).

Files (all under dataset/, git-ignored; flags move each of them):

    dataset/sources_full.tsv.gz       manifest: local_path, url (raw file at a pinned commit), sha256, bytes;
                                      the demo set is the subset that data/fetch.py's `in_demo` selects
    dataset/raw/<local_path>          fetched files, in the manifest's layout (fetch --raw)
    dataset/pretrain/meta.json        dtype, tokenizer hash, tokens and docs per shard, per-source report
    dataset/pretrain/train_0000.bin   uint16 token ids, each document followed by </s> (id 2), no header
    dataset/pretrain/val_0000.bin     held-out documents (about --val_fraction of them, chosen by content hash)
    dataset/sft_single.jsonl          {"conversations": [{"role": "user"|"assistant"|"system", "content"}]}, one reply
    dataset/sft_multi.jsonl           same format, two or more assistant replies
    dataset/sft_val.jsonl             held-out conversations (single and multi)
    dataset/sft_tools.jsonl           {"tools": [calculator], "conversations"}: word problems solved with calls, and
                                      ordinary conversations that offer the calculator and do not call it
    dataset/lora_identity.jsonl       self-introduction conversations (name/author from --bot_name/--bot_author)
    dataset/lora_medical.jsonl        patient/doctor conversations, a domain for LoRA
    dataset/dpo.jsonl                 {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    dataset/dpo_val.jsonl             held-out pairs

Users with the upstream MiniMind files pass them directly: `pretrain --jsonl pretrain_hq.jsonl` ({"text"}
lines), `sft --jsonl sft_mini_512.jsonl` ({"conversations"} with roles), `sft --deepctrl sft_data_zh.jsonl`
({"history", "q"/"input", "a"/"output"}), `sft --sharegpt FILE`, `dpo --jsonl dpo.jsonl` ({"chosen":[...],
"rejected":[...]}).
"""

import argparse
import sys
from pathlib import Path

from data import DATASET
from data.dpo import build_dpo
from data.fetch import fetch, write_manifest
from data.pretrain import PRETRAIN_SOURCES, build_pretrain
from data.sft import SFT_FILES, build_sft
from data.tools import build_tools
from model.errors import run_main
from model.tokenizer import DEFAULT_TOKENIZER_DIR


def command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand with the flags every data step takes: --raw, --strict, --show_skips."""
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--raw", default=str(DATASET / "raw"), help="folder of fetched source files")
    sub.add_argument(
        "--strict", action="store_true", help="stop at the first malformed record instead of skipping it"
    )
    sub.add_argument("--show_skips", type=int, default=3, metavar="N",
                     help="print the first N skipped records of each reason with their file:line (default 3)")
    return sub


def add_fetch(commands) -> None:
    sub = command(commands, "fetch", "download the pinned source files, verifying each sha256")
    sub.add_argument(
        "--set", choices=["demo", "full"], default="demo", help="demo: minutes on a CPU; full: all sources"
    )
    sub.add_argument(
        "--manifest", default=None, help="a manifest .tsv[.gz] to use instead of dataset/sources_full.tsv.gz"
    )
    sub.add_argument(
        "--mirror", default=None, help="a local folder or http(s) URL laid out as local_path (e.g. ../shared/data)"
    )
    sub.add_argument("--workers", type=int, default=8, help="parallel downloads")
    sub.set_defaults(run=lambda a: fetch(a.raw, a.set, a.manifest, a.mirror, a.workers, a.strict))


def add_manifest(commands) -> None:
    sub = commands.add_parser("manifest", help="rebuild dataset/sources_full.tsv.gz from a sources.tsv listing")
    sub.add_argument("--sources", required=True, help="a sources.tsv (local_path, url, sha256, bytes)")
    sub.set_defaults(run=lambda a: write_manifest(a.sources))


def add_pretrain(commands) -> None:
    sub = command(commands, "pretrain", "clean, deduplicate and tokenize the pretraining text into uint16 shards")
    sub.add_argument("--out", default=str(DATASET / "pretrain"))
    sub.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    sub.add_argument("--jsonl", nargs="*", default=[], help='extra {"text"} jsonl files (pretrain_hq, seq-monkey)')
    sub.add_argument("--chat_jsonl", nargs="*", default=[],
                     help="chat jsonl files (sft_single.jsonl, dpo.jsonl, ...) whose messages join the text")
    sub.add_argument(
        "--sources", nargs="*", default=None, choices=list(PRETRAIN_SOURCES), help="only these built-in sources"
    )
    sub.add_argument("--val_fraction", type=float, default=0.01)
    sub.add_argument("--min_chars", type=int, default=10, help="drop documents shorter than this")
    sub.add_argument("--chunk_chars", type=int, default=2048, help="cut longer documents into pieces of at most this")
    sub.add_argument("--shard_tokens", type=int, default=100_000_000)
    sub.add_argument("--batch_docs", type=int, default=1024)
    sub.set_defaults(run=lambda a: build_pretrain(
        a.raw, a.out, a.tokenizer, a.jsonl, a.chat_jsonl, a.sources, a.val_fraction, a.min_chars, a.chunk_chars,
        a.shard_tokens, a.batch_docs, a.strict, a.show_skips,
    ))


def add_sft(commands) -> None:
    sub = command(commands, "sft", "build chat jsonl (single-turn, multi-turn and held-out files)")
    sub.add_argument("--out", default=str(DATASET), help="folder for " + ", ".join(SFT_FILES.values()))
    sub.add_argument("--jsonl", nargs="*", default=[], help='extra {"conversations": [{role, content}]} files')
    sub.add_argument("--sharegpt", nargs="*", default=[], help='extra {"conversations": [{from, value}]} files')
    sub.add_argument("--deepctrl", nargs="*", default=[], help='extra {"history", "q", "a"} files')
    sub.add_argument(
        "--ceval", default=None, help="C-Eval val CSV folder whose questions are removed (default raw/ceval/val)"
    )
    sub.add_argument("--max_chars", type=int, default=1024, help="keep whole exchanges up to this many characters")
    sub.add_argument("--val_fraction", type=float, default=0.02)
    sub.add_argument("--bot_name", default="MiniMind", help="fills {{name}} in the identity data")
    sub.add_argument("--bot_author", default="MiniMind", help="fills {{author}} in the identity data")
    sub.set_defaults(run=lambda a: build_sft(
        a.raw, a.out, a.jsonl, a.sharegpt, a.deepctrl, a.ceval, a.max_chars, a.val_fraction, a.bot_name, a.bot_author,
        a.strict, a.show_skips,
    ))


def add_tools(commands) -> None:
    sub = command(commands, "tools", "build tool-use conversations: word problems solved with the calculator, "
                                     "and ordinary conversations that offer it without calling it")
    sub.add_argument("--out", default=str(DATASET), help="folder for sft_tools.jsonl")
    sub.add_argument("--chat", default=None, help="SFT conversations to offer the calculator in "
                                                  "(default OUT/sft_single.jsonl)")
    sub.add_argument("--problems", type=int, default=20_000, help="word problems (training phrasing families)")
    sub.add_argument("--ordinary", type=int, default=5_000, help="ordinary conversations with the tool offered")
    sub.add_argument("--seed", type=int, default=0)
    sub.set_defaults(run=lambda a: build_tools(a.out, a.chat or Path(a.out) / "sft_single.jsonl", a.problems,
                                               a.ordinary, a.seed))


def add_dpo(commands) -> None:
    sub = command(commands, "dpo", "build preference pairs jsonl (prompt, chosen, rejected as messages)")
    sub.add_argument("--out", default=str(DATASET), help="folder for dpo.jsonl and dpo_val.jsonl")
    sub.add_argument("--jsonl", nargs="*", default=[], help='extra {"chosen": [...], "rejected": [...]} files')
    sub.add_argument(
        "--ceval", default=None, help="C-Eval val CSV folder whose questions are removed (default raw/ceval/val)"
    )
    sub.add_argument("--max_chars", type=int, default=1024)
    sub.add_argument("--val_fraction", type=float, default=0.05)
    sub.set_defaults(run=lambda a: build_dpo(
        a.raw, a.out, a.jsonl, a.ceval, a.max_chars, a.val_fraction, a.strict, a.show_skips,
    ))


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per step, each carrying the function that runs it (`run`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_fetch, add_manifest, add_pretrain, add_sft, add_tools, add_dpo):
        add(commands)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
