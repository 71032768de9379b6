"""Reading source files record by record. Every reader adds each record it cannot use to a Report's
skips, named by file:line (or file[index]), so that records read = kept + skipped."""

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from data.datasets import Skips, read_jsonl
from model.checkpoint import atomic_write
from model.jsonfile import find_lone_surrogate, parse_json


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
    """Yield (where, object) per usable line (data/datasets.py's reader: a .gz file is read transparently).
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



def write_jsonl(path, rows) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)
