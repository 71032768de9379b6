"""data_process.py pretrain / sft / dpo on small raw trees built by each test."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_corpus, write_file

import data_process
from data.datasets import DPODataset, PretrainDataset, SFTDataset
from data.pretrain import pretrain_documents
from model.errors import MiniMindError
from model.tokenizer import EOS_ID, load_tokenizer

NIUTRANS = "pretrain_zh/niutrans_classical_modern/双语数据"


@pytest.fixture
def pretrain_raw(tmp_path):
    raw = tmp_path / "raw"
    docs = [f"第{i}章。" + doc for i, doc in enumerate(synthetic_corpus(120, seed=1))]
    for i, doc in enumerate(docs):  # one sentence per line, as in NiuTrans
        write_file(raw / NIUTRANS / "书" / f"第{i}章" / "target.txt", doc.replace("。", "。\n"))
    write_file(raw / NIUTRANS / "书" / "重复" / "target.txt", docs[0].replace("。", "。\n"))  # exact duplicate
    write_file(raw / NIUTRANS / "书" / "空" / "target.txt", "\n")
    write_file(raw / NIUTRANS / "书" / "坏" / "target.txt", "今天".encode("gbk"))
    write_file(raw / NIUTRANS / "书" / "长" / "target.txt", "长江是中国最长的河流。" * 500)  # 5500 chars
    poem = [{"title": "三字經", "paragraphs": ["人之初，性本善。性相近，習相遠。", "苟不教，性乃遷。教之道，貴以專。"]}]
    write_file(raw / "pretrain_zh/chinese_poetry/蒙学/sanzijing.json", json.dumps(poem, ensure_ascii=False))
    jsonl = write_file(
        tmp_path / "hq.jsonl",
        "\n".join(
            [
                json.dumps(
                    {"text": "<s>鉴别一组中文文章的风格和特点。</s> <s>请问去火车站怎么走？一直往前走。</s>"},
                    ensure_ascii=False,
                ),
                "{not json",
                json.dumps({"content": "wrong field"}),
            ]
        ),
    )
    return raw, jsonl


def test_pretrain_counts_split_and_round_trip(pretrain_raw, tokenizer_dir, tmp_path, capsys):
    raw, jsonl = pretrain_raw
    out = tmp_path / "pretrain"
    data_process.main(
        [
            "pretrain",
            "--raw",
            str(raw),
            "--jsonl",
            str(jsonl),
            "--out",
            str(out),
            "--tokenizer",
            str(tokenizer_dir),
            "--val_fraction",
            "0.2",
            "--chunk_chars",
            "2048",
        ]
    )
    report = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())

    # every shard holds exactly the tokens meta.json says, and those are the tokens the sources produced
    sizes = {name: (out / name).stat().st_size // 2 for name in meta["shards"]}
    assert sizes == {name: info["tokens"] for name, info in meta["shards"].items()}
    assert sum(sizes.values()) == sum(s["tokens"] for s in meta["sources"].values()) == sum(meta["tokens"].values())

    # token counts in = token counts written: tokenize the cleaned documents independently
    tokenizer = load_tokenizer(tokenizer_dir)
    documents = list(pretrain_documents(raw, [jsonl]))
    expected = sum(len(tokenizer.encode(piece, add_special_tokens=False)) + 1 for _, _, piece in documents)
    assert expected == sum(sizes.values())

    def docs(split):
        tokens = np.concatenate(
            [np.fromfile(out / n, dtype=np.uint16) for n in sorted(meta["shards"]) if n.startswith(split)]
        )
        assert tokens[-1] == EOS_ID
        cuts = np.flatnonzero(tokens == EOS_ID)
        return [tokenizer.decode(part[:-1].tolist()) for part in np.split(tokens, cuts + 1)[:-1]]

    train, val = docs("train"), docs("val")
    assert train and val and not set(train) & set(val)  # the held-out split shares no document
    assert sorted(train + val) == sorted(piece for _, _, piece in documents)  # exact round trip, nothing lost

    # cleaning: traditional -> simplified, duplicates / empty / undecodable skipped and reported, long docs chunked
    assert any("人之初，性本善。性相近，习相远。" in d for d in train + val)
    assert not any("習" in d for d in train + val)
    assert "1 exact duplicate" in report and "1 empty file" in report and "1 not valid utf-8" in report
    assert "1 not valid JSON" in report and "1 no 'text' string" in report
    long_pieces = [d for d in train + val if d.startswith("长江是中国最长的河流。长江")]
    assert len(long_pieces) == 3 and sum(map(len, long_pieces)) == 5500 and max(map(len, long_pieces)) <= 2048
    assert "鉴别一组中文文章的风格和特点。" in train + val  # pretrain_hq's <s>...</s> split into documents

    dataset = PretrainDataset(out, seq_len=16, tokenizer_hash=meta["tokenizer_hash"])
    x, y = dataset[len(dataset) - 1]
    assert x.shape == y.shape == (16,) and (x[1:] == y[:-1]).all()


def test_pretrain_strict_stops_with_file_and_line(pretrain_raw, tokenizer_dir, tmp_path):
    raw, jsonl = pretrain_raw
    with pytest.raises(MiniMindError, match=r"hq\.jsonl:2: not valid JSON"):
        data_process.main(
            [
                "pretrain",
                "--raw",
                str(tmp_path / "none"),
                "--jsonl",
                str(jsonl),
                "--strict",
                "--out",
                str(tmp_path / "p"),
                "--tokenizer",
                str(tokenizer_dir),
            ]
        )
    assert not list(tmp_path.glob("p*"))  # nothing half-built left behind


def test_pretrain_chat_text_joins_messages_and_counts_bad_lines(tokenizer_dir, tmp_path, capsys):
    sft = tmp_path / "sft_single.jsonl"
    sft.write_text(
        json.dumps({"conversations": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "天空为什么是蓝色的？"},
                                      {"role": "assistant", "content": "因为大气散射蓝光。"}]}, ensure_ascii=False) + "\n"
        + json.dumps({"conversations": "不是列表"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(json.dumps({"prompt": [{"role": "user", "content": "推荐一道菜。"}],
                               "chosen": [{"role": "assistant", "content": "麻婆豆腐很好吃。"}],
                               "rejected": [{"role": "assistant", "content": "不知道。"}]}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    reports = {}
    documents = [piece for _, _, piece in
                 pretrain_documents(tmp_path / "none", chat_files=[sft, dpo], reports=reports)]
    # every message but the system prompt, one per line; a DPO pair gives its prompt and the chosen reply only
    assert documents == ["天空为什么是蓝色的？\n因为大气散射蓝光。", "推荐一道菜。\n麻婆豆腐很好吃。"]
    assert reports["sft_single_text"].kept == 1 and reports["dpo_text"].kept == 1
    assert reports["sft_single_text"].skips.counts == {"'conversations' missing or not a non-empty list": 1}
    assert "sft_single.jsonl:2" in capsys.readouterr().out  # the bad line is named


# ----------------------------------------------------------------------------- SFT


@pytest.fixture
def sft_raw(tmp_path):
    raw = tmp_path / "raw"
    alpaca = (
        '[{"instruction": "给出三个保持健康的提示。", "input": "", "output": "多运动，多喝水，早睡觉。"},\n'
        ' {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},\n'
        ' {"instruction": "写一个 Python 函数", "input": "", "output": "```python\\ndef f():\\n    return 1  # 一\\n```"},\n]'
    )
    write_file(raw / "sft_zh/alpaca_zh_hikariming/翻译后的中文数据/a.json", alpaca)
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": "你是谁？"},
                {"from": "gpt", "value": "我是由OpenAI训练的语言模型。"},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "长江有多长？"},
                {"from": "gpt", "value": "约六千三百公里。"},
                {"from": "human", "value": "黄河呢？"},
                {"from": "gpt", "value": "约五千四百公里。"},
            ]
        },
    ]
    write_file(
        raw / "sft_zh/sharegpt_zh_1k/s.jsonl",
        "\n".join(json.dumps(r, ensure_ascii=False) for r in sharegpt) + "\n{oops\n",
    )
    medical = "department,title,ask,answer\n心血管科,高血压能吃党参吗？,我有高血压，能喝党参泡水吗？,可以适量服用。\n"
    write_file(raw / "sft_zh/medical_dialogue/m.csv", medical.encode("gbk"))
    question = "王某系聋哑人，因涉嫌盗窃罪被提起公诉。关于本案，下列哪一选项是正确的?"
    write_file(raw / "ceval/val/legal_professional_val.csv", f"id,question,A,B,C,D,answer\n1,{question}____,甲,乙,丙,丁,B\n")
    agieval = [
        {"passage": None, "question": question, "options": ["(A)甲", "(B)乙"], "label": "B"},
        {"passage": None, "question": "下列哪一项是正确的?", "options": ["(A)对", "(B)错"], "label": "A"},
    ]
    write_file(
        raw / "sft_zh/exams/agieval_zh/jec-qa-ca.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in agieval)
    )
    identity = [{"instruction": "你是什么？", "input": "", "output": "我是 {{name}}，由 {{author}} 开发。"}]
    write_file(raw / "identity/llamafactory_identity.json", json.dumps(identity, ensure_ascii=False))
    deepctrl = {"history": [["你好", "你好！"]], "q": "今天星期几？", "a": "今天星期一。"}
    extra = write_file(tmp_path / "deepctrl.jsonl", json.dumps(deepctrl, ensure_ascii=False) + "\n")
    return raw, extra


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_sft_converters_filters_and_outputs(sft_raw, tmp_path, tokenizer, capsys):
    raw, deepctrl = sft_raw
    out = tmp_path / "out"
    data_process.main(
        [
            "sft",
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--deepctrl",
            str(deepctrl),
            "--val_fraction",
            "0",
            "--bot_name",
            "小智",
        ]
    )
    report = capsys.readouterr().out
    single, multi = read_rows(out / "sft_single.jsonl"), read_rows(out / "sft_multi.jsonl")
    firsts = {row["conversations"][0]["content"] for row in single + multi}
    assert "给出三个保持健康的提示。" in firsts and "翻译成英文\n你好" in firsts  # lenient trailing comma
    assert "trailing comma" in report
    code = next(r for r in single if r["conversations"][0]["content"] == "写一个 Python 函数")  # chat text keeps spaces
    assert code["conversations"][1]["content"] == "```python\ndef f():\n    return 1  # 一\n```"
    assert "你是谁？" not in firsts and "reply claims to be another vendor's model" in report
    assert "下列哪一项是正确的?\n(A)对\n(B)错" in firsts and not any("聋哑人" in f for f in firsts)
    assert "question appears in C-Eval val" in report and "not valid JSON" in report
    assert all(len([m for m in r["conversations"] if m["role"] == "assistant"]) == 1 for r in single)
    assert [m["role"] for m in multi[0]["conversations"]] == ["user", "assistant"] * 2
    assert {tuple(m["content"] for m in r["conversations"]) for r in multi} == {
        ("长江有多长？", "约六千三百公里。", "黄河呢？", "约五千四百公里。"),
        ("你好", "你好！", "今天星期几？", "今天星期一。"),
    }
    medical = read_rows(out / "lora_medical.jsonl")
    assert medical[0]["conversations"][1]["content"] == "可以适量服用。"  # GBK decoded
    identity = read_rows(out / "lora_identity.jsonl")
    assert identity[0]["conversations"][1]["content"] == "我是 小智，由 MiniMind 开发。"
    # ordinary conversations of the training share join it (as many as the identity ones, here all of the few
    # there are), so the adapter also learns when not to name the model
    assert identity[-len(single):] == single and not any(row in single for row in identity[:-len(single)])
    assert len(SFTDataset(out / "sft_single.jsonl", tokenizer, seq_len=512)) == len(single)

    with pytest.raises(MiniMindError, match=r"s\.jsonl:1: reply claims"):
        data_process.main(["sft", "--raw", str(raw), "--out", str(out), "--strict"])


# ----------------------------------------------------------------------------- DPO


def test_dpo_converters(tmp_path, tokenizer, capsys):
    raw = tmp_path / "raw"
    medical = {
        "conversations": [{"from": "human", "value": "头疼怎么办？"}],
        "chosen": "多休息，必要时就医。",
        "rejected": "不知道。",
    }
    write_file(
        raw / "dpo/medicalgpt_dpo_zh_500/d.jsonl",
        json.dumps(medical, ensure_ascii=False) + "\n" + json.dumps(medical, ensure_ascii=False) + "\n",
    )
    factory = [
        {
            "conversations": [
                {"from": "human", "value": "你好"},
                {"from": "gpt", "value": "你好！"},
                {"from": "human", "value": "讲个笑话"},
            ],
            "chosen": {"from": "gpt", "value": "好的，有一天……"},
            "rejected": {"from": "gpt", "value": "讲个笑话"},
        },
        {"conversations": [{"from": "human", "value": "同样"}], "chosen": "一样", "rejected": "一样"},
    ]
    write_file(raw / "dpo/llamafactory_demo/f.json", json.dumps(factory, ensure_ascii=False))
    hh = {
        "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?\n\nAssistant: Bake it.",
        "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?\n\nAssistant: No idea.",
    }
    write_file(raw / "dpo/hh_rlhf_harmless_base/test.jsonl.gz", gzip.compress((json.dumps(hh) + "\n{bad\n").encode()))
    upstream = {
        "chosen": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}],
        "rejected": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "3"}],
    }
    extra = write_file(tmp_path / "up.jsonl", json.dumps(upstream) + "\n")
    out = tmp_path / "out"
    data_process.main(["dpo", "--raw", str(raw), "--out", str(out), "--jsonl", str(extra), "--val_fraction", "0"])
    report = capsys.readouterr().out
    rows = read_rows(out / "dpo.jsonl")
    assert len(rows) == 4 and read_rows(out / "dpo_val.jsonl") == []
    by_question = {r["prompt"][-1]["content"]: r for r in rows}
    assert by_question["头疼怎么办？"]["chosen"] == [{"role": "assistant", "content": "多休息，必要时就医。"}]
    assert [m["role"] for m in by_question["讲个笑话"]["prompt"]] == ["user", "assistant", "user"]
    assert by_question["Then?"]["rejected"] == [{"role": "assistant", "content": "No idea."}]
    assert len(by_question["Then?"]["prompt"]) == 3
    assert by_question["1+1=?"]["chosen"][0]["content"] == "2"
    assert (
        "1 exact duplicate" in report and "1 chosen and rejected are identical" in report and "not valid JSON" in report
    )
    assert len(DPODataset(out / "dpo.jsonl", tokenizer, seq_len=256)) == 4
