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
skipped like any other bad record: the jsonl reader is model/dataset.py's, shared with training.

Files (all under dataset/, git-ignored; flags move each of them):

    dataset/sources_full.tsv.gz       manifest: local_path, url (raw file at a pinned commit), sha256, bytes;
                                      the demo set is the subset that `in_demo` below selects
    dataset/raw/<local_path>          fetched files, in the manifest's layout (fetch --raw)
    dataset/pretrain/meta.json        dtype, tokenizer hash, tokens and docs per shard, per-source report
    dataset/pretrain/train_0000.bin   uint16 token ids, each document followed by </s> (id 2), no header
    dataset/pretrain/val_0000.bin     held-out documents (about --val_fraction of them, chosen by content hash)
    dataset/sft_single.jsonl          {"conversations": [{"role": "user"|"assistant"|"system", "content"}]}, one reply
    dataset/sft_multi.jsonl           same format, two or more assistant replies
    dataset/sft_val.jsonl             held-out conversations (single and multi)
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
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.checkpoint import atomic_write
from model.dataset import Skips, check_messages, find_lone_surrogate, parse_json, read_jsonl
from model.tokenizer import DEFAULT_TOKENIZER_DIR, EOS_ID, tokenizer_hash

ROOT = Path(__file__).resolve().parent
DATASET = ROOT / "dataset"
MANIFEST = DATASET / "sources_full.tsv.gz"  # every source file; the demo set is the subset in_demo() picks
MANIFEST_COLUMNS = ["local_path", "url", "sha256", "bytes"]


# ============================================================================= fetch


@dataclass
class Source:
    local_path: str
    url: str
    sha256: str
    bytes: int


