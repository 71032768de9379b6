"""The identity score: its judge counts right, its held-out questions are never in the LoRA training data,
and the LoRA stage writes the board with the adapter on and off."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script, tiny_config

import evaluation.identity as identity
from data.sft import build_sft, identity_paraphrases
from evaluation.identity import HELD_OUT_QUESTIONS, identity_score, names_itself, question_key
from model.checkpoint import save_weights
from model.model import MiniMindForCausalLM

ROOT = Path(__file__).resolve().parent.parent
# The identity file as fetched (data_process.py fetch), or the shared mirror's copy; the test that needs
# it is skipped where neither is there.
REAL_IDENTITY = [ROOT / "dataset" / "raw" / "identity" / "llamafactory_identity.json",
                 ROOT.parent / "shared" / "data" / "identity" / "llamafactory_identity.json"]

HAND_MADE = [
    ("我是MiniMind，一个由MiniMind开发的人工智能助手。", True),
    ("您好！我是由 MiniMind 开发的助手。", True),
    ("minimind here, how can I help?", True),
    ("不是，我是MiniMind。", True),  # a denial of another name, then its own
    ("I am MiniMind, an AI assistant.", True),
    ("我不是MiniMind。", False),
    ("I am not MiniMind.", False),
    ("你听过呀，你听过的一部电影吗？", False),  # the answer from the issue
    ("我是一个人工智能助手。", False),
    ("这是一个很长的回答，" * 6 + "我是MiniMind。", False),  # the name only after a paragraph
    ("", False),
]


@pytest.mark.parametrize("answer,named", HAND_MADE)
def test_judge_on_hand_made_answers(answer, named):
    assert names_itself(answer) is named


def test_identity_score_counts_the_judged_answers(monkeypatch):
    canned = [answer for answer, _ in HAND_MADE]

    def fake_answers(model, tokenizer, questions, prompts, max_new_tokens):
        return [{"question": q, "answer": a, "tokens": 1, "ended": True} for q, a in zip(questions, canned)]

    monkeypatch.setattr(identity, "answer_all", fake_answers)
    monkeypatch.setattr(identity, "prompt_ids", lambda tokenizer, q, raw, budget: [1])
    model = MiniMindForCausalLM(tiny_config())
    board = identity_score(model, None, [f"q{i}" for i in range(len(canned))])
    expected = sum(named for _, named in HAND_MADE)
    assert board["named"] == expected and board["total"] == len(HAND_MADE)
    assert board["share"] == expected / len(HAND_MADE)
    assert [row["named"] for row in board["answers"]] == [named for _, named in HAND_MADE]


def test_question_key_ignores_greetings_case_punctuation_and_particles():
    assert question_key("你好，你是谁呀？") == question_key("你是谁？") == "你是谁"
    assert question_key("Hi, WHAT'S your name?") == question_key("what's your name") == "whatsyourname"
    assert question_key("你叫什么名字") != question_key("你叫什么")
    assert len({question_key(q) for q in HELD_OUT_QUESTIONS}) == len(HELD_OUT_QUESTIONS) >= 30


def built_identity_set(tmp_path, identity_file) -> list[list[dict]]:
    raw = tmp_path / "raw"
    (raw / "identity").mkdir(parents=True)
    shutil.copy(identity_file, raw / "identity" / "llamafactory_identity.json")
    build_sft(raw, tmp_path / "out")
    with open(tmp_path / "out" / "lora_identity.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["conversations"] for line in f]


def assert_disjoint(conversations):
    held_out = {question_key(q) for q in HELD_OUT_QUESTIONS}
    asked = {question_key(m["content"]) for c in conversations for m in c if m["role"] == "user"}
    assert not held_out & asked


def test_held_out_questions_are_dropped_from_the_built_identity_set(tmp_path):
    """A source that asks held-out questions (as LLaMA-Factory's asks 你是谁？) loses them at build time."""
    source = [{"instruction": q, "input": "", "output": "我是 {{name}}。"}
              for q in ("你是谁？", "你好呀，你叫什么名字呀", "Please introduce yourself", "你喜欢什么颜色？")]
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(source, ensure_ascii=False), encoding="utf-8")
    conversations = built_identity_set(tmp_path, path)
    assert_disjoint(conversations)
    questions = [c[0]["content"] for c in conversations]
    assert "你喜欢什么颜色？" in questions
    assert len(conversations) == 1 + len(identity_paraphrases())  # every generated paraphrase is kept


@pytest.mark.parametrize("identity_file", REAL_IDENTITY, ids=["dataset", "mirror"])
def test_held_out_questions_are_disjoint_from_the_real_training_prompts(identity_file, tmp_path):
    if not identity_file.exists():
        pytest.skip(f"{identity_file} not fetched")
    conversations = built_identity_set(tmp_path, identity_file)
    assert_disjoint(conversations)
    assert len(conversations) > 600


def test_generated_replies_state_the_name_first():
    conversations = identity_paraphrases("小明", "某实验室")
    assert len(conversations) >= 500
    assert len({c[0]["content"] for c in conversations}) == len(conversations)  # no question twice
    for question, reply in conversations:
        assert names_itself(reply["content"], "小明"), reply
        assert reply["content"].find("小明") < 12


def test_lora_stage_writes_the_identity_board(tokenizer_dir, tmp_path, capsys):
    base = tmp_path / "full_sft_64x2.pth"
    torch.manual_seed(0)
    save_weights(MiniMindForCausalLM(tiny_config(max_seq_len=256)), base, "full_sft")  # byte-level Chinese is long
    data = tmp_path / "lora_identity.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for question, reply in identity_paraphrases()[:40]:
            f.write(json.dumps({"conversations": [question, reply]}, ensure_ascii=False) + "\n")
    board_path = tmp_path / "score_lora_identity.json"
    load_script("4-lora_sft.py").main([
        "--ckpt", str(base), "--data", str(data), "--tokenizer", str(tokenizer_dir), "--out_dir", str(tmp_path),
        "--batch_size", "4", "--learning_rate", "1e-2", "--max_steps", "2", "--save_interval", "0",
        "--lora_rank", "4", "--device", "cpu", "--dtype", "float32", "--threads", "1",
        "--identity_json", str(board_path)])
    board = json.loads(board_path.read_text(encoding="utf-8"))
    assert board["adapter_off_is_base"] is True
    assert board["adapter"]["total"] == board["adapter_off"]["total"] == len(HELD_OUT_QUESTIONS)
    assert "adapter off = base model, logits bit for bit: yes" in capsys.readouterr().out

    # the same board from the command line, the adapter folder as --ckpt (no --preset)
    again = tmp_path / "again.json"
    identity.main(["--ckpt", str(tmp_path / "lora_identity_64x2"), "--tokenizer", str(tokenizer_dir),
                   "--device", "cpu", "--dtype", "float32", "--json", str(again)])
    assert json.loads(again.read_text(encoding="utf-8"))["adapter"] == board["adapter"]
    assert f"on {base}" in capsys.readouterr().out
