"""The server against hostile and careless requests: every one answered with a 4xx in OpenAI's error shape,
never a 5xx, and the server still serving afterwards.

The app runs in this process behind Flask's test client (and, for what only a socket shows, behind waitress
and werkzeug on a local port), holding a tiny random model whose EOS embedding is zeroed so replies run to
max_tokens. It is created with max_queue=0: a hostile request that kept its place in the queue would turn
every later generation into a 503, so the final checks also show that nothing leaked.
"""
import json

import pytest
from conftest import never_ending_model

from serving.app import create_app
from serving.messages import MAX_MESSAGES
from serving.protocol import MAX_BODY_BYTES, Defaults

CONTEXT = 128
CAP = 8
KEY = "hostile-key"
ANY = object()  # the error's param is not checked
RAW = "__RAW__"  # replaced by raw JSON text (NaN, a 5000-digit integer ...) after encoding
DROP = object()  # a field removed from the base request
WEATHER = "今天天气怎么样，我们出去走走吧。"


@pytest.fixture(scope="module")
def model():
    return never_ending_model(CONTEXT)


@pytest.fixture(scope="module")
def app(model, tokenizer):
    return create_app(model, tokenizer, "tiny", Defaults(max_tokens=CAP), max_queue=0, allowed_hosts=["box.lan"])


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def keyed_client(model, tokenizer):
    return create_app(model, tokenizer, "tiny", Defaults(max_tokens=CAP), api_key=KEY, max_queue=0).test_client()


CHAT = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 2, "temperature": 0}
TEXT = {"prompt": "你好", "max_tokens": 2, "temperature": 0}


def body_with(base: dict, raw: str = None, **changes) -> bytes:
    body = {k: v for k, v in {**base, **changes}.items() if v is not DROP}
    text = json.dumps(body, ensure_ascii=False)
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    return text.encode("utf-8")


def post(client, path: str, body: bytes, headers: dict = None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return client.post(path, data=body, headers=headers)


def sse(response) -> list:
    events = response.get_data(as_text=True).split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-2]]


def assert_openai_error(response, status: int, param=ANY) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if param is not ANY:
        assert error["param"] == param, error
    return error


# ----------------------------------------------------------------------------- the hostile requests

def _cases():
    """(id, path, body bytes, extra headers, expected status, expected param)."""
    cases = []
    add = lambda name, path, body, status=400, param=ANY, headers=None: cases.append(  # noqa: E731
        pytest.param(path, body, headers or {}, status, param, id=name))
    for part in (_body_cases, _number_cases, _message_cases, _unsupported_cases, _tool_cases, _prompt_cases,
                 _http_cases):
        part(add)
    return cases


def _body_cases(add) -> None:
    """Bodies that are not JSON, or not a JSON object, or JSON no parser should be made to read."""
    deep = "[" * 100_000 + "]" * 100_000
    for name, raw in [("empty", b""), ("blank", b"   \n"), ("open brace", b"{"), ("truncated", b'{"messages": ['),
                      ("trailing data", b'{"messages": []} {}'), ("single quotes", b"{'messages': []}"),
                      ("latin-1", b'{"prompt": "caf\xe9"}'), ("invalid utf-8", b"\xff\xfe\x00"),
                      ("nul", b"\x00"), ("bare word", b"hello"), ("array", b"[1, 2]"), ("string", b'"hi"'),
                      ("number", b"42"), ("null", b"null"), ("true", b"true"), ("NaN", b"NaN"),
                      ("deep array", deep.encode()),
                      ("deep object", ('{"a":' * 100_000 + "1" + "}" * 100_000).encode()),
                      ("5000-digit integer", b"9" * 5000), ("33 levels", ("[" * 33 + "]" * 33).encode()),
                      ("BOM", b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "hi"}]}')]:
        for path in ("/v1/chat/completions", "/v1/completions"):
            add(f"{path[4:]}-{name}", path, raw, param=None)



