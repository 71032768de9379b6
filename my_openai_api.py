"""Serve a MiniMind checkpoint behind an OpenAI-compatible HTTP API, plus a chat page at `/`.

    python my_openai_api.py                             # out/full_sft_512x8.pth on http://127.0.0.1:8000
    python my_openai_api.py --weight dpo --preset moe   # out/dpo_640x8_moe.pth
    python my_openai_api.py --weight pretrain           # a pretrained model: use /v1/completions
    python my_openai_api.py --weight lora_medical       # full_sft + the adapter in out/lora_medical_512x8/
    python my_openai_api.py --ckpt out/hf/full_sft_512x8   # an export_model.py folder
    MINIMIND_API_KEY=s3cret python my_openai_api.py --host 0.0.0.0   # reachable from the network, with a key
    python my_openai_api.py --api_key_file ~/.minimind_key --port 8001

Then open http://127.0.0.1:8000 in a browser, run `python chat_openai_api.py`, or point any OpenAI
client at http://127.0.0.1:8000/v1.

Endpoints
    GET  /                     the chat page (web/index.html + web/chat.js)
    GET  /v1/models            the one model this server holds
    POST /v1/chat/completions  OpenAI chat completions; `"stream": true` answers with server-sent events:
                               a role chunk, content deltas, a chunk carrying finish_reason, then [DONE]
    POST /v1/completions       OpenAI (legacy) completions: plain text continuation, the way a pretrained
                               model is used; same streaming shape with `text` deltas

Request fields, both endpoints: stream, stream_options.include_usage, temperature, top_p, max_tokens,
stop (a string or up to 4), seed, n (only 1), model (must name the served model if given),
presence_penalty and frequency_penalty (OpenAI's, in [-2, 2], counted over the generated tokens), user
(accepted, not used), logit_bias (only empty), and two extras OpenAI lacks: top_k and repetition_penalty.
  * chat: messages (system/developer/user/assistant; string content or a list of text parts; `name`
    accepted and not shown to the model: the chat template has no place for it; developer is read as
    system), max_completion_tokens, logprobs (only false), top_logprobs (only null), response_format
    (only {"type": "text"}), parallel_tool_calls and tool_choice "none" (accepted: there are no tools).
    `tools` gets a 400: this model cannot call functions.
  * completions: prompt (a string, a list of strings, a list of token ids or a list of lists of them; each
    prompt gets its own choice, by index), echo, best_of (only 1), suffix (only empty), logprobs (only
    null). A text prompt is read as the pretraining text was: `</s>` first, then the text, in which
    `<s>`/`</s>` are the special tokens. Token-id prompts are used as they are. max_tokens defaults to 16,
    as OpenAI's does.
Any other field, a wrong type, a number that is not finite or out of range, JSON that does not parse
(or nests deeper than 32 levels, or an integer longer than 40 digits) and a string holding a lone UTF-16
surrogate are answered with a 400 in OpenAI's error format {"error": {"message", "type", "param",
"code"}}, naming the field. Every error the app gives, 401, 403, 404, 405, 413, 415 and 503 included,
has that shape (waitress itself answers malformed HTTP, and bodies over 2 MiB, in plain text).

Policies, stated once here:
  * max_tokens is capped at --max_tokens (also the chat default when a request omits it).
  * A temperature below 1e-5 decodes greedily, like 0 (dividing by it would overflow float32); a top_p
    below 1e-6 keeps only the most likely token, which is what any top_p that small means.
  * At most 1000 messages per chat request and a 1 MiB body (413 beyond, chunked bodies included).
  * Context: model/chat.py's policy, the one the terminal chat and C-Eval use too. The prompt may use the
    model's context (max_seq_len, stretched when RoPE scaling is on) minus the room kept for the reply
    (max_tokens, but at most half the window). A longer conversation loses its oldest turns first (a
    turn: a user message and the replies after it); system messages and the last message are always
    kept. Each message is encoded once, newest first, and encoding stops when the window is full, so a
    long conversation costs no more than one that fits. If the system messages and the last message
    alone do not fit, the request gets a 400 with code context_length_exceeded, as does a completions
    prompt longer than the room. Dropped turns are logged and counted in the X-Dropped-Messages
    response header. A reply longer than the room left slides the model's window.
  * Text in a chat message that looks like a turn marker (<s>, </s>) is encoded as plain text, so a
    message cannot forge a turn of another role.
  * One generation runs at a time (a lock): concurrent requests wait their turn, so outputs never
    interleave, and more than --max_queue waiting requests get a 503. A request takes its place in the
    queue before its prompt is built, so --max_queue bounds that work too.
  * A streaming client that disconnects stops its generation at the next token (the server notices
    when writing to the closed socket). A non-streaming request runs to its max_tokens or stop.
  * With an API key (--api_key, --api_key_file, or the MINIMIND_API_KEY environment variable, which
    `ps` does not show), every /v1 request needs `Authorization: Bearer KEY` (401 otherwise); the page
    itself loads without it and asks for the key, which stays in the browser.
  * Without a key, only requests addressed to a loopback name (Host localhost, 127.0.0.1, [::1], or a
    name given with --allow_host) are served, and a browser Origin must be one of those too (403
    otherwise): a web page the user visits cannot drive the model, by DNS rebinding included.
  * POSTs to /v1 must send `Content-Type: application/json` (415 otherwise), so a page cannot post to
    the server without the CORS preflight that this server never grants.

It serves through waitress (a pure-Python production WSGI server): idle and half-sent connections time
out after --timeout seconds, at most --max_connections are open at once, and worker threads are enough
for the queue. `--dev` serves through werkzeug's threaded server (the one behind `flask run`) instead.
It binds 127.0.0.1 unless --host says otherwise and makes no outbound connection.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import hmac
import ipaddress
import json
import math
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from model.chat import ContextTooLong, build_prompt, prompt_budget
from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P

WEB_DIR = Path(__file__).resolve().parent / "web"
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_STRINGS = 4
MAX_MESSAGES = 1000
MAX_PROMPTS = 16  # prompts in one completions request, generated one after another
MAX_BODY_BYTES = 1 << 20  # a request is text; 1 MiB is plenty
MAX_DEPTH = 32  # JSON nesting: a chat request needs 5 levels
MAX_INT_DIGITS = 40  # a seed needs 20
MIN_TEMPERATURE = 1e-5  # below it, sampling is greedy (logits / temperature would overflow float32)
MIN_TOP_P = 1e-6  # below 1/vocab every top_p keeps the single most likely token; float32 cannot hold 1e-300
API_KEY_ENV = "MINIMIND_API_KEY"

COMMON_FIELDS = {
    "model", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "n",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "user", "logit_bias",
}
CHAT_FIELDS = COMMON_FIELDS | {
    "messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "parallel_tool_calls",
    "tool_choice", "tools",  # tools only to refuse it with a clear message
}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "best_of", "suffix", "logprobs"}


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str = None, code: str = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Defaults:
    """Server-side values for fields a request leaves out."""
    temperature: float = CHAT_TEMPERATURE
    top_p: float = CHAT_TOP_P
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_tokens: int = 512  # also the cap
    completion_max_tokens: int = 16  # /v1/completions' default when a request omits max_tokens, as OpenAI's


@dataclass
class Sampling:
    """How to generate, read from the fields both endpoints share."""
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    max_tokens: int
    stop: list
    seed: int | None


@dataclass
class ChatRequest:
    messages: list
    sampling: Sampling


@dataclass
class CompletionRequest:
    prompts: list  # each a str or a list of token ids
    echo: bool
    sampling: Sampling


# ----------------------------------------------------------------------------- reading the body

def _show(value, limit: int = 60) -> str:
    """A value from a request, quoted for an error message and cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def _reject_constant(name: str):
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise APIError(400, f"the number {text[:40]} is out of range (it does not fit a 64-bit float)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise APIError(400, f"an integer in the request has {len(text.lstrip('-'))} digits; at most "
                       f"{MAX_INT_DIGITS} are accepted")
    return int(text)


