"""Fetching the source files: the manifest of pinned URLs and sha256s, resumable verified downloads (or
copies from a local mirror), and the demo subset."""

import csv
import gzip
import hashlib
import io
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data import DATASET
from model.checkpoint import atomic_write
from model.errors import MiniMindError

MANIFEST = DATASET / "sources_full.tsv.gz"  # every source file; the demo set is the subset in_demo() picks
MANIFEST_COLUMNS = ["local_path", "url", "sha256", "bytes"]


@dataclass
class Source:
    local_path: str
    url: str
    sha256: str
    bytes: int


def read_manifest(path) -> list[Source]:
    path = Path(path)
    if not path.exists():
        raise MiniMindError(f"manifest {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sources = []
    for number, row in enumerate(rows, 2):
        if any(not row.get(column) for column in MANIFEST_COLUMNS):
            raise MiniMindError(f"{path}:{number}: a manifest row needs {', '.join(MANIFEST_COLUMNS)}")
        if Path(row["local_path"]).is_absolute() or ".." in Path(row["local_path"]).parts:
            raise MiniMindError(f"{path}:{number}: local_path must stay inside the raw folder: {row['local_path']}")
        sources.append(Source(row["local_path"], row["url"], row["sha256"].lower(), int(row["bytes"])))
    return sources


def source_repositories(manifest=None) -> list[str]:
    """owner/name of every GitHub repository the training data comes from (C-Eval, which is only ever
    evaluated on, left out), sorted: what an exported model card lists as its datasets."""
    repos = set()
    for source in read_manifest(manifest or MANIFEST):
        parts = source.url.split("/")
        if not source.local_path.startswith("ceval/") and len(parts) > 4 and parts[2].endswith("githubusercontent.com"):
            repos.add(f"{parts[3]}/{parts[4]}")
    return sorted(repos, key=str.lower)


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


def fetch(raw, set="demo", manifest=None, mirror=None, workers=8, strict=False) -> None:
    """Make the raw folder hold the manifest's files (`set`: "demo" or "full"), each verified by its
    sha256, from the pinned URLs or a mirror (a local folder or an http(s) URL laid out as local_path).
    Files already present and intact are kept; a failed run resumes from its part files."""
    sources = read_manifest(manifest or MANIFEST)
    if set == "demo":
        sources = [s for s in sources if in_demo(s.local_path)]
    raw_dir = Path(raw)
    where = mirror or "the pinned URLs"
    print(f"fetch: {len(sources)} files ({sum(s.bytes for s in sources) / 1e6:.1f} MB) from {where} into {raw_dir}")
    start, counts, failures = time.time(), {}, []

    def job(source):
        try:
            return source, fetch_one(source, raw_dir, mirror), None
        except (OSError, ValueError, urllib.error.URLError) as error:
            return source, None, error

    workers = 1 if mirror and not re.match(r"https?://", mirror) else workers
    pool = ThreadPoolExecutor(workers)
    try:
        for source, status, error in tqdm(pool.map(job, sources), total=len(sources), unit="file", disable=None):
            if error:
                failures.append(f"{source.local_path}: {error}")
                if strict:
                    raise MiniMindError(f"error: {failures[-1]} [--strict stops at the first problem]")
                if len(failures) >= 8 and not counts:  # offline, or a wrong mirror: say so now, not after every file
                    print("\n".join(f"  failed: {line}" for line in failures))
                    raise MiniMindError(
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
        raise MiniMindError(f"fetch: {len(failures)} file(s) failed; run the same command again to resume")



def write_manifest(listing) -> None:
    """Rebuild dataset/sources_full.tsv.gz from a sources.tsv listing (gzip with a fixed mtime: reproducible)."""
    sources = read_manifest(listing)
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
