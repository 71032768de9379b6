"""Serve a MiniMind checkpoint behind an OpenAI-compatible HTTP API, plus a chat page at `/`.

    python my_openai_api.py                             # out/full_sft_512.pth on http://127.0.0.1:8000
    python my_openai_api.py --weight dpo --preset moe   # out/dpo_640_moe.pth
    python my_openai_api.py --weight lora_medical       # full_sft + the adapter in out/lora_medical_512/
    python my_openai_api.py --ckpt out/hf/full_sft_512  # an export_model.py folder
    python my_openai_api.py --api_key s3cret --port 8001

Then open http://127.0.0.1:8000 in a browser, run `python chat_openai_api.py`, or point any OpenAI
client at http://127.0.0.1:8000/v1.

Endpoints
    GET  /                     the chat page (web/index.html + web/chat.js)
    GET  /v1/models            the one model this server holds
    POST /v1/chat/completions  OpenAI chat completions; `"stream": true` answers with server-sent events:
                               a role chunk, content deltas, a chunk carrying finish_reason, then [DONE]

Request fields: messages (system/user/assistant, string content or a list of text parts), stream,
stream_options.include_usage, temperature, top_p, max_tokens (or max_completion_tokens), stop (a
string or up to 4), seed, n (only 1), model (must name the served model if given), and two extras
OpenAI lacks: top_k and repetition_penalty. Any other field, a wrong type or an out-of-range value is
answered with a 400 in OpenAI's error format, naming the field.

Policies, stated once here:
  * max_tokens is capped at --max_tokens (also the default when a request omits it).
  * Context: the prompt may use the model's context (max_seq_len, stretched when RoPE scaling is on)
    minus the room kept for the reply (max_tokens, but at most half the window). A longer conversation loses its oldest turns first;
    system messages and the last message are always kept. If those alone do not fit, the request
    gets a 400 with code context_length_exceeded. Dropped turns are logged and counted in the
    X-Dropped-Messages response header. A reply longer than the room left slides the model's window.
  * Text in a message that looks like a turn marker (<s>, </s>) is encoded as plain text, so a
    message cannot forge a turn of another role.
  * One generation runs at a time (a lock): concurrent requests wait their turn, so outputs never
    interleave, and more than --max_queue waiting requests get a 503.
  * A streaming client that disconnects stops its generation at the next token (the server notices
    when writing to the closed socket). A non-streaming request runs to its max_tokens or stop.
  * With --api_key, every /v1 request needs `Authorization: Bearer KEY` (401 otherwise); the page
    itself loads without it and asks for the key, which stays in the browser.

It runs on werkzeug's threaded HTTP server (the one behind `flask run`), which is enough for a lab
or a demo. It binds 127.0.0.1 unless --host says otherwise and makes no outbound connection.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import hmac
import json
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P

WEB_DIR = Path(__file__).resolve().parent / "web"
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
REQUEST_FIELDS = {
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "seed", "n", "repetition_penalty",
}


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


@dataclass
class ChatRequest:
    messages: list
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_tokens: int
    stop: list
    seed: int | None


# ----------------------------------------------------------------------------- request checking

def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    """Read a numeric field; bool is rejected although Python counts it as an int."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(value)}", name)
    if value < low or value > high or (low_open and value == low):
        span = f"{'(' if low_open else '['}{low}, {high if high != float('inf') else 'inf'}]"
        raise APIError(400, f"'{name}' must be in {span}, got {value}", name)
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


