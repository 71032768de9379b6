"""The OpenAI protocol as plain functions, with no web framework in them: reading a request body, checking
the fields both endpoints share, the error shape, and the response and stream-chunk builders.

Every way a request can be wrong is an APIError, answered as OpenAI answers:
{"error": {"message", "type", "param", "code"}}, `param` naming the field. The chat request's own fields
(messages, tools, tool_choice) are read in serving/messages.py, on top of the helpers here.
"""
import json
import math
import time
import uuid
from dataclasses import dataclass

from model.generate import CHAT_TEMPERATURE, CHAT_TOP_P

MAX_STOP_STRINGS = 4
MAX_PROMPTS = 16  # prompts in one completions request, generated one after another
MAX_BODY_BYTES = 1 << 20  # a request is text; 1 MiB is plenty
MAX_DEPTH = 32  # JSON nesting: a chat request with tool schemas needs about 10 levels
MAX_INT_DIGITS = 40  # a seed needs 20
MIN_TEMPERATURE = 1e-5  # below it, sampling is greedy (logits / temperature would overflow float32)
MIN_TOP_P = 1e-6  # below 1/vocab every top_p keeps the single most likely token; float32 cannot hold 1e-300

COMMON_FIELDS = {
    "model", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "n",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "user", "logit_bias",
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
    max_tokens: int = 512  # also the cap (the script's --max_new_tokens)
    completion_max_tokens: int = 16  # /v1/completions' default when a request omits max_tokens, as OpenAI's
    chat_max_tokens: int | None = None  # /v1/chat/completions' default (None: max_tokens); create_app sets it


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
class CompletionRequest:
    prompts: list  # each a str or a list of token ids
    echo: bool
    sampling: Sampling


# ----------------------------------------------------------------------------- reading the body

def show(value, limit: int = 60) -> str:
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


def encodable(text: str) -> bool:
    """Whether `text` is real text: a lone UTF-16 surrogate is valid in JSON but cannot be encoded."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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
                if has_surrogate and not encodable(key):
                    raise APIError(400, "a field name holds a lone UTF-16 surrogate, which is not text", path or None)
                pending.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif has_surrogate and isinstance(value, str) and not encodable(value):
            raise APIError(400, f"{path or 'the body'} holds a lone UTF-16 surrogate (such as \\ud800), "
                           "which is not text", path or None)


def parse_json(text: str):
    """JSON text as a value, with the body's limits (no NaN, no 1e400, no 5000-digit integers, no deep
    nesting, no lone surrogates); every way it can fail is an APIError(400)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except json.JSONDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # what int() and float() refuse
        raise APIError(400, f"the request body holds a number that cannot be read: {err}") from None
    _check_structure(value)
    return value


def parse_body(raw: bytes):
    """Decode a request body; every way it can fail is an APIError(400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not valid UTF-8: {err}") from None
    if not text.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    body = parse_json(text)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


# ----------------------------------------------------------------------------- field readers

def number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    """Read a numeric field; bool is rejected although Python counts it as an int."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {what}, got {show(value)}", name)
    if not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number, got {value}", name)
    if value < low or value > high or (low_open and value == low):
        span = f"{'(' if low_open else '['}{low}, {high if high != float('inf') else 'inf'}]"
        raise APIError(400, f"'{name}' must be in {span}, got {show(value)}", name)
    return value


def choice(body: dict, name: str, allowed: tuple, why: str):
    """A field accepted only with the listed values (what this server can honour)."""
    value = body.get(name)
    if any(value == a and type(value) is type(a) for a in allowed):
        return value
    raise APIError(400, f"'{name}' {why}, got {show(value)}", name)


def flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false", name)
    return value


