"""Runs an ASGI application on uvicorn (with its httptools parser) in a background thread, with guards that
uvicorn leaves to a reverse proxy: a deadline on request headers, a cap on open connections that sheds idle
connections first, limits on the request line and headers, and a stop that waits only for requests whose
headers have arrived.

Each connection is in one of two states. **Idle**: waiting for a request's headers (just opened, between
keep-alive requests, or receiving a request line and headers). **Working**: its request's headers have
arrived and it has not been answered yet (the body may still be arriving; the application bounds that with
its own deadline). Then:

* An idle connection that sends nothing for ``idle_timeout_secs`` is closed; once the first byte of a request
  arrives, its line and headers must be complete within ``header_timeout_secs`` (else ``408`` and close), so a
  client dripping header bytes (slowloris) holds a connection for a bounded time.
* A request line longer than ``max_header_bytes`` is ``414``; more than ``max_header_bytes`` of line and
  headers, or more than ``max_headers`` header fields, is ``431``; a malformed request is ``400`` naming what
  the parser found. All are JSON (``{"error": ...}``) and close the connection.
* Beyond ``max_connections`` open connections, a new one makes room by closing the idle connection that has
  waited longest; only when every connection is working is the new one answered ``503`` and closed. So idle
  or slow connections cannot lock clients out, and requests being worked on are never dropped for new ones.
* :meth:`Transport.stop` closes the listening socket and every idle connection at once (a connection whose
  headers never arrived holds nothing up), lets working requests finish for up to the given timeout, then
  closes what is left.

Example:
    >>> Guards(max_connections=8, header_timeout_secs=5.0, idle_timeout_secs=30.0).max_headers
    100
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["Guards", "Transport"]

logger = logging.getLogger("torch_estimator.serving")

_PHRASES = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Guards:
    """Connection-level limits (the server's config fields of the same names)."""

    max_connections: int
    header_timeout_secs: float
    idle_timeout_secs: float
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the protocol answers ``status`` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards of the module docstring."""

    guards: Guards  # set on the subclass that :class:`Transport` makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        self._header_bytes = 0
        self._header_count = self._header_size = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_started: float | None = None  # when the first byte of the current request's head came
        self._rejection: _Rejected | None = None
        self._refused = False
        # uvicorn arms its keep-alive timer only after a response; a fresh connection gets the same idle bound.
        self.timeout_keep_alive_task = self.loop.call_later(self.guards.idle_timeout_secs,
                                                            self.timeout_keep_alive_handler)
        if len(self.connections) > self.guards.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and isinstance(c, _GuardedProtocol) and c.idle]
        if idle:
            oldest = min(idle, key=lambda c: c._idle_since)
            logger.debug("Open connections at the limit (%d): closing the longest idle one.",
                         self.guards.max_connections)
            oldest.transport.close()
            oldest.connections.discard(oldest)  # counts as gone now; connection_lost follows
        else:
            self._refuse()

    def _refuse(self) -> None:
        """Answer 503 and close gently: half-close, then discard what the client sends for a moment, so that
        the answer is not lost to a reset from unread request bytes."""
        self.connections.discard(self)
        self._refused = True
        self._write_error(503, "Too many open connections; retry later.")
        with contextlib.suppress(Exception):
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    @property
    def idle(self) -> bool:
        """Waiting for a request's headers (no request being worked on)."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self.idle:
            self._header_bytes += len(data)
            if self._header_started is None:
                self._header_started = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "Connection upgrades (WebSocket, HTTP/2) are not supported.")
            return
        except httptools.HttpParserError as error:
            rejection = self._rejection or _Rejected(400, f"Bad request: {error}".rstrip("."))
            self._reject(rejection.status, rejection.message)
            return
        if not self.idle or self.transport.is_closing():
            return
        if self._header_bytes > self.guards.max_header_bytes:
            self._reject(431, f"The request line and headers are longer than {self.guards.max_header_bytes} bytes.")
        elif self._header_timer is None and self._header_started is not None:
            # Headers incomplete after this read: they must be complete within the deadline of their first byte
            # (a timer only for requests whose headers span reads, not for every request).
            left = self._header_started + self.guards.header_timeout_secs - self.loop.time()
            self._header_timer = self.loop.call_later(max(left, 0.0), self._headers_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._header_size = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.guards.max_header_bytes:
            self._rejection = _Rejected(414, f"The request line is longer than {self.guards.max_header_bytes} bytes.")
            raise self._rejection

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_size += len(name) + len(value) + 4
        if self._header_count > self.guards.max_headers:
            self._rejection = _Rejected(431, f"Too many headers (more than {self.guards.max_headers}).")
            raise self._rejection
        if self._header_size + len(self.url) > self.guards.max_header_bytes:
            self._rejection = _Rejected(431, f"The request line and headers are longer than "
                                             f"{self.guards.max_header_bytes} bytes.")
            raise self._rejection
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = 0
        self._header_started = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.idle and not self.transport.is_closing():
            self._reject(408, f"The request line and headers did not arrive within "
                              f"{self.guards.header_timeout_secs:g}s (header_timeout_secs).")

    def send_400_response(self, msg: str) -> None:
        self._reject(400, msg)

    def _reject(self, status: int, message: str) -> None:
        """Answer ``status`` with ``{"error": message}`` and close the connection."""
        if self.transport.is_closing():
            return
        self._write_error(status, message)
        self.transport.close()

    def _write_error(self, status: int, message: str) -> None:
        body = (json.dumps({"error": message}) + "\n").encode()
        head = (f"HTTP/1.1 {status} {_PHRASES.get(status, '')}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("latin-1")
        self.transport.write(head + body)


class _Server(uvicorn.Server):
    """uvicorn's server, remembering its event loop (to close connections from another thread)."""

    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)


class Transport:
    """An ASGI application served by uvicorn from a thread of its own.

    Args:
        app: The ASGI application.
        host: The address to bind.
        port: The port (0: any free one).
        guards: Connection limits.
        in_flight: How many requests are being worked on (the application counts them), for :meth:`stop`.
    """

    def __init__(self, app: Any, host: str, port: int, guards: Guards, in_flight: Callable[[], int]) -> None:
        self.app, self.guards, self.in_flight = app, guards, in_flight
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say TCP,
        # and a response written in two parts would otherwise wait for the client's delayed ACK (40 ms).
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(1024)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.port: int = self.socket.getsockname()[1]
        protocol = type("GuardedProtocol", (_GuardedProtocol,), {"guards": guards})
        config = uvicorn.Config(
            app, http=protocol, lifespan="off", log_level="warning", access_log=False, server_header=False,
            timeout_keep_alive=max(1, round(guards.idle_timeout_secs)), timeout_graceful_shutdown=None,
            backlog=1024,
        )
        config.timeout_keep_alive = guards.idle_timeout_secs  # type: ignore[assignment]  # uvicorn's option is whole seconds; the timer is not
        self.server = _Server(config)
        self._thread = threading.Thread(target=self._run, name="torch_estimator-http", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        """Serve from a background thread; returns once the socket is being served."""
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError(f"The HTTP server did not start: {self._error!r}")

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])  # on uvicorn's event loop (uvloop where installed)
        except BaseException as error:  # noqa: BLE001 - reported to start() or logged
            self._error = error
            if self.server.started:
                logger.exception("The HTTP server stopped with an error.")

    def stop(self, timeout: float) -> int:
        """Stop accepting, close idle connections, wait up to ``timeout`` for requests being worked on, then
        close every connection. Returns how many requests were still in flight when it gave up (0: none)."""
        self.server.should_exit = True  # uvicorn closes the listener and idle connections within 0.1 s
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        left = self.in_flight()
        loop = self.server.loop
        if left and loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._abort_all)
        self._thread.join(timeout=10)
        return left

    def _abort_all(self) -> None:
        self.server.force_exit = True
        for connection in list(self.server.server_state.connections):
            with contextlib.suppress(Exception):
                connection.transport.abort()