def _number_cases(add) -> None:
    """Numbers: wrong types, not finite, out of range. Each shared field on both endpoints; and the other
    shared fields."""
    floats = {"temperature": ["2.01", "-0.01"], "top_p": ["0", "1.5", "-1e-300"],
              "repetition_penalty": ["0", "1e-300", "0.009", "10.5"], "presence_penalty": ["2.5", "-2.01"],
              "frequency_penalty": ["-3", "2.000001"]}
    integers = {"max_tokens": ["0", "-1", "1.5", "2.0"], "top_k": ["-1", "0.5"], "n": ["2", "0", "-1", "1.0"],
                "seed": ["18446744073709551616", "-9223372036854775809", "1.5"]}
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", TEXT)):
        where = path[4:]
        for field, out_of_range in {**floats, **integers}.items():
            for raw in ['"1"', "true", "[]", "{}", '[1]', *out_of_range]:
                add(f"{where}-{field}={raw}", path, body_with(base, raw=raw, **{field: RAW}), param=field)
            for raw in ["NaN", "Infinity", "-Infinity", "1e400", "9" * 5000]:  # refused while parsing
                add(f"{where}-{field}={raw[:12]}", path, body_with(base, raw=raw, **{field: RAW}), param=None)
        add(f"{where}-stream NaN temperature", path, body_with(base, raw="NaN", stream=True, temperature=RAW),
            param=None)
        add(f"{where}-stream top_p 0", path, body_with(base, stream=True, top_p=0), param="top_p")
        add(f"{where}-stream=yes", path, body_with(base, stream="yes"), param="stream")
        add(f"{where}-stream=1", path, body_with(base, stream=1), param="stream")
        add(f"{where}-stream_options without stream", path, body_with(base, stream_options={"include_usage": True}),
            param="stream_options")
        add(f"{where}-stream_options=5", path, body_with(base, stream=True, stream_options=5), param="stream_options")
        add(f"{where}-stream_options extra", path, body_with(base, stream=True, stream_options={"x": 1}),
            param="stream_options")
        add(f"{where}-stop 5 strings", path, body_with(base, stop=list("abcde")), param="stop")
        add(f"{where}-stop empty", path, body_with(base, stop=""), param="stop")
        add(f"{where}-stop number", path, body_with(base, stop=[1]), param="stop")
        add(f"{where}-stop object", path, body_with(base, stop={"a": 1}), param="stop")
        add(f"{where}-unknown field", path, body_with(base, frobnicate=1), param="frobnicate")
        add(f"{where}-logit_bias", path, body_with(base, logit_bias={"5": 100}), param="logit_bias")
        add(f"{where}-logit_bias list", path, body_with(base, logit_bias=[1]), param="logit_bias")
        add(f"{where}-user number", path, body_with(base, user=5), param="user")
        add(f"{where}-model number", path, body_with(base, model=5), param="model")
        add(f"{where}-model list", path, body_with(base, model=["tiny"]), param="model")
        add(f"{where}-other model", path, body_with(base, model="gpt-4o"), status=404, param="model")
        add(f"{where}-surrogate in user", path, body_with(base, raw='"\\ud800"', user=RAW), param="user")
        add(f"{where}-surrogate in stop", path, body_with(base, raw='["\\udfff"]', stop=RAW), param="stop[0]")
        add(f"{where}-surrogate in model", path, body_with(base, raw='"x\\ud800"', model=RAW), param="model")
        add(f"{where}-surrogate in a key", path, body_with(base, raw='{"\\ud800": 1}', stream_options=RAW),
            param="stream_options")



