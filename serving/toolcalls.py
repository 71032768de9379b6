"""A reply split into its content and its tool calls, as it streams: the one reading the server gives both a
whole reply and a stream, so the two always agree.

    splitter = CallSplitter(allowed={"calculator"})
    for piece in stream:
        for kind, value in splitter.feed(piece):   # ("content", text) or ("call", {"name", "arguments"})
            ...
    for kind, value in splitter.finish(): ...

Text outside <tool_call> blocks is content and goes out at once, except a tail that could still grow into
"<tool_call>". Inside an open block nothing goes out until the block closes; it then becomes a call when
model/toolcall.parse_reply reads it as a well-formed call of an allowed tool (and, without parallel calls,
when it is the first), and is content as written otherwise, as is a block that never closes. Whitespace
next to a call is dropped, so "<call>\\n<call>" has no content and a reply's content is the text around
its calls.
"""
import json

from model.toolcall import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_reply
from serving.protocol import new_id


def _open_prefix(text: str) -> int:
    """Length of the longest tail of `text` that is the start of TOOL_CALL_OPEN (a tag still arriving)."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


class CallSplitter:
    """Feed a reply's text piece by piece; get its content and its calls in order (see the module docstring)."""

    def __init__(self, allowed, parallel: bool = True):
        self.allowed, self.parallel = frozenset(allowed), parallel
        self.calls = 0
        self._buffer = ""  # text not given out yet
        self._in_block = False  # _buffer starts with an open tag whose block has not closed
        self._space = ""  # whitespace held back: dropped if a call follows it
        self._after_call = False  # leading whitespace of the next content is dropped

    def feed(self, text: str) -> list:
        self._buffer += text
        out = []
        while self._buffer:
            if not self._in_block:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    ready = len(self._buffer) - _open_prefix(self._buffer)
                    self._content(self._buffer[:ready], out)
                    self._buffer = self._buffer[ready:]
                    break
                self._content(self._buffer[:start], out)
                self._buffer, self._in_block = self._buffer[start:], True
                continue
            close = self._buffer.find(TOOL_CALL_CLOSE, len(TOOL_CALL_OPEN))
            reopen = self._buffer.find(TOOL_CALL_OPEN, len(TOOL_CALL_OPEN))
            if 0 <= reopen and (close < 0 or reopen < close):  # a stray open tag: text up to the next one
                self._content(self._buffer[:reopen], out)
                self._buffer = self._buffer[reopen:]
                continue
            if close < 0:
                break  # the block is still open: hold it back
            end = close + len(TOOL_CALL_CLOSE)
            block, self._buffer, self._in_block = self._buffer[:end], self._buffer[end:], False
            self._block(block, out)
        return out

    def finish(self) -> list:
        """What is left when the reply ends: an unclosed block or a partial tag, as content."""
        out = []
        rest, self._buffer, self._in_block = self._buffer, "", False
        self._content(rest, out)
        if not self.calls and self._space:
            out.append(("content", self._space))
        self._space = ""
        return out

    def _block(self, block: str, out: list) -> None:
        content, calls = parse_reply(block)
        if (len(calls) == 1 and not content and calls[0]["name"] in self.allowed
                and (self.parallel or not self.calls)):
            self.calls += 1
            self._space, self._after_call = "", True
            out.append(("call", calls[0]))
        else:
            self._content(block, out)

    def _content(self, text: str, out: list) -> None:
        if self._after_call:
            text = text.lstrip()
        if not text:
            return
        self._after_call = False
        body = text.rstrip()
        if body:
            out.append(("content", self._space + body))
            self._space = ""
        self._space += text[len(body):]


def split_reply(text: str, allowed, parallel: bool = True) -> tuple[str | None, list]:
    """(content, calls) of a whole reply: content None when the reply is only calls."""
    splitter = CallSplitter(allowed, parallel)
    parts = splitter.feed(text) + splitter.finish()
    content = "".join(value for kind, value in parts if kind == "content")
    calls = [value for kind, value in parts if kind == "call"]
    return (content or None) if calls else content, calls


def openai_call(call: dict, index: int = None) -> dict:
    """A parsed call in OpenAI's shape, with a fresh id; `index` for a stream's delta."""
    shaped = {"id": new_id("call"), "type": "function",
              "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
    return shaped if index is None else {"index": index, **shaped}
