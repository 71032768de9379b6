"""train_tokenizer.py: fixed special ids, exact round trip, determinism, chat template, SentencePiece."""

import json

import pytest
from conftest import synthetic_corpus

import train_tokenizer
from model.tokenizer import ASSISTANT_HEADER, BOS_ID, EOS_ID, UNK_ID, load_tokenizer

NIUTRANS = "pretrain_zh/niutrans_classical_modern/双语数据"
ODD_TEXT = "混合 English  and  spaces\n\n\t制表符 emoji 😀 數字 12345 </s> 和 <s> 字面"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for i, doc in enumerate(synthetic_corpus(300, seed=2)):
        path = root / NIUTRANS / "书" / f"第{i}章" / "target.txt"
        path.parent.mkdir(parents=True)
        path.write_text(f"第{i}章。" + doc.replace("。", "。\n"), encoding="utf-8")
    return root


def train(raw, out, *extra, vocab=400):
    train_tokenizer.main(
        ["--raw", str(raw), "--out", str(out), "--vocab_size", str(vocab), "--val_fraction", "0.1", "--eval", *extra]
    )


def test_bpe_special_ids_round_trip_and_determinism(raw, tmp_path, capsys):
    train(raw, tmp_path / "a")
    report = capsys.readouterr().out
    held_out = int(report.split("held-out text: ")[1].split()[0])
    assert held_out > 0 and f"round trip decode(encode(text)) == text: {held_out}/{held_out} documents" in report
    train(raw, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()

    tokenizer = load_tokenizer(tmp_path / "a")
    assert len(tokenizer) == 400
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [UNK_ID, BOS_ID, EOS_ID]
    ids = tokenizer.encode(ODD_TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == ODD_TEXT  # byte-level: any text, unseen characters included
    plain = tokenizer.encode("今天天气很好", add_special_tokens=False)
    assert BOS_ID not in plain and EOS_ID not in plain  # encode adds no special tokens by itself


def test_chat_template_renders_turns_and_generation_prompt(tokenizer):
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "再见"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<s>system\n你是助手。</s>\n<s>user\n你好</s>\n<s>assistant\n你好！</s>\n<s>user\n再见</s>\n"
        + ASSISTANT_HEADER
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert without + ASSISTANT_HEADER == text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(BOS_ID) == 5 and ids.count(EOS_ID) == 4 and ids[0] == BOS_ID


def test_sentencepiece_kind_loads_and_round_trips(raw, tmp_path, capsys):
    pytest.importorskip("sentencepiece")
    with pytest.raises(SystemExit, match="Vocabulary size is smaller"):
        train(raw, tmp_path / "small", "--kind", "sentencepiece", vocab=300)  # < 256 bytes + the characters
    train(raw, tmp_path / "sp", "--kind", "sentencepiece", vocab=600)
    assert "round trip" in capsys.readouterr().out
    tokenizer = load_tokenizer(tmp_path / "sp")
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [UNK_ID, BOS_ID, EOS_ID]
    ids = tokenizer.encode(ODD_TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == ODD_TEXT  # byte fallback covers characters the vocabulary lacks
    info = json.loads((tmp_path / "sp" / "training.json").read_text())
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == 600


def test_no_text_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="data_process.py fetch"):
        train_tokenizer.main(["--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "t")])
