"""Text cleaning shared by every pipeline: normalisation (simplified script, no control characters),
exact-duplicate detection and the hash-based train/val split, and the checks that keep a reply claiming
another vendor's model, or a C-Eval val question, out of the training data."""

import csv
import hashlib
import json
import re
from pathlib import Path

from model.jsonfile import find_lone_surrogate


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


# A reply that says who made it ("我是由OpenAI训练的语言模型", "As an AI developed by OpenAI"): a model
# trained on it would claim to be someone else's. Mentions of these names in other contexts are kept.
VENDOR_CLAIM = re.compile(
    r"(我是|我叫|我由|我被|作为|I am|I'm|I was|As an?)[^。！？.!?\n]{0,40}"
    r"(OpenAI|ChatGPT|GPT-?\d|Anthropic|Claude|文心一言|通义千问|ChatGLM|Bard)",
    re.IGNORECASE,
)


def message(role: str, content) -> dict:
    return {"role": role, "content": content.strip() if isinstance(content, str) else content}



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


def ceval_guard(raw_dir: Path, ceval_dir) -> CevalGuard | None:
    folder = Path(ceval_dir) if ceval_dir else raw_dir / "ceval" / "val"
    guard = CevalGuard(folder)
    if not guard.keys:
        print(f"warning: no C-Eval val questions under {folder}; items that overlap C-Eval are NOT removed")
        return None
    return guard
