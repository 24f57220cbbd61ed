"""A REST server for exports, compatible with TensorFlow Serving's API: ``torch-estimator serve``.

Serves the highest numeric version under a base directory, picks up new versions as exporters write them
(:mod:`.versions`), and answers TF Serving's REST API and the Open Inference Protocol (KServe v2)
(:mod:`.rest`), checking every input against the export's signature before the model runs. A client written
for ``tensorflow_model_server --rest_api_port`` works unchanged::

    server = serve("exports/mnist", "mnist", port=8501)       # loads, self-checks, listens on 127.0.0.1
    # POST http://127.0.0.1:8501/v1/models/mnist:predict  {"instances": [[0.0, ...784 values]]}
    server.stop()                                              # or: with serve(...) as server: ...

Endpoints (``NAME`` is the model name, ``/versions/V`` optional wherever shown):

=========================================================  ====================================================
``GET  /v1/models/NAME[/versions/V]``                       version status (``model_version_status``)
``GET  /v1/models/NAME[/versions/V]/metadata``              signatures in TF's ``signature_def`` shape
``POST /v1/models/NAME[/versions/V]:predict``               ``instances`` / ``inputs`` -> ``predictions`` / ``outputs``
``POST /v1/models/NAME[/versions/V]:classify|:regress``     ``examples`` -> ``results``
``GET  /v2``, ``/v2/health/live``, ``/v2/health/ready``       server metadata and health
``GET  /v2/models/NAME[/versions/V][/ready]``               model metadata, readiness
``POST /v2/models/NAME[/versions/V]/infer``                 Open Inference Protocol inference
=========================================================  ====================================================

Errors are ``{"error": "..."}`` with TF Serving's codes: 400 for client mistakes (each names the input or
key and what was expected), 404 unknown model or version, 405 wrong method, 411/413 missing or oversized
body, 500 the model's own errors, 503 when shutting down or overloaded.

**Why the standard library's HTTP server.** ``http.server.ThreadingHTTPServer`` adds no dependency, speaks
HTTP/1.1 keep-alive, and gives a thread per connection; inference is CPU-bound work in torch kernels that
release the GIL, so an asynchronous framework (aiohttp, uvicorn) would still hand every request to a thread
pool, and a pre-forking server (gunicorn) would hold one copy of the model per process. What the standard
server lacks is added here: a bound on concurrent inferences (``threads``), on open connections, on body size
and on read time; JSON errors for everything, including malformed request lines; and a graceful drain.
Run it on loopback or behind a reverse proxy for TLS and authentication; it has neither.

**Concurrency.** Each connection has a thread; at most ``threads`` inferences run at once (TorchScript
releases the GIL in its kernels), the rest wait up to ``queue_timeout_secs`` (then 503). With
``batching=True``, concurrent requests with up to ``max_batch_size`` rows are merged (see :mod:`.batching`).
``num_torch_threads`` calls ``torch.set_num_threads`` (process-wide).

**Shutdown.** :meth:`ModelServer.stop` (and SIGTERM or SIGINT under :meth:`ModelServer.serve_until_signal`,
which the CLI uses) stops accepting connections, answers new requests on open connections with 503, waits up
to ``shutdown_timeout_secs`` for requests in flight (including ones still uploading their body) to finish,
then closes the remaining connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

# Absolute imports: serving/ is a namespace package (no __init__.py), so doctest collection imports these
# files as top-level modules, where relative imports fail.
from torch_estimator.serving import loader, rest
from torch_estimator.serving.batching import Batcher, BatcherClosedError, batchable
from torch_estimator.serving.loader import ExportedModel, InvalidInputError
from torch_estimator.serving.rest import ServingError
from torch_estimator.serving.versions import VersionManager, VersionNotFoundError

__all__ = ["ServerConfig", "ModelServer", "serve"]

logger = logging.getLogger("torch_estimator.serving")

# TF Serving's routes (http_rest_api_util.cc), matched case-insensitively against the whole path.
_V1_INFER = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
_V1_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.I)
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/(\d+))?(/ready|/infer)?")
_MODEL_NAME = re.compile(r"[^/:?#\s]+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server listens, loads and runs (all keyword-only; every field has a safe default).

    Attributes:
        host: The address to bind (loopback by default; ``0.0.0.0`` for every interface).
        port: The port (0: any free one; :attr:`ModelServer.port` says which).
        poll_secs: How often to look for new versions (0: never, only at start).
        threads: How many inferences may run at once.
        batching: Merge concurrent small requests into batches.
        max_batch_size: The most rows in a merged batch.
        batch_timeout_ms: How long the first request of a batch waits for others.
        batch_threads: How many batches may run at once.
        max_body_bytes: Larger request bodies are refused with 413.
        max_inflight_body_bytes: The most request-body bytes being read and decoded at once (JSON decodes to
            several times its size in memory); a request beyond it waits up to ``queue_timeout_secs`` (then 503).
        num_torch_threads: ``torch.set_num_threads`` (process-wide), or None to leave torch's default.
        max_cached_versions: Versions other than the latest kept loaded for pinned requests (LRU).
        max_connections: Open connections beyond this are answered 503 and closed.
        idle_timeout_secs: A connection that sends nothing for this long is closed.
        request_timeout_secs: The most time a request body may take to arrive (then 408).
        queue_timeout_secs: The most time a request waits for an inference slot (then 503).
        shutdown_timeout_secs: How long :meth:`ModelServer.stop` waits for requests in flight.
        device: Where models run (``"cpu"``, ``"cuda"``, ...).
        format: ``"torchscript"``, ``"pt2"`` or ``"aoti"``; default ``model.pt`` when present.
        self_check: Run each version on drawn inputs before serving it.
    """

    host: str = "127.0.0.1"
    port: int = 8501
    poll_secs: float = 1.0
    threads: int = 4
    batching: bool = False
    max_batch_size: int = 32
    batch_timeout_ms: float = 5.0
    batch_threads: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    max_inflight_body_bytes: int = 128 * 1024 * 1024
    num_torch_threads: int | None = None
    max_cached_versions: int = 1
    max_connections: int = 256
    idle_timeout_secs: float = 30.0
    request_timeout_secs: float = 60.0
    queue_timeout_secs: float = 30.0
    shutdown_timeout_secs: float = 30.0
    device: str = "cpu"
    format: str | None = None
    self_check: bool = True

    def __post_init__(self) -> None:
        def need(condition: bool, name: str, what: str) -> None:
            if not condition:
                raise ValueError(f"ServerConfig `{name}` must be {what}; received {getattr(self, name)!r}.")

        integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        need(isinstance(self.host, str) and bool(self.host), "host", "a non-empty host name or address")
        need(integer(self.port) and 0 <= self.port <= 65535, "port", "an integer in [0, 65535]")
        need(number(self.poll_secs) and self.poll_secs >= 0, "poll_secs", "a number >= 0 (0: never poll)")
        for name in ("threads", "max_batch_size", "batch_threads", "max_body_bytes", "max_connections"):
            need(integer(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(number(self.batch_timeout_ms) and self.batch_timeout_ms >= 0, "batch_timeout_ms", "a number >= 0")
        need(integer(self.max_inflight_body_bytes) and self.max_inflight_body_bytes >= self.max_body_bytes,
             "max_inflight_body_bytes", f"an integer >= max_body_bytes ({self.max_body_bytes})")
        need(self.num_torch_threads is None or (integer(self.num_torch_threads) and self.num_torch_threads >= 1),
             "num_torch_threads", "None or an integer >= 1")
        need(integer(self.max_cached_versions) and self.max_cached_versions >= 0, "max_cached_versions",
             "an integer >= 0")
        for name in ("idle_timeout_secs", "request_timeout_secs", "queue_timeout_secs", "shutdown_timeout_secs"):
            need(number(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0")
        need(self.format in (None, *loader.FORMATS), "format", "'torchscript', 'pt2', 'aoti' or None")
        need(isinstance(self.batching, bool), "batching", "a bool")
        need(isinstance(self.self_check, bool), "self_check", "a bool")


class _ClientGoneError(Exception):
    """The client closed the connection mid-request: there is no one to answer."""


def _parse_json(body: bytes | None) -> Any:
    if not body or not body.strip():
        raise ServingError(400, "JSON Parse error: The document is empty.")
    try:
        return json.loads(body)
    except RecursionError:
        raise ServingError(400, "JSON Parse error: the document is nested too deeply.") from None
    except ValueError as error:  # includes UnicodeDecodeError
        raise ServingError(400, f"JSON Parse error: {error}.") from None


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-estimator")
    except Exception:  # not installed (a checkout on sys.path): say so rather than fail
        return "unknown"


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests, asks the :class:`ModelServer` for answers, writes JSON."""

    protocol_version = "HTTP/1.1"
    server_version = "torch_estimator-serving"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.app.config.idle_timeout_secs  # read timeout for every recv on this socket
        super().setup()

    def handle_one_request(self) -> None:
        """The standard library's loop step, with the request tracked as in flight from its first line.

        Every method goes to :meth:`_dispatch`, which answers 405 (with ``Allow``) for a wrong one.
        """
        app = self.server.app
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            with app._in_flight():
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "The request line is longer than 65536 bytes.")
                    return
                if not self.parse_request():  # it answered already (400, 431, 505, 413 for Expect)
                    return
                self._dispatch()
                self.wfile.flush()
        except (TimeoutError, ConnectionError, _ClientGoneError, OSError):
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (curl sends ``Expect: 100-continue``)."""
        length = self.headers.get("Content-Length", "")
        limit = self.server.app.config.max_body_bytes
        if length.strip().isdigit() and int(length) > limit:
            self._send_error(ServingError(413, self._too_large(int(length), limit)), close=True)
            return False
        return super().handle_expect_100()

    @staticmethod
    def _too_large(size: int, limit: int, chunked: bool = False) -> str:
        size_text = f"more than {limit} bytes (chunked)" if chunked else f"{size} bytes"
        return f"Request body is {size_text}; the limit is {limit} bytes (max_body_bytes, --max_body_bytes)."

    # -- writing ------------------------------------------------------------------------------------------

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        """Write the whole response in one send: a separate small write for the body would wait for the
        client's delayed ACK (Nagle's algorithm), adding tens of milliseconds to every keep-alive request."""
        body = b"" if payload is None else (json.dumps(payload) + "\n").encode("utf-8")
        self.log_request(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {self.version_string()}", f"Date: {self.date_time_string()}"]
        if payload is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if close:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_error(self, error: ServingError, close: bool = False) -> None:
        self._send(error.status, {"error": error.message}, error.headers, close=close)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of the standard library's HTML, for the errors it finds itself (malformed requests)."""
        text = message or explain or HTTPStatus(code).phrase
        with contextlib.suppress(OSError):
            self._send(code, {"error": text}, close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
        logger.debug("%s %s", self.address_string(), format % args)

    # -- reading ------------------------------------------------------------------------------------------

    def _declares_body(self) -> bool:
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def _read_body(self) -> bytes:
        config = self.server.app.config
        deadline = time.monotonic() + config.request_timeout_secs
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        keep_alive = not self.close_connection
        self.close_connection = True  # until the whole body is read: an error leaves the stream unusable
        if encodings:
            if lengths:
                raise ServingError(400, "A request must not have both Transfer-Encoding and Content-Length.")
            codings = [c.strip().lower() for c in ",".join(encodings).split(",")]
            if codings != ["chunked"]:
                raise ServingError(501, f"Transfer-Encoding {', '.join(codings)} is not supported; use chunked or "
                                        f"Content-Length.")
            body = self._read_chunked(config.max_body_bytes, deadline)
        else:
            if not lengths:
                raise ServingError(411, "A POST needs a Content-Length header (or Transfer-Encoding: chunked).")
            if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
                raise ServingError(400, f"Invalid Content-Length {', '.join(lengths)!r}.")
            size = int(lengths[0])
            if size > config.max_body_bytes:
                raise ServingError(413, self._too_large(size, config.max_body_bytes))
            body = self._read_exact(size, deadline)
        self.close_connection = not keep_alive
        return body

    def _read_exact(self, size: int, deadline: float) -> bytes:
        config = self.server.app.config
        chunks, remaining = [], size
        try:
            while remaining:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                # Each read waits at most until the request's deadline (a slow-drip client cannot hold a thread).
                self.connection.settimeout(min(config.idle_timeout_secs, left))
                data = self.rfile.read1(min(remaining, 1 << 16))
                if not data:
                    raise _ClientGoneError
                chunks.append(data)
                remaining -= len(data)
        except TimeoutError:
            raise ServingError(408, f"The request body did not arrive in time ({size - remaining} of {size} bytes "
                                    f"within {config.request_timeout_secs:g}s).") from None
        finally:
            self.connection.settimeout(config.idle_timeout_secs)
        return b"".join(chunks)

    def _read_chunked(self, limit: int, deadline: float) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _ClientGoneError
            text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not text or not all(c in b"0123456789abcdefABCDEF" for c in text):
                raise ServingError(400, "Malformed chunked body: a chunk size line is not hexadecimal.")
            size = int(text, 16)
            total += size
            if total > limit:
                raise ServingError(413, self._too_large(total, limit, chunked=True))
            if size == 0:
                for _ in range(64):  # trailers, up to the blank line
                    if self.rfile.readline(1024) in (b"\r\n", b"\n", b""):
                        return b"".join(chunks)
                raise ServingError(400, "Malformed chunked body: too many trailer lines.")
            chunks.append(self._read_exact(size, deadline))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise ServingError(400, "Malformed chunked body: a chunk is not followed by CRLF.")

    # -- routing ------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        app = self.server.app
        if app.stopping:
            self._send(503, {"error": "The server is shutting down; retry on another replica."}, close=True)
            return
        body_read = False
        with contextlib.ExitStack() as stack:
            try:
                endpoint = app.route(self.command, self.path.split("?", 1)[0])
                body = None
                if self.command == "POST":
                    stack.enter_context(app._body_budget(self._declared_size()))
                    body, body_read = self._read_body(), True
                status, payload, headers = *endpoint(body), None
            except ServingError as error:
                status, payload, headers = error.status, {"error": error.message}, error.headers
            except (_ClientGoneError, OSError):
                raise  # the connection broke: nobody to answer (handle_one_request closes it)
            except Exception as error:  # nothing a request does may take the server down
                logger.exception("Internal error answering %s %s", self.command, self.path)
                message = f"Internal error: {type(error).__name__}: {_last_line(error)}"
                status, payload, headers = 500, {"error": message}, None
            # A body left unread would be taken for the next request: close the connection instead.
            close = self.close_connection or (self._declares_body() and not body_read)
            self._send(status, payload, headers, close=close)

    def _declared_size(self) -> int:
        """The body size to reserve: Content-Length, or the limit for a chunked body (its size is unknown)."""
        length = self.headers.get("Content-Length", "").strip()
        limit = self.server.app.config.max_body_bytes
        return min(int(length), limit) if length.isdigit() else limit


class _HTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection cap, tracked connections (to close them on shutdown), no
    reverse DNS lookup at bind, and errors sent to the log instead of stderr."""

    daemon_threads = True
    block_on_close = False  # ModelServer.stop drains requests itself
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: ModelServer) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version calls socket.getfqdn: a DNS lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            admitted = len(self.connections) < self.app.config.max_connections
            if admitted:
                self.connections.add(request)
        if not admitted:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        body = json.dumps({"error": "Too many open connections; retry later."}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head + body)
        socketserver.TCPServer.shutdown_request(self, request)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every connection thread blocked on a read, so that it ends."""
        with self._connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("Error on the connection from %s", client_address)


Endpoint = Callable[[bytes | None], tuple[int, Any]]


class ModelServer:
    """Serves one model's versions over HTTP; see the module docstring for endpoints and behaviour.

    Args:
        model_base_path: The directory holding numeric version directories (as exporters write them).
        model_name: The name clients use in URLs (no ``/`` or ``:``).
        config: How to listen, load and run.
        load_fn: Loads one version directory (default: :func:`loader.load` with ``config.device`` and
            ``config.format``); for tests and custom loading.

    Raises:
        ValueError: If ``model_name`` cannot appear in a URL.
    """

    def __init__(
        self,
        model_base_path: str | os.PathLike[str],
        model_name: str,
        config: ServerConfig | None = None,
        *,
        load_fn: Callable[[str], ExportedModel] | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
            raise ValueError(
                f"`model_name` must be a non-empty name without '/', ':', '?', '#' or spaces (it appears in URLs); "
                f"received {model_name!r}."
            )
        self.model_base_path, self.model_name = os.fspath(model_base_path), model_name
        self.config = config or ServerConfig()
        if load_fn is None:
            load_fn = functools.partial(loader.load, device=self.config.device, format=self.config.format)
        self.versions = VersionManager(
            self.model_base_path, model_name, load_fn=load_fn,
            max_cached_versions=self.config.max_cached_versions, check=self.config.self_check,
        )
        self.stopping = False
        self._httpd: _HTTPServer | None = None
        self._batcher: Batcher | None = None
        self._slots = threading.BoundedSemaphore(self.config.threads)
        self._threads: list[threading.Thread] = []
        self._stop_polling = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._body_bytes = 0  # request-body bytes reserved by requests being handled
        self._body_cond = threading.Condition()

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Load the latest version (synchronously), bind, and start serving and polling in threads.

        Raises:
            FileNotFoundError: If the base path is not a directory.
            OSError: If the address cannot be bound (e.g. the port is in use).
        """
        if self._httpd is not None:
            raise RuntimeError("This ModelServer was already started; make a new one.")
        if not os.path.isdir(self.model_base_path):
            raise FileNotFoundError(
                f"Model base path {self.model_base_path!r} is not a directory; point it at the directory that "
                f"holds numeric version directories (an exporter's export_dir_base)."
            )
        if self.config.num_torch_threads is not None:
            torch.set_num_threads(self.config.num_torch_threads)
        self.versions.poll()
        if self.versions.latest is None:
            logger.warning("Model %r: no servable version under %s yet%s.", self.model_name, self.model_base_path,
                           f"; looking again every {self.config.poll_secs:g}s" if self.config.poll_secs else "")
        self._httpd = _HTTPServer((self.config.host, self.config.port), self)
        if self.config.batching:
            self._batcher = Batcher(self.config.max_batch_size, self.config.batch_timeout_ms / 1000,
                                    self.config.batch_threads, in_flight=lambda: self._inflight)
        self._spawn("http", functools.partial(self._httpd.serve_forever, poll_interval=0.2))
        if self.config.poll_secs > 0:
            self._spawn("poller", self._poll_loop)
        logger.info("Serving model %r from %s at %s", self.model_name, self.model_base_path, self.url)
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"torch_estimator-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.config.poll_secs):
            try:
                self.versions.poll()
            except Exception:  # a surprise in the file system must not end polling
                logger.exception("Model %r: looking for new versions failed.", self.model_name)

    def poll_now(self) -> None:
        """Look for new versions now (the poller does this every ``poll_secs``)."""
        self.versions.poll()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._httpd is None:
            raise RuntimeError("The server is not started.")
        return self._httpd.server_port

    @property
    def url(self) -> str:
        """``http://host:port``, e.g. ``http://127.0.0.1:8501``."""
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._inflight_cond:
            self._inflight += 1
        try:
            yield
        finally:
            with self._inflight_cond:
                self._inflight -= 1
                self._inflight_cond.notify_all()

    @contextlib.contextmanager
    def _body_budget(self, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes of the in-flight body budget for one request (released when it is answered)."""
        limit, timeout = self.config.max_inflight_body_bytes, self.config.queue_timeout_secs
        with self._body_cond:
            if not self._body_cond.wait_for(lambda: self._body_bytes + size <= limit, timeout):
                raise ServingError(
                    503, f"Too many large requests at once (max_inflight_body_bytes={limit}); retry later.")
            self._body_bytes += size
        try:
            yield
        finally:
            with self._body_cond:
                self._body_bytes -= size
                self._body_cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: refuse new work, let requests in flight finish (up to ``timeout``, default
        ``shutdown_timeout_secs``), then close connections and stop the threads. Safe to call twice."""
        with self._stop_lock:
            if self.stopping:
                self._stopped.wait()
                return
            self.stopping = True
        timeout = self.config.shutdown_timeout_secs if timeout is None else timeout
        self._stop_polling.set()
        if self._httpd is not None:
            self._httpd.shutdown()  # the accept loop ends
            self._httpd.server_close()  # new connections are refused
            deadline = time.monotonic() + timeout
            with self._inflight_cond:
                while self._inflight and time.monotonic() < deadline:
                    self._inflight_cond.wait(deadline - time.monotonic())
                if self._inflight:
                    logger.warning("Stopping with %d request(s) still in flight after %gs.", self._inflight, timeout)
            self._httpd.close_connections()
        if self._batcher is not None:
            self._batcher.close()
        for thread in self._threads:
            thread.join(timeout=10)
        logger.info("Model server for %r stopped.", self.model_name)
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout`` passes); True if it stopped."""
        return self._stopped.wait(timeout)

    def serve_until_signal(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Serve until one of ``signals`` arrives (or :meth:`stop` is called), then stop gracefully.

        Call it from the main thread (Python delivers signals there).
        """
        received: list[int] = []
        previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in signals}
        try:
            while not received and not self._stopped.wait(0.2):
                pass
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if received:
            logger.info("Received %s: finishing requests in flight, then stopping.", signal.Signals(received[0]).name)
        self.stop()

    def __enter__(self) -> ModelServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "not started"
        return f"ModelServer(model_name={self.model_name!r}, model_base_path={self.model_base_path!r}, {where})"

    # -- routing ------------------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Endpoint:
        """The endpoint for a request (called with the body, or None for GET).

        Raises:
            ServingError: 400 for a malformed ``/v1`` path (as TF), 404 for an unknown path, 405 for a wrong method.
        """
        get = method in ("GET", "HEAD")

        def only(allowed: str, endpoint: Endpoint) -> Endpoint:
            if (allowed == "GET" and not get) or (allowed == "POST" and method != "POST"):
                raise ServingError(405, f"Method {method} is not allowed for {path}; use {allowed}.",
                                   {"Allow": "GET, HEAD" if allowed == "GET" else "POST"})
            return endpoint

        if path.lower().startswith("/v1/"):
            match = _V1_INFER.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                return only("POST", functools.partial(self._v1_infer, name, version, label, verb.lower()))
            match = _V1_STATUS.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                return only("GET", functools.partial(self._v1_status, name, version, label, bool(metadata)))
            raise ServingError(400, f"Malformed request: {method} {path}")
        if path in ("/v2", "/v2/"):
            return only("GET", self._v2_server)
        if path in ("/v2/health/live", "/v2/health/ready"):
            return only("GET", functools.partial(self._v2_health, path.endswith("ready")))
        match = _V2_MODEL.fullmatch(path)
        if match:
            name, version, action = match.groups()
            if action == "/infer":
                return only("POST", functools.partial(self._v2_infer, name, version))
            if action == "/ready":
                return only("GET", functools.partial(self._v2_ready, name, version))
            return only("GET", functools.partial(self._v2_metadata, name, version))
        raise ServingError(404, f"Not found: {path}. This server answers /v1/models/{self.model_name}[...] "
                                f"(TF Serving's REST API) and /v2/... (Open Inference Protocol).")

    # -- model access and inference -----------------------------------------------------------------------

    def _model(self, name: str, version: str | None, label: str | None = None) -> ExportedModel:
        number = None if version is None else int(version)
        spec = f"Latest({name})" if number is None else f"Specific({name}, {number})"
        if label is not None:
            raise ServingError(404, f"Unrecognized servable version label: {label} (this server defines no version "
                                    f"labels; use /versions/<number>).")
        if name != self.model_name:
            raise ServingError(404, f"Servable not found for request: {spec}; this server serves {self.model_name!r}.")
        try:
            return self.versions.get(number)
        except VersionNotFoundError as error:
            raise ServingError(404, str(error)) from None

    def _run(self, model: ExportedModel, key: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            prepared = model.prepare(inputs, key)
        except InvalidInputError as error:
            raise ServingError(400, str(error)) from None
        run = functools.partial(model, signature=key)
        try:
            if self._batcher is not None and batchable(model.signatures[key], prepared, self.config.max_batch_size):
                return dict(self._batcher.run((id(model), key), run, prepared))
            if not self._slots.acquire(timeout=self.config.queue_timeout_secs):
                raise ServingError(503, f"All {self.config.threads} inference slots stayed busy for "
                                        f"{self.config.queue_timeout_secs:g}s; retry later.")
            try:
                return run(prepared)
            finally:
                self._slots.release()
        except ServingError:
            raise
        except BatcherClosedError as error:
            raise ServingError(503, str(error)) from None
        except InvalidInputError as error:
            raise ServingError(400, str(error)) from None
        except Exception as error:  # the model's own failure
            logger.warning("Model %r version %s signature %r failed on a request.", self.model_name, model.version,
                           key, exc_info=True)
            raise ServingError(500, f"Model error in signature {key!r} (model {self.model_name!r}, version "
                                    f"{model.version}): {type(error).__name__}: {_last_line(error)}") from None

    # -- TF Serving endpoints -----------------------------------------------------------------------------

    def _v1_status(self, name: str | None, version: str | None, label: str | None, metadata: bool,
                   body: bytes | None) -> tuple[int, Any]:
        if not name:
            raise ServingError(400, "Missing model name in request.")
        if metadata:
            return 200, rest.model_metadata(self.model_name, self._model(name, version, label))
        if label is not None:
            self._model(name, version, label)  # raises the label error
        number = None if version is None else int(version)
        entries = self.versions.statuses(number) if name == self.model_name else []
        if not entries:
            what = f"version {number} of model {name}" if number is not None else f"any versions of model {name}"
            raise ServingError(404, f"Could not find {what}")
        return 200, rest.status_response([(s.version, s.state, s.error_code, s.error_message) for s in entries])

    def _v1_infer(self, name: str, version: str | None, label: str | None, verb: str,
                  body: bytes | None) -> tuple[int, Any]:
        if name != self.model_name or label is not None:
            self._model(name, version, label)  # raises 404 before the body is parsed
        data = _parse_json(body)
        model = self._model(name, version)
        if verb == "predict":
            request = rest.parse_predict(data, model)
            outputs = self._run(model, request.signature, request.inputs)
            return 200, rest.predict_response(outputs, request.row_format)
        request = rest.parse_examples(data, model, verb)
        outputs = self._run(model, request.signature, request.inputs)
        if verb == "classify":
            return 200, rest.classify_response(outputs, model.signatures[request.signature], request.signature)
        return 200, rest.regress_response(outputs, request.signature)

    # -- Open Inference Protocol endpoints ----------------------------------------------------------------

    def _v2_server(self, body: bytes | None) -> tuple[int, Any]:
        return 200, {"name": "torch_estimator", "version": _package_version(), "extensions": []}

    def _v2_health(self, ready: bool, body: bytes | None) -> tuple[int, Any]:
        if ready and self.versions.latest is None:
            return 400, None  # the protocol: 200 is true, 4xx false, empty body
        return 200, None

    def _v2_ready(self, name: str, version: str | None, body: bytes | None) -> tuple[int, Any]:
        if name != self.model_name:
            raise ServingError(404, f"Unknown model {name!r}; this server serves {self.model_name!r}.")
        latest = self.versions.latest
        loaded = {int(s.version) for s in self.versions.statuses() if s.state == "AVAILABLE"}
        ready = latest is not None if version is None else int(version) in loaded
        return (200 if ready else 400), None

    def _v2_metadata(self, name: str, version: str | None, body: bytes | None) -> tuple[int, Any]:
        model = self._model(name, version)
        loaded = [s.version for s in self.versions.statuses() if s.state == "AVAILABLE"]
        return 200, rest.v2_model_metadata(self.model_name, model, loaded)

    def _v2_infer(self, name: str, version: str | None, body: bytes | None) -> tuple[int, Any]:
        if name != self.model_name:
            self._model(name, version)
        data = _parse_json(body)
        model = self._model(name, version)
        request = rest.parse_v2_infer(data, model)
        outputs = self._run(model, request.signature, request.inputs)
        return 200, rest.v2_infer_response(self.model_name, model, outputs, request)


def serve(
    model_base_path: str | os.PathLike[str],
    model_name: str,
    *,
    load_fn: Callable[[str], ExportedModel] | None = None,
    **options: Any,
) -> ModelServer:
    """Start serving ``model_base_path``'s latest version as ``model_name``; returns the running server.

    Args:
        model_base_path: The directory holding numeric version directories.
        model_name: The name in URLs (``/v1/models/<model_name>:predict``).
        load_fn: See :class:`ModelServer`.
        **options: :class:`ServerConfig` fields, e.g. ``port=0`` (any free port), ``batching=True``.

    Returns:
        A started :class:`ModelServer`: ``server.url``, ``server.stop()``; also a context manager.

    Raises:
        FileNotFoundError: If ``model_base_path`` is not a directory.
        ValueError: For an invalid option.
        OSError: If the address cannot be bound.
    """
    return ModelServer(model_base_path, model_name, ServerConfig(**options), load_fn=load_fn).start()