def _check_structure(body) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings holding a lone surrogate (valid JSON as "\\ud800",
    but not text: the tokenizer cannot encode it). Iterative, so depth costs no stack."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        has_surrogate = False
    except UnicodeEncodeError:
        has_surrogate = True
    except RecursionError:
        has_surrogate = False  # the walk below finds the depth
    pending = [(body, "", 1)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            field = path.split(".")[0].split("[")[0]  # the request field it is in, not the whole path
            raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels", field or None)
        if isinstance(value, dict):
            for key, item in value.items():
                if has_surrogate and not _encodable(key):
                    raise APIError(400, "a field name holds a lone UTF-16 surrogate, which is not text", path or None)
                pending.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif has_surrogate and isinstance(value, str) and not _encodable(value):
            raise APIError(400, f"{path or 'the body'} holds a lone UTF-16 surrogate (such as \\ud800), "
                           "which is not text", path or None)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parse_body(raw: bytes):
    """Decode a request body; every way it can fail is an APIError(400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not valid UTF-8: {err}") from None
    if not text.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # what int() and float() refuse
        raise APIError(400, f"the request body holds a number that cannot be read: {err}") from None
    _check_structure(body)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


# ----------------------------------------------------------------------------- request checking

def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    """Read a numeric field; bool is rejected although Python counts it as an int."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {what}, got {_show(value)}", name)
    if not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number, got {value}", name)
    if value < low or value > high or (low_open and value == low):
        span = f"{'(' if low_open else '['}{low}, {high if high != float('inf') else 'inf'}]"
        raise APIError(400, f"'{name}' must be in {span}, got {_show(value)}", name)
    return value