def _message_cases(add) -> None:
    """Chat messages."""
    messages = {
        "missing": DROP, "null": None, "string": "hi", "object": {"role": "user", "content": "hi"}, "empty": [],
        "number": 5, "item null": [None], "item string": ["hi"], "item list": [["user", "hi"]],
        "no role": [{"content": "hi"}], "role tool": [{"role": "tool", "content": "hi"}],
        "role function": [{"role": "function", "content": "hi"}], "role bot": [{"role": "bot", "content": "hi"}],
        "role number": [{"role": 1, "content": "hi"}], "role null": [{"role": None, "content": "hi"}],
        "role upper": [{"role": "USER", "content": "hi"}], "no content": [{"role": "user"}],
        "content null": [{"role": "user", "content": None}], "content number": [{"role": "user", "content": 5}],
        "content object": [{"role": "user", "content": {"text": "hi"}}],
        "content image": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        "content part string": [{"role": "user", "content": ["hi"]}],
        "content part no text": [{"role": "user", "content": [{"type": "text"}]}],
        "content part text number": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
        "tool_calls": [{"role": "assistant", "content": "hi", "tool_calls": []}],
        "name number": [{"role": "user", "content": "hi", "name": 5}],
        "name null": [{"role": "user", "content": "hi", "name": None}],
        "too many": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1),
        "context exceeded": [{"role": "user", "content": WEATHER * 40}],
        "system exceeds": [{"role": "system", "content": WEATHER * 40}, {"role": "user", "content": "hi"}],
    }
    params = {"missing": "messages", "null": "messages", "string": "messages", "object": "messages",
              "empty": "messages", "number": "messages", "too many": "messages", "context exceeded": "messages",
              "system exceeds": "messages", "item null": "messages[0]", "item string": "messages[0]",
              "item list": "messages[0]", "tool_calls": "messages[0]", "name number": "messages[0].name",
              "name null": "messages[0].name"}
    for name, value in messages.items():
        param = params.get(name, "messages[0].role" if name.startswith(("no role", "role")) else "messages[0].content")
        add(f"chat-messages {name}", "/v1/chat/completions", body_with(CHAT, messages=value), param=param)
    for raw, param in [('[{"role": "user", "content": "\\ud800"}]', "messages[0].content"),
                       ('[{"role": "user", "content": "a\\udc00b"}]', "messages[0].content"),
                       ('[{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]',
                        "messages[0].content[0].text"),
                       ('[{"role": "user", "content": "hi", "name": "\\ud800"}]', "messages[0].name"),
                       ('[{"role": "\\ud800", "content": "hi"}]', "messages[0].role")]:
        add(f"chat-surrogate {param}", "/v1/chat/completions", body_with(CHAT, raw=raw, messages=RAW), param=param)
    add("chat-content nested 40 deep", "/v1/chat/completions",
        body_with(CHAT, raw="[" * 40 + "]" * 40, messages=[{"role": "user", "content": RAW}]), param=ANY)
    add("chat-max_completion_tokens 0", "/v1/chat/completions", body_with(CHAT, max_completion_tokens=0),
        param="max_completion_tokens")
    add("chat-max_completion_tokens string", "/v1/chat/completions", body_with(CHAT, max_completion_tokens="5"),
        param="max_completion_tokens")



def _unsupported_cases(add) -> None:
    """What OpenAI has and this server cannot honour."""
    for field, value in [("tools", []), ("tools", {"type": "function", "function": {"name": "f"}}),
                         ("tool_choice", "auto"), ("tool_choice", {"type": "function"}), ("logprobs", True),
                         ("logprobs", 1), ("logprobs", "no"), ("top_logprobs", 3),
                         ("response_format", {"type": "json_object"}),
                         ("response_format", "text"), ("response_format", {"type": "json_schema", "json_schema": {}}),
                         ("parallel_tool_calls", "yes"), ("functions", []), ("function_call", "auto"),
                         ("audio", {}), ("modalities", ["audio"]), ("prediction", {})]:
        add(f"chat-{field}={json.dumps(value)[:20]}", "/v1/chat/completions", body_with(CHAT, **{field: value}),
            param=field)



def _prompt_cases(add) -> None:
    """Completions prompts."""
    for name, value, param in [
            ("missing", DROP, "prompt"), ("null", None, "prompt"), ("number", 5, "prompt"), ("object", {}, "prompt"),
            ("empty list", [], "prompt"), ("empty token list", [[]], "prompt"), ("bool tokens", [True], "prompt"),
            ("float tokens", [1.5], "prompt"), ("negative token", [-1], "prompt"),
            ("token past vocab", [512], "prompt"),
            ("huge token", [10 ** 30], "prompt"), ("mixed", [1, "a"], "prompt"), ("nested strings", [["a"]], "prompt"),
            ("17 prompts", ["a"] * 17, "prompt"), ("too long", WEATHER * 40, "prompt"),
            ("too long token ids", [5] * (CONTEXT + 1), "prompt")]:
        add(f"text-prompt {name}", "/v1/completions", body_with(TEXT, prompt=value), param=param)
    add("text-surrogate prompt", "/v1/completions", body_with(TEXT, raw='"\\ud800"', prompt=RAW), param="prompt")
    add("text-surrogate prompt list", "/v1/completions", body_with(TEXT, raw='["ok", "\\udbff"]', prompt=RAW),
        param="prompt[1]")
    for field, value in [("echo", "yes"), ("echo", 1), ("best_of", 2), ("best_of", True), ("suffix", "end"),
                         ("logprobs", 1), ("logprobs", True), ("messages", []), ("max_completion_tokens", 5)]:
        add(f"text-{field}={json.dumps(value)}", "/v1/completions", body_with(TEXT, **{field: value}), param=field)



