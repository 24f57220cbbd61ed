"""The HTTP side of the model server: an ASGI application (starlette) that reads request bodies within
limits and answers with what a :class:`Handler` returns; every error is ``{"error": "..."}``.

It knows nothing of models. Per request it:

* answers 503 (and closes the connection) once the server is stopping;
* asks the handler for the endpoint of the method and path (its :class:`~rest.ServingError` become answers:
  404, 405 with ``Allow``, ...);
* for a POST: refuses a body without a length (411), a declared or streamed body over ``max_body_bytes``
  (413, before it is read when ``Content-Length`` says so), and waits (up to ``queue_timeout_secs``, then
  503) until the body fits the in-flight body budget ``max_inflight_body_bytes``; reads the body within
  ``request_timeout_secs`` (else 408); decodes ``Content-Encoding: gzip`` or ``deflate`` with the same limit
  on the decoded size (a zip bomb stops at ``max_body_bytes``, 413); other encodings get 415;
* runs the endpoint, which returns a :class:`Reply`; anything else it raises is a 500 naming the error.

Bodies are read whole before the endpoint sees them, so a request enters the model's queues only once it
has fully arrived. After requests with large bodies (1 MiB or more) finish and no other large one is being
handled, the C allocator is asked to return freed memory to the system (glibc's ``malloc_trim``), so a burst
of large requests does not leave the process holding hundreds of megabytes.

Example:
    >>> reply = Reply.json(200, {"predictions": [1.5]})
    >>> reply.status, reply.body, reply.media_type
    (200, b'{"predictions": [1.5]}\\n', 'application/json')
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from torch_estimator.serving.rest import ServingError
from torch_estimator.serving.rest import last_line as _last_line

__all__ = ["Reply", "Incoming", "Handler", "Limits", "RestApp", "WorkerThreads"]

logger = logging.getLogger("torch_estimator.serving")

LARGE_BODY_BYTES = 1 << 20  # bodies from this size on count as large (memory is returned after them)
_OFFLOAD_BYTES = 1 << 16  # decompress bodies from this size on in a worker thread, off the event loop


@dataclasses.dataclass(frozen=True)
class Reply:
    """An answer: status, body bytes, media type and extra headers."""

    status: int
    body: bytes = b""
    media_type: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
        """A JSON answer (``payload`` None: an empty body)."""
        if payload is None:
            return cls(status, b"", None, dict(headers or {}))
        return cls(status, (json.dumps(payload) + "\n").encode("utf-8"), "application/json", dict(headers or {}))

    @classmethod
    def error(cls, error: ServingError) -> Reply:
        return cls.json(error.status, {"error": error.message}, error.headers)


@dataclasses.dataclass(frozen=True)
class Incoming:
    """A request as an endpoint sees it: the decoded body (None for GET) and the headers (lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None


Endpoint = Callable[[Incoming], Awaitable[Reply]]


class Handler(Protocol):
    """What the application serves (the model server)."""

    stopping: bool

    def route(self, method: str, path: str) -> Endpoint:
        """The endpoint for a request; raises :class:`~rest.ServingError` for an unknown path or wrong method."""
        ...


@dataclasses.dataclass(frozen=True)
class Limits:
    """The application's limits (the server's config fields of the same names)."""

    max_body_bytes: int
    max_inflight_body_bytes: int
    request_timeout_secs: float
    queue_timeout_secs: float


def _too_large(size: int, limit: int, chunked: bool = False) -> str:
    size_text = f"more than {limit} bytes (chunked)" if chunked else f"{size} bytes"
    return f"Request body is {size_text}; the limit is {limit} bytes (max_body_bytes, --max_body_bytes)."


def _malloc_trim() -> None:
    """Return freed heap memory to the system where the C library can (glibc); elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _BodyBudget:
    """How many request-body bytes are being read and decoded at once (JSON decodes to several times its size)."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit, self.timeout = limit, timeout
        self.used = 0
        self._waiting = 0  # requests waiting for room
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> Any:
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        if self.used + size <= self.limit and not self._waiting:  # the common case: no wait, no task
            self.used += size
        else:
            self._waiting += 1
            try:
                async with cond:
                    await asyncio.wait_for(cond.wait_for(lambda: self.used + size <= self.limit), self.timeout)
                    self.used += size
            except asyncio.TimeoutError:
                raise ServingError(503, f"Too many large requests at once (max_inflight_body_bytes={self.limit}); "
                                        f"retry later.") from None
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            self.used -= size
            if self._waiting:
                async with cond:
                    cond.notify_all()


def _declares_large_body(scope: Mapping[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.isdigit() and int(value) >= LARGE_BODY_BYTES
        if name == b"transfer-encoding":
            return True  # unknown size: count it
    return False


def _decoder(encoding: str) -> Callable[[], Any] | None:
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: zlib.decompressobj()
    return None


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded, stopping once the result passes ``limit`` bytes."""
    make = _decoder(encoding)
    assert make is not None
    decoder = make()
    try:
        try:
            data = decoder.decompress(body, limit + 1)
        except zlib.error:
            if encoding != "deflate":
                raise
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent as a raw stream, without zlib's header
            data = decoder.decompress(body, limit + 1)
    except zlib.error as error:
        raise ServingError(400, f"The request body is not valid {encoding} data (Content-Encoding: {encoding}): "
                                f"{error}.") from None
    if len(data) > limit:
        raise ServingError(413, f"Request body decodes to more than {limit} bytes (Content-Encoding: {encoding}); "
                                f"the limit is {limit} bytes (max_body_bytes, --max_body_bytes).")
    if not decoder.eof:
        raise ServingError(400, f"The request body's {encoding} data is truncated (Content-Encoding: {encoding}).")
    return data


class RestApp:
    """The ASGI application: limits, bodies and JSON errors around a :class:`Handler`'s endpoints.

    Args:
        handler: Routes requests to endpoints (the model server).
        limits: Body and time limits.
    """

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler, self.limits = handler, limits
        self.in_flight = 0  # requests whose headers have arrived and that are not answered yet
        self.budget = _BodyBudget(limits.max_inflight_body_bytes, limits.queue_timeout_secs)
        self._large = 0  # requests with large bodies being handled
        self._trim_due = False  # a large request finished since memory was last returned

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan and websocket events: nothing to do
            return
        self.in_flight += 1
        large = _declares_large_body(scope)
        self._large += large
        try:
            request = Request(scope, receive)
            reply, close = await self._answer(request)
            if reply is None:
                return  # the client went away: there is no one to answer
            headers = dict(reply.headers)
            if close:
                headers["Connection"] = "close"
            response = Response(reply.body, reply.status, headers, reply.media_type)
            await response(scope, receive, send)
        except asyncio.CancelledError:
            if not self.handler.stopping:
                raise
            # Cancelled when a stop gave up on this request: its connection is closed already.
        finally:
            self.in_flight -= 1
            self._large -= large
            self._trim_due |= large
            if self._trim_due and not self._large:
                # Once the last large request is answered (its body, parsed values and response freed), give
                # the freed heap back to the system; a moment later, when the response has left the socket.
                self._trim_due = False
                loop = asyncio.get_running_loop()
                loop.call_later(0.5, lambda: loop.run_in_executor(None, _malloc_trim))

    async def _answer(self, request: Request) -> tuple[Reply | None, bool]:
        """``(reply, close the connection)``; reply None when the client disconnected."""
        method, path = request.method, request.url.path
        if self.handler.stopping:
            return Reply.json(503, {"error": "The server is shutting down; retry on another replica."}), True
        body_read = method != "POST"
        try:
            endpoint = self.handler.route(method, path)
            if method != "POST":
                return await endpoint(Incoming(method, path, request.headers, None)), False
            size, chunked = self._declared_size(request)
            encoded = request.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
            reserve = self.limits.max_body_bytes if encoded else size  # a decoded body may reach the limit
            async with self.budget.reserve(reserve):
                body = await self._read_body(request, size, chunked)
                body_read = True
                body = await self._decode(request, body)
                return await endpoint(Incoming(method, path, request.headers, body)), False
        except ServingError as error:
            if not body_read and method == "POST" and error.status != 413:
                body_read = await self._discard_body(request)  # so the client can read the answer
            return Reply.error(error), not body_read
        except ClientDisconnect:
            return None, True
        except Exception as error:  # nothing a request does may take the server down
            logger.exception("Internal error answering %s %s", method, path)
            return Reply.json(500, {"error": f"Internal error: {type(error).__name__}: {_last_line(error)}"}), \
                not body_read

    def _declared_size(self, request: Request) -> tuple[int, bool]:
        """``(size to reserve, chunked)``: Content-Length, or the limit for a chunked body (its size is unknown)."""
        limit = self.limits.max_body_bytes
        if "transfer-encoding" in request.headers:
            if "content-length" in request.headers:
                raise ServingError(400, "A request must not have both Transfer-Encoding and Content-Length.")
            return limit, True
        lengths = request.headers.getlist("content-length")
        if not lengths:
            raise ServingError(411, "A POST needs a Content-Length header (or Transfer-Encoding: chunked).")
        if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
            raise ServingError(400, f"Invalid Content-Length {', '.join(lengths)!r}.")
        size = int(lengths[0])
        if size > limit:
            raise ServingError(413, _too_large(size, limit))
        return size, False

    async def _read_body(self, request: Request, size: int, chunked: bool) -> bytes:
        limit, timeout = self.limits.max_body_bytes, self.limits.request_timeout_secs
        chunks: list[bytes] = []
        received = 0

        async def read() -> None:
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise ServingError(413, _too_large(received, limit, chunked=True))
                chunks.append(chunk)

        try:
            await _within(read(), timeout)
        except asyncio.TimeoutError:
            expected = "an unknown number of" if chunked else str(size)
            raise ServingError(408, f"The request body did not arrive in time ({received} of {expected} bytes "
                                    f"within {timeout:g}s).") from None
        return b"".join(chunks)

    async def _discard_body(self, request: Request) -> bool:
        """Read and drop a refused request's body (within the limits), so that the connection stays in step
        and the client, still sending, gets the answer instead of a reset. False if that failed."""
        received, limit = 0, self.limits.max_body_bytes

        async def drain() -> None:
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise ServingError(413, _too_large(received, limit, chunked=True))

        try:
            await _within(drain(), self.limits.request_timeout_secs)
        except (ServingError, ClientDisconnect, asyncio.TimeoutError, RuntimeError):
            return False
        return True

    async def _decode(self, request: Request, body: bytes) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if _decoder(encoding) is None:
            raise ServingError(415, f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or an "
                                    f"uncompressed body.")
        if len(body) < _OFFLOAD_BYTES:
            return _decompress(body, encoding, self.limits.max_body_bytes)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _decompress, body, encoding, self.limits.max_body_bytes)


async def _within(awaitable: Awaitable[None], seconds: float) -> None:
    """``await awaitable`` within ``seconds`` (else TimeoutError), without a task of its own where Python can."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+
        async with asyncio.timeout(seconds):
            await awaitable
    else:
        await asyncio.wait_for(awaitable, seconds)


class WorkerThreads:
    """Up to ``size`` worker threads for blocking work (model runs), off the event loop (anyio's threads,
    which starlette uses too)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop

    async def run(self, function: Callable[[], Any]) -> Any:
        """``function()`` in a worker thread; waits for a free thread when all ``size`` are busy."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(function, limiter=self._limiter)