def check_fields(body: dict, allowed: set, model_name: str) -> None:
    """Unknown fields, the model name, `user` and `logit_bias`: the checks both endpoints make first."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", "model")
    if model not in (None, model_name):
        raise APIError(404, f"The model {show(model)} does not exist; this server serves '{model_name}'",
                       "model", "model_not_found")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(400, "'user' must be a string", "user")
    if body.get("logit_bias") not in (None, {}):
        raise APIError(400, "'logit_bias' is not supported (only an empty object)", "logit_bias")


def _stream_options(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
    valid = isinstance(options, dict) and set(options) <= {"include_usage"}
    include_usage = options.get("include_usage", False) if valid else None
    if not isinstance(include_usage, bool):
        raise APIError(400, "'stream_options' must be {\"include_usage\": true|false}", "stream_options")
    return include_usage


def sampling(body: dict, defaults: Defaults, default_max_tokens: int, max_tokens=None) -> Sampling:
    """The fields both endpoints share; max_tokens, when given, was read by the caller."""
    stream = flag(body, "stream")
    include_usage = _stream_options(body, stream)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise APIError(400, f"'n' must be 1: this server returns one choice per request, got {show(n)}", "n")
    if max_tokens is None:
        max_tokens = number(body, "max_tokens", None, 1, float("inf"), integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} "
                       "non-empty strings", "stop")

    temperature = number(body, "temperature", defaults.temperature, 0, 2)
    top_p = number(body, "top_p", defaults.top_p, 0, 1, low_open=True)
    return Sampling(
        stream=stream,
        include_usage=include_usage,
        temperature=0.0 if temperature < MIN_TEMPERATURE else float(temperature),
        top_p=max(float(top_p), MIN_TOP_P),
        top_k=number(body, "top_k", defaults.top_k, 0, float("inf"), integer=True),
        repetition_penalty=float(number(body, "repetition_penalty", defaults.repetition_penalty, 0.01, 10)),
        presence_penalty=float(number(body, "presence_penalty", 0.0, -2, 2)),
        frequency_penalty=float(number(body, "frequency_penalty", 0.0, -2, 2)),
        max_tokens=min(max_tokens or default_max_tokens, defaults.max_tokens),
        stop=stop,
        seed=number(body, "seed", None, -2**63, 2**64 - 1, integer=True),  # what torch's generator takes
    )


def _prompts(body: dict, vocab_size: int) -> list:
    """The completions prompt as a list of prompts, each a string or a list of token ids."""
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required", "prompt")

    def token_list(value) -> bool:
        return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)

    if isinstance(prompt, str) or token_list(prompt):
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
    return prompts


def parse_completion_request(body, model_name: str, defaults: Defaults, vocab_size: int) -> CompletionRequest:
    """Check a completions body; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    check_fields(body, COMPLETION_FIELDS, model_name)
    choice(body, "logprobs", (None, False), "is not supported: this server does not return log probabilities")
    choice(body, "suffix", (None, ""), "is not supported: this model only continues text")
    best_of = body.get("best_of")
    if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
        raise APIError(400, f"'best_of' must be 1, got {show(best_of)}", "best_of")
    prompts = _prompts(body, vocab_size)
    return CompletionRequest(prompts=prompts, echo=flag(body, "echo"),
                             sampling=sampling(body, defaults, defaults.completion_max_tokens))


def completion_prompt(tokenizer, prompt) -> list:
    """Ids for a completions prompt: token ids as given, or </s> and the text, as pretraining documents start."""
    if isinstance(prompt, list):
        return list(prompt)
    return [tokenizer.eos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)


# ----------------------------------------------------------------------------- what the server sends

def new_id(kind: str) -> str:
    """A response id in OpenAI's form: chatcmpl-..., cmpl-..., call_..."""
    prefix = {"chat": "chatcmpl-", "text": "cmpl-", "call": "call_"}[kind]
    return prefix + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_choice(index: int, content, finish_reason: str, tool_calls: list = None) -> dict:
    """One choice of a chat completion; `tool_calls` (OpenAI's shape) only when the model called tools."""
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def text_choice(index: int, text: str, finish_reason: str) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def completion(kind: str, completion_id: str, model_name: str, choices: list, counts: dict) -> dict:
    """A whole (non-streamed) answer; `kind` is "chat" or "text"."""
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": completion_id, "object": obj, "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": counts}


def chunk(kind: str, completion_id: str, model_name: str, created: int, choices: list, **extra) -> str:
    """One server-sent event of a stream: `data: {chunk}` and the blank line that ends it."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    body = {"id": completion_id, "object": obj, "created": created, "model": model_name, "choices": choices,
            **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def delta_choice(kind: str, index: int, delta, finish_reason: str = None) -> list:
    """The choices of one stream chunk: a chat `delta` (a dict) or a completions `text` (a string)."""
    if kind == "chat":
        return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return [{"index": index, "text": delta, "logprobs": None, "finish_reason": finish_reason}]


DONE = "data: [DONE]\n\n"


def error_event(err: APIError) -> str:
    """An error in the middle of a stream, in the shape OpenAI's clients read there."""
    return f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
