"""The pretraining corpus: converters from each source's format to plain documents, cleaning, exact
dedup and chunking (`pretrain_documents`, which train_tokenizer.py reads too), then tokenization into
train/val shards of uint16 ids with a meta.json sidecar (`build_pretrain`)."""

import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.clean import SeenBefore, has_lone_surrogate, is_val, normalize
from data.datasets import Skips, check_messages, conversation_of
from data.read import Report, csv_rows, read_json_file, read_jsonl_file, read_text_file, records
from model.checkpoint import atomic_write_folder
from model.errors import MiniMindError
from model.tokenizer import EOS_ID, tokenizer_hash

# Each pretraining converter yields (where, document): where names the file, and the line or record
# inside it, so a short or duplicate document is reported at its place.


def niutrans_chapter(path: Path, report: Report):
    """A NiuTrans target.txt (modern translation) or a novel chapter: one sentence per line -> one document.
    Lines are joined without a separator: they are sentences of one running text."""
    text = read_text_file(path, report)
    if text is not None:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if path.name == "text.txt" and len(lines) > 1:  # novel chapter: the first line is its title
            yield str(path), lines[0] + "\n" + "".join(lines[1:])
        else:
            yield str(path), "".join(lines)


def cmrc_contexts(path: Path, report: Report):
    data = read_json_file(path, report)
    if data is None:
        return
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        report.skips.add(str(path), "expected SQuAD JSON with a 'data' list")
        return
    for i, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            report.skips.add(f"{path}: data[{i}]", "article without a 'paragraphs' list")
            continue
        for j, paragraph in enumerate(paragraphs):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if isinstance(context, str):
                yield f"{path}: data[{i}].paragraphs[{j}]", context
            else:
                report.skips.add(f"{path}: data[{i}].paragraphs[{j}]", "paragraph without a 'context' string")


