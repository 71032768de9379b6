"""Chat in the terminal with a model behind an OpenAI-compatible server, through the official `openai` package.

    python my_openai_api.py &                  # in another terminal: the server
    python chat_openai_api.py                  # multi-turn, streaming, history kept
    python chat_openai_api.py --history 0 --temperature 0 --system "你是一个乐于助人的助手。"
    MINIMIND_API_KEY=s3cret python chat_openai_api.py --base_url http://127.0.0.1:8001/v1

Type a message and press Enter. `/new` forgets the conversation, `/exit` or Ctrl-D quits, and Ctrl-C
stops the reply being printed (at the prompt, it quits). Any OpenAI-compatible server
works: the model id defaults to the first one the server lists.
"""
import argparse
import os
import sys
import time

import openai


def ask(client, args, messages) -> str | None:
    """Stream one reply to stdout; return its text, or None when the server refused the request."""
    started = time.perf_counter()
    reply, usage, finish = "", None, None
    try:
        stream = client.chat.completions.create(
            model=args.model, messages=messages, stream=True, stream_options={"include_usage": True},
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        )
        with stream:
            for chunk in stream:
                usage = chunk.usage or usage
                if chunk.choices:
                    delta = chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                    reply += delta
                    print(delta, end="", flush=True)
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
    return reply


def recent(turns: list, history: int) -> list:
    """The earlier turns sent along with a new message: all (history -1), none (0) or the last `history`."""
    if history < 0:
        return turns
    return turns[max(0, len(turns) - history):]


def error_message(err: openai.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    return body.get("message") or body.get("error", {}).get("message") or str(err)


def main():
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
    parser.add_argument("--max_tokens", type=int, default=512)
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    if args.model is None:
        try:
            args.model = client.models.list().data[0].id
        except openai.APIStatusError as err:
            sys.exit(f"{args.base_url}: server error {err.status_code}: {error_message(err)}")
        except openai.APIError as err:
            sys.exit(f"cannot reach {args.base_url} ({err}): is `python my_openai_api.py` running?")
    print(f"chatting with {args.model} at {args.base_url}  (/new forgets, /exit quits)")

    turns = []  # (user, assistant) pairs
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
        messages = [{"role": "system", "content": args.system}] if args.system else []
        for user, assistant in recent(turns, args.history):
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": text})
        print("🤖: ", end="", flush=True)
        reply = ask(client, args, messages)
        if reply is not None:
            turns.append((text, reply))


if __name__ == "__main__":
    main()