def read_manifest(path) -> list[Source]:
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"manifest {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sources = []
    for number, row in enumerate(rows, 2):
        if any(not row.get(column) for column in MANIFEST_COLUMNS):
            raise SystemExit(f"{path}:{number}: a manifest row needs {', '.join(MANIFEST_COLUMNS)}")
        if Path(row["local_path"]).is_absolute() or ".." in Path(row["local_path"]).parts:
            raise SystemExit(f"{path}:{number}: local_path must stay inside the raw folder: {row['local_path']}")
        sources.append(Source(row["local_path"], row["url"], row["sha256"].lower(), int(row["bytes"])))
    return sources


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, part: Path, timeout: float = 60) -> None:
    """Append the rest of `url` to `part`, asking only for the missing bytes (HTTP Range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "minimind-data"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the part file already holds every byte
            return
        raise
    with response:
        # 206: the server honoured the range, so append; 200: it sent everything, so start over
        mode = "ab" if response.status == 206 else "wb"
        with open(part, mode) as f:
            shutil.copyfileobj(response, f, 1 << 20)


def fetch_one(source: Source, raw_dir: Path, mirror: str | None, retries: int = 3) -> str:
    """Make raw_dir/local_path hold exactly the pinned bytes. Returns what happened."""
    dest = raw_dir / source.local_path
    status = "fetched"
    if dest.exists():
        if dest.stat().st_size == source.bytes and sha256_file(dest) == source.sha256:
            return "present"
        status = "corrupt, re-fetched"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")  # the final name only ever holds verified bytes
    for attempt in range(retries):
        if mirror and not re.match(r"https?://", mirror):
            local = Path(mirror) / source.local_path
            if not local.exists():
                raise FileNotFoundError(f"{local} is not in the mirror")
            shutil.copyfile(local, part)
        else:
            url = mirror.rstrip("/") + "/" + source.local_path if mirror else source.url
            try:
                download(url, part)
            except (OSError, urllib.error.URLError) as error:
                if attempt == retries - 1 or (isinstance(error, urllib.error.HTTPError) and error.code < 500):
                    raise
                time.sleep(1 + attempt)  # a dropped connection: wait, then continue from the part file
                continue
        if part.stat().st_size == source.bytes and sha256_file(part) == source.sha256:
            os.replace(part, dest)
            return status
        part.unlink()  # wrong bytes (or a stale part from another version): start again from zero
    raise ValueError(f"sha256 mismatch after {retries} tries")


def cmd_fetch(args) -> None:
    sources = read_manifest(args.manifest or MANIFEST)
    if args.set == "demo":
        sources = [s for s in sources if in_demo(s.local_path)]
    raw_dir = Path(args.raw)
    where = args.mirror or "the pinned URLs"
    print(f"fetch: {len(sources)} files ({sum(s.bytes for s in sources) / 1e6:.1f} MB) from {where} into {raw_dir}")
    start, counts, failures = time.time(), {}, []

    def job(source):
        try:
            return source, fetch_one(source, raw_dir, args.mirror), None
        except (OSError, ValueError, urllib.error.URLError) as error:
            return source, None, error

    workers = 1 if args.mirror and not re.match(r"https?://", args.mirror) else args.workers
    pool = ThreadPoolExecutor(workers)
    try:
        for source, status, error in tqdm(pool.map(job, sources), total=len(sources), unit="file", disable=None):
            if error:
                failures.append(f"{source.local_path}: {error}")
                if args.strict:
                    raise SystemExit(f"error: {failures[-1]} [--strict stops at the first problem]")
                if len(failures) >= 8 and not counts:  # offline, or a wrong mirror: say so now, not after every file
                    print("\n".join(f"  failed: {line}" for line in failures))
                    raise SystemExit(
                        f"fetch: the first {len(failures)} files all failed; check the network or --mirror"
                    )
            else:
                counts[status] = counts.get(status, 0) + 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # stop queued downloads; let running ones finish their part file
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"fetch: {summary or 'nothing'}; every file's sha256 verified ({time.time() - start:.1f}s)")
    if failures:
        print("\n".join(f"  failed: {line}" for line in failures[:20]))
        raise SystemExit(f"fetch: {len(failures)} file(s) failed; run the same command again to resume")


def cmd_manifest(args) -> None:
    """Rebuild dataset/sources_full.tsv.gz from a sources.tsv listing (gzip with a fixed mtime: reproducible)."""
    sources = read_manifest(args.sources)
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows([s.local_path, s.url, s.sha256, s.bytes] for s in sources)
    data = gzip.compress(text.getvalue().encode("utf-8"), mtime=0)
    atomic_write(MANIFEST, lambda tmp: Path(tmp).write_bytes(data))
    demo = [s for s in sources if in_demo(s.local_path)]
    print(
        f"{MANIFEST}: {len(sources)} files, {sum(s.bytes for s in sources) / 1e6:.1f} MB "
        f"(demo set: {len(demo)} files, {sum(s.bytes for s in demo) / 1e6:.1f} MB)"
    )


DEMO_NOVELS = ("红楼梦", "儒林外史", "老残游记", "浮生六记")
DEMO_FILES = {
    "pretrain_zh/csl_abstracts/benchmark/ts/dev.tsv",
    "pretrain_zh/csl_abstracts/benchmark/ts/test.tsv",
    "sft_zh/llamafactory_demo/alpaca_zh_demo.json",
    "sft_zh/kdconv/travel/dev.json",
    "sft_zh/kdconv/LICENSE",
    "sft_zh/alpaca_zh_hikariming/翻译后的中文数据/alpaca_data-0-3252-中文-已完成.json",
    "sft_zh/alpaca_zh_hikariming/LICENSE",
    "identity/llamafactory_identity.json",
    "sft_zh/medical_dialogue/样例_内科5000-6000.csv",
    "sft_zh/medical_dialogue/LICENSE",
    "dpo/medicalgpt_dpo_zh_500/dpo_zh_500.jsonl",
    "dpo/llamafactory_demo/dpo_zh_demo.json",
}


def in_demo(local_path: str) -> bool:
    """The demo set: C-Eval val+dev, a quarter of the NiuTrans chapters (every book), four novels, CMRC2018,
    CSL abstracts; ~4.5k SFT conversations, the identity and medical LoRA sets; ~800 preference pairs. About 40 MB."""
    parts = local_path.split("/")
    if parts[0] == "ceval":
        return parts[1] != "test"
    if local_path.startswith("pretrain_zh/niutrans_classical_modern/双语数据/"):
        # every 4th chapter, by a hash of its path, so each book keeps about a quarter of its chapters
        return hashlib.md5(local_path.encode("utf-8")).digest()[0] % 4 == 0
    if local_path.startswith("pretrain_zh/niutrans_classical_modern/古文原文/"):
        return parts[3] in DEMO_NOVELS
    return parts[:2] == ["pretrain_zh", "cmrc2018"] or local_path in DEMO_FILES


# ============================================================================= shared reading helpers


@dataclass
class Report:
    """What one source contributed: records read, kept and skipped (by reason)."""

    name: str
    files: int = 0
    kept: int = 0
    chars: int = 0
    tokens: int = 0
    skips: Skips = field(default_factory=Skips)

    @property
    def read(self) -> int:
        """Records read: each one is either kept or skipped with a reason (and its file:line)."""
        return self.kept + self.skips.total()

    def line(self) -> str:
        text = f"  {self.name:<22} {self.files:>5} files {self.read:>8} read {self.kept:>8} kept"
        if self.tokens:
            text += f" {self.tokens:>11,} tokens ({self.chars / self.tokens:.2f} chars/token)"
        if self.skips.total():
            text += f"; skipped {self.skips.total()}: {self.skips.summary()}"
        return text


def read_text_file(path: Path, report: Report, encoding: str = "utf-8") -> str | None:
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        report.skips.add(str(path), f"not valid {encoding}", f"byte {error.start}")
        return None
    if not text.strip():
        report.skips.add(str(path), "empty file")
        return None
    return text.lstrip("\ufeff")


def read_json_file(path: Path, report: Report):
    """Parse a JSON file. A trailing comma before ] or } (one Alpaca file has one) is accepted with a warning.
    A file that cannot be parsed (bad syntax, nesting too deep, an over-long number) is one skip naming it;
    lone surrogates are looked for per record (see `records`), so one bad string does not cost the file."""
    text = read_text_file(path, report)
    if text is None:
        return None
    data, reason, detail = parse_json(text, surrogates=False)
    if reason == "not valid JSON":
        fixed, _, _ = parse_json(re.sub(r",(\s*[\]}])", r"\1", text), surrogates=False)
        if fixed is not None:
            print(f"warning: {path}: trailing comma in JSON ({detail}); read leniently")
            return fixed
    if reason:
        report.skips.add(str(path), reason, detail)
        return None
    return data


def read_jsonl_file(path: Path, report: Report):
    """Yield (where, object) per usable line (model/dataset.py's reader: a .gz file is read transparently).
    Every other line is a skip named by file:line, so lines in = lines yielded + skips."""
    for number, row in read_jsonl(path, report.skips):
        yield f"{path}:{number}", row


def records(data, path: Path, report: Report):
    """(where, item) for each element of a parsed JSON array (None: already reported unreadable). An item
    holding a lone surrogate is skipped here, named by its index."""
    if data is None:
        return
    if not isinstance(data, list):
        report.skips.add(str(path), "expected a JSON array at the top level")
        return
    for i, item in enumerate(data):
        at = find_lone_surrogate(item)
        if at:
            report.skips.add(f"{path}[{i}]", "lone UTF-16 surrogate in a string", f"at {at}")
            continue
        yield f"{path}[{i}]", item


def has_lone_surrogate(text: str) -> bool:
    return find_lone_surrogate(text) is not None


_TRADITIONAL = None


def to_simplified(text: str) -> str:
    """OpenCC traditional->simplified for text written in traditional script: at least 2% of its characters
    exist only in traditional. Pure-Python OpenCC is slow, and the few traditional characters inside
    simplified text are mostly names (魏徵, 乾隆) that OpenCC would wrongly change, so the rest is left as is."""
    global _TRADITIONAL
    import opencc

    if _TRADITIONAL is None:
        folder = Path(opencc.__file__).parent / "dictionary"

        def pairs(name):
            for line in (folder / name).read_text(encoding="utf-8").splitlines():
                key, _, values = line.partition("\t")
                yield key, values.split()

        simplified = {key for key, _ in pairs("STCharacters.txt")}
        _TRADITIONAL = (
            frozenset(k for k, v in pairs("TSCharacters.txt") if v[:1] != [k] and k not in simplified),
            opencc.OpenCC("t2s"),
        )
    markers, converter = _TRADITIONAL
    if markers.isdisjoint(text) or sum(c in markers for c in text) < 0.02 * len(text):
        return text
    return converter.convert(text)


_CJK = r"\u3000-\u303f\u3400-\u9fff\uff00-\uffef"
_SPACE_IN_CJK = re.compile(rf"(?<=[{_CJK}])[ \t]+|[ \t]+(?=[{_CJK}])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\ufeff]")


def normalize(text: str, prose: bool = True) -> str:
    """Simplified script, no control or zero-width characters, at most one blank line in a row, no
    trailing spaces. For prose (pretraining text) also no spaces next to Chinese characters (they mark
    lost quotation marks in the NiuTrans novels) and no indentation; chat messages keep both, since
    their code blocks need them."""
    text = _CONTROL.sub("", to_simplified(text.replace("\r\n", "\n").replace("\r", "\n")))
    if prose:
        text = _SPACE_IN_CJK.sub("", text.replace("\u3000", " "))
    lines = [line.strip() if prose else line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n" if not prose else None)


def content_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class SeenBefore:
    """Exact-duplicate check: `seen(item)` is True for an item (text, or JSON-able) met before, and
    remembers it otherwise. It keeps 8-byte content hashes, so memory stays small."""

    def __init__(self):
        self.keys = set()

    def __call__(self, item) -> bool:
        key = content_hash(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False))
        if key in self.keys:
            return True
        self.keys.add(key)
        return False


def is_val(key: str, fraction: float) -> bool:
    """Held-out membership from a content hash: the same document always lands in the same split."""
    return content_hash("split:" + key) % 100_000 < fraction * 100_000


def write_jsonl(path, rows) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)


# ============================================================================= pretraining corpus


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


def csv_rows(text: str | None, path: Path, report: Report):
    """(where, row) for each row of CSV text with a header line. A row the csv module cannot read (a
    field over its size limit, a NUL byte) ends the file with one skip naming the line it reached."""
    rows = csv.DictReader(io.StringIO(text or ""))
    try:
        for number, row in enumerate(rows, 2):
            yield f"{path}:{number}", row
    except csv.Error as error:
        report.skips.add(f"{path}:{rows.reader.line_num}", "unreadable CSV; the rest of the file is skipped",
                         str(error))


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
    MiniMind's pretrain_hq is. Only pass training splits, or the held-out sets leak into pretraining."""
    for where, row in read_jsonl_file(path, report):
        if isinstance(row, dict) and "conversations" in row:
            messages = row["conversations"]
        elif isinstance(row, dict) and isinstance(row.get("prompt"), list) and isinstance(row.get("chosen"), list):
            messages = row["prompt"] + row["chosen"]
        else:
            report.skips.add(where, "neither 'conversations' nor 'prompt' + 'chosen' lists")
            continue
        reason, detail = check_messages(messages, "conversations")
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, "\n".join(m["content"] for m in messages if m["role"] != "system")


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
            raise SystemExit(f"{path}: no such file")
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


def tokenize_into_shards(args, tokenizer, folder: Path, dtype):
    """Stream cleaned documents through the tokenizer in batches into train/val shards in `folder`.
    Memory stays bounded by one batch (plus the 8-byte duplicate-check keys)."""
    writers = {split: ShardWriter(folder, split, args.shard_tokens, dtype) for split in ("train", "val")}
    reports, tokens = {}, {"train": 0, "val": 0}
    documents = pretrain_documents(
        args.raw, args.jsonl, args.sources, args.strict, args.min_chars, args.chunk_chars, reports, args.chat_jsonl,
        args.show_skips,
    )
    progress = tqdm(unit="doc", desc="tokenize", disable=None)
    while batch := [doc for _, doc in zip(range(args.batch_docs), documents)]:
        encodings = tokenizer.encode_batch([piece for _, _, piece in batch], add_special_tokens=False)
        for (name, whole, piece), encoding in zip(batch, encodings):
            ids = np.array(encoding.ids + [EOS_ID], dtype=np.int64)
            split = "val" if is_val(whole, args.val_fraction) else "train"
            writers[split].write(ids)
            tokens[split] += len(ids)
            reports[name].tokens += len(ids)
            reports[name].chars += len(piece)
        progress.update(len(batch))
    progress.close()
    for writer in writers.values():
        writer.close()
    return reports, tokens, {**writers["train"].shards, **writers["val"].shards}


def cmd_pretrain(args) -> None:
    from tokenizers import Tokenizer

    tokenizer_dir = Path(args.tokenizer)
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise SystemExit(
            f"no tokenizer at {tokenizer_dir}: run `python train_tokenizer.py` first (or pass --tokenizer)"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.encode_special_tokens = True  # a literal "</s>" inside a text is text, not a document boundary
    vocab = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)
    out = Path(args.out)
    building = out.with_name(out.name + ".building")  # swapped in only when complete
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    start = time.time()
    try:
        reports, tokens, shards = tokenize_into_shards(args, tokenizer, building, dtype)
        written = sum((building / name).stat().st_size for name in shards) // dtype.itemsize
        assert written == sum(tokens.values()) == sum(r.tokens for r in reports.values()), "token counts disagree"
        if not tokens["train"] or not tokens["val"]:
            raise SystemExit(
                f"pretrain: need documents in both splits (train {tokens['train']} tokens, val {tokens['val']}); "
                f"fetch data first (data_process.py fetch), or raise --val_fraction"
            )
        meta = {
            "dtype": dtype.name,
            "eos_id": EOS_ID,
            "vocab_size": vocab,
            "tokenizer_hash": tokenizer_hash(tokenizer_dir),
            "val_fraction": args.val_fraction,
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
        (building / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    except BaseException:  # --strict, Ctrl-C, a full disk: leave no half-built folder behind
        shutil.rmtree(building, ignore_errors=True)
        raise
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(building, out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"pretrain: wrote {out} in {time.time() - start:.1f}s")
    for report in reports.values():
        print(report.line())
    chars = sum(r.chars for r in reports.values())
    print(
        f"  total: {tokens['train']:,} train + {tokens['val']:,} val tokens in {len(shards)} shard(s); "
        f"{chars / max(1, sum(tokens.values())):.2f} chars/token"
    )


# ============================================================================= conversations (SFT)


# A reply that says who made it ("我是由OpenAI训练的语言模型", "As an AI developed by OpenAI"): a model
# trained on it would claim to be someone else's. Mentions of these names in other contexts are kept.
VENDOR_CLAIM = re.compile(
    r"(我是|我叫|我由|我被|作为|I am|I'm|I was|As an?)[^。！？.!?\n]{0,40}"
    r"(OpenAI|ChatGPT|GPT-?\d|Anthropic|Claude|文心一言|通义千问|ChatGLM|Bard)",
    re.IGNORECASE,
)


def message(role: str, content) -> dict:
    return {"role": role, "content": content.strip() if isinstance(content, str) else content}


def alpaca_items(path: Path, report: Report, fill=None):
    """{instruction, input, output[, history]} (Alpaca, Chinese Alpaca, LLaMA-Factory identity)."""
    data = read_json_file(path, report)
    if data is None:
        return
    for where, item in records(data, path, report):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("instruction"), str)
            or not isinstance(item.get("output"), str)
        ):
            report.skips.add(where, "missing 'instruction' or 'output' string")
            continue
        prompt = item["instruction"] + (
            "\n" + item["input"] if isinstance(item.get("input"), str) and item["input"].strip() else ""
        )
        messages = []
        history = item.get("history") or []
        if not isinstance(history, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
        ):
            report.skips.add(where, "'history' is not a list of [question, answer] strings")
            continue
        for turn in history:
            messages += [message("user", turn[0]), message("assistant", turn[1])]
        messages += [message("user", prompt), message("assistant", item["output"])]
        if fill:
            for m in messages:
                for key, value in fill.items():
                    m["content"] = m["content"].replace("{{" + key + "}}", value)
        yield where, messages


def identity_items(path: Path, report: Report, name="MiniMind", author="MiniMind"):
    yield from alpaca_items(path, report, fill={"name": name, "author": author})


def sharegpt_conversations(turns) -> tuple[list[dict] | None, str, str]:
    """ShareGPT turns [{"from", "value"}] (or {"role", "content"}) -> (messages, '', '') or (None, reason, detail)."""
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "chatgpt": "assistant",
        "bard": "assistant",
        "system": "system",
    }
    if not isinstance(turns, list):
        return None, "'conversations' is not a list", ""
    if not turns:
        return None, "'conversations' is empty", ""
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from", turn.get("role", "")) if isinstance(turn, dict) else None
        role = roles.get(speaker.lower()) if isinstance(speaker, str) else None
        content = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if role is None or not isinstance(content, str):
            return None, "a turn lacks a known 'from' or a string 'value'", f"turn {i}"
        messages.append(message(role, content))
    return messages, "", ""