def _choice(body: dict, name: str, allowed: tuple, why: str):
    """A field accepted only with the listed values (what this server can honour)."""
    value = body.get(name)
    if any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise APIError(400, f"'{name}' {why}, got {_show(value)}", name)


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false", name)
    return value


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}], the newer OpenAI form
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"messages[{i}].content[{j}] must be a text part "
                               '{"type": "text", "text": ...}; this model reads text only', f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _check_fields(body: dict, allowed: set, model_name: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", "model")
    if model not in (None, model_name):
        raise APIError(404, f"The model {_show(model)} does not exist; this server serves '{model_name}'",
                       "model", "model_not_found")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(400, "'user' must be a string", "user")
    if body.get("logit_bias") not in (None, {}):
        raise APIError(400, "'logit_bias' is not supported (only an empty object)", "logit_bias")


def _sampling(body: dict, defaults: Defaults, default_max_tokens: int, max_tokens=None) -> Sampling:
    """The fields both endpoints share; max_tokens, when given, was read by the caller."""
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
        valid = isinstance(options, dict) and set(options) <= {"include_usage"}
        include_usage = options.get("include_usage", False) if valid else None
        if not isinstance(include_usage, bool):
            raise APIError(400, "'stream_options' must be {\"include_usage\": true|false}", "stream_options")

    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise APIError(400, f"'n' must be 1: this server returns one choice per request, got {_show(n)}", "n")
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", None, 1, float("inf"), integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} "
                       "non-empty strings", "stop")

    temperature = _number(body, "temperature", defaults.temperature, 0, 2)
    top_p = _number(body, "top_p", defaults.top_p, 0, 1, low_open=True)
    return Sampling(
        stream=stream,
        include_usage=include_usage,
        temperature=0.0 if temperature < MIN_TEMPERATURE else float(temperature),
        top_p=max(float(top_p), MIN_TOP_P),
        top_k=_number(body, "top_k", defaults.top_k, 0, float("inf"), integer=True),
        repetition_penalty=float(_number(body, "repetition_penalty", defaults.repetition_penalty, 0.01, 10)),
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2, 2)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2, 2)),
        max_tokens=min(max_tokens or default_max_tokens, defaults.max_tokens),
        stop=stop,
        seed=_number(body, "seed", None, -2**63, 2**64 - 1, integer=True),  # what torch's generator takes
    )