def _http_cases(add) -> None:
    """HTTP: content type, host, origin, method, path, size."""
    chat = body_with(CHAT)
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "text/json", "application/json-seq", "application/jsonx", "", "application/xml"]:
        add(f"content-type {content_type or 'none'}", "/v1/chat/completions", chat, 415, None,
            {"Content-Type": content_type})
    for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example",
                 "0.0.0.0:8000", "192.168.1.5", "[fe80::1]:8000", "10.0.0.1:80", "", "box.lan.evil.example"]:
        add(f"host {host or 'empty'}", "/v1/chat/completions", chat, 403, None, {"Host": host})
    for origin in ["http://evil.example", "https://evil.example:8000", "null", "http://127.0.0.1.evil.example",
                   "file://", "http://[fe80::1]"]:
        add(f"origin {origin}", "/v1/chat/completions", chat, 403, None, {"Origin": origin})
    add("body over 1 MiB", "/v1/chat/completions", body_with(CHAT, user="x" * MAX_BODY_BYTES), 413, None)
    add("body 1 MiB + 1", "/v1/completions", b" " * (MAX_BODY_BYTES - len(body_with(TEXT)) + 1) + body_with(TEXT),
        413, None)
    add("unknown path", "/v1/embeddings", chat, 404, None)
    add("unknown path 2", "/v1/chat/completions/x", chat, 404, None)
    add("POST the page", "/", chat, 405, None)
    add("POST models", "/v1/models", chat, 405, None)