def sharegpt_items(path: Path, report: Report):
    """{"conversations": [{"from": "human"|"gpt", "value"}]} (ShareGPT), one per line or a JSON array."""
    rows = (
        read_jsonl_file(path, report)
        if path.suffix in (".jsonl", ".gz")
        else records(read_json_file(path, report), path, report)
    )
    for where, row in rows:
        messages, reason, detail = sharegpt_conversations(row.get("conversations") if isinstance(row, dict) else None)
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, messages


def kdconv_items(path: Path, report: Report):
    """KdConv dialogues: speakers alternate and carry no roles, so the opener is the user."""
    data = read_json_file(path, report)
    for where, dialogue in records(data, path, report) if data is not None else ():
        turns = dialogue.get("messages") if isinstance(dialogue, dict) else None
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("message"), str) for t in turns
        ):
            report.skips.add(where, "no 'messages' list of {message}")
            continue
        yield where, [message("user" if i % 2 == 0 else "assistant", t["message"]) for i, t in enumerate(turns)]


def medical_items(path: Path, report: Report):
    """The medical dialogue CSV (GBK): department,title,ask,answer -> patient asks, doctor answers."""
    text = read_text_file(path, report, encoding="gb18030")
    for where, row in csv_rows(text, path, report):
        ask, answer, title = (row.get(key) for key in ("ask", "answer", "title"))
        if not isinstance(ask, str) or not ask or not isinstance(answer, str) or not answer:
            report.skips.add(where, "missing 'ask' or 'answer'")
            continue
        title = title.strip() if isinstance(title, str) else ""
        prompt = ask if not title or title in ask else f"{title}\n{ask}"
        yield where, [message("user", prompt), message("assistant", answer)]


