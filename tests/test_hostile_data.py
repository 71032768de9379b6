"""Every data reader on one hostile file: no traceback, lines in = kept + skipped, every skip named as file:line.

Each file mixes a few good records with the lines that used to crash a reader (a 5000-digit integer,
100,000-deep nesting, a lone surrogate, which Python keeps but cannot encode) or vanish without a word
(blank lines, records with nothing in them). A test knows which line numbers must be skipped, and
checks that exactly those lines are named, each once, and that everything else was kept.
"""

import gzip
import json
import re
from pathlib import Path

import pytest

import data_process
from data.datasets import DPODataset, SFTDataset, Skips, read_jsonl
from data.sft import SFT_FILES
from model.errors import MiniMindError
from model.jsonfile import parse_json

# Lines every jsonl reader must skip and name, whatever its format.
COMMON_BAD = [
    b"",  # blank
    b"{broken json",
    b"\xff\xfe not UTF-8",
    b'{"n": ' + b"7" * 5000 + b"}",  # past Python's 4300-digit limit for int()
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the recursion limit
    b"[1, 2, 3]",  # JSON, but not an object
]
SURROGATE = "\\ud800"  # as written inside a JSON string: a lone surrogate once parsed

TOPICS = ["长江", "黄河", "泰山", "西湖", "长城", "故宫", "黄山", "洞庭湖"]


def chat(i: int) -> list[dict]:
    """A distinct, clean conversation."""
    topic = TOPICS[i]
    return [{"role": "user", "content": f"请介绍一下{topic}。"},
            {"role": "assistant", "content": f"{topic}是中国著名的地方，历史悠久，风景优美，值得一游。"}]


def line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def build(path: Path, rows: list[tuple[bytes, bool]]) -> tuple[list[int], list[int]]:
    """Write (line, keep) rows; return (line numbers to keep, line numbers to skip)."""
    data = b"\n".join(raw for raw, _ in rows) + b"\n"
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    keep = [n for n, (_, ok) in enumerate(rows, 1) if ok]
    skip = [n for n, (_, ok) in enumerate(rows, 1) if not ok]
    return keep, skip


def named_skips(out: str, path: Path) -> list[int]:
    """Line numbers named in `warning: FILE:LINE: reason; skipped` lines, in order, repeats included."""
    return [int(n) for n in re.findall(rf"warning: {re.escape(str(path))}:(\d+): .*; skipped", out)]


def count_rows(*paths) -> int:
    return sum(len(Path(p).read_text(encoding="utf-8").splitlines()) for p in paths)


def with_common(good: list[bytes], specific_bad: list[bytes]) -> list[tuple[bytes, bool]]:
    """Good lines interleaved with the common and reader-specific bad ones."""
    bad = COMMON_BAD + specific_bad
    rows = []
    for i in range(max(len(good), len(bad))):
        if i < len(good):
            rows.append((good[i], True))
        if i < len(bad):
            rows.append((bad[i], False))
    return rows


def check(out: str, path: Path, keep: list[int], skip: list[int], kept: int) -> None:
    named = named_skips(out, path)
    assert "Traceback" not in out
    assert sorted(named) == skip, f"named {named}, expected {skip}"  # each bad line named exactly once
    assert kept == len(keep)
    assert len(keep) + len(skip) == len(path.read_bytes().split(b"\n")) - 1 or path.suffix == ".gz"


# ----------------------------------------------------------------------------- the shared parser


def test_parse_json_never_raises_and_names_the_problem():
    assert parse_json('{"a": [1, {"b": "ok"}]}') == ({"a": [1, {"b": "ok"}]}, "", "")
    assert parse_json("[" * 100_000 + "]" * 100_000)[1] == "JSON nested too deeply"
    assert parse_json("1" * 5000)[1] == "unreadable JSON value"
    value, reason, detail = parse_json('{"a": [1, {"b": ["x", "\\udfff"]}]}')
    assert value is None and reason == "lone UTF-16 surrogate in a string" and detail == "at a[1].b[1]"
    assert parse_json('{"\\ud800": 1}')[1] == "lone UTF-16 surrogate in a string"  # in a key
    assert parse_json('"\\ud83d\\ude00"') == ("\U0001F600", "", "")  # a proper pair is one character
    assert parse_json('"\\\\ud800"') == ("\\ud800", "", "")  # an escaped backslash: plain text