def _tool_cases(add) -> None:
    """Tools offered, chosen, called and answered: every malformed piece names its field; and
    /v1/tools/run's bodies."""
    fn = {"name": "calculator", "parameters": {"type": "object", "properties": {}}}
    tools = [{"type": "function", "function": fn}]
    chat = "/v1/chat/completions"
    for name, value, param in [
            ("string", "calculator", "tools"), ("object", {"type": "function", "function": fn}, "tools"),
            ("item number", [5], "tools[0]"), ("item list", [["function"]], "tools[0]"),
            ("no function", [{"type": "function"}], "tools[0].function"),
            ("function string", [{"type": "function", "function": "calculator"}], "tools[0].function"),
            ("no type", [{"function": fn}], "tools[0].type"),
            ("type retrieval", [{"type": "retrieval", "function": fn}], "tools[0].type"),
            ("extra field", [{"type": "function", "function": fn, "x": 1}], "tools[0]"),
            ("function extra", [{"type": "function", "function": {**fn, "code": "rm"}}], "tools[0].function"),
            ("no name", [{"type": "function", "function": {"parameters": {}}}], "tools[0].function.name"),
            ("name empty", [{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
            ("name space", [{"type": "function", "function": {"name": "a b"}}], "tools[0].function.name"),
            ("name 65", [{"type": "function", "function": {"name": "a" * 65}}], "tools[0].function.name"),
            ("name number", [{"type": "function", "function": {"name": 5}}], "tools[0].function.name"),
            ("name chinese", [{"type": "function", "function": {"name": "计算器"}}], "tools[0].function.name"),
            ("name tag", [{"type": "function", "function": {"name": "</tool_call>"}}], "tools[0].function.name"),
            ("description number", [{"type": "function", "function": {**fn, "description": 5}}],
             "tools[0].function.description"),
            ("parameters string", [{"type": "function", "function": {**fn, "parameters": "x"}}],
             "tools[0].function.parameters"),
            ("parameters list", [{"type": "function", "function": {**fn, "parameters": []}}],
             "tools[0].function.parameters"),
            ("parameters type string", [{"type": "function", "function": {**fn, "parameters": {"type": "string"}}}],
             "tools[0].function.parameters"),
            ("strict string", [{"type": "function", "function": {**fn, "strict": "yes"}}], "tools[0].function.strict"),
            ("duplicate", tools * 2, "tools[1].function.name"),
            ("65 tools", [{"type": "function", "function": {"name": f"f{i}"}} for i in range(65)], "tools")]:
        add(f"chat-tools {name}", chat, body_with(CHAT, tools=value), param=param)
    add("chat-tools surrogate in description", chat, body_with(
        CHAT, raw='[{"type": "function", "function": {"name": "f", "description": "\\udfff"}}]', tools=RAW),
        param="tools[0].function.description")
    add("chat-tools 40 deep", chat, body_with(CHAT, raw='[{"type": "function", "function": {"name": "f", "parameters": '
                                              + '{"a":' * 40 + "1" + "}" * 40 + "}}]", tools=RAW), param="tools")
    for value in ["always", "", "AUTO", 5, True, [], {}, {"type": "function"},
                  {"type": "function", "function": {"name": "other"}}, {"type": "function", "function": {}},
                  {"type": "function", "function": {"name": 5}}, {"type": "function", "name": "calculator"},
                  {"type": "function", "function": {"name": "calculator"}, "x": 1},
                  {"type": "function", "function": {"name": "calculator", "arguments": "{}"}}]:
        add(f"chat-tool_choice={json.dumps(value)[:30]} with tools", chat, body_with(CHAT, tools=tools, tool_choice=value),
            param="tool_choice")
    add("chat-tool_choice required without tools", chat, body_with(CHAT, tool_choice="required"), param="tool_choice")
    add("chat-parallel_tool_calls=1 with tools", chat, body_with(CHAT, tools=tools, parallel_tool_calls=1),
        param="parallel_tool_calls")
    _tool_message_cases(add)
    run = "/v1/tools/run"
    for name, body, param in [
            ("unknown tool", {"name": "shell", "arguments": {}}, "name"), ("name number", {"name": 5}, "name"),
            ("no name", {"arguments": {"expression": "1"}}, "name"),
            ("arguments string", {"name": "calculator", "arguments": '{"expression": "1"}'}, "arguments"),
            ("arguments list", {"name": "calculator", "arguments": ["1"]}, "arguments"),
            ("extra field", {"name": "calculator", "arguments": {}, "stream": True}, "stream")]:
        add(f"tools/run {name}", run, json.dumps(body).encode(), param=param)
    for name, raw in [("not JSON", b"{"), ("array", b"[]"), ("NaN", b'{"name": "calculator", "arguments": NaN}')]:
        add(f"tools/run {name}", run, raw, param=None)
    add("tools/run body over 4 KiB", run, json.dumps({"name": "calculator", "arguments": {"expression": "1" * 5000}})
        .encode(), 413, None)
    add("tools/run text/plain", run, b'{"name": "calculator"}', 415, None, {"Content-Type": "text/plain"})


def _tool_message_cases(add) -> None:
    """Conversations with a malformed assistant tool call or tool message."""
    user = {"role": "user", "content": "3+4?"}
    call = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "3+4"}'}}
    asked = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "7"}

    def with_call(**changes):
        return [user, {**asked, "tool_calls": [{**call, **changes}]}, answer]

    def with_function(**changes):
        return with_call(function={**call["function"], **changes})

    cases = [
        ("tool after user", [user, answer], "messages[1].role"),
        ("tool after plain assistant", [user, {"role": "assistant", "content": "hi"}, answer], "messages[2].role"),
        ("tool after a later user", [user, asked, user, answer], "messages[3].role"),
        ("tool no id", [user, asked, {"role": "tool", "content": "7"}], "messages[2].tool_call_id"),
        ("tool wrong id", [user, asked, {**answer, "tool_call_id": "call_2"}], "messages[2].tool_call_id"),
        ("tool id number", [user, asked, {**answer, "tool_call_id": 1}], "messages[2].tool_call_id"),
        ("tool content null", [user, asked, {**answer, "content": None}], "messages[2].content"),
        ("tool content number", [user, asked, {**answer, "content": 7}], "messages[2].content"),
        ("tool extra field", [user, asked, {**answer, "tool_calls": []}], "messages[2]"),
        ("assistant content null, no calls", [user, {"role": "assistant", "content": None}, user],
         "messages[1].content"),
        ("assistant tool_call_id", [user, {"role": "assistant", "content": "x", "tool_call_id": "c"}, user],
         "messages[1]"),
        ("calls string", [user, {**asked, "tool_calls": "calculator"}, answer], "messages[1].tool_calls"),
        ("calls object", [user, {**asked, "tool_calls": call}, answer], "messages[1].tool_calls"),
        ("call number", [user, {**asked, "tool_calls": [5]}, answer], "messages[1].tool_calls[0]"),
        ("call extra", with_call(index=0), "messages[1].tool_calls[0]"),
        ("call no id", [user, {**asked, "tool_calls": [{"type": "function", "function": call["function"]}]}, answer],
         "messages[1].tool_calls[0].id"),
        ("call id number", with_call(id=1), "messages[1].tool_calls[0].id"),
        ("call id empty", with_call(id=""), "messages[1].tool_calls[0].id"),
        ("call type", with_call(type="code"), "messages[1].tool_calls[0].type"),
        ("call function string", with_call(function="calculator"), "messages[1].tool_calls[0].function"),
        ("call function extra", with_function(code="x"), "messages[1].tool_calls[0].function"),
        ("call no name", with_call(function={"arguments": "{}"}), "messages[1].tool_calls[0].function.name"),
        ("call name number", with_function(name=5), "messages[1].tool_calls[0].function.name"),
        ("arguments not JSON", with_function(arguments="3+4"), "messages[1].tool_calls[0].function.arguments"),
        ("arguments list", with_function(arguments="[1]"), "messages[1].tool_calls[0].function.arguments"),
        ("arguments number", with_function(arguments=5), "messages[1].tool_calls[0].function.arguments"),
        ("arguments NaN", with_function(arguments='{"a": NaN}'), "messages[1].tool_calls[0].function.arguments"),
        ("arguments surrogate", with_function(arguments='{"a": "\\ud800"}'),
         "messages[1].tool_calls[0].function.arguments"),
        ("arguments 100 deep", with_function(arguments='{"a": ' + "[" * 100 + "]" * 100 + "}"),
         "messages[1].tool_calls[0].function.arguments"),
        ("arguments 5000 digits", with_function(arguments='{"a": ' + "9" * 5000 + "}"),
         "messages[1].tool_calls[0].function.arguments"),
        ("arguments 100000 deep", with_function(arguments="[" * 100_000),
         "messages[1].tool_calls[0].function.arguments"),
    ]
    for name, messages, param in cases:
        add(f"chat-messages {name}", "/v1/chat/completions", body_with(CHAT, messages=messages), param=param)


CASES = _cases()


def test_the_suite_is_large_enough():
    assert len(CASES) >= 150


@pytest.mark.parametrize("path, body, headers, status, param", CASES)
def test_hostile_request_gets_an_openai_error(client, path, body, headers, status, param):
    response = post(client, path, body, headers)
    assert_openai_error(response, status, param)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/chat/completions", 405), ("PUT", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405),
    ("GET", "/v1/completions", 405), ("GET", "/v1", 404), ("GET", "/../etc/passwd", 404), ("GET", "/web/chat.js", 404),
    ("PATCH", "/v1/completions", 405)])
