"""eval_ceval.py: data reading, prompt building, letter scoring, and the written results."""
import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import save_checkpoint, tiny_config

from model.checkpoint import save_weights
from model.errors import MiniMindError
from model.model import MiniMindForCausalLM

eval_ceval = importlib.import_module("eval_ceval")

SHARED_CEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ceval"


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tmp_path, tiny_config(max_seq_len=256))  # full_sft_64x2.pth


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def question(i, answer, **extra):
    return dict(id=i, question=f"第{i}题：长江是中国最长的河流吗？", A="是", B="不是", C="不知道", D="都对", answer=answer, **extra)


@pytest.fixture
def synthetic_dir(tmp_path):
    """Two subjects in C-Eval's layout: one with a malformed row, one without a category mapping."""
    root = tmp_path / "ceval"
    write_csv(root / "val" / "geography_val.csv", [question(0, "A"), question(1, "c"), question(2, "E"), question(3, "D")])
    write_csv(root / "val" / "history_val.csv", [question(0, "B"), question(1, "B")])
    for subject in ("geography", "history"):
        shots = [question(9, "A", explanation="因为"), question(8, "B", explanation="")]
        write_csv(root / "dev" / f"{subject}_dev.csv", shots)
    (root / "subject_mapping.json").write_text(json.dumps({"geography": ["Geography", "地理", "Social Science"]}))
    return root


def run(path, tokenizer_dir, data_dir, out, *extra):
    return eval_ceval.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--data_dir", str(data_dir),
                            "--out", str(out), "--batch_size", "2", *extra])


def test_synthetic_set_writes_results_and_a_consistent_summary(tmp_path, checkpoint, tokenizer_dir, synthetic_dir, capsys):
    _, path = checkpoint
    summary = run(path, tokenizer_dir, synthetic_dir, tmp_path / "results", "--shots", "1")
    out = tmp_path / "results"
    geography, history = pd.read_csv(out / "geography.csv"), pd.read_csv(out / "history.csv")
    assert len(geography) == 3 and len(history) == 2  # the row with answer E is skipped, lowercase c kept
    assert list(geography["answer"]) == ["A", "C", "D"]
    # The model's answer is the most probable letter.
    probs = geography[["p_A", "p_B", "p_C", "p_D"]].to_numpy()
    assert list(geography["model_answer"]) == ["ABCD"[i] for i in probs.argmax(axis=1)]
    assert list(geography["correct"]) == list(geography["model_answer"] == geography["answer"])

    written = json.loads((out / "summary.json").read_text())
    assert written["questions"] == summary["questions"] == 5 and written["skipped_rows"] == 1
    correct = int(geography["correct"].sum() + history["correct"].sum())
    assert written["correct"] == correct and written["micro"] == pytest.approx(correct / 5)
    assert written["macro"] == pytest.approx((geography["correct"].mean() + history["correct"].mean()) / 2)
    assert written["chance"] == 0.25 and written["shots"] == 1
    assert written["per_subject"]["geography"]["category"] == "Social Science"
    assert written["per_subject"]["history"]["category"] == "Other"  # not in the mapping
    assert set(written["categories"]) == {"Social Science", "Other"}
    assert len(pd.read_csv(out / "summary.csv")) == 2
    report = capsys.readouterr()
    assert "random guessing scores 25%" in report.out and "record 3 skipped" in report.err


def test_cmmlu_layout_is_read_too(tmp_path, checkpoint, tokenizer_dir):
    _, path = checkpoint
    root = tmp_path / "cmmlu"
    rows = [{"": i, "Question": f"问题{i}", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "Answer": "B"} for i in range(3)]
    write_csv(root / "test" / "anatomy.csv", rows)
    summary = run(path, tokenizer_dir, root, tmp_path / "results", "--split", "test")
    assert summary["questions"] == 3 and summary["per_subject"]["anatomy"]["questions"] == 3