def test_read_jsonl_counts_every_line(tmp_path, capsys):
    rows = with_common([line({"k": i}) for i in range(3)], [])
    path = tmp_path / "any.jsonl"
    keep, skip = build(path, rows)
    skips = Skips(show=100)
    numbers = [n for n, _ in read_jsonl(path, skips)]
    # "[1, 2, 3]" is JSON: the reader yields it and each format's check refuses it
    assert numbers == keep + [skip[-1]] == [1, 3, 5, 9] and skips.total() == 5
    assert named_skips(capsys.readouterr().out, path) == skip[:-1]


# ----------------------------------------------------------------------------- data_process.py pretrain


def pretrain(tmp_path, tokenizer_dir, capsys, flag: str, path: Path) -> tuple[str, dict]:
    out = tmp_path / "pretrain"
    data_process.main(["pretrain", "--raw", str(tmp_path / "no_raw"), flag, str(path), "--out", str(out),
                       "--tokenizer", str(tokenizer_dir), "--val_fraction", "0.5", "--show_skips", "1000"])
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    return capsys.readouterr().out, meta


def test_pretrain_jsonl_hostile(tmp_path, tokenizer_dir, capsys):
    texts = [f"{topic}是中国著名的地方，历史悠久，风景优美。" for topic in TOPICS]
    good = [line({"text": t}) for t in texts]
    specific = [
        b'{"text": ""}', b'{"text": "</s>"}', b'{"text": "<s></s><s></s>"}',  # no document at all
        line({"text": "太短了"}),  # shorter than --min_chars
        good[0],  # exact duplicate
        b'{"text": 5}', b'{"content": "wrong field"}',
        ('{"text": "' + "今天天气很好" + SURROGATE + '我们出去走走吧"}').encode(),
    ]
    path = tmp_path / "hq.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out, meta = pretrain(tmp_path, tokenizer_dir, capsys, "--jsonl", path)
    source = meta["sources"]["hq"]
    assert source["docs"] == len(keep) == 8 and sum(source["skipped"].values()) == len(skip) == 14
    check(out, path, keep, skip, source["docs"])
    assert source["skipped"]["no text (empty, or only <s>/</s> markers)"] == 3
    assert source["skipped"]["exact duplicate"] == 1 and source["skipped"]["shorter than 10 characters"] == 1
    assert source["skipped"]["lone UTF-16 surrogate in a string"] == 1


def test_pretrain_chat_text_hostile(tmp_path, tokenizer_dir, capsys):
    good = [line({"conversations": chat(i)}) for i in range(6)]
    specific = [b'{"conversations": []}', line({"prompt": chat(0)[:1]}),  # no 'chosen'
                ('{"conversations": [{"role": "user", "content": "' + SURROGATE + '"}]}').encode()]
    path = tmp_path / "chat.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out, meta = pretrain(tmp_path, tokenizer_dir, capsys, "--chat_jsonl", path)
    source = meta["sources"]["chat_text"]
    assert sum(source["skipped"].values()) == len(skip) == 9
    check(out, path, keep, skip, source["docs"])


# ----------------------------------------------------------------------------- data_process.py sft / dpo


def run(tmp_path, capsys, command: str, *argv) -> str:
    (tmp_path / "no_raw").mkdir(exist_ok=True)
    data_process.main([command, "--raw", str(tmp_path / "no_raw"), "--ceval", str(tmp_path / "no_raw"),
                       "--out", str(tmp_path / "out"), "--show_skips", "1000", *argv])
    return capsys.readouterr().out


def sft_kept(tmp_path) -> int:
    return count_rows(*(tmp_path / "out" / name for name in SFT_FILES.values()))


def dpo_kept(tmp_path) -> int:
    return count_rows(tmp_path / "out" / "dpo.jsonl", tmp_path / "out" / "dpo_val.jsonl")


def read_kept_line(out: str, command: str) -> tuple[int, int]:
    read, kept = re.search(rf"{command}: read (\d+), kept (\d+)", out).groups()
    return int(read), int(kept)


