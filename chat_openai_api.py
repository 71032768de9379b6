"""Chat in the terminal with a model behind an OpenAI-compatible server, through the official `openai` package.

    python my_openai_api.py &                  # in another terminal: the server
    python chat_openai_api.py                  # multi-turn, streaming, history kept
    python chat_openai_api.py --tools          # offer the calculator; its calls are run here and answered
    python chat_openai_api.py --history 0 --temperature 0 --system "你是一个乐于助人的助手。"
    MINIMIND_API_KEY=s3cret python chat_openai_api.py --base_url http://127.0.0.1:8001/v1

Type a message and press Enter. `/new` forgets the conversation, `/exit` or Ctrl-D quits, and Ctrl-C
stops the reply being printed (at the prompt, it quits). Any OpenAI-compatible server
works: the model id defaults to the first one the server lists.

With --tools the request offers tooluse.calculator's CALCULATOR. When a reply calls it, each call and its
result are printed, the result goes back as a `tool` message and the model is asked again, up to
--max_tool_rounds times for one message, the loop every OpenAI tool client runs.
"""
import argparse
import json
import os
import sys
import time

import openai

from tooluse.calculator import CALCULATOR, run_tool


def read_stream(stream) -> tuple[str, dict, object, str]:
    """Print a reply's content as it streams; return (content, tool calls by index, usage, finish_reason).
    Tool calls arrive as deltas keyed by index: the id, name and the pieces of the arguments string."""
    reply, calls, usage, finish = "", {}, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        if delta.content:
            reply += delta.content
            print(delta.content, end="", flush=True)
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            entry["id"] = call.id or entry["id"]
            if call.function:
                entry["function"]["name"] += call.function.name or ""
                entry["function"]["arguments"] += call.function.arguments or ""
    return reply, calls, usage, finish


def ask(client, args, messages) -> dict | None:
    """Stream one reply to stdout; return it as an assistant message (with tool_calls when the model
    called tools), or None when the server refused the request."""
    started = time.perf_counter()
    reply, calls, usage, finish = "", {}, None, None
    extra = {"tools": [CALCULATOR]} if args.tools else {}
    try:
        stream = client.chat.completions.create(
            model=args.model, messages=messages, stream=True, stream_options={"include_usage": True},
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens, **extra,
        )
        with stream:
            reply, calls, usage, finish = read_stream(stream)
    except KeyboardInterrupt:  # closing the stream tells the server to stop generating
        finish = "interrupted"
    except openai.APIStatusError as err:
        print(f"\n[server error {err.status_code}: {error_message(err)}]")
        return None
    except openai.APIError as err:  # connection refused, timeouts, a broken stream
        print(f"\n[request failed: {err}]")
        return None
    seconds = time.perf_counter() - started
    counts = ""
    if usage:
        counts = (f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
                  f"{usage.completion_tokens / seconds:.1f} tokens/s, ")
    print(f"\n[{counts}finish: {finish}]")
    message = {"role": "assistant", "content": reply or (None if calls else "")}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


def run_calls(message: dict) -> list:
    """Run each tool call of an assistant message; print it and its result; return the tool messages."""
    answers = []
    for call in message.get("tool_calls", []):
        name, text = call["function"]["name"], call["function"]["arguments"]
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = None  # run_tool answers with an 错误： string
        result = run_tool(name, arguments)
        print(f"[tool call {name}({text}) -> {result}]")
        answers.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return answers


def recent(turns: list, history: int) -> list:
    """The earlier turns sent along with a new message: all (history -1), none (0) or the last `history`."""
    if history < 0:
        return turns
    return turns[max(0, len(turns) - history):]


def error_message(err: openai.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    return body.get("message") or body.get("error", {}).get("message") or str(err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_url", default="http://127.0.0.1:8000/v1")
    key = os.environ.get("MINIMIND_API_KEY") or os.environ.get("OPENAI_API_KEY", "none")
    parser.add_argument("--api_key", default=key,
                        help="sent as a Bearer token (default $MINIMIND_API_KEY, the variable the server reads, "
                             "else $OPENAI_API_KEY); only needed when the server has a key")
    parser.add_argument("--model", default=None, help="model id (default: the first one the server lists)")
    parser.add_argument("--system", default=None, help="a system message put before the conversation")
    parser.add_argument("--history", type=int, default=-1,
                        help="earlier turns sent with each message: -1 all, 0 none (single-turn)")
    parser.add_argument("--temperature", type=float, default=0.85)
    parser.add_argument("--top_p", type=float, default=0.85)
    parser.add_argument("--max_new_tokens", type=int, default=512, help="sent as the request's max_tokens")
    parser.add_argument("--tools", action="store_true", help="offer the calculator and run the calls it gets")
    parser.add_argument("--max_tool_rounds", type=int, default=3,
                        help="with --tools, times the model may call tools for one message")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    if args.model is None:
        try:
            args.model = client.models.list().data[0].id
        except openai.APIStatusError as err:
            sys.exit(f"{args.base_url}: server error {err.status_code}: {error_message(err)}")
        except openai.APIError as err:
            sys.exit(f"cannot reach {args.base_url} ({err}): is `python my_openai_api.py` running?")
    print(f"chatting with {args.model} at {args.base_url}  (/new forgets, /exit quits"
          f"{'; the calculator is offered' if args.tools else ''})")

    turns = []  # each turn: the user's message and every message that answered it
    while True:
        try:
            text = input("\n👶: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/new":
            turns.clear()
            print("[new conversation]")
            continue
        system = [{"role": "system", "content": args.system}] if args.system else []
        turn = [{"role": "user", "content": text}]
        for _ in range(1 + max(0, args.max_tool_rounds)):
            print("🤖: ", end="", flush=True)
            reply = ask(client, args, system + [m for t in recent(turns, args.history) for m in t] + turn)
            if reply is None:
                break
            turn.append(reply)
            if not reply.get("tool_calls"):
                break
            turn += run_calls(reply)
        if len(turn) > 1:
            turns.append(turn)


if __name__ == "__main__":
    main()
