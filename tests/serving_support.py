"""Helpers shared by the serving tests (this module holds no tests).

Real exports come from a small classifier trained by a real Estimator (``export_support``), with a
predict, two classification, a regression and a single-output signature, plus alternative receivers for a
uint8 input (``pixels:``), two inputs (``two:``) and an int64 input (``ids:``). Two versions differ in their
training steps, so their answers differ. They are built once per test session.

Fake models (:func:`fake_model`) wrap Python functions in a loader ``ExportedModel``, for behaviour that a
real export cannot show on demand: a slow model, a broken one, a failing self-check.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from torch_estimator import export
from torch_estimator.serving import loader

from .export_support import LABELS, NUM_FEATURES, make_model_fn, train_estimator

V1, V2 = 1, 2  # version numbers given to the two exports in the tests' base directories
_CACHE: dict[str, Any] = {}


def _export_outputs(predictions: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, Any]:
    probabilities = predictions["probabilities"]
    all_ids = torch.arange(probabilities.shape[1]).expand(probabilities.shape[0], -1)
    return {
        "serving_default": export.PredictOutput(predictions),
        "classification": export.ClassificationOutput(probabilities, labels=LABELS),
        "classify_ids": export.ClassificationOutput(probabilities, classes=all_ids, labels=LABELS),
        "regression": export.RegressionOutput(logits[:, :1]),
        "single": export.PredictOutput(logits),
    }


def _receiver() -> export.ServingInputReceiver:
    spec = lambda dtype: export.TensorSpec([None, NUM_FEATURES], dtype)  # noqa: E731
    return export.ServingInputReceiver(
        None,
        {"x": spec(torch.float32)},
        receiver_tensors_alternatives={
            "pixels": export.ServingInputReceiver(lambda r: {"x": r["pixels"].float() / 255}, {"pixels": spec(torch.uint8)}),
            "two": export.ServingInputReceiver(lambda r: {"x": r["a"] - r["b"]}, {"a": spec(torch.float32), "b": spec(torch.float32)}),
            "ids": export.ServingInputReceiver(lambda r: {"x": r["ids"].float()}, {"ids": spec(torch.int64)}),
        },
    )


def exports(tmp_path_factory: Any) -> dict[int, str]:
    """``{1: export dir, 2: export dir}``: two real exports with different weights (built once per session)."""
    if "exports" not in _CACHE:
        root = tmp_path_factory.mktemp("serving_exports")
        dirs = {}
        for version, steps in ((V1, 2), (V2, 40)):
            est = train_estimator(root / f"model{version}", make_model_fn(_export_outputs), steps=steps)
            dirs[version] = est.export_saved_model(root / f"exports{version}", _receiver)
        _CACHE["exports"] = dirs
    return _CACHE["exports"]


def copy_version(source: str, base: str | os.PathLike[str], version: int) -> str:
    """Copy an export to ``base/<version>`` as exporters do: a temporary name, then a rename."""
    temp, final = Path(base) / f"temp-{version}", Path(base) / str(version)
    shutil.copytree(source, temp)
    os.rename(temp, final)
    return str(final)


# ----------------------------------------------------------------------------------------------------------
# HTTP


class Client:
    """A keep-alive HTTP/1.1 client for one server (``http.client``), returning ``(status, body, headers)``
    with the body parsed as JSON when it is JSON."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = body if body is None or isinstance(body, (bytes, str)) else json.dumps(body)
        try:
            self.connection.request(method, path, body=data, headers=dict(headers or {}))
            response = self.connection.getresponse()
            raw = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.connection.close()  # the server closed a kept-alive connection: the next call reconnects
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        content = json.loads(raw) if raw and response.getheader("Content-Type") == "application/json" else raw
        return response.status, content, {k.lower(): v for k, v in response.getheaders()}

    def get(self, path: str) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # tests make clients inline: close their sockets without a ResourceWarning
        self.connection.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def parse_raw_response(data: bytes) -> tuple[int, Any]:
    """``(status, JSON body)`` of the first response in raw bytes."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    body = rest[:length]
    return status, json.loads(body) if body else None


# ----------------------------------------------------------------------------------------------------------
# Fake models


def fake_model(
    runner: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *,
    version: int = 1,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> loader.ExportedModel:
    """An ``ExportedModel`` whose default signature runs ``runner`` (x: float32 [-1, 2] -> y: float32 [-1, 2])."""
    document = {
        "format": loader.FORMAT,
        "default_signature": "serving_default",
        "signatures": {"serving_default": {
            "method_name": "tensorflow/serving/predict", "function": "forward",
            "inputs": dict(inputs or {"x": {"dtype": "float32", "shape": [-1, 2]}}),
            "outputs": dict(outputs or {"y": {"dtype": "float32", "shape": [-1, 2]}}),
        }},
    }
    return loader.ExportedModel(f"/fake/{version}", version, "torchscript", document, {"forward": runner}, torch.device("cpu"))


def scaled(factor: float) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A runner ``y = x * factor``."""
    return lambda inputs: {"y": inputs["x"] * factor}


def fake_base(tmp_path: Path, versions: list[int]) -> Path:
    """A base directory with empty numeric version directories (a fake ``load_fn`` fills them in)."""
    base = tmp_path / "base"
    for version in versions:
        (base / str(version)).mkdir(parents=True)
    return base


@contextlib.contextmanager
def cli_server(base: str | os.PathLike[str], name: str, *, cwd: str | os.PathLike[str] | None = None,
               env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``torch-estimator serve`` on a free port in a subprocess; yield its URL; stop it with SIGTERM."""
    server = subprocess.Popen([sys.executable, "-m", "torch_estimator.cli", "serve", "--model_base_path", str(base),
                               "--model_name", name, "--port", "0"], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        assert server.stdout is not None
        for line in server.stdout:
            found = re.search(r"http://[0-9.]+:\d+", line)
            if found:
                url = found.group(0)
                break
        assert url, "the server printed no URL"
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        if server.stdout is not None:
            server.stdout.close()
