"""The app on a listening socket: waitress (a pure-Python production WSGI server) by default, werkzeug's
threaded server (the one behind `flask run`) with dev=True.

Two things waitress does not do by itself, done here:
  * No client can hold every connection. waitress keeps at most `max_connections` open, and an idle one
    for `timeout` seconds (up to twice that, between its cleanups), so one local process holding 100 idle
    sockets used to make every other client wait a minute or two. A cap per client address cannot help
    there (every local process is 127.0.0.1), so instead, when every place is taken and a new connection
    is waiting, the idle connection that has been quiet longest is closed to let it in. A connection is
    idle when no request of its is being answered and nothing waits to be sent; one half-way through
    sending a request counts as idle, so a slow sender cannot hold a place either. Requests being
    answered are bounded by the generation queue.
  * SIGTERM drains instead of killing (drain()): the listening sockets close, new requests on open
    connections get a 503, the requests in flight finish, and those still generating after `grace`
    seconds end at their next token with a final chunk and [DONE]; every request is logged, then
    serve_forever returns.
"""
import select
import sys
import threading
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher
from werkzeug.serving import make_server

from serving.queue import GenerationQueue

CUT_BOUND = 5.0  # seconds a drain waits, after cutting the generations, for the last bytes to go out
EVICTION_LOG_EVERY = 10.0  # seconds between log lines about closed idle connections


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Listener(TcpWSGIServer):
    """waitress's TCP server with the idle-connection rule of the module docstring."""
    evicted = 0
    last_log = 0.0

    def readable(self):
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            if self._someone_waiting():
                self._close_quietest()
            # waitress warns each time it reaches the limit; here that is routine, and logged below instead
            self.in_connection_overflow = True
        return super().readable()

    def _someone_waiting(self) -> bool:
        try:
            return bool(select.select([self.socket], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _close_quietest(self) -> None:
        """Mark the longest-idle connection to be closed by the loop (closing it here, while the loop is
        collecting sockets to wait on, would hand select() a closed one)."""
        channels = [c for c in self._map.values() if isinstance(c, HTTPChannel)]
        if any(c.will_close or c.close_when_flushed for c in channels):
            return  # a place is being freed already
        idle = [c for c in channels if not c.requests and not c.total_outbufs_len]
        if not idle:
            return
        min(idle, key=lambda c: c.last_activity).will_close = True
        Listener.evicted += 1
        if time.monotonic() - Listener.last_log > EVICTION_LOG_EVERY:
            Listener.last_log = time.monotonic()
            log(f"connections: all {self.adj.connection_limit} places taken; closed the longest-idle one to let "
                f"a new client in ({Listener.evicted} so far)")


class Server:
    """The app on a listening socket. `port` is the bound port (useful with port 0); serve_forever() blocks
    until shutdown(), or until a drain() has finished."""

    def __init__(self, app, host: str, port: int, dev: bool = False, threads: int = 8, max_connections: int = 100,
                 timeout: int = 60, max_request_body: int = 2 << 20):
        self.dev = dev
        self._stop = threading.Event()
        self._drain = None  # (queue, when to cut, when to give up) once drain() is called
        if dev:
            self._server = make_server(host, port, app, threaded=True)
            self.port = self._server.server_port
            return

        # waitress answers 413 itself past max_request_body (plain text); between that and the app's own
        # limit the app's JSON 413 answers
        adj = Adjustments(host=host, port=port, threads=threads, connection_limit=max_connections,
                          channel_timeout=timeout, cleanup_interval=max(1, min(30, timeout // 2)),
                          max_request_body_size=max_request_body, ident="minimind", expose_tracebacks=False)
        self._map, self._adj = {}, adj
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(threads)
        # one socket, or several when the host name resolves to more than one address (localhost)
        self._listeners = [Listener(app, self._map, dispatcher=self._dispatcher, adj=adj, sockinfo=info)
                           for info in adj.listen]
        self.port = self._listeners[0].effective_port

    def serve_forever(self) -> None:
        if self.dev:
            self._server.serve_forever()
            self._server.server_close()
            return
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=self._adj.asyncore_loop_timeout, map=self._map, count=1)
                if self._drain is not None and self._drain_step():
                    break
        finally:
            self._dispatcher.shutdown()
            wasyncore.close_all(self._map)

    def shutdown(self) -> None:
        """Stop serving at once (from another thread than serve_forever's)."""
        if self.dev:
            self._server.shutdown()
            return
        self._stop.set()
        self._listeners[0].pull_trigger()  # wake the loop now rather than at its next timeout

    def drain(self, queue: GenerationQueue, grace: float) -> None:
        """Begin a graceful stop (see the module docstring); safe to call from a signal handler. A second
        call while draining changes nothing."""
        if self._drain is not None:
            return
        now = time.monotonic()
        self._drain = (queue, now + grace, now + grace + CUT_BOUND)
        queue.close()  # (no logging here: printing inside a signal handler can collide with a print it interrupted)
        if self.dev:
            threading.Thread(target=self._drain_dev, daemon=True).start()
        else:
            self._listeners[0].pull_trigger()

    def _drain_step(self) -> bool:
        """One look at a drain in progress, from the serving loop; True when serving should end."""
        queue, cut_at, give_up_at = self._drain
        if any(listener.accepting for listener in self._listeners):
            log(f"stopping: no new requests; {queue.inside} in flight get up to "
                f"{cut_at - time.monotonic():.0f} s to finish")
        for listener in self._listeners:
            if listener.accepting:  # closed, so new connections are refused at once instead of waiting
                listener.accepting = False
                wasyncore.dispatcher.close(listener)  # the socket only: its trigger still wakes the loop
        busy = [c for c in self._map.values() if isinstance(c, HTTPChannel) and (c.requests or c.total_outbufs_len)]
        if not busy and not queue.inside:
            log("stopped: every request answered")
            return True
        now = time.monotonic()
        if now >= cut_at and not queue.cut:
            log(f"stopping: ending {queue.inside} generation(s) still running")
            queue.cut_all()
        if now >= give_up_at:
            log(f"stopped: {len(busy)} connection(s) still had unsent data")
            return True
        return False

    def _drain_dev(self) -> None:
        """The drain for werkzeug's server, in a thread of its own: its serving loop has no hook to look from."""
        queue, cut_at, give_up_at = self._drain
        log(f"stopping: no new requests; {queue.inside} in flight get up to {cut_at - time.monotonic():.0f} s "
            "to finish")
        while queue.inside and time.monotonic() < cut_at:
            time.sleep(0.05)
        if queue.inside:
            queue.cut_all()
        while queue.inside and time.monotonic() < give_up_at:
            time.sleep(0.05)
        time.sleep(0.2)  # the handler threads write the last chunks
        self._server.shutdown()
