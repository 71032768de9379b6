"""model/cli.py checkpoint loading, 2-eval.py (terminal chat) and 0-eval_pretrain.py (continuations, val loss)."""
import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, tiny_config, write_shards

from model.checkpoint import load_model, save_weights
from model.cli import DEMO_QUESTIONS, PRETRAIN_PROMPTS, add_model_args, load_from_args, render_chat
from model.errors import MiniMindError
from model.model import MiniMindForCausalLM, lm_loss
from model.tokenizer import load_tokenizer, tokenizer_hash

# Names the files *_64x2.pth; float32 for exact logits.
TINY = ["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2", "--dtype", "float32"]


chat_script = load_script("2-eval.py")
pretrain_script = load_script("0-eval_pretrain.py")


@pytest.fixture
def out_dir(tmp_path):
    """out/ with a pretrain and a full_sft checkpoint of the tiny config, each recording its stage."""
    for stage in ("pretrain", "full_sft"):
        save_weights(MiniMindForCausalLM(tiny_config(max_seq_len=256)), tmp_path / f"{stage}_64x2.pth", stage)
    return tmp_path


def model_args(*argv):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return parser.parse_args(list(argv))


def logits(model, ids=(1, 40, 41, 42)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


# ----------------------------------------------------------------------------- model/cli.py

def test_weight_names_the_stage_file_and_the_checkpoint_supplies_the_shape(out_dir, tokenizer_dir):
    saved = MiniMindForCausalLM(tiny_config())
    save_weights(saved, out_dir / "dpo_64x2.pth")
    # --hidden_dim changes weight shapes, so it only names files; --max_seq_len is applied on load.
    args = model_args(*TINY, "--out_dir", str(out_dir), "--weight", "dpo", "--tokenizer", str(tokenizer_dir),
                      "--hidden_dim", "999", "--max_seq_len", "128")
    model, tokenizer = load_from_args(args, verbose=False)
    assert model.config.hidden_dim == saved.config.hidden_dim and model.config.max_seq_len == 128
    assert torch.equal(logits(model), logits(saved.eval()))
    assert tokenizer.encode("<s>") == [1]


def test_missing_checkpoint_says_what_exists(out_dir):
    with pytest.raises(MiniMindError, match=r"dpo_64x2\.pth not found.*full_sft_64x2\.pth, pretrain_64x2\.pth"):
        load_from_args(model_args(*TINY, "--out_dir", str(out_dir), "--weight", "dpo"))
    with pytest.raises(MiniMindError, match=r"no LoRA adapter at .*lora_missing_64x2"):
        load_from_args(model_args(*TINY, "--out_dir", str(out_dir), "--weight", "lora_missing"))
    with pytest.raises(MiniMindError, match="without config.json"):
        load_from_args(model_args("--ckpt", str(out_dir)))
    (out_dir / "llama").mkdir()
    (out_dir / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(MiniMindError, match="holds a 'llama' model"):
        load_from_args(model_args("--ckpt", str(out_dir / "llama")))


def test_lora_weight_merges_the_adapter_onto_its_recorded_base(out_dir, tokenizer_dir):
    from model.lora import LoraSettings, apply_lora, save_adapter

    base_path = out_dir / "pretrain_64x2.pth"  # not the default full_sft: the adapter records its base
    peft_model = apply_lora(load_model(base_path), LoraSettings(rank=4))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # a trained-looking adapter that changes the output
    peft_model.eval()
    # Recorded relative to where training ran: found again by its name in --out_dir.
    save_adapter(peft_model, out_dir / "lora_test_64x2", base_path=Path("elsewhere") / base_path.name)
    merged, _ = load_from_args(model_args(*TINY, "--out_dir", str(out_dir), "--weight", "lora_test",
                                          "--tokenizer", str(tokenizer_dir)), verbose=False)
    assert torch.allclose(logits(merged), logits(peft_model), atol=1e-5)
    assert not torch.allclose(logits(merged), logits(load_model(base_path)), atol=1e-3)


def test_render_chat_drops_whole_old_exchanges_and_keeps_the_system_message(tokenizer):
    messages = [{"role": "system", "content": "你是助手"}]
    for question in ("一", "二", "三"):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": "好的" * 5}]
    messages.append({"role": "user", "content": "四"})
    full, dropped = render_chat(tokenizer, messages, 10_000)
    assert dropped == 0 and tokenizer.decode(full).count("<s>") == 9
    short, dropped = render_chat(tokenizer, messages, len(full) - 1)
    text = tokenizer.decode(short)
    assert dropped == 2 and text.startswith("<s>system\n你是助手</s>\n<s>user\n二</s>")
    tiny, _ = render_chat(tokenizer, messages, 8)
    assert tiny == full[-8:]  # the end of the last question and the reply header survive


# ----------------------------------------------------------------------------- 2-eval.py

def chat_argv(out_dir, tokenizer_dir, *extra):
    return [*TINY, "--out_dir", str(out_dir), "--tokenizer", str(tokenizer_dir), "--max_new_tokens", "3",
            "--temperature", "0", *extra]


def test_auto_answers_every_demo_question_as_the_interactive_chat_does(out_dir, tokenizer_dir, monkeypatch, capsys):
    # --auto answers in left-padded batches; greedy, each answer must equal the one streamed on its own.
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--auto", "--max_new_tokens", "6"))
    printed = capsys.readouterr().out
    batched = re.findall(r"🤖 (.*?)\n\[(\d+) tokens, (stopped|max tokens reached)\]", printed, re.DOTALL)
    assert len(batched) == len(DEMO_QUESTIONS) and all(f"👶 {q}" in printed for q in DEMO_QUESTIONS)
    assert f"{len(DEMO_QUESTIONS)} answers, " in printed
    feed_input(monkeypatch, DEMO_QUESTIONS)
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--max_new_tokens", "6"))
    streamed = re.findall(r"🤖 (.*?)\n\[(\d+) tokens", capsys.readouterr().out, re.DOTALL)
    assert [(text, n) for text, n, _ in batched] == streamed


def test_judge_marks_each_answer_and_counts_the_share(out_dir, tokenizer_dir, tmp_path, monkeypatch, capsys):
    questions = tmp_path / "questions.jsonl"
    rows = [{"conversations": [{"role": "user", "content": "为什么天空是蓝色的？"}, {"role": "assistant", "content": "x"}]},
            {"conversations": [{"role": "system", "content": "s"}, {"role": "user", "content": "推荐中国美食。"}]},
            {"conversations": "not a list"},
            {"conversations": [{"role": "user", "content": "解释机器学习。"}]}]
    questions.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n")
    tokenizer = load_tokenizer(tokenizer_dir)
    answers = iter(["天空很蓝，因为散射。", "他推开门。", "机器学习是一种方法。"])

    def fake_generate(model, prompts, *args, **kwargs):
        return [tokenizer.encode(next(answers)) for _ in prompts]

    import evaluation.scoreboard

    monkeypatch.setattr(evaluation.scoreboard, "generate", fake_generate)  # 2-eval.py answers through answer_all
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--auto", "--judge", "--questions", str(questions),
                               "--batch_size", "2"))
    printed = capsys.readouterr().out
    assert "skipped 2 lines" in printed and ":3:" in printed and ":5:" in printed  # named, counted, not fatal
    assert re.findall(r"\[\d+ tokens, [^,]+, (on topic: \S+|off topic)\]", printed) == [
        "on topic: 天空", "off topic", "on topic: 机器"]
    assert "on topic: 2 of 3 (67%)" in printed


