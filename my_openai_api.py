"""Serve a MiniMind checkpoint behind an OpenAI-compatible HTTP API, plus a chat page at `/`.

    python my_openai_api.py                             # out/full_sft_512x8.pth on http://127.0.0.1:8000
    python my_openai_api.py --weight dpo --preset moe   # out/dpo_640x8_moe.pth
    python my_openai_api.py --weight pretrain           # a pretrained model: use /v1/completions
    python my_openai_api.py --weight lora_medical       # full_sft + the adapter in out/lora_medical_512x8/
    python my_openai_api.py --ckpt out/hf/full_sft_512x8   # an export_model.py folder
    MINIMIND_API_KEY=s3cret python my_openai_api.py --host 0.0.0.0   # reachable from the network, with a key
    python my_openai_api.py --api_key_file ~/.minimind_key --port 8001

Then open http://127.0.0.1:8000 in a browser, run `python chat_openai_api.py` (`--tools` for the
calculator), or point any OpenAI client at http://127.0.0.1:8000/v1.

Endpoints
    GET  /                     the chat page (web/index.html + web/chat.js)
    GET  /v1/models            the one model this server holds
    POST /v1/chat/completions  OpenAI chat completions, tools included; `"stream": true` answers with
                               server-sent events: a role chunk, deltas, a chunk carrying finish_reason, [DONE]
    POST /v1/completions       OpenAI (legacy) completions: plain text continuation, the way a pretrained
                               model is used; same streaming shape with `text` deltas
    GET  /v1/tools             the tools the server can run itself (the calculator)
    POST /v1/tools/run         {"name", "arguments"} -> {"content": result}: the page's calculator

Request fields, both endpoints: stream, stream_options.include_usage, temperature, top_p, max_tokens,
stop (a string or up to 4), seed, n (only 1), model (must name the served model if given),
presence_penalty and frequency_penalty (OpenAI's, in [-2, 2], counted over the generated tokens), user
(accepted, not used), logit_bias (only empty), and two extras OpenAI lacks: top_k and repetition_penalty.
  * chat: messages (system/developer/user/assistant/tool; string content or a list of text parts; `name`
    accepted and not shown to the model; developer is read as system; an assistant turn may carry
    tool_calls and null content, a tool turn answers one of them by tool_call_id), max_completion_tokens,
    logprobs (only false), top_logprobs (only null), response_format (only {"type": "text"}), tools,
    tool_choice and parallel_tool_calls (below).
  * completions: prompt (a string, a list of strings, a list of token ids or a list of lists of them; each
    prompt gets its own choice, by index), echo, best_of (only 1), suffix (only empty), logprobs (only
    null). A text prompt is read as the pretraining text was: `</s>` first, then the text, in which
    `<s>`/`</s>` are the special tokens. Token-id prompts are used as they are. max_tokens defaults to 16,
    as OpenAI's does.
Any other field, a wrong type, a number that is not finite or out of range, JSON that does not parse
(or nests deeper than 32 levels, or an integer longer than 40 digits) and a string holding a lone UTF-16
surrogate are answered with a 400 in OpenAI's error format {"error": {"message", "type", "param",
"code"}}, naming the field. Every error the app gives has that shape (waitress itself answers malformed
HTTP, and bodies over 2 MiB, in plain text).

Tools: `tools` is a list of {"type": "function", "function": {"name", "description"?, "parameters"?}}; they
are written into the system turn, and a reply holding well-formed <tool_call> blocks of offered tools
comes back as message.tool_calls (ids call_..., arguments as a JSON string), the text around them as
content (null when there is none), finish_reason "tool_calls"; a stream holds a call's text back until
its block closes, then sends it as one tool_calls delta. A block calling a tool that was not offered, or
not well-formed, is content. tool_choice: "auto" (the default), "none" (the tools are not shown to the
model), "required" (the reply is started with `<tool_call>`) or {"type": "function", "function": {"name"}}
(the reply is started with that call's name, for the model to write its arguments); if the model still
writes no valid call, the reply is content with finish_reason "stop" or "length". parallel_tool_calls
false: only the first call counts.

Policies, stated once here (the access rule: serving/access.py; the connection and shutdown rules:
serving/server.py):
  * max_tokens is capped at --max_new_tokens (also the chat default when a request omits it).
  * A temperature below 1e-5 decodes greedily, like 0; a top_p below 1e-6 keeps only the most likely token.
  * At most 1000 messages per chat request and a 1 MiB body (413 beyond, chunked bodies included).
  * Context: model/chat.py's policy, the one the terminal chat and C-Eval use too. The prompt may use the
    model's context minus the room kept for the reply (max_tokens, but at most half the window). A longer
    conversation loses its oldest turns first; system messages (with the tools) and the last message are
    always kept. If they alone do not fit, the request gets a 400 with code context_length_exceeded, as
    does a completions prompt longer than the room. Dropped turns are logged and counted in the
    X-Dropped-Messages response header. A reply longer than the room left slides the model's window.
  * Text in a chat message that looks like a turn marker (<s>, </s>) is encoded as plain text.
  * One generation runs at a time: concurrent requests wait their turn, and more than --max_queue waiting
    requests get a 503. A request takes its place before its prompt is built, so the queue bounds that too.
  * A streaming client that disconnects stops its generation at the next token.
  * When every one of --max_connections is taken and another client connects, the longest-idle
    connection is closed to let it in, so no client can starve the others by holding sockets open.
  * SIGTERM drains: no new connections, in-flight requests finish (streams still generating after
    --drain_timeout seconds end with a final chunk, finish_reason "length", and [DONE]), each request is
    logged, and the process exits 0. Ctrl-C stops at once.

It serves through waitress: idle and half-sent connections time out after --timeout seconds. `--dev`
serves through werkzeug's threaded server instead. It binds 127.0.0.1 unless --host says otherwise and
makes no outbound connection.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: set before torch loads
import argparse
import signal
import sys

from model.cli import add_model_args, load_from_args, resolve_checkpoint
from model.errors import MiniMindError, run_main
from serving.access import API_KEY_ENV, is_loopback, resolve_api_key
from serving.app import QUEUE_KEY, create_app
from serving.protocol import Defaults
from serving.server import Server


def build_parser() -> argparse.ArgumentParser:
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
    group.add_argument("--max_new_tokens", type=int, default=Defaults.max_tokens,
                       help="tokens a reply may have: the default and the cap for a request's max_tokens")
    group.add_argument("--max_queue", type=int, default=16, help="requests allowed to wait for the model; more get 503")
    group.add_argument("--max_connections", type=int, default=100,
                       help="open connections at most; when all are taken the longest-idle one makes room")
    group.add_argument("--timeout", type=int, default=60,
                       help="seconds an idle or half-sent connection is kept (waitress)")
    group.add_argument("--drain_timeout", type=float, default=30.0,
                       help="on SIGTERM, seconds in-flight requests get to finish before their replies are cut")
    group.add_argument("--dev", action="store_true",
                       help="serve with werkzeug's development server instead of waitress")
    group.add_argument("--temperature", type=float, default=Defaults.temperature,
                       help="default when a request omits it")
    group.add_argument("--top_p", type=float, default=Defaults.top_p, help="default when a request omits it")
    return parser


def parse_args(argv=None):
    """The flags, checked; a bad one ends the script with argparse's one-line usage error (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.max_queue < 0:
        parser.error("--max_new_tokens must be at least 1 and --max_queue at least 0")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port (0 to 65535; 0 picks a free one)")
    if args.max_connections < 1 or args.timeout < 1 or not args.drain_timeout >= 0:
        parser.error("--max_connections and --timeout must be at least 1, --drain_timeout at least 0")
    if not (0 <= args.temperature <= 2 and 0 < args.top_p <= 1):
        parser.error("--temperature must be in [0, 2] and --top_p in (0, 1]")
    try:
        args.key = resolve_api_key(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def main():
    args = parse_args()
    path, adapter = resolve_checkpoint(args)
    model, tokenizer = load_from_args(args)
    served = adapter or path
    name = args.model_name or (served.name if served.is_dir() else served.stem)  # full_sft_512x8, lora_..._512x8
    defaults = Defaults(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens)
    app = create_app(model, tokenizer, name, defaults, api_key=args.key, max_queue=args.max_queue,
                     allowed_hosts=args.allow_host)
    try:
        server = Server(app, args.host, args.port, dev=args.dev, threads=args.max_queue + 4,
                        max_connections=args.max_connections, timeout=args.timeout)
    except OSError as err:
        raise MiniMindError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    if not is_loopback(args.host) and args.key is None:
        print(f"warning: listening on {args.host} without an API key: only requests addressed to localhost"
              f"{' or ' + ', '.join(args.allow_host) if args.allow_host else ''} are served, and anyone who can "
              "reach this port under such a name can use the model", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: server.drain(app.extensions[QUEUE_KEY], args.drain_timeout))
    how = "werkzeug development server" if args.dev else "waitress"
    print(f"serving {name} on http://{args.host}:{server.port}  ({how}, Ctrl-C stops, SIGTERM drains)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)


if __name__ == "__main__":
    run_main(main)