def test_sft_jsonl_hostile(tmp_path, capsys):
    good = [line({"conversations": chat(i)}) for i in range(5)]
    specific = [b'{"conversations": []}', line({"conversations": chat(0)}),  # duplicate
                line({"conversations": [{"role": "user", "content": "只有问题"}]}),
                ('{"conversations": [{"role": "user", "content": "问' + SURROGATE + '"}, '
                 '{"role": "assistant", "content": "答"}]}').encode()]
    path = tmp_path / "chat.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out = run(tmp_path, capsys, "sft", "--jsonl", str(path))
    check(out, path, keep, skip, sft_kept(tmp_path))
    assert read_kept_line(out, "sft") == (len(keep) + len(skip), len(keep)) == (15, 5)


def test_sft_sharegpt_hostile(tmp_path, capsys):
    def sharegpt(messages):
        return {"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                  for m in messages]}

    good = [line(sharegpt(chat(i))) for i in range(4)]
    specific = [b'{"conversations": []}', b'{"conversations": "text"}', b'{"conversations": [{"from": 5}]}',
                line(sharegpt(chat(1))),  # duplicate
                b'{"conversations": [{"from": "human", "value": "' + SURROGATE.encode() + b'"}]}']
    path = tmp_path / "share.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out = run(tmp_path, capsys, "sft", "--sharegpt", str(path))
    check(out, path, keep, skip, sft_kept(tmp_path))
    assert f"{path}:{skip[6]}" in out  # {"conversations": []} is the first specific line: named
    assert read_kept_line(out, "sft") == (15, 4)


def test_sft_deepctrl_hostile(tmp_path, capsys):
    good = [line({"q": chat(i)[0]["content"], "a": chat(i)[1]["content"]}) for i in range(4)]
    specific = [b'{"q": "", "a": "x"}', b'{"input": 1, "output": "x"}', line({"q": "问", "a": "答", "history": [[1, 2]]}),
                ('{"q": "问' + SURROGATE + '", "a": "答"}').encode()]
    path = tmp_path / "deepctrl.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out = run(tmp_path, capsys, "sft", "--deepctrl", str(path))
    check(out, path, keep, skip, sft_kept(tmp_path))


def pair(i: int) -> dict:
    question, answer = chat(i)
    return {"prompt": [question], "chosen": [answer], "rejected": [{"role": "assistant", "content": "不知道。"}]}


def test_dpo_jsonl_hostile(tmp_path, capsys):
    good = [line(pair(i)) for i in range(5)]
    specific = [line({**pair(6), "chosen": []}), line({"chosen": pair(7)["chosen"]}), line(pair(0)),  # dup
                ('{"chosen": [{"role": "assistant", "content": "' + SURROGATE + '"}], "rejected": []}').encode()]
    path = tmp_path / "pairs.jsonl"
    keep, skip = build(path, with_common(good, specific))
    out = run(tmp_path, capsys, "dpo", "--jsonl", str(path))
    check(out, path, keep, skip, dpo_kept(tmp_path))
    assert read_kept_line(out, "dpo") == (15, 5)


def test_dpo_raw_conversation_pairs_count_each_record_once(tmp_path, capsys):
    def medical(i):
        question, answer = chat(i)
        return {"conversations": [{"from": "human", "value": question["content"]}], "chosen": answer["content"],
                "rejected": "不知道。"}

    good = [line(medical(i)) for i in range(4)]
    specific = [
        line({**medical(5), "chosen": []}),  # used to vanish silently
        line({**medical(6), "conversations": []}),  # likewise
        b'{"conversations": 5, "chosen": 6, "rejected": 7}',  # three problems: one skip
        line({"conversations": medical(7)["conversations"]}),  # no chosen/rejected
        ('{"conversations": [{"from": "human", "value": "' + SURROGATE + '"}], "chosen": "a", "rejected": "b"}').encode(),
    ]
    raw = tmp_path / "raw"
    path = raw / "dpo" / "medicalgpt_dpo_zh_500" / "pairs.jsonl"
    keep, skip = build(path, with_common(good, specific))
    data_process.main(["dpo", "--raw", str(raw), "--ceval", str(tmp_path), "--out", str(tmp_path / "out"),
                       "--show_skips", "1000"])
    out = capsys.readouterr().out
    check(out, path, keep, skip, dpo_kept(tmp_path))
    assert read_kept_line(out, "dpo") == (15, 4)


def test_dpo_raw_hh_rlhf_gzip_hostile(tmp_path, capsys):
    def hh(i):
        question, answer = chat(i)
        head = f"\n\nHuman: {question['content']}\n\nAssistant: "
        return {"chosen": head + answer["content"], "rejected": head + "不知道。"}

    good = [line(hh(i)) for i in range(3)]
    specific = [b'{"chosen": "no transcript", "rejected": "x"}', b'{"chosen": 1}']
    raw = tmp_path / "raw"
    path = raw / "dpo" / "hh_rlhf_harmless_base" / "train.jsonl.gz"
    keep, skip = build(path, with_common(good, specific))
    data_process.main(["dpo", "--raw", str(raw), "--ceval", str(tmp_path), "--out", str(tmp_path / "out"),
                       "--show_skips", "1000"])
    out = capsys.readouterr().out
    check(out, path, keep, skip, dpo_kept(tmp_path))
    assert read_kept_line(out, "dpo") == (11, 3)


def test_whole_json_file_sources_survive_hostile_records(tmp_path, capsys):
    """A JSON array source (Alpaca) with a surrogate in one record and a non-string history in another:
    those records are skipped by index; a file nested too deeply is one skip naming the file."""
    raw = tmp_path / "raw"
    folder = raw / "sft_zh" / "alpaca_zh_hikariming" / "翻译后的中文数据"
    folder.mkdir(parents=True)
    records = [{"instruction": chat(i)[0]["content"], "input": "", "output": chat(i)[1]["content"]} for i in range(3)]
    text = json.dumps(records, ensure_ascii=False)[:-1]
    text += ', {"instruction": "问' + SURROGATE + '", "output": "答"}, {"instruction": "问", "output": "答", "history": [[1, 2]]}]'
    (folder / "a.json").write_text(text, encoding="utf-8")
    (folder / "b.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    (folder / "c.json").write_text('[{"instruction": "x", "output": "y", "n": ' + "9" * 5000 + "}]", encoding="utf-8")
    data_process.main(["sft", "--raw", str(raw), "--ceval", str(tmp_path), "--out", str(tmp_path / "out"),
                       "--show_skips", "1000"])
    out = capsys.readouterr().out
    assert f"{folder / 'a.json'}[3]: lone UTF-16 surrogate" in out and f"{folder / 'a.json'}[4]: 'history'" in out
    assert f"{folder / 'b.json'}: JSON nested too deeply" in out
    assert f"{folder / 'c.json'}: unreadable JSON value" in out
    assert sft_kept(tmp_path) == 3 and read_kept_line(out, "sft") == (3 + 4, 3)