def csl_abstracts(path: Path, report: Report):
    """ts/*.tsv rows are `to title<TAB>abstract<TAB>title`: one document = title + abstract."""
    text = read_text_file(path, report)
    for number, line in enumerate((text or "").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            report.skips.add(f"{path}:{number}", "expected 3 tab-separated fields")
            continue
        yield f"{path}:{number}", fields[2].strip() + "\n" + fields[1].strip()


def poetry(path: Path, report: Report):
    """chinese-poetry JSON: arrays of {title|rhythmic, author, paragraphs}, dicts of chapters with content,
    and author biographies {name, description}."""
    data = read_json_file(path, report)
    if data is None:
        return
    if isinstance(data, dict):  # 蒙学/四书 style: {"title", "content": [...]} possibly nested
        data = data.get("content", [data])
    for where, item in records(data, path, report):
        if not isinstance(item, dict):
            report.skips.add(where, "poem is not an object")
            continue
        body = item.get("paragraphs") or item.get("content") or item.get("para")
        if isinstance(body, list) and body and isinstance(body[0], dict):  # nested chapters
            parts = [c.get("paragraphs") or c.get("content") or [] for c in body if isinstance(c, dict)]
            body = [line for part in parts for line in (part if isinstance(part, list) else [part])]
        if isinstance(body, str):
            body = [body]
        bio = item.get("description") or item.get("desc")  # author biographies and book introductions
        if not body and isinstance(bio, str):
            name = item.get("name") or item.get("title") or ""
            yield where, (name + "\n" if isinstance(name, str) and name else "") + bio
            continue
        if not isinstance(body, list) or not all(isinstance(b, str) for b in body) or not body:
            report.skips.add(where, "no 'paragraphs' text")
            continue
        title = item.get("title") or item.get("rhythmic") or item.get("chapter") or ""
        author = item.get("author") or ""
        head = "".join(x for x in (title, f"（{author}）" if isinstance(author, str) and author else "")
                       if isinstance(x, str))
        yield where, (head + "\n" if head else "") + "\n".join(body)
def reviews(path: Path, report: Report):
    for where, row in csv_rows(read_text_file(path, report), path, report):
        review = row.get("review")
        if isinstance(review, str) and review:
            yield where, review
        else:
            report.skips.add(where, "no 'review' field")


def text_jsonl(path: Path, report: Report):
    """{"text": ...} lines (seq-monkey, upstream pretrain_hq). Text holding several `<s>...</s>`
    documents (pretrain_hq's layout) is split into them."""
    for where, row in read_jsonl_file(path, report):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            report.skips.add(where, "no 'text' string")
            continue
        pieces = [piece.replace("<s>", "") for piece in text.split("</s>")]
        pieces = [piece for piece in pieces if piece.strip()]
        if not pieces:
            report.skips.add(where, "no text (empty, or only <s>/</s> markers)")
        for piece in pieces:
            yield where, piece


def chat_text(path: Path, report: Report):
    """The messages of a chat jsonl (`{"conversations"}` as sft writes, or `{"prompt", "chosen"}` as dpo
    writes) as plain text, one message per line: question-and-answer prose to pretrain on, as upstream
    MiniMind's pretrain_hq is. A record that offers tools keeps its system turn (the tools' schemas) and its
    calls as text, so a tokenizer trained on it learns to write them in few tokens. Only pass training splits, or the held-out sets leak into pretraining."""
    for where, row in read_jsonl_file(path, report):
        if isinstance(row, dict) and "conversations" in row:
            messages, reason, detail = conversation_of(row)  # tools offered and calls made become text too
            if reason:
                report.skips.add(where, reason, detail)
                continue
        elif isinstance(row, dict) and isinstance(row.get("prompt"), list) and isinstance(row.get("chosen"), list):
            messages = row["prompt"] + row["chosen"]
        else:
            report.skips.add(where, "neither 'conversations' nor 'prompt' + 'chosen' lists")
            continue
        reason, detail = check_messages(messages, "conversations")
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, "\n".join(m["content"] for m in messages if m["role"] != "system" or row.get("tools"))


# name -> (glob under the raw folder, converter)
PRETRAIN_SOURCES = {
    "niutrans_modern": ("pretrain_zh/niutrans_classical_modern/双语数据/**/target.txt", niutrans_chapter),
    "niutrans_novels": ("pretrain_zh/niutrans_classical_modern/古文原文/*/*/text.txt", niutrans_chapter),
    "cmrc2018_wiki": ("pretrain_zh/cmrc2018/*.json", cmrc_contexts),
    "csl_abstracts": ("pretrain_zh/csl_abstracts/benchmark/ts/*.tsv", csl_abstracts),
    "poetry": ("pretrain_zh/chinese_poetry/**/*.json", poetry),
    "reviews": ("pretrain_zh/chinese_reviews/*.csv", reviews),
}


def chunk(text: str, limit: int) -> list[str]:
    """Cut a long document into pieces of at most `limit` characters, at sentence ends where possible."""
    if len(text) <= limit:
        return [text]
    pieces, start = [], 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = max(window.rfind(mark) for mark in ("\n", "。", "！", "？", "；", ". ", "! ", "? "))
        end = start + (cut + 1 if cut > limit // 2 else limit)
        pieces.append(text[start:end].strip())
        start = end
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def pretrain_documents(
    raw_dir, jsonl_files=(), sources=None, strict=False, min_chars=10, chunk_chars=2048, reports=None, chat_files=(),
    show_skips=3,
):
    """Yield (source, split_key, text) for every cleaned, deduplicated, chunked document.

    split_key is the hash input for the train/val split: the whole document before chunking, so all
    pieces of one document land in the same split. `reports` (a dict) receives a Report per source.
    """
    raw_dir = Path(raw_dir)
    inputs = []
    for name, (pattern, converter) in PRETRAIN_SOURCES.items():
        if sources is None or name in sources:
            inputs.append((name, sorted(raw_dir.glob(pattern)), converter))
    files = [(path, "", text_jsonl) for path in jsonl_files] + [(path, "_text", chat_text) for path in chat_files]
    for path, suffix, converter in files:
        if not Path(path).exists():
            raise MiniMindError(f"{path}: no such file")
        inputs.append((Path(path).stem + suffix, [Path(path)], converter))
    seen = SeenBefore()
    reports = {} if reports is None else reports
    for name, paths, converter in inputs:
        report = reports.setdefault(name, Report(name, skips=Skips(strict, show_skips)))
        for path in paths:
            report.files += 1
            for where, doc in converter(path, report):
                if has_lone_surrogate(doc):
                    report.skips.add(where, "lone UTF-16 surrogate in a string")
                    continue
                text = normalize(doc)
                if len(text) < min_chars:
                    report.skips.add(where, f"shorter than {min_chars} characters")
                    continue
                if seen(text):
                    report.skips.add(where, "exact duplicate")
                    continue
                report.kept += 1
                for piece in chunk(text, chunk_chars):
                    yield name, text, piece


class ShardWriter:
    """Appends token arrays to {split}_{k:04d}.bin files, starting a new shard past `shard_tokens`."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype):
        self.folder, self.split, self.shard_tokens, self.dtype = folder, split, shard_tokens, dtype
        self.shards: dict[str, dict] = {}
        self.file = None

    def write(self, tokens: np.ndarray) -> None:
        if self.file is None or self.shards[self.name]["tokens"] >= self.shard_tokens:
            self.close()
            self.name = f"{self.split}_{len(self.shards):04d}.bin"
            self.shards[self.name] = {"tokens": 0, "docs": 0}
            self.file = open(self.folder / self.name, "wb")
        self.file.write(tokens.astype(self.dtype).tobytes())
        self.shards[self.name]["tokens"] += len(tokens)
        self.shards[self.name]["docs"] += 1

    def close(self) -> None:
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None


def tokenize_into_shards(documents, reports, tokenizer, folder: Path, dtype, val_fraction, shard_tokens, batch_docs):
    """Stream `documents` (from pretrain_documents, which fills `reports`) through the tokenizer in
    batches into train/val shards in `folder`. Memory stays bounded by one batch (plus the 8-byte
    duplicate-check keys)."""
    writers = {split: ShardWriter(folder, split, shard_tokens, dtype) for split in ("train", "val")}
    tokens = {"train": 0, "val": 0}
    progress = tqdm(unit="doc", desc="tokenize", disable=None)
    while batch := [doc for _, doc in zip(range(batch_docs), documents)]:
        encodings = tokenizer.encode_batch([piece for _, _, piece in batch], add_special_tokens=False)
        for (name, whole, piece), encoding in zip(batch, encodings):
            ids = np.array(encoding.ids + [EOS_ID], dtype=np.int64)
            split = "val" if is_val(whole, val_fraction) else "train"
            writers[split].write(ids)
            tokens[split] += len(ids)
            reports[name].tokens += len(ids)
            reports[name].chars += len(piece)
        progress.update(len(batch))
    progress.close()
    for writer in writers.values():
        writer.close()
    return tokens, {**writers["train"].shards, **writers["val"].shards}


def build_pretrain(
    raw, out, tokenizer_dir, jsonl=(), chat_jsonl=(), sources=None, val_fraction=0.01, min_chars=10, chunk_chars=2048,
    shard_tokens=100_000_000, batch_docs=1024, strict=False, show_skips=3,
) -> None:
    """Clean, deduplicate and tokenize the pretraining text (the built-in `sources` under `raw`, or all of
    them when None, plus {"text"} `jsonl` and chat `chat_jsonl` files) into train/val shards in `out`,
    with meta.json. The folder is built beside `out` and swapped in only when complete."""
    from tokenizers import Tokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise MiniMindError(
            f"no tokenizer at {tokenizer_dir}: run `python train_tokenizer.py` first (or pass --tokenizer)"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.encode_special_tokens = True  # a literal "</s>" inside a text is text, not a document boundary
    vocab = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)
    out = Path(out)
    start = time.time()
    reports, result = {}, {}

    def build(folder: Path) -> None:  # a temporary sibling of `out`, swapped in only when complete
        documents = pretrain_documents(raw, jsonl, sources, strict, min_chars, chunk_chars, reports, chat_jsonl,
                                       show_skips)
        tokens, shards = tokenize_into_shards(documents, reports, tokenizer, folder, dtype, val_fraction,
                                              shard_tokens, batch_docs)
        written = sum((folder / name).stat().st_size for name in shards) // dtype.itemsize
        assert written == sum(tokens.values()) == sum(r.tokens for r in reports.values()), "token counts disagree"
        if not tokens["train"] or not tokens["val"]:
            raise MiniMindError(
                f"pretrain: need documents in both splits (train {tokens['train']} tokens, val {tokens['val']}); "
                f"fetch data first (data_process.py fetch), or raise --val_fraction"
            )
        meta = {
            "dtype": dtype.name,
            "eos_id": EOS_ID,
            "vocab_size": vocab,
            "tokenizer_hash": tokenizer_hash(tokenizer_dir),
            "val_fraction": val_fraction,
            "tokens": tokens,
            "shards": shards,
            "sources": {
                r.name: {
                    "files": r.files,
                    "docs": r.kept,
                    "skipped": r.skips.counts,
                    "chars": r.chars,
                    "tokens": r.tokens,
                }
                for r in reports.values()
            },
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        result.update(tokens=tokens, shards=shards)

    atomic_write_folder(out, build)  # --strict, Ctrl-C, a full disk: no half-built folder is left behind
    tokens, shards = result["tokens"], result["shards"]
    print(f"pretrain: wrote {out} in {time.time() - start:.1f}s")
    for report in reports.values():
        print(report.line())
    chars = sum(r.chars for r in reports.values())
    print(
        f"  total: {tokens['train']:,} train + {tokens['val']:,} val tokens in {len(shards)} shard(s); "
        f"{chars / max(1, sum(tokens.values())):.2f} chars/token"
    )