def gaokao_items(path: Path, report: Report):
    """GAOKAO-Bench {"example": [{question, answer, analysis}]} -> the question, answered with its explanation."""
    data = read_json_file(path, report)
    examples = data.get("example") if isinstance(data, dict) else None
    if data is not None and not isinstance(examples, list):
        report.skips.add(str(path), "no 'example' list")
    for where, item in records(examples, path, report) if isinstance(examples, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            report.skips.add(where, "missing 'question'")
            continue
        answer = item.get("answer")
        answer = "".join(answer) if isinstance(answer, list) and all(isinstance(a, str) for a in answer) else answer
        analysis = item.get("analysis")
        analysis = analysis.strip() if isinstance(analysis, str) else ""
        if not isinstance(answer, str) or not answer.strip() or not analysis:
            report.skips.add(where, "missing 'answer' or 'analysis'")
            continue
        yield where, [message("user", item["question"]), message("assistant", f"{analysis}\n答案：{answer.strip()}")]


def agieval_items(path: Path, report: Report):
    """AGIEval {passage, question, options, label}: multiple choice, answered with the letter."""
    for where, row in read_jsonl_file(path, report):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            report.skips.add(where, "missing 'question'")
            continue
        label = row.get("label") or row.get("answer")
        label = "".join(label) if isinstance(label, list) and all(isinstance(x, str) for x in label) else label
        if not isinstance(label, str) or not label.strip():
            report.skips.add(where, "missing 'label'")
            continue
        options = row.get("options")
        options = "\n".join(o for o in options if isinstance(o, str)) if isinstance(options, list) else ""
        passage = row.get("passage") if isinstance(row.get("passage"), str) else ""
        prompt = "\n".join(p for p in (passage, row["question"], options) if p)
        yield where, [message("user", prompt), message("assistant", f"答案：{label.strip()}")]


def deepctrl_items(path: Path, report: Report):
    """Upstream deepctrl jsonl: {"history": [[q, a], ...], "q"|"input": str, "a"|"output": str}."""
    for where, row in read_jsonl_file(path, report):
        question = row.get("q", row.get("input")) if isinstance(row, dict) else None
        answer = row.get("a", row.get("output")) if isinstance(row, dict) else None
        if not isinstance(question, str) or not isinstance(answer, str):
            report.skips.add(where, "missing 'q'/'input' or 'a'/'output'")
            continue
        messages = []
        history = row.get("history") or []
        if not isinstance(history, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
        ):
            report.skips.add(where, "'history' is not a list of [question, answer] strings")
            continue
        for turn in history:
            messages += [message("user", turn[0]), message("assistant", turn[1])]
        yield where, messages + [message("user", question), message("assistant", answer)]


def chat_jsonl_items(path: Path, report: Report):
    """Our own (and current upstream's) format: {"conversations": [{"role", "content"}]}."""
    for where, row in read_jsonl_file(path, report):
        messages = row.get("conversations") if isinstance(row, dict) else None
        reason, detail = check_messages(messages, "conversations")
        if reason:
            report.skips.add(where, reason, detail)
            continue
        yield where, [message(m["role"], m["content"]) for m in messages]


# name -> (glob under the raw folder, converter, output). The identity and medical sets are LoRA material:
# kept out of the general SFT mix so that the LoRA stage visibly teaches something new.
SFT_SOURCES = {
    "alpaca_zh": ("sft_zh/alpaca_zh_hikariming/*/*.json", alpaca_items, "sft"),
    "alpaca_gpt4_zh_demo": ("sft_zh/llamafactory_demo/alpaca_zh_demo.json", alpaca_items, "sft"),
    "kdconv": ("sft_zh/kdconv/*/*.json", kdconv_items, "sft"),
    "sharegpt_zh": ("sft_zh/sharegpt_zh_1k/*.jsonl", sharegpt_items, "sft"),
    "gaokao_bench": ("sft_zh/exams/gaokao_bench/*/*.json", gaokao_items, "sft"),
    "agieval_zh": ("sft_zh/exams/agieval_zh/*.jsonl", agieval_items, "sft"),
    "identity": ("identity/llamafactory_identity.json", identity_items, "lora_identity"),
    "medical_dialogue": ("sft_zh/medical_dialogue/*.csv", medical_items, "lora_medical"),
}
SFT_FILES = {
    "single": "sft_single.jsonl",
    "multi": "sft_multi.jsonl",
    "val": "sft_val.jsonl",
    "lora_identity": "lora_identity.jsonl",
    "lora_medical": "lora_medical.jsonl",
}


class CevalGuard:
    """Finds items that contain a C-Eval val question: an exact match of the middle 16 characters of any
    val question (after removing blanks and whitespace), the check MANIFEST.md used to find the overlap.
    Questions shorter than 24 characters are generic stems ("下列各句中，没有语病的一句是") that many exams
    share, so they are not used."""

    SPAN, MIN_LENGTH = 16, 24

    def __init__(self, ceval_dir: Path):
        self.keys = set()
        for path in sorted(Path(ceval_dir).glob("*.csv")):
            with open(path, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    question = self.squash(row.get("question") or "")
                    if len(question) >= self.MIN_LENGTH:
                        middle = (len(question) - self.SPAN) // 2
                        self.keys.add(question[middle : middle + self.SPAN])

    @staticmethod
    def squash(text: str) -> str:
        return re.sub(r"\s+|_{2,}", "", text)

    def hit(self, text: str) -> bool:
        text = self.squash(text)
        return any(text[i : i + self.SPAN] in self.keys for i in range(len(text) - self.SPAN + 1))


def clean_messages(messages: list[dict], max_chars: int) -> tuple[list[dict] | None, str]:
    """Normalise every message and keep the longest prefix of whole exchanges (ending with an assistant
    reply) within max_chars. Returns (messages, '') or (None, reason)."""
    if any(has_lone_surrogate(m["content"]) for m in messages):
        return None, "lone UTF-16 surrogate in a string"
    messages = [message(m["role"], normalize(m["content"], prose=False)) for m in messages]
    if any(not m["content"] for m in messages):
        return None, "empty message"
    if any(t in m["content"] for m in messages for t in ("<s>", "</s>")):
        return None, "contains the literal text <s> or </s>"
    if messages[0]["role"] == "assistant":
        messages = messages[1:]
    total, end = 0, 0
    for i, m in enumerate(messages):
        total += len(m["content"])
        if total > max_chars:
            break
        if m["role"] == "assistant":
            end = i + 1
    if end == 0:
        return None, f"no complete exchange within {max_chars} characters"
    return messages[:end], ""


def cmd_sft(args) -> None:
    raw_dir = Path(args.raw)
    inputs = [
        (name, sorted(raw_dir.glob(pattern)), reader, dest) for name, (pattern, reader, dest) in SFT_SOURCES.items()
    ]
    inputs += [(Path(p).stem, [Path(p)], chat_jsonl_items, "sft") for p in args.jsonl]
    inputs += [(Path(p).stem, [Path(p)], sharegpt_items, "sft") for p in args.sharegpt]
    inputs += [(Path(p).stem, [Path(p)], deepctrl_items, "sft") for p in args.deepctrl]
    guard = ceval_guard(raw_dir, args.ceval)
    out = {split: [] for split in SFT_FILES}
    seen, reports = SeenBefore(), []
    start = time.time()
    for name, paths, reader, dest in inputs:
        report = Report(name, skips=Skips(args.strict, args.show_skips))
        reports.append(report)
        extra = {"name": args.bot_name, "author": args.bot_author} if reader is identity_items else {}
        for path in tqdm(paths, desc=name, unit="file", disable=None, leave=False):
            if not path.exists():
                raise SystemExit(f"{path}: no such file")
            report.files += 1
            for where, messages in reader(path, report, **extra):
                messages, reason = clean_messages(messages, args.max_chars)
                replies = [m["content"] for m in messages or [] if m["role"] == "assistant"]
                if not reason and reader is not identity_items and any(VENDOR_CLAIM.search(r) for r in replies):
                    reason = "reply claims to be another vendor's model"
                if (
                    not reason
                    and guard
                    and guard.hit("\n".join(m["content"] for m in messages if m["role"] != "assistant"))
                ):
                    reason = "question appears in C-Eval val"
                if not reason and seen(messages):
                    reason = "exact duplicate"
                if reason:
                    report.skips.add(where, reason)
                    continue
                report.kept += 1
                report.chars += sum(len(m["content"]) for m in messages)
                if dest != "sft":
                    split = dest
                elif is_val(messages[0]["content"], args.val_fraction):
                    split = "val"
                else:
                    split = "single" if len(replies) == 1 else "multi"
                out[split].append({"conversations": messages})
    print(f"sft: read {sum(r.read for r in reports)}, kept {sum(r.kept for r in reports)} ({time.time() - start:.1f}s)")
    for report in reports:
        print(report.line())
    for split, rows in out.items():
        path = Path(args.out) / SFT_FILES[split]
        write_jsonl(path, rows)
        print(f"  wrote {path}: {len(rows)} conversations")


def ceval_guard(raw_dir: Path, ceval_dir) -> CevalGuard | None:
    folder = Path(ceval_dir) if ceval_dir else raw_dir / "ceval" / "val"
    guard = CevalGuard(folder)
    if not guard.keys:
        print(f"warning: no C-Eval val questions under {folder}; items that overlap C-Eval are NOT removed")
        return None
    return guard


# ============================================================================= preference pairs (DPO)


def reply(value, key: str) -> tuple[list[dict] | None, str, str]:
    """A chosen/rejected answer given as a string, a {from, value} turn, or a list of messages:
    (messages, '', '') or (None, reason, detail)."""
    if isinstance(value, str):
        return [message("assistant", value)], "", ""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None, f"'{key}' is not a string, turn or list", ""
    if not value:
        return None, f"'{key}' is empty", ""
    messages, reason, detail = sharegpt_conversations(value)
    return messages, reason and f"'{key}': {reason}", detail


def conversation_pairs(path: Path, report: Report):
    """MedicalGPT / LLaMA-Factory: {"conversations": [...], "chosen": str | turn, "rejected": str | turn}."""
    rows = (
        read_jsonl_file(path, report)
        if path.suffix == ".jsonl"
        else records(read_json_file(path, report), path, report)
    )
    for where, row in rows:
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            report.skips.add(where, "missing 'chosen' or 'rejected'")
            continue
        prompt, reason, detail = sharegpt_conversations(row.get("conversations"))
        reason = reason and f"'conversations': {reason}"
        parts = [prompt]
        for key in ("chosen", "rejected"):
            if not reason:
                messages, reason, detail = reply(row[key], key)
                parts.append(messages)
        if reason:  # one skip per record, for its first problem
            report.skips.add(where, reason, detail)
            continue
        yield where, *parts


def hh_transcript(text: str) -> list[dict] | None:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages; None when it does not follow that shape."""
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        return None
    return [
        message("user" if role == "Human" else "assistant", content) for role, content in zip(parts[1::2], parts[2::2])
    ]


def hh_rlhf_pairs(path: Path, report: Report):
    """hh-rlhf: two full transcripts that share every turn but the last Assistant reply."""
    for where, row in read_jsonl_file(path, report):
        chosen = (
            hh_transcript(row.get("chosen", ""))
            if isinstance(row, dict) and isinstance(row.get("chosen"), str)
            else None
        )
        rejected = (
            hh_transcript(row.get("rejected", ""))
            if isinstance(row, dict) and isinstance(row.get("rejected"), str)
            else None
        )
        if not chosen or not rejected:
            report.skips.add(where, "not a Human/Assistant transcript")
            continue
        yield where, *split_shared_prefix(chosen, rejected)


def split_shared_prefix(chosen: list[dict], rejected: list[dict]):
    """(prompt, chosen_rest, rejected_rest): the shared leading messages become the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def messages_pairs(path: Path, report: Report):
    """Upstream {"chosen": [messages], "rejected": [messages]}, or ours with an explicit "prompt"."""
    for where, row in read_jsonl_file(path, report):
        if not isinstance(row, dict):
            report.skips.add(where, "line is not a JSON object")
            continue
        reason = ""
        for key in ("prompt", "chosen", "rejected") if "prompt" in row else ("chosen", "rejected"):
            reason = reason or check_messages(row.get(key), key)[0]
        if reason:
            report.skips.add(where, reason)
            continue
        if "prompt" in row:
            yield where, row["prompt"], row["chosen"], row["rejected"]
        else:
            yield where, *split_shared_prefix(row["chosen"], row["rejected"])


DPO_SOURCES = {
    "medicalgpt_dpo_zh": ("dpo/medicalgpt_dpo_zh_500/*.jsonl", conversation_pairs),
    "llamafactory_dpo": ("dpo/llamafactory_demo/*.json", conversation_pairs),
    "hh_rlhf_harmless": ("dpo/hh_rlhf_harmless_base/*.jsonl.gz", hh_rlhf_pairs),
}


def clean_pair(prompt, chosen, rejected, max_chars: int, guard) -> tuple[dict | None, str]:
    """Normalise a preference pair and check it. Returns (row, '') or (None, reason)."""
    if not prompt or prompt[-1]["role"] != "user" or any(m["role"] != "assistant" for m in chosen + rejected):
        return None, "prompt must end with a user turn and the answers be assistant turns"
    if any(has_lone_surrogate(m["content"]) for m in prompt + chosen + rejected):
        return None, "lone UTF-16 surrogate in a string"
    prompt, chosen, rejected = (
        [message(m["role"], normalize(m["content"], prose=False)) for m in part] for part in (prompt, chosen, rejected)
    )
    contents = [m["content"] for m in prompt + chosen + rejected]
    if any(not c or "<s>" in c or "</s>" in c for c in contents):
        return None, "empty message or literal <s>/</s>"
    if chosen == rejected:
        return None, "chosen and rejected are identical"
    if max(sum(len(m["content"]) for m in prompt + side) for side in (chosen, rejected)) > max_chars:
        return None, f"prompt + answer longer than {max_chars} characters"
    if any(VENDOR_CLAIM.search(m["content"]) for m in chosen):
        return None, "chosen reply claims to be another vendor's model"
    if guard and guard.hit("\n".join(m["content"] for m in prompt if m["role"] == "user")):
        return None, "question appears in C-Eval val"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, ""


def cmd_dpo(args) -> None:
    raw_dir = Path(args.raw)
    inputs = [(name, sorted(raw_dir.glob(pattern)), reader) for name, (pattern, reader) in DPO_SOURCES.items()]
    inputs += [(Path(p).stem, [Path(p)], messages_pairs) for p in args.jsonl]
    guard = ceval_guard(raw_dir, args.ceval)
    train, val, seen, reports = [], [], SeenBefore(), []
    start = time.time()
    for name, paths, reader in inputs:
        report = Report(name, skips=Skips(args.strict, args.show_skips))
        reports.append(report)
        for path in paths:
            if not path.exists():
                raise SystemExit(f"{path}: no such file")
            report.files += 1
            for where, prompt, chosen, rejected in reader(path, report):
                row, reason = clean_pair(prompt, chosen, rejected, args.max_chars, guard)
                if row and seen(row):
                    reason = "exact duplicate"
                if reason:
                    report.skips.add(where, reason)
                    continue
                report.kept += 1
                (val if is_val(row["prompt"][-1]["content"], args.val_fraction) else train).append(row)
    out = Path(args.out)
    write_jsonl(out / "dpo.jsonl", train)
    write_jsonl(out / "dpo_val.jsonl", val)
    print(f"dpo: read {sum(r.read for r in reports)}, kept {sum(r.kept for r in reports)} ({time.time() - start:.1f}s)")
    for report in reports:
        print(report.line())
    print(f"  wrote {out / 'dpo.jsonl'}: {len(train)} pairs; {out / 'dpo_val.jsonl'}: {len(val)} pairs")


# ============================================================================= command line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--raw", default=str(DATASET / "raw"), help="folder of fetched source files")
        sub.add_argument(
            "--strict", action="store_true", help="stop at the first malformed record instead of skipping it"
        )
        sub.add_argument("--show_skips", type=int, default=3, metavar="N",
                         help="print the first N skipped records of each reason with their file:line (default 3)")
        return sub

    sub = command("fetch", "download the pinned source files, verifying each sha256")
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
    sub.set_defaults(run=cmd_fetch)

    sub = commands.add_parser("manifest", help="rebuild dataset/sources_full.tsv.gz from a sources.tsv listing")
    sub.add_argument("--sources", required=True, help="a sources.tsv (local_path, url, sha256, bytes)")
    sub.set_defaults(run=cmd_manifest)

    sub = command("pretrain", "clean, deduplicate and tokenize the pretraining text into uint16 shards")
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
    sub.set_defaults(run=cmd_pretrain)

    sub = command("sft", "build chat jsonl (single-turn, multi-turn and held-out files)")
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
    sub.set_defaults(run=cmd_sft)

    sub = command("dpo", "build preference pairs jsonl (prompt, chosen, rejected as messages)")
    sub.add_argument("--out", default=str(DATASET), help="folder for dpo.jsonl and dpo_val.jsonl")
    sub.add_argument("--jsonl", nargs="*", default=[], help='extra {"chosen": [...], "rejected": [...]} files')
    sub.add_argument(
        "--ceval", default=None, help="C-Eval val CSV folder whose questions are removed (default raw/ceval/val)"
    )
    sub.add_argument("--max_chars", type=int, default=1024)
    sub.add_argument("--val_fraction", type=float, default=0.05)
    sub.set_defaults(run=cmd_dpo)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
