"""Tools in the chat template: what transformers renders with `tools=` is, token for token, what training
(data/datasets.py) and prompting (model/chat.py) encode; the call tokens are single tokens; only the
assistant's call and answer are learned, never the tool's result."""
import json

from data.datasets import SFTDataset
from model.chat import build_prompt, encode_messages, generation_header
from model.model import IGNORE
from model.tokenizer import TOOL_TOKENS
from model.toolcall import parse_reply, plain_messages
from tooluse.calculator import CALCULATOR
from tooluse.problems import conversation, generate


def tool_conversation():
    record = conversation(generate(1, seed=3, split="train")[0])
    return record["conversations"], record["tools"]


def openai_style_history():
    """A history as an OpenAI client sends it: null content, arguments as a JSON string, ids."""
    return [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "3个苹果每个2元，一共多少钱？"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "3*2"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "6"},
        {"role": "assistant", "content": "一共6元。"},
    ]


def test_tool_tokens_are_the_last_two_ids_and_survive_decoding(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(TOOL_TOKENS)
    assert ids == [len(tokenizer) - 2, len(tokenizer) - 1]
    encoded = tokenizer.encode('<tool_call>\n{"name": "calculator"}\n</tool_call>', add_special_tokens=False)
    assert encoded[0] == ids[0] and encoded[-1] == ids[1]
    assert tokenizer.decode(encoded, skip_special_tokens=True).startswith("<tool_call>")


def test_template_with_tools_tokenizes_as_our_encoders_do(tokenizer):
    for messages, tools in [tool_conversation(), (openai_style_history(), [CALCULATOR])]:
        reference = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False,
                                                  add_generation_prompt=True)
        ours = [t for turn in encode_messages(tokenizer, plain_messages(messages, tools)) for t in turn]
        assert reference == ours + generation_header(tokenizer)
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        assert text.startswith("<s>system\n") and json.dumps(CALCULATOR, ensure_ascii=False) in text


def test_the_rendered_call_parses_back_to_the_call(tokenizer):
    messages, tools = tool_conversation()
    call_turn = plain_messages(messages, tools)[2]
    content, calls = parse_reply(call_turn["content"])
    assert content == "" and calls == [{"name": "calculator",
                                        "arguments": messages[1]["tool_calls"][0]["function"]["arguments"]}]


def test_sft_learns_the_call_and_the_answer_not_the_tool_result(tokenizer, tmp_path):
    messages, tools = tool_conversation()
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"tools": tools, "conversations": messages}, ensure_ascii=False) + "\n")
    dataset = SFTDataset(path, tokenizer, seq_len=1024, verbose=False)
    x, y = dataset[0]
    turns = encode_messages(tokenizer, plain_messages(messages, tools))
    learned = [t for t in y.tolist() if t != IGNORE]
    # targets: each assistant turn's content and </s> (header and newline excluded), in order
    expected = []
    for message, turn in zip(plain_messages(messages, tools), turns):
        if message["role"] == "assistant":
            header = len(tokenizer.encode("assistant\n", add_special_tokens=False)) + 1
            expected += turn[header:-1]
    assert learned == expected
    tool_ids = turns[3]  # the tool's result turn
    result = tool_ids[len(tokenizer.encode("tool\n", add_special_tokens=False)) + 1:-2]
    start = sum(len(turn) for turn in turns[:3]) + len(tool_ids) - 2 - len(result)
    assert x[start:start + len(result)].tolist() == result
    assert (y[start - 1:start - 1 + len(result)] == IGNORE).all()  # y[i] is the target for reading x[:i + 1]


def test_a_malformed_call_is_skipped_and_counted(tokenizer, tmp_path):
    messages, tools = tool_conversation()
    bad = [dict(m) for m in messages]
    bad[1] = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculator", "arguments": "[1"}}]}
    path = tmp_path / "tools.jsonl"
    lines = [{"tools": tools, "conversations": messages}, {"tools": tools, "conversations": bad},
             {"tools": "calculator", "conversations": messages}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    dataset = SFTDataset(path, tokenizer, seq_len=1024, verbose=False)
    assert len(dataset) == 1 and dataset.skips.total() == 2


def test_build_prompt_keeps_the_tools_when_it_drops_old_turns(tokenizer):
    history = openai_style_history()
    messages = history + [{"role": "user", "content": "再买2个呢？" * 3}]
    full, dropped = build_prompt(tokenizer, messages, 10_000, tools=[CALCULATOR])
    assert dropped == 0
    system_len = len(encode_messages(tokenizer, plain_messages(messages[:1], [CALCULATOR]))[0])
    last_len = len(encode_messages(tokenizer, messages[-1:])[0]) + len(generation_header(tokenizer))
    ids, dropped = build_prompt(tokenizer, messages, system_len + last_len + 3, tools=[CALCULATOR])
    assert dropped == 4  # the whole first turn: the question, the call, the result and the answer
    assert ids[:system_len] == full[:system_len] and ids[system_len:] == full[-last_len:]