def test_missing_column_names_the_file(tmp_path, checkpoint, tokenizer_dir):
    _, path = checkpoint
    write_csv(tmp_path / "bad" / "val" / "x_val.csv", [{"id": 0, "question": "q", "A": "1", "B": "2", "C": "3"}])
    with pytest.raises(MiniMindError, match=r"x_val\.csv: missing column\(s\) d, answer"):
        run(path, tokenizer_dir, tmp_path / "bad", tmp_path / "results")


def test_batched_letter_probabilities_match_one_at_a_time(checkpoint, tokenizer):
    model, _ = checkpoint
    groups = eval_ceval.letter_token_ids(tokenizer)
    prompts = [tokenizer.encode(text) for text in ("<s>user\n长江\n答案：</s>\n<s>assistant\n", "今天天气很好", "春")]
    batched = eval_ceval.letter_probabilities(model, prompts, groups)
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        single = torch.stack([probs[groups[letter]].sum() for letter in "ABCD"])
        assert torch.allclose(batched[row], single, atol=1e-5)


def test_letter_groups_hold_the_bare_letter_and_only_tokens_that_read_as_it(tokenizer):
    groups = eval_ceval.letter_token_ids(tokenizer)
    for letter, ids in groups.items():
        assert tokenizer.encode(letter)[0] in ids
        for token_id in ids:
            text = tokenizer.decode([token_id]).lstrip()
            assert text[0] == letter and (len(text) == 1 or not text[1].isalnum())


def test_long_prompts_lose_shots_first_then_the_start_of_the_question(tokenizer):
    shots = [eval_ceval.Question("s", str(i), f"例题{i}" * 10, ["甲", "乙", "丙", "丁"], "A") for i in range(3)]
    subject = eval_ceval.Subject("s", "地理", "Other", [], shots=shots)
    q = eval_ceval.Question("s", "0", "长江是中国最长的河流吗？", ["是", "不是", "不知道", "都对"], "A")
    full, cut = eval_ceval.prompt_ids(tokenizer, subject, q, 10_000)
    assert not cut and full.count(1) == 1 + 2 * 3 + 2  # <s> opens the task, 3 shot pairs, the question, the reply
    assert tokenizer.decode(full).startswith("<s>system\n以下是中国关于地理考试的单项选择题")
    alone, _ = eval_ceval.prompt_ids(tokenizer, eval_ceval.Subject("s", "地理", "Other", []), q, 10_000)
    fewer, cut = eval_ceval.prompt_ids(tokenizer, subject, q, len(alone) + 5)
    assert not cut and fewer == alone  # every shot dropped before any of the question
    tail, cut = eval_ceval.prompt_ids(tokenizer, subject, q, 20)
    header = tokenizer.encode("<s>assistant\n")
    assert cut and len(tail) == 20 and tail[-len(header):] == header


@pytest.mark.skipif(not SHARED_CEVAL.is_dir(), reason=f"C-Eval data not found at {SHARED_CEVAL}")
def test_real_ceval_val_writes_52_subject_files_totalling_1346(tmp_path, tokenizer_dir):
    model = MiniMindForCausalLM(tiny_config(max_seq_len=32)).eval()  # short context: every prompt is cut, fast
    path = tmp_path / "full_sft_64x2.pth"
    save_weights(model, path)
    summary = eval_ceval.main(["--ckpt", str(path), "--tokenizer", str(tokenizer_dir), "--data_dir", str(SHARED_CEVAL),
                               "--out", str(tmp_path / "results"), "--batch_size", "64"])
    files = sorted((tmp_path / "results").glob("*.csv"))
    subject_files = [f for f in files if f.name != "summary.csv"]
    assert len(subject_files) == 52
    assert sum(len(pd.read_csv(f)) for f in subject_files) == 1346
    assert summary["questions"] == 1346 and summary["subjects"] == 52 and summary["skipped_rows"] == 0
    assert sum(c["questions"] for c in summary["categories"].values()) == 1346
    assert len(summary["categories"]) == 4  # STEM, Social Science, Humanities, Other
