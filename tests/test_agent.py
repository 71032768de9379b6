"""The tool loop (tooluse/agent.py): the ids a rollout holds are exactly the chat template's rendering of
the conversation it produced, tool results are computed and never learned, and calls of tools that were
not offered are not run."""
import torch

import tooluse.agent as agent
from conftest import tiny_config
from model.chat import build_prompt
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from model.toolcall import render_call
from tooluse.calculator import CALCULATOR


def scripted(tokenizer, rounds):
    """A stand-in for model.generate that replies with the given texts: rounds[k] for the k-th call, one
    text per conversation still going."""
    rounds = iter(rounds)

    def fake_generate(model, prompts, max_new_tokens, **kwargs):
        texts = next(rounds)
        assert len(texts) == len(prompts)
        return [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    return fake_generate


def test_rollout_ids_are_the_template_rendering_of_its_conversation(tokenizer, monkeypatch):
    model = MiniMindForCausalLM(tiny_config(vocab_size=len(tokenizer), max_seq_len=1024)).eval()
    question = [{"role": "user", "content": "3个苹果每个2元，一共多少钱？"}]
    call = render_call("calculator", {"expression": "3*2"})
    monkeypatch.setattr(agent, "generate", scripted(tokenizer, [[call, "大约5元。"], ["一共6元。"]]))
    first, second = agent.run_with_tools(model, tokenizer, [question, question], [CALCULATOR], max_new_tokens=64)

    assert first.calls == 1 and first.final == "一共6元。" and first.ended
    assert [m["role"] for m in first.messages] == ["assistant", "tool", "assistant"]
    assert first.messages[1]["content"] == "6"  # the calculator ran
    whole = build_prompt(tokenizer, question + first.messages[:2], 10_000, tools=[CALCULATOR])[0]
    answer = tokenizer.encode("一共6元。", add_special_tokens=False) + [EOS_ID]
    assert first.prompt_ids + first.ids == whole + answer
    # learned: exactly the sampled tokens (call + </s>, answer + </s>); the tool turn and headers are not
    sampled = tokenizer.encode(call, add_special_tokens=False) + [EOS_ID]
    sampled += tokenizer.encode("一共6元。", add_special_tokens=False) + [EOS_ID]
    assert [t for t, keep in zip(first.ids, first.learn) if keep] == sampled

    assert second.calls == 0 and second.final == "大约5元。" and len(second.messages) == 1


def test_calls_of_tools_not_offered_are_text(tokenizer, monkeypatch):
    model = MiniMindForCausalLM(tiny_config(vocab_size=len(tokenizer), max_seq_len=1024)).eval()
    question = [{"role": "user", "content": "你好"}]
    call = render_call("shell", {"command": "rm -rf /"})
    monkeypatch.setattr(agent, "generate", scripted(tokenizer, [[call]]))
    (rollout,) = agent.run_with_tools(model, tokenizer, [question], [CALCULATOR], max_new_tokens=64)
    assert rollout.calls == 0 and rollout.final == call


def test_real_generation_runs_end_to_end(tokenizer):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(vocab_size=len(tokenizer), max_seq_len=1024)).eval()
    rollouts = agent.run_with_tools(model, tokenizer, [[{"role": "user", "content": "1+1"}]] * 3, [CALCULATOR],
                                    max_new_tokens=5, temperature=1.0,
                                    generator=torch.Generator().manual_seed(0))
    for r in rollouts:
        assert len(r.ids) == len(r.learn) and 0 < sum(r.learn) <= 6
