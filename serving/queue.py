"""The generation queue: one generation at a time, a bounded number of requests waiting behind it, and the
switch a draining server uses to refuse new work and to end the generations still running.

    queue = GenerationQueue(max_queue=16)
    queue.enter()                  # take a place (a 503 when every place is taken), without waiting
    try:
        build_the_prompt()         # inside the queue, so max_queue bounds that work too
        queue.wait()               # take the model
        for text in stream:
            if queue.cut: break    # the server is shutting down: end the reply now
    finally:
        queue.leave(holding=True)

A streaming response's body is an EventStream: it gives the place back even when the server closes the
response before the first event is read.
"""
import threading

from serving.protocol import APIError


class GenerationQueue:
    """One generation at a time; at most `max_queue` requests wait behind it, further ones get a 503.

    close() refuses new requests (a 503 saying the server is stopping) while those inside go on; cut()
    asks the generations inside to end at their next token, so a drain has a bound."""

    def __init__(self, max_queue: int):
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_queue + 1)
        self._count_lock = threading.Lock()
        self._inside = 0
        self._closed = False
        self._cut = threading.Event()

    def enter(self) -> None:
        """Take a place in the queue (without waiting); call wait() later to take the model."""
        if self._closed:
            raise APIError(503, "the server is shutting down; retry against its next start",
                           code="server_shutting_down", kind="server_error")
        if not self._slots.acquire(blocking=False):
            raise APIError(503, "the server is busy: too many requests are waiting; retry shortly",
                           code="server_busy", kind="server_error")
        with self._count_lock:
            self._inside += 1

    def wait(self) -> None:
        self._lock.acquire()

    def leave(self, holding: bool) -> None:
        if holding:
            self._lock.release()
        with self._count_lock:
            self._inside -= 1
        self._slots.release()

    @property
    def inside(self) -> int:
        """Requests holding a place: generating, or waiting to."""
        return self._inside

    def close(self) -> None:
        """Refuse every new request from now on; the ones inside go on."""
        self._closed = True

    def cut_all(self) -> None:
        """Ask every generation inside, running or still waiting, to end at its next token."""
        self._cut.set()

    @property
    def cut(self) -> bool:
        return self._cut.is_set()


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
