"""The data pipeline: public source files -> training-ready pretraining shards, SFT and DPO jsonl.

`data_process.py` is its command line (one subcommand per pipeline); `train_tokenizer.py` reads the
pretraining text through `data.pretrain.pretrain_documents`. One module per pipeline:

    data/fetch.py     manifest, pinned downloads with sha256 checks, the demo subset
    data/read.py      Report (read = kept + skipped) and the JSON / jsonl / CSV / text readers
    data/clean.py     normalisation, traditional -> simplified, dedup and split hashes, the
                            vendor-claim and C-Eval overlap checks
    data/pretrain.py  pretraining converters, chunking, tokenized train/val shards
    data/sft.py       conversation converters and the SFT / LoRA jsonl files
    data/dpo.py       preference-pair converters and dpo.jsonl / dpo_val.jsonl

The files each pipeline writes under dataset/ are listed in `python data_process.py --help`.

Every pipeline reports what it read, wrote and skipped per source with reasons: every record read is
either kept or skipped and counted, and the first few of each reason are named by file:line. Lines no
reader can use are skipped like any other bad record (the jsonl reader is data/datasets.py's, shared
with training). Problems that stop a pipeline raise MiniMindError.
"""

from pathlib import Path

DATASET = Path(__file__).resolve().parents[1] / "dataset"