def test_wrong_method_or_path(client, method, path, status):
    assert_openai_error(client.open(path, method=method), status)


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic aG9zdGlsZS1rZXk=", "bearer " + KEY, "Bearer",
                                    "Bearer " + KEY + " ", "Bearer \xe9\xe8"])
def test_missing_or_wrong_key_is_401(keyed_client, header):
    headers = {"Authorization": header} if header is not None else {}
    error = assert_openai_error(post(keyed_client, "/v1/chat/completions", body_with(CHAT), headers), 401)
    assert error["code"] == "invalid_api_key"


# ----------------------------------------------------------------------------- what must be accepted

@pytest.mark.parametrize("headers", [
    {"Host": "localhost"}, {"Host": "localhost:8000"}, {"Host": "127.0.0.1:8000"}, {"Host": "127.0.0.2"},
    {"Host": "[::1]:8000"}, {"Host": "LOCALHOST."}, {"Host": "box.lan:8000"},
    {"Origin": "http://localhost:8000"}, {"Origin": "http://127.0.0.1:8000"}, {"Origin": "http://[::1]:8000"},
    {"Content-Type": "application/json; charset=utf-8"}, {"Content-Type": "Application/JSON"}])
def test_loopback_requests_are_served(client, headers):
    response = post(client, "/v1/chat/completions", body_with(CHAT), headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["usage"]["completion_tokens"] == 2


def test_with_a_key_any_host_is_served(keyed_client):
    """With a key the server is meant for the network: the Host and Origin checks are off, the key is the guard."""
    headers = {"Authorization": f"Bearer {KEY}", "Host": "my-server.example:8000", "Origin": "http://elsewhere.example"}
    assert post(keyed_client, "/v1/chat/completions", body_with(CHAT), headers).status_code == 200
    assert keyed_client.get("/", headers={"Host": "my-server.example"}).status_code == 200
    text_plain = post(keyed_client, "/v1/chat/completions", body_with(CHAT),
                      {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"})
    assert_openai_error(text_plain, 415)


def test_without_a_key_the_page_is_refused_to_other_hosts(client):
    assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200
    assert_openai_error(client.get("/", headers={"Host": "rebound.example:8000"}), 403)
    assert_openai_error(client.get("/v1/models", headers={"Host": "rebound.example"}), 403)


@pytest.mark.parametrize("field, value", [
    ("user", "user-1234"), ("logprobs", False), ("logprobs", None), ("top_logprobs", None),
    ("response_format", {"type": "text"}), ("parallel_tool_calls", True), ("parallel_tool_calls", False),
    ("tool_choice", "none"), ("presence_penalty", 0.5), ("frequency_penalty", -0.5), ("logit_bias", {}),
    ("n", 1), ("seed", 2 ** 64 - 1), ("seed", -2 ** 63), ("max_tokens", 10 ** 30), ("top_k", 10 ** 30),
    ("stop", None), ("temperature", 1e-300), ("top_p", 1e-300), ("repetition_penalty", 0.01), ("stream", False)])
def test_front_end_fields_are_accepted(client, field, value):
    response = post(client, "/v1/chat/completions", body_with(CHAT, **{field: value}))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["content"]


def test_text_that_is_valid_json_and_valid_unicode_is_kept(client):
    """A surrogate pair is an emoji, not a lone surrogate: accepted and encoded as what it is."""
    raw = '[{"role": "user", "content": "\\ud83d\\ude00 smile"}]'
    response = post(client, "/v1/chat/completions", body_with(CHAT, raw=raw, messages=RAW))
    assert response.status_code == 200
    emoji = [{"role": "user", "content": "😀 smile"}]
    escaped = post(client, "/v1/chat/completions", body_with(CHAT, messages=emoji))
    assert response.get_json()["usage"] == escaped.get_json()["usage"]


def test_tiny_temperature_and_top_p_decode_greedily(client):
    """float32 cannot hold 1e-300: a temperature or top_p that small used to divide by zero or drop every token."""
    greedy = post(client, "/v1/chat/completions", body_with(CHAT, max_tokens=6)).get_json()
    for change in ({"temperature": 1e-300}, {"temperature": 1e-6}, {"temperature": 1.0, "top_p": 1e-300, "seed": 1},
                   {"temperature": 2.0, "top_p": 1e-40, "seed": 2}):
        for stream in (False, True):
            response = post(client, "/v1/chat/completions", body_with(CHAT, max_tokens=6, stream=stream, **change))
            assert response.status_code == 200
            if stream:
                events = response.get_data(as_text=True).split("\n\n")
                assert events[-2] == "data: [DONE]"
                text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                               for e in events[:-2] if json.loads(e[6:])["choices"])
            else:
                text = response.get_json()["choices"][0]["message"]["content"]
            assert text == greedy["choices"][0]["message"]["content"], change


# ----------------------------------------------------------------------------- afterwards

def test_still_serving_after_everything(client):
    """max_queue is 0: had any request above kept its place in the queue, this would be a 503."""
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", TEXT)):
        for stream in (False, True):
            response = post(client, path, body_with(base, stream=stream))
            assert response.status_code == 200, response.get_data(as_text=True)
            if stream:
                assert sse(response)[-1]["choices"][0]["finish_reason"] == "length"  # read to the end
    assert client.get("/v1/models").get_json()["data"][0]["id"] == "tiny"
