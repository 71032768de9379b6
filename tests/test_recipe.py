"""The levers of the training recipe: Muon, the warmup-stable-decay schedule, packed conversations,
and the scoreboard's measures (bits per character, echo-proof on-topic, ended, distinct-2, loops)."""
import math

import pytest
import torch
from conftest import QA, next_token_loss, qa_conversation, tiny_config, write_jsonl

from data.datasets import PackedChatDataset, SFTDataset
from engine.muon import Muon, orthogonalize, split_for_muon
from engine.optim import lr_at
from engine.trainer import TrainConfig, Trainer
from evaluation.ontopic import judge, on_topic
from evaluation.scoreboard import bits_per_char, distinct_2, judge_data, looped, summarize
from model.model import IGNORE, MiniMindForCausalLM, lm_loss


# ----------------------------------------------------------------------------- Muon


def test_orthogonalize_brings_every_singular_value_near_one():
    g = torch.randn(48, 160) @ torch.diag(torch.logspace(-2, 1, 160))  # badly conditioned
    for matrix in (g, g.T):  # wide and tall
        s = torch.linalg.svdvals(orthogonalize(matrix))
        assert s.min() > 0.5 and s.max() < 1.3, (s.min(), s.max())
        # same singular vectors: the product with the original is symmetric positive semidefinite
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        assert torch.allclose(orthogonalize(matrix), u @ torch.diag(s.sort(descending=True).values * 0 + s.mean()) @ vh,
                              atol=0.35)


def test_muon_takes_hidden_matrices_and_leaves_embeddings_norms_and_head():
    model = MiniMindForCausalLM(tiny_config())
    params = [p for p in model.parameters()]
    muon, rest = split_for_muon(model, params)
    embedding = model.model.embed_tokens.weight if hasattr(model, "model") else None
    assert all(p.ndim == 2 for p in muon) and muon
    assert all(p is not embedding for p in muon)
    assert any(p.ndim == 1 for p in rest)  # norm gains
    assert len(muon) + len(rest) == len(params)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_muon_lowers_the_loss_faster_than_adamw_at_equal_steps(tmp_path):
    """On a small next-token task both optimizers learn; Muon's matrices move the loss at least as far."""
    torch.manual_seed(0)
    data = torch.randint(0, 64, (64, 17))
    data[:, 1::2] = (data[:, 0::2][:, :8] + 1) % 64  # every odd token is the previous one + 1: learnable

    def run(optimizer):
        trainer = Trainer(TrainConfig(out_dir=str(tmp_path / optimizer), batch_size=8, max_steps=30, warmup_steps=3,
                                      learning_rate=3e-3, optimizer=optimizer, muon_lr=0.02, dtype="float32",
                                      device="cpu", threads=1, log_interval=30, eval_interval=0, save_interval=0))
        model = MiniMindForCausalLM(tiny_config(vocab_size=64))
        pairs = [(row[:-1], row[1:]) for row in data]
        result = trainer.fit(model, pairs, next_token_loss, name="unit")
        with torch.no_grad():
            return float(next_token_loss(result.model, (data[:, :-1], data[:, 1:]))[0])

    adamw, muon = run("adamw"), run("muon")
    assert muon < math.log(64) - 1 and adamw < math.log(64) - 1
    assert muon < adamw + 0.05, (muon, adamw)


def test_wsd_schedule_holds_the_peak_then_decays_linearly():
    total, warmup, lr, low = 100, 10, 1e-3, 1e-4
    rates = [lr_at(s, total, warmup, lr, low, "wsd", 0.4) for s in range(total)]
    assert rates[warmup - 1] == pytest.approx(lr)
    assert all(r == pytest.approx(lr) for r in rates[warmup:60])  # stable until the last 40%
    decay = rates[60:]
    assert all(b < a for a, b in zip(decay, decay[1:]))  # then straight down
    assert decay[-1] == pytest.approx(low)
    assert decay[10] - decay[11] == pytest.approx(decay[20] - decay[21])  # linear


def test_muon_resume_is_bit_exact(tmp_path):
    data = [(torch.randint(0, 64, (16,)), torch.randint(0, 64, (16,))) for _ in range(64)]

    def fit(out, **extra):
        cfg = dict(out_dir=str(out), batch_size=4, max_steps=6, warmup_steps=1, optimizer="muon", schedule="wsd",
                   dtype="float32", device="cpu", threads=1, log_interval=2, eval_interval=0, save_interval=0, seed=5)
        cfg.update(extra)
        trainer = Trainer(TrainConfig(**cfg))  # seeds: the model below starts the same in every run
        return trainer.fit(MiniMindForCausalLM(tiny_config(vocab_size=64)), data, next_token_loss, name="m")

    whole = fit(tmp_path / "whole").model.state_dict()
    fit(tmp_path / "split", stop_step=3)
    split = fit(tmp_path / "split", resume=True).model.state_dict()
    assert all(torch.equal(whole[k], split[k]) for k in whole)


