"""Tools through the OpenAI-compatible server: the official `openai` client's whole tool loop and
langchain-openai's bind_tools against a real server process, the stream's tool_calls deltas, and the
parsing rules on replies made to order.

A tiny random model writes nonsense, never a tool call, so the real-server tests use a model that learned
two replies by heart before the tests start (a few seconds of training on this CPU): asked "3+4等于几？"
with the calculator offered it calls calculator({"expression": "3+4"}); given the tool's answer 7 it
replies "3+4=7。". Everything else about the loop is real: the prompt the server renders, the generation,
the parsing, the clients. The rules for replies that are not well-formed calls are checked in this process
with generation replaced by fixed text.
"""
import io
import json
import re
import sys

import openai
import pytest
import torch
from conftest import tiny_config
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from test_api import served_at

import chat_openai_api
import serving.replies
from model.chat import build_prompt
from model.checkpoint import save_weights, weights_path
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from model.toolcall import render_call
from serving.app import create_app
from serving.protocol import Defaults
from tooluse.calculator import CALCULATOR, run_tool

KEY = "tools-key"
CONTEXT = 512  # the calculator's schema alone is about 300 tokens of the test tokenizer
QUESTION = [{"role": "user", "content": "3+4等于几？"}]
ARGUMENTS = {"expression": "3+4"}
NAMED = {"type": "function", "function": {"name": "calculator"}}


def answered(call_id: str = "call_x") -> list:
    """The question, the assistant's call and the tool's answer, as an OpenAI client sends them back."""
    call = {"id": call_id, "type": "function",
            "function": {"name": "calculator", "arguments": json.dumps(ARGUMENTS, ensure_ascii=False)}}
    return QUESTION + [{"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": call_id, "content": run_tool("calculator", ARGUMENTS)}]


@pytest.fixture(scope="module")
def tool_checkpoint(tokenizer, tmp_path_factory):
    """A tiny model trained until it says its two replies by heart (greedy decoding then repeats them)."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=CONTEXT))
    rows = []
    for messages, reply in ((QUESTION, render_call("calculator", ARGUMENTS)), (answered(), "3+4=7。")):
        prompt, _ = build_prompt(tokenizer, messages, CONTEXT, tools=[CALCULATOR])
        target = tokenizer.encode(reply, add_special_tokens=False) + [EOS_ID]
        rows.append((torch.tensor([prompt + target[:-1]]), torch.tensor([[-100] * (len(prompt) - 1) + target])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = sum(torch.nn.functional.cross_entropy(model(x).logits[0], y[0], ignore_index=-100) for x, y in rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, loss.item()
    path = weights_path(tmp_path_factory.mktemp("tool_ckpt"), "full_sft", model.config)
    save_weights(model, path)
    return path


@pytest.fixture(scope="module")
def served(tool_checkpoint, tokenizer_dir, tmp_path_factory):
    with served_at(tool_checkpoint, tokenizer_dir, tmp_path_factory.mktemp("tool_server"), 64, KEY) as url:
        yield url, tool_checkpoint.stem


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def create(client, served, messages, **kwargs):
    return client.chat.completions.create(model=served[1], messages=messages, temperature=0, **kwargs)


# ----------------------------------------------------------------------------- the real server

def test_openai_client_runs_the_whole_tool_loop(client, served):
    messages = list(QUESTION)
    first = create(client, served, messages, tools=[CALCULATOR])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id) and call.type == "function"
    assert call.function.name == "calculator" and json.loads(call.function.arguments) == ARGUMENTS
    messages.append(choice.message)  # as the OpenAI docs do: the message object goes back as it came
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": run_tool(call.function.name, json.loads(call.function.arguments))})
    final = create(client, served, messages, tools=[CALCULATOR])
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert final.choices[0].message.content == "3+4=7。"
    none = create(client, served, QUESTION, tools=[CALCULATOR], tool_choice="none", max_tokens=8)
    assert not none.choices[0].message.tool_calls  # the tools were not shown: prompt of the question alone
    assert none.usage.prompt_tokens < first.usage.prompt_tokens - 100


def test_tool_choice_naming_the_function_steers_the_reply(client, served):
    """The reply starts with the named call's prefix (part of the prompt); the model writes the arguments."""
    reply = create(client, served, QUESTION, tools=[CALCULATOR], tool_choice=NAMED)
    auto = create(client, served, QUESTION, tools=[CALCULATOR])
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == ARGUMENTS
    assert reply.usage.prompt_tokens > auto.usage.prompt_tokens  # the prefix is prompt, not completion
    required = create(client, served, QUESTION, tools=[CALCULATOR], tool_choice="required")
    assert required.choices[0].message.tool_calls[0].function.name == "calculator"
    messages = QUESTION + [reply.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "7"}]
    assert create(client, served, messages, tools=[CALCULATOR]).choices[0].message.content == "3+4=7。"