def parse_request(body, model_name: str, defaults: Defaults) -> ChatRequest:
    """Check a chat completions body field by field; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS, model_name)
    if body.get("tools") is not None:
        raise APIError(400, "'tools' is not supported: this model cannot call functions", "tools")
    _choice(body, "tool_choice", (None, "none"), 'can only be "none": this model cannot call functions')
    _choice(body, "logprobs", (None, False), "can only be false: this server does not return log probabilities")
    _choice(body, "top_logprobs", (None,), "can only be null: this server does not return log probabilities")
    _flag(body, "parallel_tool_calls", True)
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(400, 'only \'response_format\' {"type": "text"} is supported, got '
                       f"{_show(response_format)}", "response_format")

    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "'messages' is required", "messages")
    if not isinstance(messages, list):
        raise APIError(400, "'messages' must be a list of {role, content} objects", "messages")
    if not messages:
        raise APIError(400, "'messages' must not be empty", "messages")
    if len(messages) > MAX_MESSAGES:
        raise APIError(400, f"'messages' holds {len(messages)} messages; at most {MAX_MESSAGES} are accepted "
                       "(older turns would not fit the context anyway)", "messages", "too_many_messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise APIError(400, f"messages[{i}] has unsupported field(s): {', '.join(extra)}", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {_show(role)}",
                           f"messages[{i}].role")
        if "name" in message and not isinstance(message["name"], str):
            raise APIError(400, f"messages[{i}].name must be a string", f"messages[{i}].name")
        checked.append({"role": "system" if role == "developer" else role, "content": _content(message, i)})

    max_tokens = _number(body, "max_tokens", None, 1, float("inf"), integer=True)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, float("inf"), integer=True)
    return ChatRequest(messages=checked, sampling=_sampling(body, defaults, defaults.max_tokens, max_tokens))


def parse_completion_request(body, model_name: str, defaults: Defaults, vocab_size: int) -> CompletionRequest:
    """Check a completions body; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_fields(body, COMPLETION_FIELDS, model_name)
    _choice(body, "logprobs", (None, False), "is not supported: this server does not return log probabilities")
    _choice(body, "suffix", (None, ""), "is not supported: this model only continues text")
    best_of = body.get("best_of")
    if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
        raise APIError(400, f"'best_of' must be 1, got {_show(best_of)}", "best_of")

    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required", "prompt")

    def token_list(value) -> bool:
        return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)

    if isinstance(prompt, str):
        prompts = [prompt]
    elif token_list(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or token_list(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise APIError(400, "'prompt' must be a string, a list of strings, a non-empty list of token ids, or a "
                       "list of such lists", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"'prompt' holds {len(prompts)} prompts; at most {MAX_PROMPTS} are accepted", "prompt")
    for p in prompts:
        if isinstance(p, list) and not all(0 <= t < vocab_size for t in p):
            raise APIError(400, f"token ids in 'prompt' must be in [0, {vocab_size})", "prompt")
    return CompletionRequest(prompts=prompts, echo=_flag(body, "echo"),
                             sampling=_sampling(body, defaults, defaults.completion_max_tokens))


# ----------------------------------------------------------------------------- prompt building

def completion_prompt(tokenizer, prompt) -> list:
    """Ids for a completions prompt: token ids as given, or </s> and the text, as pretraining documents start."""
    if isinstance(prompt, list):
        return list(prompt)
    return [tokenizer.eos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)


# ----------------------------------------------------------------------------- the app

class GenerationGate:
    """One generation at a time; at most `max_queue` requests wait behind it, further ones get a 503."""

    def __init__(self, max_queue: int):
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_queue + 1)

    def enter(self) -> None:
        """Take a place in the queue (without waiting); call wait() later to take the model."""
        if not self._slots.acquire(blocking=False):
            raise APIError(503, "the server is busy: too many requests are waiting; retry shortly",
                           code="server_busy", kind="server_error")

    def wait(self) -> None:
        self._lock.acquire()

    def leave(self, holding: bool) -> None:
        if holding:
            self._lock.release()
        self._slots.release()


class EventStream:
    """The body of a streaming response: iterates `events`, and releases the queue place it holds even
    when the server closes the response before reading a single event (the generator's own `finally`
    only runs once it has started)."""

    def __init__(self, events, release):
        self._events, self._release, self._started = events, release, False

    def __iter__(self):
        self._started = True
        return iter(self._events)

    def close(self) -> None:
        if self._started:
            self._events.close()
        else:
            self._release()


def is_loopback(host: str) -> bool:
    """A host name (no port) that only this machine can be: localhost or a loopback address."""
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name part of a Host header: "[::1]:8000" -> "::1", "localhost:8000" -> "localhost"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(model, tokenizer, model_name: str, defaults: Defaults = None, api_key: str = None,
               max_queue: int = 16, allowed_hosts=()) -> Flask:
    """The Flask app. Without api_key only loopback Host names (and `allowed_hosts`) are served."""
    from model.generate import context_length, stream_generate

    defaults = defaults or Defaults()
    gate = GenerationGate(max_queue)
    context = context_length(model.config)  # max_seq_len, stretched when RoPE scaling is configured
    vocab_size = model.config.vocab_size
    device = next(model.parameters()).device
    created = int(time.time())
    extra_hosts = {h.lower().rstrip(".").strip("[]") for h in allowed_hosts}
    app = Flask(__name__, static_folder=None)
    # One byte over the limit is read, so that a chunked body (no Content-Length) over it is seen: werkzeug
    # cuts such a body at the limit without an error.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    @app.errorhandler(APIError)
    def api_error(err: APIError):
        return jsonify(err.body()), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # 404, 405, 413 ... as JSON too, so clients can read them
        kind = "invalid_request_error" if err.code < 500 else "server_error"
        return jsonify(APIError(err.code, f"{err.name}: {err.description}", kind=kind).body()), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):  # a bug: logged with its traceback, answered in the same shape
        traceback.print_exc()
        return jsonify(APIError(500, f"internal error: {type(err).__name__}", kind="server_error").body()), 500

    def host_allowed(name: str) -> bool:
        return is_loopback(name) or name in extra_hosts

    @app.before_request
    def guard():
        if api_key is None:
            # A page in the user's browser may reach this port (by DNS rebinding, under its own name).
            name = host_name(request.headers.get("Host", ""))
            if not host_allowed(name):
                raise APIError(403, f"Host {_show(name)} is not served: without an API key this server answers "
                               "only loopback names (start it with --api_key, or --allow_host NAME)",
                               code="host_not_allowed")
            origin = request.headers.get("Origin")
            if origin is not None and not host_allowed(urlsplit(origin).hostname or ""):
                raise APIError(403, f"Origin {_show(origin)} is not served: without an API key this server "
                               "answers only pages on loopback names", code="origin_not_allowed")
        if not request.path.startswith("/v1/"):
            return None
        if api_key is not None:
            header = request.headers.get("Authorization", "")
            given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"), api_key.encode()):
                what = "Incorrect API key provided" if given else "Missing API key: send 'Authorization: Bearer KEY'"
                raise APIError(401, what, code="invalid_api_key")
        if request.method == "POST" and request.mimetype != "application/json":
            raise APIError(415, f"Content-Type must be application/json, got {_show(request.content_type or '')}",
                           code="unsupported_media_type")
        return None

    def read_body() -> dict:
        raw = request.get_data(cache=False)
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        return parse_body(raw)

    @app.get("/")
    def page():
        return send_from_directory(WEB_DIR, "index.html")

    @app.get("/chat.js")
    def page_script():
        return send_from_directory(WEB_DIR, "chat.js")

    @app.get("/v1/models")
    def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "minimind",
                "context_length": context}
        return jsonify({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    def chat_completions():
        req = parse_request(read_body(), model_name, defaults)
        gate.enter()  # the prompt is built inside the queue, so --max_queue bounds that work too
        try:
            prompt_ids, dropped = build_prompt(tokenizer, req.messages, prompt_budget(context, req.sampling.max_tokens))
        except ContextTooLong as error:
            gate.leave(False)
            raise APIError(400, str(error), "messages", "context_length_exceeded") from None
        except BaseException:
            gate.leave(False)
            raise
        if dropped:
            log(f"context: dropped the {dropped} oldest message(s) to fit {len(prompt_ids)} prompt tokens")
        headers = {"X-Dropped-Messages": str(dropped)}
        return respond("chat", req.sampling, [prompt_ids], headers)

    @app.post("/v1/completions")
    def completions():
        req = parse_completion_request(read_body(), model_name, defaults, vocab_size)
        room = prompt_budget(context, req.sampling.max_tokens)
        gate.enter()
        try:
            prompts = [completion_prompt(tokenizer, p) for p in req.prompts]
            for i, ids in enumerate(prompts):
                if len(ids) > room:
                    raise APIError(400, f"prompt {i} has {len(ids)} tokens, but this model leaves {room} for it "
                                   "(shorten it, or ask for fewer max_tokens)", "prompt", "context_length_exceeded")
        except BaseException:
            gate.leave(False)
            raise
        echoes = [p if isinstance(p, str) else tokenizer.decode(p) for p in req.prompts] if req.echo else None
        return respond("text", req.sampling, prompts, {}, echoes)

    def respond(kind: str, sampling: Sampling, prompts: list, headers: dict, echoes: list = None):
        """Generate for each prompt in turn (the caller holds a queue place); `kind` is "chat" or "text"."""
        prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
        completion_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        if sampling.stream:
            events = stream_events(kind, sampling, prompts, completion_id, echoes)
            headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            body = EventStream(events, lambda: gate.leave(False))
            return Response(body, mimetype="text/event-stream", headers=headers)
        holding, streams = False, []
        try:
            gate.wait()
            holding = True
            generator = seeded(sampling)
            choices = []
            for index, ids in enumerate(prompts):
                stream = start(sampling, ids, generator)
                streams.append(stream)
                text = "".join(stream)
                if kind == "chat":
                    choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                    "logprobs": None, "finish_reason": stream.finish_reason})
                else:
                    choices.append({"index": index, "text": (echoes[index] if echoes else "") + text,
                                    "logprobs": None, "finish_reason": stream.finish_reason})
        finally:
            gate.leave(holding)
        for stream in streams:
            log_done(completion_id, stream, f"finish={stream.finish_reason}")
        answer = {"id": completion_id, "object": obj, "created": int(time.time()), "model": model_name,
                  "choices": choices, "usage": usage(streams)}
        return jsonify(answer), 200, headers

    def seeded(sampling: Sampling):
        if sampling.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(sampling.seed)

    def start(sampling: Sampling, prompt_ids: list, generator):
        return stream_generate(
            model, tokenizer, prompt_ids, max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
            stop=sampling.stop, generator=generator,
        )

    def log_done(completion_id: str, stream, outcome: str) -> None:
        log(f"{completion_id}: {stream.prompt_tokens} prompt + {stream.completion_tokens} completion tokens, {outcome}")

    def usage(streams: list) -> dict:
        prompt = sum(s.prompt_tokens for s in streams)
        completion = sum(s.completion_tokens for s in streams)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def stream_events(kind: str, sampling: Sampling, prompts: list, completion_id: str, echoes: list = None):
        """Server-sent events in OpenAI's order. The server closes this generator when the client goes away,
        which lands in `finally` and stops the model at once."""
        stamp = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choices: list, **extra) -> str:
            chunk = {"id": completion_id, "object": obj, "created": stamp, "model": model_name,
                     "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        def delta(index: int, content: dict | str, finish_reason=None) -> list:
            if kind == "chat":
                return [{"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}]
            return [{"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}]

        holding, streams, stream = False, [], None
        outcome = "client disconnected, generation stopped"
        try:
            if kind == "chat":
                yield event(delta(0, {"role": "assistant", "content": ""}))
            gate.wait()
            holding = True
            generator = seeded(sampling)
            for index, ids in enumerate(prompts):
                stream = start(sampling, ids, generator)
                streams.append(stream)
                if echoes:
                    yield event(delta(index, echoes[index]))
                for text in stream:
                    yield event(delta(index, {"content": text} if kind == "chat" else text))
                yield event(delta(index, {} if kind == "chat" else "", stream.finish_reason))
            if sampling.include_usage:  # OpenAI's extra last chunk: no choices, just the counts
                yield event([], usage=usage(streams))
            outcome = "finish=" + ",".join(s.finish_reason for s in streams)
            yield "data: [DONE]\n\n"
        except Exception as err:  # noqa: BLE001 - reported to the client as an SSE error, then logged
            traceback.print_exc()
            outcome = f"failed: {err}"
            yield f"data: {json.dumps(APIError(500, f'generation failed: {err}', kind='server_error').body())}\n\n"
        finally:
            if stream is not None:
                stream.close()
            gate.leave(holding)
            for done in streams:
                log_done(completion_id, done, outcome)

    return app


# ----------------------------------------------------------------------------- serving

class Server:
    """The app on a listening socket: waitress by default, werkzeug's threaded server with dev=True.
    `port` is the bound port (useful with port 0); serve_forever() blocks until shutdown()."""

    def __init__(self, app, host: str, port: int, dev: bool = False, threads: int = 8, max_connections: int = 100,
                 timeout: int = 60):
        self.dev = dev
        if dev:
            from werkzeug.serving import make_server
            self._server = make_server(host, port, app, threaded=True)
            self.port = self._server.server_port
        else:
            from waitress.server import create_server
            self._server = create_server(
                app, host=host, port=port, threads=threads, connection_limit=max_connections,
                channel_timeout=timeout, cleanup_interval=max(1, min(30, timeout // 2)),
                # waitress answers 413 itself past this (plain text); between the two limits the app's
                # JSON 413 answers
                max_request_body_size=2 * MAX_BODY_BYTES, ident="minimind", expose_tracebacks=False)
            # one socket, or several when the host name resolves to more than one address (localhost)
            single = hasattr(self._server, "effective_port")
            self.port = self._server.effective_port if single else self._server.effective_listen[0][1]

    def serve_forever(self) -> None:
        if self.dev:
            self._server.serve_forever()
        else:
            self._server.run()

    def shutdown(self) -> None:
        if self.dev:
            self._server.shutdown()
        else:
            from waitress import wasyncore
            self._server.task_dispatcher.shutdown()
            wasyncore.close_all(getattr(self._server, "map", None) or self._server._map)


def resolve_api_key(args, environ=os.environ) -> str | None:
    """The key from --api_key, --api_key_file or $MINIMIND_API_KEY (in that order); None when none is set.
    Raises ValueError with a message for an unreadable or empty key file."""
    if args.api_key is not None:
        if not args.api_key:
            raise ValueError("--api_key is empty")
        return args.api_key
    if args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").strip().splitlines()
            key = lines[0].strip() if lines else ""
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--api_key_file {args.api_key_file}: cannot read it ({err})") from None
        if not key:
            raise ValueError(f"--api_key_file {args.api_key_file} holds no key")
        return key
    return environ.get(API_KEY_ENV) or None


def main():
    from model.cli import add_model_args, load_from_args, resolve_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default_weight="full_sft")  # --weight/--ckpt/--preset/--tokenizer/--device, as everywhere
    group = parser.add_argument_group("serving")
    group.add_argument("--host", default="127.0.0.1",
                       help="interface to bind; 0.0.0.0 exposes the server to the network")
    group.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--api_key", default=None,
                      help=f"require 'Authorization: Bearer KEY' on /v1 requests (visible in `ps`: prefer "
                           f"--api_key_file or ${API_KEY_ENV})")
    keys.add_argument("--api_key_file", default=None, help="read the key from this file (its first line)")
    group.add_argument("--allow_host", action="append", default=[], metavar="NAME",
                       help="without a key, also serve requests addressed to this host name (repeatable)")
    group.add_argument("--model_name", default=None, help="the id clients see (default: the checkpoint's name)")
    group.add_argument("--max_tokens", type=int, default=Defaults.max_tokens, help="default and cap for max_tokens")
    group.add_argument("--max_queue", type=int, default=16, help="requests allowed to wait for the model; more get 503")
    group.add_argument("--max_connections", type=int, default=100, help="open connections at most (waitress)")
    group.add_argument("--timeout", type=int, default=60,
                       help="seconds an idle or half-sent connection is kept (waitress)")
    group.add_argument("--dev", action="store_true",
                       help="serve with werkzeug's development server instead of waitress")
    group.add_argument("--temperature", type=float, default=Defaults.temperature,
                       help="default when a request omits it")
    group.add_argument("--top_p", type=float, default=Defaults.top_p, help="default when a request omits it")
    args = parser.parse_args()
    if args.max_tokens < 1 or args.max_queue < 0:
        parser.error("--max_tokens must be at least 1 and --max_queue at least 0")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port (0 to 65535; 0 picks a free one)")
    if args.max_connections < 1 or args.timeout < 1:
        parser.error("--max_connections and --timeout must be at least 1")
    if not (0 <= args.temperature <= 2 and 0 < args.top_p <= 1):
        parser.error("--temperature must be in [0, 2] and --top_p in (0, 1]")
    try:
        api_key = resolve_api_key(args)
    except ValueError as err:
        parser.error(str(err))

    path, adapter = resolve_checkpoint(args)
    model, tokenizer = load_from_args(args)
    served = adapter or path
    name = args.model_name or (served.name if served.is_dir() else served.stem)  # full_sft_512x8, lora_..._512x8
    defaults = Defaults(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    app = create_app(model, tokenizer, name, defaults, api_key=api_key, max_queue=args.max_queue,
                     allowed_hosts=args.allow_host)

    try:
        server = Server(app, args.host, args.port, dev=args.dev, threads=args.max_queue + 4,
                        max_connections=args.max_connections, timeout=args.timeout)
    except OSError as err:
        sys.exit(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}")
    if not is_loopback(args.host) and api_key is None:
        print(f"warning: listening on {args.host} without an API key: only requests addressed to localhost"
              f"{' or ' + ', '.join(args.allow_host) if args.allow_host else ''} are served, and anyone who can "
              "reach this port under such a name can use the model", file=sys.stderr)
    how = "werkzeug development server" if args.dev else "waitress"
    print(f"serving {name} on http://{args.host}:{server.port}  ({how}, Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    main()