def parse_request(body, model_name: str, defaults: Defaults) -> ChatRequest:
    """Check a decoded JSON body field by field; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    if body.get("model") not in (None, model_name):
        raise APIError(404, f"The model '{body['model']}' does not exist; this server serves '{model_name}'",
                       "model", "model_not_found")

    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "'messages' is required", "messages")
    if not isinstance(messages, list):
        raise APIError(400, "'messages' must be a list of {role, content} objects", "messages")
    if not messages:
        raise APIError(400, "'messages' must not be empty", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise APIError(400, f"messages[{i}] has unsupported field(s): {', '.join(extra)}", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
                           f"messages[{i}].role")
        checked.append({"role": role, "content": _content(message, i)})

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
        valid = isinstance(options, dict) and set(options) <= {"include_usage"}
        include_usage = options.get("include_usage", False) if valid else None
        if not isinstance(include_usage, bool):
            raise APIError(400, "'stream_options' must be {\"include_usage\": true|false}", "stream_options")

    _number(body, "n", 1, 1, 1, integer=True)  # one choice per request
    max_tokens = _number(body, "max_tokens", None, 1, float("inf"), integer=True)
    max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, float("inf"), integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} "
                       "non-empty strings", "stop")

    return ChatRequest(
        messages=checked,
        stream=stream,
        include_usage=include_usage,
        temperature=_number(body, "temperature", defaults.temperature, 0, 2),
        top_p=_number(body, "top_p", defaults.top_p, 0, 1, low_open=True),
        top_k=_number(body, "top_k", defaults.top_k, 0, float("inf"), integer=True),
        repetition_penalty=_number(body, "repetition_penalty", defaults.repetition_penalty, 0, 10, low_open=True),
        max_tokens=min(max_tokens or defaults.max_tokens, defaults.max_tokens),
        stop=stop,
        seed=_number(body, "seed", None, -2**63, 2**64 - 1, integer=True),  # what torch's generator takes
    )


# ----------------------------------------------------------------------------- prompt building

def build_prompt(tokenizer, messages: list, max_prompt_tokens: int) -> tuple[list, int]:
    """Token ids of the conversation plus the assistant header, dropping the oldest turns to fit.

    Returns (ids, number of messages dropped). System messages and the last message stay; a turn is
    dropped whole, so the kept history never starts with an orphan assistant reply. Special-token text
    typed by a user (say "</s>") is encoded as plain text, so a message cannot forge a turn boundary."""
    def encode(kept):
        return tokenizer.apply_chat_template(kept, add_generation_prompt=True, tokenize=True, return_dict=False,
                                             sanitize_control_tokens=True)

    kept = list(messages)
    ids = encode(kept)
    while len(ids) > max_prompt_tokens:
        # the oldest droppable message: not a system message, not the last message
        oldest = next((i for i, m in enumerate(kept[:-1]) if m["role"] != "system"), None)
        if oldest is None:
            raise APIError(400, f"the prompt needs {len(ids)} tokens even after dropping all older turns, but this "
                           f"model leaves {max_prompt_tokens} for it; shorten the system or last message "
                           "(or ask for fewer max_tokens)", "messages", "context_length_exceeded")
        del kept[oldest]
        # a turn is a user message and the replies after it: keep dropping until the next user message
        while oldest < len(kept) - 1 and kept[oldest]["role"] == "assistant":
            del kept[oldest]
        ids = encode(kept)
    return ids, len(messages) - len(kept)


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


def create_app(model, tokenizer, model_name: str, defaults: Defaults = None, api_key: str = None,
               max_queue: int = 16) -> Flask:
    from model.generate import context_length, stream_generate

    defaults = defaults or Defaults()
    gate = GenerationGate(max_queue)
    context = context_length(model.config)  # max_seq_len, stretched when RoPE scaling is configured
    device = next(model.parameters()).device
    created = int(time.time())
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20  # a chat request is text; 1 MiB is plenty

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    @app.errorhandler(APIError)
    def api_error(err: APIError):
        return jsonify(err.body()), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # 404, 405, 413 ... as JSON too, so clients can read them
        kind = "invalid_request_error" if err.code < 500 else "server_error"
        return jsonify(APIError(err.code, f"{err.name}: {err.description}", kind=kind).body()), err.code

    @app.before_request
    def check_key():
        if api_key is None or not request.path.startswith("/v1/"):
            return None
        header = request.headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            what = "Incorrect API key provided" if given else "Missing API key: send 'Authorization: Bearer KEY'"
            raise APIError(401, what, code="invalid_api_key")
        return None

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
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON: {err}") from None
        req = parse_request(body, model_name, defaults)
        room_for_reply = min(req.max_tokens, context // 2)
        prompt_ids, dropped = build_prompt(tokenizer, req.messages, context - room_for_reply)
        if dropped:
            log(f"context: dropped the {dropped} oldest message(s) to fit {len(prompt_ids)} prompt tokens")
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        headers = {"X-Dropped-Messages": str(dropped)}
        gate.enter()
        if req.stream:
            events = stream_events(req, prompt_ids, completion_id)
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return Response(events, mimetype="text/event-stream", headers=headers)
        holding = False
        try:
            gate.wait()
            holding = True
            stream = start(req, prompt_ids)
            text = "".join(stream)
        finally:
            gate.leave(holding)
        log_done(completion_id, stream, f"finish={stream.finish_reason}")
        answer = {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": stream.finish_reason}],
            "usage": usage(stream),
        }
        return jsonify(answer), 200, headers

    def start(req: ChatRequest, prompt_ids: list):
        generator = None
        if req.seed is not None:
            generator = torch.Generator(device=device).manual_seed(req.seed)
        return stream_generate(
            model, tokenizer, prompt_ids, max_new_tokens=req.max_tokens, temperature=req.temperature,
            top_k=req.top_k, top_p=req.top_p, repetition_penalty=req.repetition_penalty, stop=req.stop,
            generator=generator,
        )

    def log_done(completion_id: str, stream, outcome: str) -> None:
        log(f"{completion_id}: {stream.prompt_tokens} prompt + {stream.completion_tokens} completion tokens, {outcome}")

    def usage(stream) -> dict:
        return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
                "total_tokens": stream.prompt_tokens + stream.completion_tokens}

    def stream_events(req: ChatRequest, prompt_ids: list, completion_id: str):
        """Server-sent events in OpenAI's order. werkzeug closes this generator when the client goes away,
        which lands in `finally` and stops the model at once."""
        stamp = int(time.time())

        def event(choices: list, **extra) -> str:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": stamp, "model": model_name,
                     "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        def delta(content: dict, finish_reason=None) -> list:
            return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}]

        holding, stream, outcome = False, None, "client disconnected, generation stopped"
        try:
            yield event(delta({"role": "assistant", "content": ""}))
            gate.wait()
            holding = True
            stream = start(req, prompt_ids)
            for text in stream:
                yield event(delta({"content": text}))
            yield event(delta({}, stream.finish_reason))
            if req.include_usage:  # OpenAI's extra last chunk: no choices, just the counts
                yield event([], usage=usage(stream))
            outcome = f"finish={stream.finish_reason}"
            yield "data: [DONE]\n\n"
        except Exception as err:  # noqa: BLE001 - reported to the client as an SSE error, then logged
            traceback.print_exc()
            outcome = f"failed: {err}"
            yield f"data: {json.dumps(APIError(500, f'generation failed: {err}', kind='server_error').body())}\n\n"
        finally:
            if stream is not None:
                stream.close()
            gate.leave(holding)
            if stream is not None:
                log_done(completion_id, stream, outcome)

    return app


# ----------------------------------------------------------------------------- command line

def main():
    from werkzeug.serving import make_server

    from model.cli import add_model_args, load_from_args, resolve_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default_weight="full_sft")  # --weight/--ckpt/--preset/--tokenizer/--device, as everywhere
    group = parser.add_argument_group("serving")
    group.add_argument("--host", default="127.0.0.1",
                       help="interface to bind; 0.0.0.0 exposes the server to the network")
    group.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    group.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    group.add_argument("--model_name", default=None, help="the id clients see (default: the checkpoint's name)")
    group.add_argument("--max_tokens", type=int, default=Defaults.max_tokens, help="default and cap for max_tokens")
    group.add_argument("--max_queue", type=int, default=16, help="requests allowed to wait for the model; more get 503")
    group.add_argument("--temperature", type=float, default=Defaults.temperature,
                       help="default when a request omits it")
    group.add_argument("--top_p", type=float, default=Defaults.top_p, help="default when a request omits it")
    args = parser.parse_args()
    if args.max_tokens < 1 or args.max_queue < 0:
        parser.error("--max_tokens must be at least 1 and --max_queue at least 0")

    path, adapter = resolve_checkpoint(args)
    model, tokenizer = load_from_args(args)
    served = adapter or path
    name = args.model_name or (served.name if served.is_dir() else served.stem)  # full_sft_512, lora_medical_512
    defaults = Defaults(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    app = create_app(model, tokenizer, name, defaults, api_key=args.api_key, max_queue=args.max_queue)

    server = make_server(args.host, args.port, app, threaded=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"warning: listening on {args.host} without --api_key: anyone who can reach this port can use the model",
              file=sys.stderr)
    print(f"serving {name} on http://{args.host}:{server.server_port}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    main()