# ----------------------------------------------------------------------------- training loaders (data/datasets.py)


def test_sft_dataset_hostile(tokenizer, tmp_path, capsys):
    good = [line({"conversations": chat(i)}) for i in range(4)]
    specific = [b'{"conversations": []}', line({"conversations": chat(0)[:1]}),  # no assistant message
                ('{"conversations": [{"role": "user", "content": "' + SURROGATE + '"}, '
                 '{"role": "assistant", "content": "x"}]}').encode()]
    path = tmp_path / "sft.jsonl"
    keep, skip = build(path, with_common(good, specific))
    data = SFTDataset(path, tokenizer, seq_len=128, show_skips=1000)
    check(capsys.readouterr().out, path, keep, skip, len(data))
    assert data.skips.total() == len(skip) == 9


def test_dpo_dataset_hostile(tokenizer, tmp_path, capsys):
    good = [line(pair(i)) for i in range(4)]
    specific = [line({**pair(5), "chosen": []}), line({"prompt": [], "chosen": [], "rejected": []}),
                ('{"prompt": [{"role": "user", "content": "' + SURROGATE + '"}], "chosen": [], "rejected": []}').encode()]
    path = tmp_path / "dpo.jsonl"
    keep, skip = build(path, with_common(good, specific))
    data = DPODataset(path, tokenizer, seq_len=128, show_skips=1000)
    check(capsys.readouterr().out, path, keep, skip, len(data))
    assert data.skips.total() == len(skip) == 9


@pytest.mark.parametrize("loader", [SFTDataset, DPODataset])
def test_loaders_strict_stop_at_the_first_hostile_line(loader, tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    good = line({"conversations": chat(0)} if loader is SFTDataset else pair(0))
    build(path, [(good, True), (b"[" * 100_000 + b"]" * 100_000, False)])
    assert len(loader(path, tokenizer, seq_len=512)) == 1
    with pytest.raises(MiniMindError, match=r"data\.jsonl:2: JSON nested too deeply"):
        loader(path, tokenizer, seq_len=512, strict=True)
