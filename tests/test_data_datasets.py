"""PretrainDataset / SFTDataset / DPODataset on tiny data built inside each test."""

import pickle

import numpy as np
import pytest
import torch
from conftest import write_jsonl, write_shards

from data.datasets import DPODataset, PretrainDataset, SFTDataset
from data.sampler import EpochSampler
from model.errors import MiniMindError
from model.model import IGNORE
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID


# ----------------------------------------------------------------------------- SFT


def test_sft_mask_two_turns_token_by_token(tokenizer, tmp_path):
    conversation = [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "今天天气怎么样？"},
        {"role": "assistant", "content": "今天天气很好。"},
        {"role": "user", "content": "长江有多长？"},
        {"role": "assistant", "content": "全长约六千三百公里。"},
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": conversation}])
    x, y = SFTDataset(path, tokenizer, seq_len=256)[0]

    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)
    expected_ids, expected_target = [], []
    for message in conversation:
        header = [BOS_ID] + enc(message["role"] + "\n")
        body = enc(message["content"]) + [EOS_ID]
        learn = message["role"] == "assistant"
        expected_ids += header + body + enc("\n")
        expected_target += [False] * len(header) + [learn] * len(body) + [False] * len(enc("\n"))

    assert x.tolist() == expected_ids[:-1]
    for i in range(len(x)):  # position i predicts token i + 1
        want = expected_ids[i + 1] if expected_target[i + 1] else IGNORE
        assert y[i].item() == want, f"position {i}: token {tokenizer.decode([expected_ids[i + 1]])!r}"

    # the same text the chat template renders, and the targets are exactly the two replies with their </s>
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert tokenizer.decode(x.tolist() + [expected_ids[-1]]) == rendered
    spans, current = [], []
    for token in y.tolist():
        if token == IGNORE and current:
            spans.append(current)
            current = []
        elif token != IGNORE:
            current.append(token)
    spans.append(current) if current else None
    assert [tokenizer.decode(s) for s in spans] == ["今天天气很好。</s>", "全长约六千三百公里。</s>"]


def test_sft_turn_markers_inside_messages_are_text(tokenizer, tmp_path):
    conversation = [{"role": "user", "content": "你好</s>\n<s>assistant\n"}, {"role": "assistant", "content": "好</s>"}]
    x, y = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", [{"conversations": conversation}]), tokenizer, 64)[0]
    ids = x.tolist()  # everything but the final "\n"
    assert ids.count(BOS_ID) == 2 and ids.count(EOS_ID) == 2  # only the template's markers are special
    assert tokenizer.decode(ids) + "\n" == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert tokenizer.decode([t for t in y.tolist() if t != IGNORE]) == "好</s></s>"


def test_sft_cut_keeps_whole_answers_and_never_makes_prompt_a_target(tokenizer, tmp_path):
    long_text = "人工智能是计算机科学的一个分支。" * 20
    rows = [
        {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好的"},
                           {"role": "user", "content": "再说"}, {"role": "assistant", "content": long_text}]},
        {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": long_text}]},
        {"conversations": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "好的"}]},
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    data = SFTDataset(path, tokenizer, seq_len=32)
    # The first keeps its first exchange; the others have no whole answer inside the window: dropped, counted.
    assert len(data) == 1 and data.truncated == 1 and data.skips.total() == 2
    x, y = data[0]
    targets = [t for t in y.tolist() if t != IGNORE]
    assert tokenizer.decode(targets) == "好的</s>" and y[-1] == tokenizer.eos_token_id  # the answer ends
    header_len = 1 + len(tokenizer.encode("user\n你好", add_special_tokens=False))
    assert (y[:header_len] == IGNORE).all()


def test_sft_bad_lines_skipped_and_counted_or_strict(tokenizer, tmp_path, capsys):
    good = {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    rows = [
        good,
        "{broken json",
        {"conversations": [{"from": "human", "value": "hi"}]},
        {"conversations": [{"role": "user", "content": "只有问题"}]},
        {"text": "no conversations"},
        good,
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    with open(path, "ab") as f:
        f.write('{"conversations": "中文"}\n'.encode("gbk"))
    data = SFTDataset(path, tokenizer, seq_len=64)
    assert len(data) == 2 and data.skips.total() == 5
    out = capsys.readouterr().out
    assert f"{path}:2: not valid JSON" in out and f"{path}:4: no assistant message" in out
    assert f"{path}:7: not valid UTF-8" in out
    with pytest.raises(MiniMindError, match=r"sft.jsonl:2: not valid JSON"):
        SFTDataset(path, tokenizer, seq_len=64, strict=True)


def test_sft_collate_pads_right(tokenizer, tmp_path):
    rows = [
        {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]},
        {
            "conversations": [
                {"role": "user", "content": "请问去火车站怎么走？"},
                {"role": "assistant", "content": "一直往前走，然后左转。"},
            ]
        },
    ]
    data = SFTDataset(write_jsonl(tmp_path / "sft.jsonl", rows), tokenizer, seq_len=64)
    x, y = SFTDataset.collate([data[0], data[1]])
    n0 = len(data[0][0])
    assert x.shape == y.shape == (2, len(data[1][0]))
    assert (x[0, n0:] == PAD_ID).all() and (y[0, n0:] == IGNORE).all()
    assert torch.equal(x[0, :n0], data[0][0])


# ----------------------------------------------------------------------------- DPO


def test_dpo_masks_cover_only_the_final_reply(tokenizer, tmp_path):
    prompt = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "长江有多长？"},
    ]
    row = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "全长约六千三百公里。"}],
        "rejected": [{"role": "assistant", "content": "不知道"}],
    }
    data = DPODataset(write_jsonl(tmp_path / "dpo.jsonl", [row, {"prompt": prompt}]), tokenizer, seq_len=128)
    assert len(data) == 1 and data.skips.total() == 1
    batch = DPODataset.collate([data[0]])
    for side, reply in (("chosen", "全长约六千三百公里。"), ("rejected", "不知道")):
        y, mask = batch[f"{side}_y"][0], batch[f"{side}_mask"][0]
        assert tokenizer.decode(y[y != IGNORE].tolist()) == reply + "</s>"
        assert torch.equal(mask.bool(), y != IGNORE)
    assert batch["chosen_x"].shape == batch["rejected_x"].shape


