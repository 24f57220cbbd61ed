"""A REST server for exports, compatible with TensorFlow Serving's API: ``torch-estimator serve``.

Serves the highest numeric version under a base directory, picks up new versions as exporters write them
(:mod:`.versions`), and answers TF Serving's REST API and the Open Inference Protocol (KServe v2, with
Triton's binary tensor data extension) (:mod:`.rest`), checking every input against the export's signature
before the model runs. A client written for ``tensorflow_model_server --rest_api_port``, or a
``tritonclient.http`` or KServe ``InferenceRESTClient``, works unchanged::

    server = serve("exports/mnist", "mnist", port=8501)       # loads, self-checks, listens on 127.0.0.1
    # POST http://127.0.0.1:8501/v1/models/mnist:predict  {"instances": [[0.0, ...784 values]]}
    server.stop()                                              # or: with serve(...) as server: ...

Endpoints (``NAME`` is the model name, ``/versions/V`` optional wherever shown):

=========================================================  ====================================================
``GET  /v1/models/NAME[/versions/V]``                       version status (``model_version_status``)
``GET  /v1/models/NAME[/versions/V]/metadata``              signatures in TF's ``signature_def`` shape
``POST /v1/models/NAME[/versions/V]:predict``               ``instances`` / ``inputs`` -> ``predictions`` / ``outputs``
``POST /v1/models/NAME[/versions/V]:classify|:regress``     ``examples`` -> ``results``
``GET  /v2``, ``/v2/health/live``, ``/v2/health/ready``       server metadata; ``{"live": true}``, ``{"ready": ...}``
``GET  /v2/models/NAME[/versions/V][/ready]``               model metadata, readiness
``POST /v2/models/NAME[/versions/V]/infer``                 Open Inference Protocol inference (JSON or binary)
=========================================================  ====================================================

Errors are ``{"error": "..."}`` with TF Serving's codes: 400 for client mistakes (each names the input or
key and what was expected), 404 unknown model or version, 405 wrong method, 408 a request that arrived too
slowly, 411/413 missing or oversized body, 415 an unknown ``Content-Encoding``, 500 the model's own errors,
503 when shutting down or overloaded.

**Layers.** This module is the model server: routing, versions, inference, batching. The HTTP side is
:mod:`.app` (an ASGI application on starlette: bodies, limits, JSON errors) run by :mod:`.transport`
(uvicorn with its httptools parser, in a background thread, with header deadlines and a connection cap).
Those need the ``serve`` extra (``pip install 'torch-estimator[serve]'``); :meth:`ModelServer.start` says so
when it is missing.

**Concurrency.** One event loop handles every connection; it never runs a model. Inference runs in a pool of
``threads`` worker threads (TorchScript releases the GIL in its kernels); a request waits up to
``queue_timeout_secs`` for a free one (then 503). Decoding large bodies also happens off the loop. With
``batching=True``. requests that are waiting at the same time are merged (see :mod:`.batching`): a lone
request never waits for companions. ``num_torch_threads`` calls ``torch.set_num_threads`` (process-wide).

**Shutdown.** :meth:`ModelServer.stop` (and SIGTERM or SIGINT under :meth:`ModelServer.serve_until_signal`,
which the CLI uses) stops accepting connections, closes idle ones (including those whose request headers
never arrived), answers new requests on open connections with 503, waits up to ``shutdown_timeout_secs`` for
requests in flight (including ones still uploading their body) to finish, then closes the remaining
connections.

Run it on loopback or behind a reverse proxy for TLS and authentication; it has neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

# Absolute imports: serving/ is a namespace package (no __init__.py), so doctest collection imports these
# files as top-level modules, where relative imports fail.
from torch_estimator.serving import loader, rest
from torch_estimator.serving.batching import Batcher, BatcherClosedError, batchable
from torch_estimator.serving.loader import ExportedModel, InvalidInputError
from torch_estimator.serving.rest import ServingError
from torch_estimator.serving.rest import last_line as _last_line
from torch_estimator.serving.versions import VersionManager, VersionNotFoundError

__all__ = ["ServerConfig", "ModelServer", "serve"]

logger = logging.getLogger("torch_estimator.serving")

# TF Serving's routes (http_rest_api_util.cc), matched case-insensitively against the whole path.
_V1_INFER = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
_V1_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.I)
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/(\d+))?(/ready|/infer)?")
_MODEL_NAME = re.compile(r"[^/:?#\s]+")
_OFFLOAD_BYTES = 1 << 16  # parse bodies from this size on in a worker thread, off the event loop
_BINARY_HEADER = "inference-header-content-length"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server listens, loads and runs (all keyword-only; every field has a safe default).

    Attributes:
        host: The address to bind (loopback by default; ``0.0.0.0`` for every interface).
        port: The port (0: any free one; :attr:`ModelServer.port` says which).
        poll_secs: How often to look for new versions (0: never, only at start).
        threads: How many inferences may run at once (the inference thread pool).
        batching: Merge requests that wait at the same time into batches.
        max_batch_size: The most rows in a merged batch.
        batch_threads: How many batches may run at once.
        max_body_bytes: Larger request bodies (after decoding ``Content-Encoding``) are refused with 413.
        max_inflight_body_bytes: The most request-body bytes being read and decoded at once (JSON decodes to
            several times its size in memory); a request beyond it waits up to ``queue_timeout_secs`` (then 503).
        num_torch_threads: ``torch.set_num_threads`` (process-wide), or None to leave torch's default.
        max_cached_versions: Versions other than the latest kept loaded for pinned requests (LRU).
        max_connections: Open connections beyond this make room by closing the longest idle connection;
            when none is idle, the new one is answered 503 and closed.
        idle_timeout_secs: A connection that sends nothing for this long (between requests) is closed.
        header_timeout_secs: The most time a request line and headers may take once their first byte came
            (then 408): bounds slow-header (slowloris) clients.
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
    batch_threads: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    max_inflight_body_bytes: int = 128 * 1024 * 1024
    num_torch_threads: int | None = None
    max_cached_versions: int = 1
    max_connections: int = 1024
    idle_timeout_secs: float = 30.0
    header_timeout_secs: float = 10.0
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
        need(integer(self.max_inflight_body_bytes) and self.max_inflight_body_bytes >= self.max_body_bytes,
             "max_inflight_body_bytes", f"an integer >= max_body_bytes ({self.max_body_bytes})")
        need(self.num_torch_threads is None or (integer(self.num_torch_threads) and self.num_torch_threads >= 1),
             "num_torch_threads", "None or an integer >= 1")
        need(integer(self.max_cached_versions) and self.max_cached_versions >= 0, "max_cached_versions",
             "an integer >= 0")
        for name in ("idle_timeout_secs", "header_timeout_secs", "request_timeout_secs", "queue_timeout_secs",
                     "shutdown_timeout_secs"):
            need(number(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0")
        need(self.format in (None, *loader.FORMATS), "format", "'torchscript', 'pt2', 'aoti' or None")
        need(isinstance(self.batching, bool), "batching", "a bool")
        need(isinstance(self.self_check, bool), "self_check", "a bool")


def _parse_json(body: bytes | None) -> Any:
    if not body or not body.strip():
        raise ServingError(400, "JSON Parse error: The document is empty.")
    try:
        return json.loads(body)
    except RecursionError:
        raise ServingError(400, "JSON Parse error: the document is nested too deeply.") from None
    except ValueError as error:  # includes UnicodeDecodeError
        raise ServingError(400, f"JSON Parse error: {error}.") from None



def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-estimator")
    except Exception:  # not installed (a checkout on sys.path): say so rather than fail
        return "unknown"


def _http_stack() -> tuple[Any, Any]:
    """The ``app`` and ``transport`` modules, which need the ``serve`` extra (starlette, uvicorn, httptools)."""
    try:
        from torch_estimator.serving import app, transport
    except ImportError as error:
        raise ImportError(
            f"torch-estimator serve needs uvicorn, httptools and starlette ({error}); install them with "
            f"pip install 'torch-estimator[serve]'."
        ) from error
    return app, transport


Reply = Any  # app.Reply (imported lazily: the HTTP stack is an optional extra)
Endpoint = Callable[[Any], Any]


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
        self._app: Any = None
        self._transport: Any = None
        self._batcher: Batcher | None = None
        self._workers: Any = None  # app.WorkerThreads: the inference threads
        self._slots: asyncio.Semaphore | None = None  # made on the event loop's thread
        self._threads: list[threading.Thread] = []
        self._stop_polling = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Load the latest version (synchronously), bind, and start serving and polling in threads.

        Raises:
            FileNotFoundError: If the base path is not a directory.
            ImportError: If the ``serve`` extra (uvicorn, httptools, starlette) is not installed.
            OSError: If the address cannot be bound (e.g. the port is in use).
        """
        if self._transport is not None:
            raise RuntimeError("This ModelServer was already started; make a new one.")
        if not os.path.isdir(self.model_base_path):
            raise FileNotFoundError(
                f"Model base path {self.model_base_path!r} is not a directory; point it at the directory that "
                f"holds numeric version directories (an exporter's export_dir_base)."
            )
        app, transport = _http_stack()
        if self.config.num_torch_threads is not None:
            torch.set_num_threads(self.config.num_torch_threads)
        self.versions.poll()
        if self.versions.latest is None:
            logger.warning("Model %r: no servable version under %s yet%s.", self.model_name, self.model_base_path,
                           f"; looking again every {self.config.poll_secs:g}s" if self.config.poll_secs else "")
        config = self.config
        self._workers = app.WorkerThreads(config.threads + (config.batch_threads if config.batching else 0))
        if config.batching:
            self._batcher = Batcher(config.max_batch_size, config.batch_threads, execute=self._in_pool)
        self._app = app.RestApp(self, app.Limits(
            max_body_bytes=config.max_body_bytes, max_inflight_body_bytes=config.max_inflight_body_bytes,
            request_timeout_secs=config.request_timeout_secs, queue_timeout_secs=config.queue_timeout_secs))
        guards = transport.Guards(max_connections=config.max_connections,
                                  header_timeout_secs=config.header_timeout_secs,
                                  idle_timeout_secs=config.idle_timeout_secs)
        try:
            self._transport = transport.Transport(self._app, config.host, config.port, guards,
                                                  in_flight=lambda: self._app.in_flight)
            self._transport.start()
        except BaseException:
            self._transport = None
            raise
        if self.config.poll_secs > 0:
            thread = threading.Thread(target=self._poll_loop, name="torch_estimator-poller", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("Serving model %r from %s at %s", self.model_name, self.model_base_path, self.url)
        return self

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
        if self._transport is None:
            raise RuntimeError("The server is not started.")
        return int(self._transport.port)

    @property
    def url(self) -> str:
        """``http://host:port``, e.g. ``http://127.0.0.1:8501``."""
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections open now (idle or working)."""
        return 0 if self._transport is None else len(self._transport.server.server_state.connections)

    @property
    def in_flight(self) -> int:
        """Requests whose headers have arrived and that are not answered yet."""
        return 0 if self._app is None else int(self._app.in_flight)

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
        if self._transport is not None:
            left = self._transport.stop(timeout)
            if left:
                logger.warning("Stopping with %d request(s) still in flight after %gs.", left, timeout)
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
        return self if self._transport is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._transport is not None else "not started"
        return f"ModelServer(model_name={self.model_name!r}, model_base_path={self.model_base_path!r}, {where})"

    # -- routing ------------------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Endpoint:
        """The endpoint for a request: an async function of the request (body None for GET) to a reply.

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

    async def _model_async(self, name: str, version: str | None, label: str | None = None) -> ExportedModel:
        """:meth:`_model`, off the event loop when a pinned version may have to be loaded from disk."""
        if version is None or name != self.model_name or label is not None:
            return self._model(name, version, label)
        return await self._off_loop(functools.partial(self._model, name, version, label))

    async def _in_pool(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` in an inference thread."""
        return await self._workers.run(function)

    @staticmethod
    async def _off_loop(function: Callable[[], Any], size: int = _OFFLOAD_BYTES) -> Any:
        """Run ``function`` here when ``size`` is small, else in the loop's default thread pool."""
        if size < _OFFLOAD_BYTES:
            return function()
        return await asyncio.get_running_loop().run_in_executor(None, function)

    async def _run(self, model: ExportedModel, key: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            rest.check_float_range(model.signatures[key], inputs)
            prepared = model.prepare(inputs, key)
        except InvalidInputError as error:
            raise ServingError(400, str(error)) from None
        run = functools.partial(model, signature=key)
        try:
            if self._batcher is not None and batchable(model.signatures[key], prepared, self.config.max_batch_size):
                return dict(await self._batcher.run((id(model), key), run, prepared))
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.config.threads)
            if self._slots.locked():  # wait, within the queue timeout (a free slot needs no timer)
                try:
                    await asyncio.wait_for(self._slots.acquire(), self.config.queue_timeout_secs)
                except asyncio.TimeoutError:
                    raise ServingError(503, f"All {self.config.threads} inference slots stayed busy for "
                                            f"{self.config.queue_timeout_secs:g}s; retry later.") from None
            else:
                await self._slots.acquire()
            try:
                return await self._in_pool(functools.partial(run, prepared))
            finally:
                self._slots.release()
        except ServingError:
            raise
        except (BatcherClosedError, RuntimeError) as error:
            if self.stopping:  # the pool or batcher was shut down under the request
                raise ServingError(503, "The server is shutting down; retry on another replica.") from None
            if isinstance(error, BatcherClosedError):
                raise ServingError(503, str(error)) from None
            raise self._model_error(model, key, error) from None
        except InvalidInputError as error:
            raise ServingError(400, str(error)) from None
        except Exception as error:  # the model's own failure
            raise self._model_error(model, key, error) from None

    def _model_error(self, model: ExportedModel, key: str, error: BaseException) -> ServingError:
        logger.warning("Model %r version %s signature %r failed on a request.", self.model_name, model.version,
                       key, exc_info=error)
        return ServingError(500, f"Model error in signature {key!r} (model {self.model_name!r}, version "
                                 f"{model.version}): {type(error).__name__}: {_last_line(error)}")

    def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        return self._app_module.Reply.json(status, payload, headers)

    @functools.cached_property
    def _app_module(self) -> Any:
        return _http_stack()[0]

    # -- TF Serving endpoints -----------------------------------------------------------------------------

    async def _v1_status(self, name: str | None, version: str | None, label: str | None, metadata: bool,
                         request: Any) -> Reply:
        if not name:
            raise ServingError(400, "Missing model name in request.")
        if metadata:
            return self._reply(200, rest.model_metadata(self.model_name, await self._model_async(name, version, label)))
        if label is not None:
            self._model(name, version, label)  # raises the label error
        number = None if version is None else int(version)
        entries = self.versions.statuses(number) if name == self.model_name else []
        if not entries:
            what = f"version {number} of model {name}" if number is not None else f"any versions of model {name}"
            raise ServingError(404, f"Could not find {what}")
        return self._reply(200, rest.status_response([(s.version, s.state, s.error_code, s.error_message)
                                                      for s in entries]))

    async def _v1_infer(self, name: str, version: str | None, label: str | None, verb: str, request: Any) -> Reply:
        if name != self.model_name or label is not None:
            self._model(name, version, label)  # raises 404 before the body is parsed
        body = request.body
        model = await self._model_async(name, version)
        if verb == "predict":
            parsed = await self._off_loop(lambda: rest.parse_predict(_parse_json(body), model), len(body or b""))
            outputs = await self._run(model, parsed.signature, parsed.inputs)
            return await self._off_loop(lambda: self._reply(200, rest.predict_response(outputs, parsed.row_format)),
                                        _size(outputs))
        parsed = await self._off_loop(lambda: rest.parse_examples(_parse_json(body), model, verb), len(body or b""))
        outputs = await self._run(model, parsed.signature, parsed.inputs)
        if verb == "classify":
            signature = model.signatures[parsed.signature]
            return self._reply(200, rest.classify_response(outputs, signature, parsed.signature))
        return self._reply(200, rest.regress_response(outputs, parsed.signature))

    # -- Open Inference Protocol endpoints ----------------------------------------------------------------

    async def _v2_server(self, request: Any) -> Reply:
        return self._reply(200, {"name": "torch_estimator", "version": _package_version(),
                                 "extensions": ["binary_tensor_data"]})

    async def _v2_health(self, ready: bool, request: Any) -> Reply:
        if not ready:
            return self._reply(200, {"live": True})
        is_ready = self.versions.latest is not None and not self.stopping
        return self._reply(200 if is_ready else 503, {"ready": is_ready})

    async def _v2_ready(self, name: str, version: str | None, request: Any) -> Reply:
        if name != self.model_name:
            raise ServingError(404, f"Unknown model {name!r}; this server serves {self.model_name!r}.")
        latest = self.versions.latest
        loaded = {int(s.version) for s in self.versions.statuses() if s.state == "AVAILABLE"}
        ready = latest is not None if version is None else int(version) in loaded
        return self._reply(200 if ready else 400, {"name": name, "ready": ready})

    async def _v2_metadata(self, name: str, version: str | None, request: Any) -> Reply:
        model = await self._model_async(name, version)
        loaded = [s.version for s in self.versions.statuses() if s.state == "AVAILABLE"]
        return self._reply(200, rest.v2_model_metadata(self.model_name, model, loaded))

    async def _v2_infer(self, name: str, version: str | None, request: Any) -> Reply:
        if name != self.model_name:
            self._model(name, version)
        body = request.body or b""
        model = await self._model_async(name, version)

        def parse() -> rest.V2Request:
            head, binary = rest.split_binary_body(body, request.headers.get(_BINARY_HEADER))
            return rest.parse_v2_infer(_parse_json(head), model, binary)

        parsed = await self._off_loop(parse, len(body))
        outputs = await self._run(model, parsed.signature, parsed.inputs)

        def answer() -> Reply:
            blobs: list[bytes] = []
            payload = rest.v2_infer_response(self.model_name, model, outputs, parsed, blobs)
            if not parsed.binary_outputs:
                return self._reply(200, payload)
            head = json.dumps(payload).encode("utf-8")
            return self._app_module.Reply(200, b"".join([head, *blobs]), "application/octet-stream",
                                          {"Inference-Header-Content-Length": str(len(head))})

        return await self._off_loop(answer, _size(outputs))


def _size(outputs: dict[str, torch.Tensor]) -> int:
    """Bytes in a set of outputs (writing large ones as JSON happens off the event loop)."""
    return sum(t.numel() * t.element_size() for t in outputs.values())


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