def test_stream_tool_calls_reassemble_in_the_openai_helper(client, served):
    with client.chat.completions.stream(model=served[1], messages=QUESTION, tools=[CALCULATOR], temperature=0,
                                        tool_choice=NAMED) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "content.delta") == ""  # only the role chunk's ""
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == ARGUMENTS
    chunks = list(create(client, served, QUESTION, tools=[CALCULATOR], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(calls) == 1 and calls[0][0].index == 0 and calls[0][0].id.startswith("call_")
    assert calls[0][0].type == "function" and calls[0][0].function.name == "calculator"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)  # the block was held back
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_langchain_bind_tools_round_trip(served):
    url, name = served
    llm = ChatOpenAI(model=name, base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120, temperature=0)
    with_tools = llm.bind_tools([CALCULATOR])
    asked = with_tools.invoke([HumanMessage(QUESTION[0]["content"])])
    assert isinstance(asked, AIMessage) and asked.response_metadata["finish_reason"] == "tool_calls"
    (call,) = asked.tool_calls
    assert call["name"] == "calculator" and call["args"] == ARGUMENTS and call["id"].startswith("call_")
    streamed = None
    for piece in with_tools.stream([HumanMessage(QUESTION[0]["content"])]):
        streamed = piece if streamed is None else streamed + piece
    assert isinstance(streamed, AIMessageChunk) and streamed.tool_calls[0]["args"] == ARGUMENTS
    result = ToolMessage(run_tool(call["name"], call["args"]), tool_call_id=call["id"])
    final = with_tools.invoke([HumanMessage(QUESTION[0]["content"]), asked, result])
    assert final.content == "3+4=7。" and not final.tool_calls


def test_terminal_client_runs_the_calculator(served, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("3+4等于几？\n/exit\n"))
    chat_openai_api.main(["--base_url", served[0] + "/v1", "--api_key", KEY, "--temperature", "0", "--tools"])
    out = capsys.readouterr().out
    assert '[tool call calculator({"expression": "3+4"}) -> 7]' in out
    assert "3+4=7。" in out and "finish: tool_calls" in out and "finish: stop" in out


# ----------------------------------------------------------------------------- replies made to order

class FixedStream:
    """Stands in for model/generate.TextStream: yields fixed pieces of text."""

    def __init__(self, pieces, finish="stop"):
        self.pieces, self.finish, self.finish_reason = pieces, finish, None
        self.prompt_tokens, self.completion_tokens = 10, len(pieces)

    def __iter__(self):
        yield from self.pieces
        self.finish_reason = self.finish

    def close(self):
        pass


@pytest.fixture
def replying(tokenizer, monkeypatch):
    """(client, say): `say(pieces, finish)` makes the app's next generation yield those pieces."""
    model = MiniMindForCausalLM(tiny_config(max_seq_len=CONTEXT)).eval()
    app = create_app(model, tokenizer, "tiny", Defaults(max_tokens=16))
    script = {}
    monkeypatch.setattr(serving.replies, "stream_generate", lambda *a, **k: FixedStream(*script["reply"]))
    return app.test_client(), lambda pieces, finish="stop": script.update(reply=(pieces, finish))


def post_chat(client, stream=False, **fields):
    body = {"messages": QUESTION, "tools": [CALCULATOR], "stream": stream, **fields}
    response = client.post("/v1/chat/completions", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.get_json()
    if not stream:
        return response.get_json()["choices"][0]
    events = response.get_data(as_text=True).split("\n\n")
    assert events[-2] == "data: [DONE]"
    return [json.loads(e[len("data: "):])["choices"][0] for e in events[:-2]]


CALL = render_call("calculator", ARGUMENTS)
OTHER = render_call("shell", {"command": "rm -rf /"})
BAD = '<tool_call>\n{"name": "calculator", "arguments": {"expression": }\n</tool_call>'


@pytest.mark.parametrize("pieces, content, calls, finish", [
    (["好的。", CALL], "好的。", 1, "tool_calls"),
    ([CALL, "\n", CALL], None, 2, "tool_calls"),
    (["算一下：", CALL[:5], CALL[5:20], CALL[20:], "\n稍等"], "算一下：稍等", 1, "tool_calls"),
    ([OTHER], OTHER, 0, "stop"),  # a tool that was not offered
    ([BAD], BAD, 0, "stop"),  # not a well-formed call
    (["<tool_call>\n{\"name\": \"calculator\""], "<tool_call>\n{\"name\": \"calculator\"", 0, "stop"),  # never closed
    (["a <tool", "_call", "> b"], "a <tool_call> b", 0, "stop"),
    (["no calls here\n"], "no calls here\n", 0, "stop"),
])
def test_reply_is_split_into_content_and_calls(replying, pieces, content, calls, finish):
    client, say = replying
    say(pieces)
    whole = post_chat(client)
    assert whole["message"]["content"] == content and whole["finish_reason"] == finish
    assert len(whole["message"].get("tool_calls", [])) == calls
    for call in whole["message"].get("tool_calls", []):
        assert call["function"] == {"name": "calculator", "arguments": json.dumps(ARGUMENTS)}
    streamed = post_chat(client, stream=True)
    text = "".join(c["delta"].get("content") or "" for c in streamed)
    deltas = [d for c in streamed for d in c["delta"].get("tool_calls", [])]
    assert text == (content or "") and [d["index"] for d in deltas] == list(range(calls))
    assert [c["finish_reason"] for c in streamed if c["finish_reason"]] == [finish]


def test_without_tools_a_call_block_is_just_text(replying):
    client, say = replying
    say([CALL])
    assert post_chat(client, tools=None)["message"] == {"role": "assistant", "content": CALL}
    assert post_chat(client, tool_choice="none")["message"]["content"] == CALL


def test_named_choice_and_parallel_false_keep_other_blocks_as_content(replying):
    client, say = replying
    say([' {"expression": "1+1"}}\n</tool_call>', "\n", OTHER])  # the reply goes on from the named prefix
    named = post_chat(client, tools=[CALCULATOR, {"type": "function", "function": {"name": "shell"}}],
                      tool_choice=NAMED)
    assert named["message"]["content"] == OTHER and len(named["message"]["tool_calls"]) == 1
    assert json.loads(named["message"]["tool_calls"][0]["function"]["arguments"]) == {"expression": "1+1"}
    say([' {"expression": 1+1}}\n</tool_call>'], finish="length")
    broken = post_chat(client, tool_choice=NAMED)
    assert broken["finish_reason"] == "length" and broken["message"]["content"].startswith('<tool_call>\n{"name"')
    say([CALL, CALL])
    single = post_chat(client, parallel_tool_calls=False)
    assert len(single["message"]["tool_calls"]) == 1 and single["message"]["content"] == CALL


def test_tool_history_is_rendered(tokenizer):
    """An assistant turn with tool_calls and null content, and the tool's answer, reach the prompt."""
    model = MiniMindForCausalLM(tiny_config(max_seq_len=CONTEXT)).eval()
    client = create_app(model, tokenizer, "tiny", Defaults(max_tokens=2)).test_client()
    for messages, tools in ((answered("call_abc"), [CALCULATOR]), (answered("call_abc"), None), (QUESTION, None)):
        body = {"messages": messages, "max_tokens": 2, **({"tools": tools} if tools else {})}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.get_json()
        expected, _ = build_prompt(tokenizer, messages, CONTEXT, tools=tools)
        assert response.get_json()["usage"]["prompt_tokens"] == len(expected)


def test_tools_run_endpoint_answers_and_is_rate_bounded(tokenizer):
    model = MiniMindForCausalLM(tiny_config()).eval()
    client = create_app(model, tokenizer, "tiny").test_client()
    assert client.get("/v1/tools").get_json()["data"] == [CALCULATOR]

    def run(arguments):
        return client.post("/v1/tools/run", json={"name": "calculator", "arguments": arguments})

    assert run({"expression": "(3+4)*2"}).get_json() == {"content": "14"}
    assert run({"expression": "1/0"}).get_json()["content"].startswith("错误：")
    assert run({}).get_json()["content"].startswith("错误：")  # the tool's own word on a missing argument
    statuses = [run({"expression": "1+1"}).status_code for _ in range(40)]
    assert statuses.count(429) > 0 and statuses[:10] == [200] * 10
    error = run({"expression": "1+1"}).get_json()["error"]
    assert error["code"] == "rate_limit_exceeded" and set(error) == {"message", "type", "param", "code"}


def test_a_tool_loop_without_max_tokens_keeps_its_question(tokenizer):
    """A request that gives no max_tokens leaves the prompt three quarters of the context (as the chat page
    does), so the question, the call and the tool's result all reach the model; reserving the server's cap
    (half the context at most) would drop the question."""
    context = 640  # the test tokenizer renders this conversation in about 420 tokens
    model = MiniMindForCausalLM(tiny_config(max_seq_len=context)).eval()
    client = create_app(model, tokenizer, "tiny", Defaults(max_tokens=512, temperature=0)).test_client()
    messages = answered()
    expected, _ = build_prompt(tokenizer, messages, context, tools=[CALCULATOR])
    assert context // 2 < len(expected) <= context * 3 // 4  # the case: more than half, within three quarters
    reply = client.post("/v1/chat/completions", json={"messages": messages, "tools": [CALCULATOR]}).get_json()
    assert reply["usage"]["prompt_tokens"] == len(expected)
    assert reply["usage"]["completion_tokens"] <= context // 4
