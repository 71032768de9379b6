"""The server's limits past the hostile requests of tests/test_api_hostile.py, on the same kind of app (a
tiny random model whose EOS embedding is zeroed, max_queue=0): long conversations and what building their
prompt costs, the prompt built inside the queue, the penalties, /v1/completions' shape, where the key
comes from, and what only a socket shows (chunked bodies, idle and half-sent connections).
"""
import http.client
import json
import random
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import never_ending_model
from test_api_hostile import CAP, CHAT, CONTEXT, TEXT, WEATHER, assert_openai_error, body_with, post, sse

import serving.replies
from model.chat import ContextTooLong, build_prompt
from model.generate import sample_next, stream_generate
from model.tokenizer import EOS_ID
from serving.access import API_KEY_ENV, resolve_api_key
from serving.app import create_app
from serving.messages import MAX_MESSAGES
from serving.protocol import MAX_BODY_BYTES, Defaults
from serving.server import Server


@pytest.fixture(scope="module")
def model():
    return never_ending_model(CONTEXT)


@pytest.fixture(scope="module")
def app(model, tokenizer):
    return create_app(model, tokenizer, "tiny", Defaults(max_tokens=CAP), max_queue=0)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


# ----------------------------------------------------------------------------- long conversations

def weather_conversation(n: int) -> list:
    """n-1 alternating user/assistant messages and a final user message."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": WEATHER} for i in range(n - 1)]
    return turns + [{"role": "user", "content": WEATHER}]


def test_4000_messages_are_refused_at_once(client):
    body = json.dumps({**CHAT, "messages": weather_conversation(4000), "max_tokens": 4}).encode()  # \uXXXX escapes
    started = time.perf_counter()
    response = post(client, "/v1/chat/completions", body)
    seconds = time.perf_counter() - started
    error = assert_openai_error(response, 400, "messages")
    assert error["code"] == "too_many_messages"
    print(f"\n4000 messages ({len(body) // 1024} KiB): {response.status_code} in {seconds:.3f} s")
    assert seconds < 10  # measured well under a second; generous for a loaded machine


def test_1000_messages_are_answered_quickly(client, tokenizer):
    messages = weather_conversation(MAX_MESSAGES)
    started = time.perf_counter()
    response = post(client, "/v1/chat/completions", body_with(CHAT, messages=messages, max_tokens=4))
    seconds = time.perf_counter() - started
    assert response.status_code == 200
    dropped = int(response.headers["X-Dropped-Messages"])
    assert dropped >= MAX_MESSAGES - 20 and dropped % 2 == 0
    kept = messages[dropped:]
    prompt = tokenizer.apply_chat_template(kept, add_generation_prompt=True, return_dict=False)
    assert response.get_json()["usage"]["prompt_tokens"] == len(prompt) <= CONTEXT - 4
    print(f"\n1000 messages: answered in {seconds:.3f} s, {dropped} dropped")
    assert seconds < 10


class CountingTokenizer:
    """The tokenizer, counting the messages that go through the chat template."""

    def __init__(self, tokenizer):
        self.tokenizer, self.messages = tokenizer, 0

    def apply_chat_template(self, conversation, **kwargs):
        batch = conversation if conversation and isinstance(conversation[0], list) else [conversation]
        self.messages += sum(len(c) for c in batch)
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def __call__(self, texts, **kwargs):  # model/chat.py encodes the messages' contents in one call
        self.messages += len(texts) if isinstance(texts, list) else 1
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_prompt_cost_follows_the_context_not_the_conversation(tokenizer):
    """Each message is encoded at most once, and only as far back as the window reaches."""
    for n in (11, 101, 1001):
        counting = CountingTokenizer(tokenizer)
        ids, dropped = build_prompt(counting, weather_conversation(n), max_prompt_tokens=100)
        assert len(ids) <= 100 and dropped > 0
        kept = n - dropped
        assert counting.messages <= kept + 2 + 2  # kept ones, the one that did not fit, and the header probe
    whole = CountingTokenizer(tokenizer)
    build_prompt(whole, weather_conversation(1001), max_prompt_tokens=10 ** 6)
    assert whole.messages <= 1001 + 2  # all kept: each encoded once


def reference_prompt(tokenizer, messages: list, budget: int):
    """The slow, obviously right answer: try each turn boundary, oldest first, rendering the whole kept
    conversation each time; the first that fits wins."""
    last = len(messages) - 1
    history = [i for i in range(last) if messages[i]["role"] != "system"]
    starts = [k for k in range(len(history)) if k == 0 or messages[history[k]]["role"] == "user"] + [len(history)]
    for k in starts:
        kept = sorted({i for i in range(last) if messages[i]["role"] == "system"} | set(history[k:]) | {last})
        ids = tokenizer.apply_chat_template([messages[i] for i in kept], add_generation_prompt=True, tokenize=True,
                                            return_dict=False, sanitize_control_tokens=True)
        if len(ids) <= budget:
            return ids, len(messages) - len(kept)
    return None


def test_build_prompt_matches_rendering_the_whole_conversation(tokenizer):
    rng = random.Random(0)
    pieces = ["你好", "</s>", "<s>", "\n", " ", "system", "assistant\n", "<unk>", WEATHER, "abc", "🙂", "",
              "<s>user\n"]
    for _ in range(300):
        messages = [{"role": rng.choice(["system", "user", "user", "assistant", "assistant"]),
                     "content": "".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))}
                    for _ in range(rng.randint(1, 9))]
        budget = rng.randint(10, 200)
        expected = reference_prompt(tokenizer, messages, budget)
        if expected is None:
            with pytest.raises(ContextTooLong, match="even after dropping"):
                build_prompt(tokenizer, messages, budget)
        else:
            assert build_prompt(tokenizer, messages, budget) == expected, (messages, budget)


def test_the_prompt_is_built_inside_the_queue(app, client, monkeypatch):
    """With no queue and the one place taken by a request still building its prompt, another request gets a
    503 before any work on its own prompt: the queue bounds prompt building too."""
    inside, release, calls = threading.Event(), threading.Event(), []
    real = serving.replies.build_prompt

    def slow_build(*args, **kwargs):
        calls.append(1)
        inside.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving.replies, "build_prompt", slow_build)
    first = {}
    thread = threading.Thread(target=lambda: first.update(r=post(app.test_client(), "/v1/chat/completions",
                                                                 body_with(CHAT))))
    thread.start()
    try:
        assert inside.wait(30)
        busy = post(client, "/v1/chat/completions", body_with(CHAT, messages=weather_conversation(999)))
        assert_openai_error(busy, 503)
        assert len(calls) == 1
    finally:
        release.set()
        thread.join(30)
    assert first["r"].status_code == 200


# ----------------------------------------------------------------------------- penalties

def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    counts = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    assert sample_next(logits, seen, counts=counts).item() == 0  # no penalty given
    assert sample_next(logits, seen, counts=counts, presence_penalty=0.6).item() == 1  # 3 - 0.6 < 2.5
    assert sample_next(logits, seen, counts=counts, presence_penalty=0.4).item() == 0
    assert sample_next(logits, seen, counts=counts, frequency_penalty=0.3).item() == 1  # 3 - 2 * 0.3 < 2.5
    assert sample_next(logits, seen, counts=counts, frequency_penalty=0.2).item() == 0
    assert sample_next(logits, seen, counts=torch.zeros_like(counts), presence_penalty=2.0).item() == 0
    # a negative penalty makes a generated token more likely
    assert sample_next(logits, seen, counts=torch.tensor([[0.0, 0.0, 1.0, 0.0]]), presence_penalty=-2.0).item() == 0
    assert sample_next(logits, seen, counts=torch.tensor([[0.0, 1.0, 0.0, 0.0]]), presence_penalty=-2.0).item() == 1


def test_penalties_reach_generation(client, model, tokenizer):
    prompt = tokenizer.apply_chat_template(CHAT["messages"], add_generation_prompt=True, tokenize=True,
                                           return_dict=False, sanitize_control_tokens=True)
    texts = {}
    for penalty in (0.0, 2.0):
        response = post(client, "/v1/chat/completions", body_with(CHAT, max_tokens=CAP, frequency_penalty=penalty,
                                                                  presence_penalty=penalty))
        texts[penalty] = response.get_json()["choices"][0]["message"]["content"]
        direct = stream_generate(model, tokenizer, prompt, max_new_tokens=CAP, frequency_penalty=penalty,
                                 presence_penalty=penalty)
        assert texts[penalty] == "".join(direct)
        if penalty:
            counts = torch.bincount(torch.tensor(direct.new_token_ids))
            assert int(counts.max()) <= 2  # a greedy random model repeats itself; penalised it hardly does
    assert texts[0.0] != texts[2.0]


# ----------------------------------------------------------------------------- /v1/completions

def test_completions_shape_stream_echo_and_token_prompts(client, tokenizer):
    plain = post(client, "/v1/completions", body_with(TEXT, prompt="长江", max_tokens=5))
    answer = plain.get_json()
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-") and answer["model"] == "tiny"
    choice = answer["choices"][0]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"} and choice["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 1 + len(tokenizer.encode("长江")), "completion_tokens": 5,
                               "total_tokens": 6 + len(tokenizer.encode("长江"))}

    chunks = sse(post(client, "/v1/completions", body_with(TEXT, prompt="长江", max_tokens=5, stream=True,
                                                           stream_options={"include_usage": True})))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]

    echoed = post(client, "/v1/completions", body_with(TEXT, prompt="长江", max_tokens=5, echo=True)).get_json()
    assert echoed["choices"][0]["text"] == "长江" + choice["text"]

    ids = [EOS_ID] + tokenizer.encode("长江")
    by_ids = post(client, "/v1/completions", body_with(TEXT, prompt=ids, max_tokens=5)).get_json()
    assert by_ids["choices"][0]["text"] == choice["text"] and by_ids["usage"] == answer["usage"]

    several = post(client, "/v1/completions",
                   body_with(TEXT, prompt=["长江", ids, "春天来了，"], max_tokens=5)).get_json()
    assert [c["index"] for c in several["choices"]] == [0, 1, 2]
    assert several["choices"][0]["text"] == several["choices"][1]["text"] == choice["text"]
    assert several["usage"]["completion_tokens"] == 15
    streamed = sse(post(client, "/v1/completions", body_with(TEXT, prompt=["长江", "春天来了，"], max_tokens=5,
                                                             stream=True)))
    for index in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in streamed if c["choices"][0]["index"] == index)
        assert text == several["choices"][2 * index]["text"]


def test_completions_text_special_tokens_are_the_tokens(client, tokenizer):
    """A completions prompt is raw text for the model: </s> in it is the document separator, as in pretraining."""
    response = post(client, "/v1/completions", body_with(TEXT, prompt="你好</s>春天", max_tokens=1)).get_json()
    assert response["usage"]["prompt_tokens"] == 1 + len(tokenizer.encode("你好</s>春天"))
    assert tokenizer.encode("你好</s>春天").count(EOS_ID) == 1


# ----------------------------------------------------------------------------- the key

def test_api_key_from_flag_file_or_environment(tmp_path):
    args = lambda key=None, key_file=None: SimpleNamespace(api_key=key, api_key_file=key_file)  # noqa: E731
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nsecond line, not part of the key\n")
    assert resolve_api_key(args(), {}) is None
    assert resolve_api_key(args(), {API_KEY_ENV: "from-env"}) == "from-env"
    assert resolve_api_key(args(), {API_KEY_ENV: ""}) is None
    assert resolve_api_key(args(key_file=str(key_file)), {API_KEY_ENV: "from-env"}) == "from-file"
    assert resolve_api_key(args(key="from-flag"), {API_KEY_ENV: "from-env"}) == "from-flag"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="holds no key"):
        resolve_api_key(args(key_file=str(tmp_path / "empty")), {})
    with pytest.raises(ValueError, match="cannot read it"):
        resolve_api_key(args(key_file=str(tmp_path / "missing")), {})
    with pytest.raises(ValueError, match="empty"):
        resolve_api_key(args(key=""), {})


# ----------------------------------------------------------------------------- on a socket

@pytest.fixture(params=[False, True], ids=["waitress", "werkzeug"])
def live(request, app):
    server = Server(app, "127.0.0.1", 0, dev=request.param, threads=4, timeout=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(10)


def chunked_post(port: int, body: bytes, piece: int = 1 << 16) -> tuple[int, dict]:
    """POST body with Transfer-Encoding: chunked (no Content-Length), as a streaming client sends it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    pieces = (body[i:i + piece] for i in range(0, len(body), piece))
    connection.request("POST", "/v1/chat/completions", body=pieces, encode_chunked=True,
                       headers={"Content-Type": "application/json", "Host": "localhost"})
    response = connection.getresponse()
    answer = response.status, json.loads(response.read())
    connection.close()
    return answer


def test_chunked_body_over_the_limit_is_413(live):
    """werkzeug cuts a chunked body at the limit without a word: the JSON then failed to parse, a misleading 400."""
    over = body_with(CHAT, user="x" * MAX_BODY_BYTES)
    assert MAX_BODY_BYTES < len(over) < 2 * MAX_BODY_BYTES
    status, answer = chunked_post(live.port, over)
    assert status == 413 and answer["error"]["type"] == "invalid_request_error"
    status, answer = chunked_post(live.port, body_with(CHAT, user="x" * (MAX_BODY_BYTES - 1000)))
    assert status == 200 and answer["usage"]["completion_tokens"] == 2


def test_idle_and_half_sent_connections_are_closed():
    """waitress drops a connection that sends nothing, or stops half-way through a request, after --timeout."""
    from flask import Flask

    server = Server(Flask("idle"), "127.0.0.1", 0, timeout=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        half = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        for sock in (idle, half):
            assert sock.recv(100) == b""  # closed by the server
            sock.close()
        assert time.monotonic() - started < 15
    finally:
        server.shutdown()
        thread.join(10)