# ----------------------------------------------------------------------------- packing


def test_packing_keeps_every_conversation_whole_and_its_targets(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [qa_conversation(i, turns=1) for i in range(30)])
    plain = SFTDataset(path, tokenizer, seq_len=64, verbose=False)
    assert len(plain) == 30
    packed = PackedChatDataset([plain], seq_len=160)
    assert packed.conversations == 30 and len(packed) < 30  # several conversations share a row
    assert packed.tokens == sum(len(plain.items[i][0]) for i in range(30))  # nothing cut, nothing lost
    flat_ids = [t for i in range(len(packed)) for t in packed.rows[i][0]]
    flat_mask = [m for i in range(len(packed)) for m in packed.rows[i][1]]
    assert flat_ids == [t for i in range(30) for t in plain.items[i][0]]  # in order, whole
    assert flat_mask == [m for i in range(30) for m in plain.items[i][1]]  # assistant tokens only
    assert all(len(packed.rows[i][0]) <= 161 for i in range(len(packed)))
    # every target of a row is a target of the same token in its conversation
    x, y = packed[0]
    row_ids, row_mask = packed.rows[0]
    assert [int(t) for t in y if t != IGNORE] == [t for t, m in zip(row_ids[1:], row_mask[1:]) if m]
    everything = PackedChatDataset([plain], seq_len=160, targets="all")
    assert len(everything) == len(packed)
    assert all(bool((everything[i][1] != IGNORE).all()) for i in range(len(everything)))


# ----------------------------------------------------------------------------- scoreboard


def test_bits_per_char_is_the_summed_answer_loss_over_answer_characters(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=64)).eval()
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    result = bits_per_char(model, tokenizer, conversations, batch_size=3)
    nats = 0.0
    data = SFTDataset(write_jsonl(tmp_path / "c.jsonl", [qa_conversation(i, turns=1) for i in range(4)]), tokenizer,
                      seq_len=64, verbose=False)
    for i in range(4):  # one conversation at a time, no padding: the reference
        x, y = data[i]
        nats += lm_loss(model(input_ids=x[None]).logits, y[None], reduction="sum").item()
    chars = sum(len(a) for _, a in QA)
    assert result["answer_chars"] == chars
    assert result["bits_per_char"] == pytest.approx(nats / chars / math.log(2), rel=1e-5)


def test_echo_is_not_on_topic():
    question = "为什么天空是蓝色的？"
    assert judge(question, "天空是蓝色的，因为阳光被空气散射。") == ("on topic", "天空")
    assert judge(question, "为什么天空是蓝色的") == ("echo", "天空")
    assert judge(question, "天空为什么是蓝色的？我想知道。") == ("echo", "天空")
    assert judge(question, "他推开门。") == ("off topic", None)
    assert on_topic(question, "为什么天空是蓝色的？") is None


def test_summary_counts_ended_loops_and_distinct_bigrams():
    answers = [{"question": "长江有多长？", "answer": "长江全长六千多公里。", "tokens": 8, "ended": True},
               {"question": "长江有多长？", "answer": "哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈", "tokens": 100, "ended": False},
               {"question": "长江有多长？", "answer": "长江有多长？", "tokens": 5, "ended": True}]
    s = summarize(answers)
    assert s["on_topic_count"] == 1 and s["echo"] == pytest.approx(1 / 3)
    assert s["ended"] == pytest.approx(2 / 3) and s["looped"] == pytest.approx(1 / 3)
    assert distinct_2("哈哈哈哈") == pytest.approx(1 / 3) and distinct_2("长江全长") == 1.0
    assert looped("abcdefgh" * 3) and not looped("abcdefgh" * 2)


def test_data_line_judges_each_question_with_its_own_first_reply():
    question = "为什么天空是蓝色的？"
    conversations = [
        # the first reply is on topic; the later one (off topic) must not be the one judged
        [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": question},
         {"role": "assistant", "content": "天空是蓝色的，因为阳光被空气散射。"},
         {"role": "user", "content": "还有呢？"}, {"role": "assistant", "content": "他推开门。"}],
        [{"role": "user", "content": "长江有多长？"}, {"role": "assistant", "content": "长江有多长？"}],  # echo
        [{"role": "user", "content": "  "}, {"role": "user", "content": question},
         {"role": "assistant", "content": "他推开门。"}],  # off topic
        [{"role": "user", "content": question}],  # no reply at all: off topic
    ]
    data = judge_data(conversations)
    assert data["questions"] == 4 and data["on_topic_count"] == 1
    assert data["on_topic"] == pytest.approx(1 / 4) and data["echo"] == pytest.approx(1 / 4)
