"""train_tokenizer.py: fixed special ids, exact round trip, determinism, chat template, SentencePiece, and
the held-out evaluation (chars per token, round trip) checked on the numbers it returns."""

import json

import pytest
from conftest import synthetic_corpus

import train_tokenizer
from model.tokenizer import ASSISTANT_HEADER, BOS_ID, EOS_ID, UNK_ID, load_tokenizer, train_bpe

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


def train(raw, out, *extra, vocab=600) -> train_tokenizer.Evaluation:
    # 600: enough merges (past 256 bytes + 3 specials) for held-out text to come out above 1 character per token
    return train_tokenizer.main(
        ["--raw", str(raw), "--out", str(out), "--vocab_size", str(vocab), "--val_fraction", "0.1", "--eval", *extra]
    )


def test_bpe_special_ids_round_trip_and_determinism(raw, tmp_path):
    result = train(raw, tmp_path / "a")
    assert result.documents > 0 and result.round_trip_failures == [] and result.round_trips == result.documents
    assert result.vocab_size == 600 and result.special_ids == {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    assert result.chars_per_token > 1  # held-out documents of the same kind of text: merges pay off
    # --eval_only on the tokenizer just written measures the same held-out split to the same numbers.
    again = train_tokenizer.main(["--raw", str(raw), "--out", str(tmp_path / "a"), "--val_fraction", "0.1",
                                  "--eval_only"])
    assert (again.documents, again.characters, again.tokens) == (result.documents, result.characters, result.tokens)
    train(raw, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()

    tokenizer = load_tokenizer(tmp_path / "a")
    assert len(tokenizer) == 600
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


def test_sentencepiece_kind_loads_and_round_trips(raw, tmp_path):
    pytest.importorskip("sentencepiece")
    with pytest.raises(SystemExit, match="Vocabulary size is smaller"):
        train(raw, tmp_path / "small", "--kind", "sentencepiece", vocab=300)  # < 256 bytes + the characters
    result = train(raw, tmp_path / "sp", "--kind", "sentencepiece", vocab=600)
    assert result.documents > 0 and result.round_trip_failures == []
    assert result.chars_per_token > 1
    tokenizer = load_tokenizer(tmp_path / "sp")
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [UNK_ID, BOS_ID, EOS_ID]
    ids = tokenizer.encode(ODD_TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == ODD_TEXT  # byte fallback covers characters the vocabulary lacks
    info = json.loads((tmp_path / "sp" / "training.json").read_text())
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == 600


def test_no_text_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="data_process.py fetch"):
        train_tokenizer.main(["--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "t")])


# ----------------------------------------------------------------------------- the evaluation's numbers


def chinese_only(text: str) -> str:
    """The text without its ASCII (English words, digits, spaces): every character left is 3 UTF-8 bytes."""
    return "".join(ch for ch in text if not ch.isascii())


def test_evaluation_counts_the_held_out_text(tokenizer_dir, tokenizer):
    """The counts are those of the documents given, taken one document at a time here (the evaluation
    encodes in batches), and chars per token is their ratio."""
    held_out = synthetic_corpus(20, seed=99)  # documents the tokenizer was not trained on
    result = train_tokenizer.evaluate(tokenizer_dir, held_out)
    assert result.documents == 20
    assert result.characters == sum(len(text) for text in held_out)
    assert result.tokens == sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in held_out)
    assert result.chars_per_token == pytest.approx(result.characters / result.tokens)
    assert result.round_trip_failures == []


def test_chars_per_token_tells_a_trained_vocabulary_from_bare_bytes(tmp_path, tokenizer_dir):
    """On Chinese text a byte-level tokenizer without merges spends one token per UTF-8 byte: exactly 1/3
    of a character per token. The tokenizer trained on text like it carries more than one per token."""
    held_out = [chinese_only(text) for text in synthetic_corpus(20, seed=99)]
    train_bpe(synthetic_corpus(), vocab_size=259, out_dir=tmp_path / "bytes")  # 256 bytes + 3 specials: no merges
    bare = train_tokenizer.evaluate(tmp_path / "bytes", held_out)
    assert bare.tokens == sum(len(text.encode("utf-8")) for text in held_out)
    assert bare.chars_per_token == pytest.approx(1 / 3)
    trained = train_tokenizer.evaluate(tokenizer_dir, held_out)  # vocab 512, trained on synthetic_corpus()
    assert trained.chars_per_token > 1
    assert bare.round_trip_failures == [] and trained.round_trip_failures == []