def test_questions_file_errors_are_clear(out_dir, tokenizer_dir, tmp_path):
    with pytest.raises(MiniMindError, match="not found"):
        chat_script.main(chat_argv(out_dir, tokenizer_dir, "--auto", "--questions", str(tmp_path / "none.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(MiniMindError, match="holds no questions"):
        chat_script.main(chat_argv(out_dir, tokenizer_dir, "--auto", "--questions", str(empty)))
    with pytest.raises(SystemExit):
        chat_script.main(chat_argv(out_dir, tokenizer_dir, "--judge"))  # --judge without --auto


class RecordingStream:
    """Replaces stream_generate: records each prompt and answers with fixed deltas."""

    def __init__(self, deltas=("好", "的"), interrupt_after=None):
        self.prompts, self.deltas, self.interrupt_after = [], deltas, interrupt_after

    def __call__(self, model, tokenizer, prompt_ids, **kwargs):
        self.prompts.append(tokenizer.decode(prompt_ids))
        recorder = self

        class Stream:
            text, finish_reason, completion_tokens, closed = "", None, 0, False

            def __iter__(self):
                for i, delta in enumerate(recorder.deltas):
                    if recorder.interrupt_after == i:
                        raise KeyboardInterrupt
                    self.text += delta
                    self.completion_tokens += 1
                    yield delta
                self.finish_reason = "stop"

            def close(self):
                Stream.closed = True

        recorder.stream = Stream()
        return recorder.stream


def feed_input(monkeypatch, lines):
    """Make input() return `lines` one by one, then behave like Ctrl-D."""
    remaining = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(remaining)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)


def test_interactive_keeps_history_skips_empty_input_and_clears(out_dir, tokenizer_dir, monkeypatch, capsys):
    recorder = RecordingStream()
    monkeypatch.setattr(chat_script, "stream_generate", recorder)
    feed_input(monkeypatch, ["你好", "  ", "天气", "/clear", "春天"])
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--history_turns", "1"))
    first, second, third = recorder.prompts  # the blank line asked nothing
    assert first == "<s>user\n你好</s>\n<s>assistant\n"
    assert second == "<s>user\n你好</s>\n<s>assistant\n好的</s>\n<s>user\n天气</s>\n<s>assistant\n"
    assert third == "<s>user\n春天</s>\n<s>assistant\n"
    assert "history cleared" in capsys.readouterr().out


def test_history_keeps_only_the_last_turns(out_dir, tokenizer_dir, monkeypatch):
    recorder = RecordingStream()
    monkeypatch.setattr(chat_script, "stream_generate", recorder)
    feed_input(monkeypatch, ["一", "二", "三"])
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--history_turns", "1", "--system", "你是助手"))
    assert recorder.prompts[2] == ("<s>system\n你是助手</s>\n<s>user\n二</s>\n<s>assistant\n好的</s>\n"
                                   "<s>user\n三</s>\n<s>assistant\n")


def test_ctrl_c_stops_only_the_current_answer(out_dir, tokenizer_dir, monkeypatch, capsys):
    recorder = RecordingStream(deltas=("半", "句", "话"), interrupt_after=1)
    monkeypatch.setattr(chat_script, "stream_generate", recorder)
    feed_input(monkeypatch, ["讲个故事", "再讲一个"])
    chat_script.main(chat_argv(out_dir, tokenizer_dir))
    printed = capsys.readouterr().out
    assert len(recorder.prompts) == 2  # the chat went on after the interrupted answer
    assert "🤖 半\n[1 tokens" in printed and "stopped" in printed and recorder.stream.closed


def test_pretrain_weight_continues_raw_text(out_dir, tokenizer_dir, monkeypatch):
    # The stage recorded in the checkpoint's .json decides, whatever the file is called.
    model = MiniMindForCausalLM(tiny_config(max_seq_len=256))
    save_weights(model, out_dir / "renamed.pth", "pretrain")
    save_weights(model, out_dir / "pretrain_but_chat.pth", "full_sft")
    save_weights(model, out_dir / "pretrain_no_stage.pth")
    recorder = RecordingStream()
    monkeypatch.setattr(chat_script, "stream_generate", recorder)
    runs = [("--weight", "pretrain", "--history_turns", "2"), ("--ckpt", str(out_dir / "renamed.pth")),
            ("--ckpt", str(out_dir / "pretrain_but_chat.pth")), ("--ckpt", str(out_dir / "pretrain_no_stage.pth"))]
    for flags in runs:
        feed_input(monkeypatch, ["春眠不觉晓，"])
        chat_script.main(chat_argv(out_dir, tokenizer_dir, *flags))
    raw = "</s>春眠不觉晓，"
    assert recorder.prompts[:2] == [raw] * 2
    assert all(p != raw and "春眠不觉晓，" in p for p in recorder.prompts[2:])  # the chat template around it
    assert json.loads((out_dir / "renamed.json").read_text())["stage"] == "pretrain"


# ----------------------------------------------------------------------------- 0-eval_pretrain.py

def test_val_loss_is_the_mean_cross_entropy_of_the_windows(out_dir, tokenizer_dir, capsys):
    seq_len, n = 256, 3  # windows of the model's max_seq_len
    tokens = np.random.default_rng(0).integers(3, 512, size=seq_len * n + 10)
    write_shards(out_dir / "shards", {"val": [tokens]}, tokenizer_hash=tokenizer_hash(tokenizer_dir))
    pretrain_script.main([*TINY, "--out_dir", str(out_dir), "--tokenizer", str(tokenizer_dir), "--val",
                          "--no_samples", "--data_dir", str(out_dir / "shards"), "--batch_size", "2"])
    printed = capsys.readouterr().out
    loss, perplexity = map(float, re.search(r"loss ([\d.]+), perplexity ([\d.]+)", printed).groups())

    reference = load_model(out_dir / "pretrain_64x2.pth")
    stream = torch.tensor(tokens, dtype=torch.long)
    x = torch.stack([stream[i * seq_len:(i + 1) * seq_len] for i in range(n)])
    y = torch.stack([stream[i * seq_len + 1:(i + 1) * seq_len + 1] for i in range(n)])
    with torch.no_grad():
        expected = lm_loss(reference(x).logits, y).item()
    assert loss == pytest.approx(expected, abs=1e-4)
    assert perplexity == pytest.approx(math.exp(expected), rel=1e-3)
    assert f"{seq_len * n} tokens in windows of {seq_len}" in printed


def test_val_refuses_shards_from_another_tokenizer(out_dir, tokenizer_dir, tmp_path):
    write_shards(out_dir / "shards", {"val": [np.arange(3, 200)]}, tokenizer_hash=tokenizer_hash(tokenizer_dir))
    meta = json.loads((out_dir / "shards" / "meta.json").read_text())
    meta["tokenizer_hash"] = "0" * 16
    (out_dir / "shards" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MiniMindError, match="tokenized with tokenizer 0000"):
        pretrain_script.main([*TINY, "--out_dir", str(out_dir), "--tokenizer", str(tokenizer_dir), "--val",
                              "--no_samples", "--data_dir", str(out_dir / "shards")])


def test_continuations_stream_after_each_prompt(out_dir, tokenizer_dir, capsys):
    pretrain_script.main([*TINY, "--out_dir", str(out_dir), "--tokenizer", str(tokenizer_dir),
                          "--max_new_tokens", "4", "--temperature", "0"])
    printed = capsys.readouterr().out
    assert all(f"📝 {p}" in printed for p in PRETRAIN_PROMPTS)
    assert len(re.findall(r"\[\d+ tokens, [\d.]+ tokens/s\]", printed)) == len(PRETRAIN_PROMPTS)


def test_pretrain_weight_gets_the_demo_questions_as_bare_text_when_asked(out_dir, tokenizer_dir, monkeypatch):
    prompts = []

    def recording_generate(model, batch, *args, **kwargs):
        prompts.extend(batch)
        return [[] for _ in batch]

    import evaluation.scoreboard

    monkeypatch.setattr(evaluation.scoreboard, "generate", recording_generate)  # 2-eval.py answers through answer_all
    tokenizer = load_tokenizer(tokenizer_dir)
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--weight", "pretrain", "--auto"))
    assert [tokenizer.decode(p) for p in prompts] == [f"</s>{p}" for p in PRETRAIN_PROMPTS]
    prompts.clear()
    chat_script.main(chat_argv(out_dir, tokenizer_dir, "--weight", "pretrain", "--auto", "--demo_questions"))
    # the same questions as the chat model, without the template
    assert [tokenizer.decode(p) for p in prompts] == [f"</s>{q}" for q in DEMO_QUESTIONS]