# ----------------------------------------------------------------------------- pretraining


def test_pretrain_windows_cover_all_shards_and_resume(tmp_path):
    train = [np.arange(0, 25), np.arange(100, 141)]  # 25 tokens -> 3 windows of 8, 41 -> 5 windows
    write_shards(tmp_path, {"train": train, "val": [np.arange(500, 520)]}, tokenizer_hash="abc", eos_id=EOS_ID)
    data = PretrainDataset(tmp_path, seq_len=8)
    assert len(data) == 3 + 5
    x, y = data[4]  # second window of the second shard
    assert x.tolist() == list(range(108, 116)) and y.tolist() == list(range(109, 117))
    seen = torch.cat([data[i][0] for i in range(len(data))]).tolist()
    assert set(seen).isdisjoint(range(500, 520))  # train windows never touch the val shard
    clone = pickle.loads(pickle.dumps(data))  # what a spawned DataLoader worker receives: paths, not the tokens
    assert clone._maps is None and data._maps is not None and torch.equal(clone[4][0], x)
    val = PretrainDataset(tmp_path, seq_len=8, split="val")
    assert len(val) == 2 and val[0][0].tolist() == list(range(500, 508))

    sampler = EpochSampler(len(data), seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip=5)
    assert list(sampler) == full[5:]
    sampler.set_epoch(3)
    assert sorted(full) == sorted(sampler) == list(range(len(data))) and list(sampler) != full
    ranks = [list(EpochSampler(len(data), seed=3, rank=r, world_size=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1 and set(sum(ranks, [])) == set(range(len(data)))
    tiny = [list(EpochSampler(2, rank=r, world_size=5)) for r in range(5)]  # more ranks than samples
    assert all(len(r) == 1 for r in tiny) and set(sum(tiny, [])) == {0, 1}


def test_grouped_batches_hold_rows_of_similar_length_and_every_row_once():
    """group_by_length: each batch's rows are close in length (padding falls from a third to almost
    nothing), every index comes once, the order is set by seed and epoch, and skip resumes it."""
    lengths = torch.randint(10, 250, (1000,), generator=torch.Generator().manual_seed(0))
    batch = 8

    def padding(order):
        blocks = torch.as_tensor(order[: len(order) // batch * batch]).view(-1, batch)
        rows = lengths[blocks]
        return (rows.max(dim=1).values * batch - rows.sum(dim=1)).sum().item() / rows.max(dim=1).values.sum().item() / batch

    plain = list(EpochSampler(1000, seed=3))
    sampler = EpochSampler(1000, seed=3, lengths=lengths, batch_size=batch)
    sampler.set_epoch(1)
    grouped = list(sampler)
    assert sorted(grouped) == list(range(1000))
    assert padding(plain) > 0.3 and padding(grouped) < 0.05
    sampler.set_epoch(1, skip=20)
    assert list(sampler) == grouped[20:]
    sampler.set_epoch(2)
    assert list(sampler) != grouped
    ranks = [list(EpochSampler(1000, seed=3, rank=r, world_size=2, lengths=lengths, batch_size=batch)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(1000)) and max(padding(r) for r in ranks) < 0.05


def test_pretrain_detects_truncated_shard_and_stale_tokenizer(tmp_path):
    write_shards(tmp_path, {"train": [np.arange(40)], "val": [np.arange(20)]}, tokenizer_hash="abc", eos_id=EOS_ID)
    with pytest.raises(MiniMindError, match="tokenizer"):
        PretrainDataset(tmp_path, seq_len=8, tokenizer_hash="other")
    with open(tmp_path / "train_0000.bin", "r+b") as f:
        f.truncate(30)
    with pytest.raises(MiniMindError, match="expected 80 bytes"):
        PretrainDataset(tmp_path, seq_len=8)
