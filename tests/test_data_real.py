"""Integration: the converters on one real file of each source format from the shared data mirror."""

import json
from pathlib import Path

import pytest

import data_process
from data.pretrain import pretrain_documents

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not (SHARED / "sources.tsv").exists(), reason="the shared data mirror ../shared/data is not present"
)

PRETRAIN_FILES = [
    "pretrain_zh/niutrans_classical_modern/双语数据/史记/十表/三代世表/target.txt",
    "pretrain_zh/niutrans_classical_modern/古文原文/浮生六记/闺房记乐/text.txt",
    "pretrain_zh/cmrc2018/cmrc2018_trial.json",
    "pretrain_zh/csl_abstracts/benchmark/ts/dev.tsv",
    "pretrain_zh/chinese_poetry/蒙学/sanzijing-traditional.json",
    "pretrain_zh/chinese_poetry/宋词/author.song.json",
    "pretrain_zh/chinese_reviews/waimai_10k.csv",
]
SFT_FILES = [
    "sft_zh/alpaca_zh_hikariming/翻译后的中文数据/alpaca_data-9407-12345-中文-未完成.json",  # trailing comma
    "sft_zh/kdconv/travel/dev.json",
    "sft_zh/medical_dialogue/样例_内科5000-6000.csv",  # GBK
    "sft_zh/exams/gaokao_bench/Objective_Questions/2010-2022_History_MCQs.json",
    "sft_zh/exams/agieval_zh/jec-qa-ca.jsonl",  # line 960 is a C-Eval val question
    "sft_zh/sharegpt_zh_1k/sharegpt_zh_1K_format.jsonl",
    "ceval/val/legal_professional_val.csv",
]
DPO_FILES = ["dpo/llamafactory_demo/dpo_zh_demo.json", "dpo/hh_rlhf_harmless_base/test.jsonl.gz"]


def link_raw(tmp_path, files) -> Path:
    raw = tmp_path / "raw"
    for rel in files:
        if not (SHARED / rel).exists():
            pytest.skip(f"{rel} is not in the shared mirror")
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).symlink_to(SHARED / rel)
    return raw


def test_pretrain_converters_read_every_real_format(tmp_path):
    raw = link_raw(tmp_path, PRETRAIN_FILES)
    reports = {}
    docs = list(pretrain_documents(raw, reports=reports))
    for name, report in reports.items():
        assert report.files == 0 or report.kept > 0, name
        format_problems = {
            why for why in report.skips.counts if why not in ("exact duplicate", "shorter than 10 characters")
        }
        assert not format_problems, (name, report.skips.counts)
    text = "".join(piece for _, _, piece in docs)
    assert "人之初，性本善" in text and "習相遠" not in text  # traditional primer converted
    assert "苏轼" in text  # a Song poet's biography


def test_sft_and_dpo_converters_on_real_files(tmp_path, capsys):
    raw = link_raw(tmp_path, SFT_FILES + DPO_FILES)
    data_process.main(["sft", "--raw", str(raw), "--out", str(tmp_path)])
    data_process.main(["dpo", "--raw", str(raw), "--out", str(tmp_path)])
    report = capsys.readouterr().out
    assert "trailing comma" in report
    assert "1 question appears in C-Eval val" in report
    rows = [
        json.loads(line)
        for name in ("sft_single", "sft_multi", "sft_val", "lora_medical")
        for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) > 5000
    assert not any("王某系聋哑人" in m["content"] for row in rows for m in row["conversations"])
    assert not any(
        "OpenAI训练" in m["content"] for row in rows for m in row["conversations"] if m["role"] == "assistant"
    )
    pairs = (tmp_path / "dpo.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(pairs) > 1000 and all(json.loads(p)["prompt"][-1]["role"] == "user" for p in pairs)
