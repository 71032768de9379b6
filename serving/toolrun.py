"""The tools this server can run itself, for the chat page: `GET /v1/tools` lists their schemas and
`POST /v1/tools/run` {"name", "arguments"} answers {"content": result} through tooluse.calculator.run_tool.

A client that does its own tools never needs this: a tool call is the client's to run. The page has no
code of its own for tools, so the server lends it the calculator, within bounds: a small body
(MAX_BODY_BYTES), and at most RATE calls a second with bursts of BURST (a 429 beyond), so the endpoint
cannot be used to keep the machine busy. The calculator itself bounds each call (200 characters, no
number above 1e15).
"""
import threading
import time

from serving.protocol import APIError, show
from tooluse.calculator import SCHEMAS, run_tool

MAX_BODY_BYTES = 4096
RATE = 10.0  # calls a second, on average
BURST = 20  # calls at once


class RateLimit:
    """A token bucket: `burst` calls at once, refilled at `rate` a second."""

    def __init__(self, rate: float = RATE, burst: int = BURST):
        self.rate, self.burst = rate, burst
        self._tokens, self._stamp = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> None:
        """Spend one call, or raise a 429 when the bucket is empty."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                raise APIError(429, f"too many tool runs: at most {self.rate:g} a second; retry shortly",
                               code="rate_limit_exceeded", kind="requests")
            self._tokens -= 1


def parse_run(body: dict) -> tuple[str, dict]:
    """(name, arguments) of a run request; an APIError(400) naming the field otherwise."""
    extra = sorted(set(body) - {"name", "arguments"})
    if extra:
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(extra)}", extra[0])
    name = body.get("name")
    if not isinstance(name, str) or name not in SCHEMAS:
        raise APIError(400, f"'name' must name a tool this server runs ({', '.join(SCHEMAS)}), got {show(name)}",
                       "name")
    arguments = body.get("arguments", {})
    if not isinstance(arguments, dict):
        raise APIError(400, f"'arguments' must be a JSON object, got {show(arguments)}", "arguments")
    return name, arguments


def run(name: str, arguments: dict) -> dict:
    return {"content": run_tool(name, arguments)}


def listing() -> dict:
    return {"object": "list", "data": list(SCHEMAS.values())}
