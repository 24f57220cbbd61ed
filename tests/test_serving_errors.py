"""Malformed and hostile requests: each is answered with the right status and a message that says what was
wrong, as ``{"error": ...}``, and the server stays healthy after all of them."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time

import pytest
import torch

from torch_estimator.serving.server import serve

from .serving_support import (
    V2,
    Client,
    copy_version,
    exports,
    fake_base,
    fake_model,
    parse_raw_response,
    raw_exchange,
)

NAME = "tiny"
LIMIT = 64 * 1024
PREDICT = f"/v1/models/{NAME}:predict"
ROW = [0.1, 0.2, 0.3, 0.4]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with serve(base, NAME, port=0, poll_secs=0, max_body_bytes=LIMIT, idle_timeout_secs=5,
               request_timeout_secs=1.5) as running:
        yield running


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def v2(inputs, **extra):
    return {"inputs": inputs, **extra}


# (method, path, body, status, message regex). Bodies that are not bytes are sent as JSON.
CASES = [
    # The body is not the JSON a request needs.
    ("POST", PREDICT, b"{bad", 400, r"^JSON Parse error: Expecting property name"),
    ("POST", PREDICT, b"", 400, r"^JSON Parse error: The document is empty"),
    ("POST", PREDICT, b"\xff\xfe\x00garbage", 400, r"^JSON Parse error"),
    ("POST", PREDICT, b"[" * 5000 + b"]" * 5000, 400, r"JSON Parse error: the document is nested too deeply"),
    ("POST", PREDICT, [1, 2], 400, r"The request body must be a JSON object; received a list"),
    ("POST", PREDICT, {"instances": [ROW], "inputs": [ROW]}, 400, r"expecting only one of 'inputs' or 'instances'"),
    ("POST", PREDICT, {"instance": [ROW]}, 400, r"^Missing 'inputs' or 'instances' key"),
    # The row format.
    ("POST", PREDICT, {"instances": {"x": ROW}}, 400, r"Expecting 'instances' to be an list/array; received an object"),
    ("POST", PREDICT, {"instances": []}, 400, r"No values in 'instances' array"),
    ("POST", PREDICT, {"instances": [ROW, [1.0, 2.0]]}, 400, r"Expecting shape \[4\] but got: \[2\] at instances\[1\].*input 'x'"),
    ("POST", PREDICT, {"instances": [[[1.0, 2.0], [3.0]]]}, 400, r"instances\[0\] is ragged: instances\[0\]\[1\] has shape \[1\]"),
    ("POST", PREDICT, {"instances": [[1.0, 2.0, 3.0]]}, 400, r"Input 'x' expects shape \[-1, 4\] \(-1: any size\) but received \[1, 3\]"),
    ("POST", PREDICT, {"instances": [["a", "b", "c", "d"]]}, 400, r"instances\[0\]\[0\] is a string \('a'\); input 'x' takes float32 numbers"),
    ("POST", PREDICT, {"instances": [[1.0, 2.0, 3.0, None]]}, 400, r"instances\[0\]\[3\] is null .*input 'x' takes float32"),
    ("POST", PREDICT, {"instances": [[1.0, 2.0, 3.0, {"a": 1}]]}, 400, r"instances\[0\]\[3\] is an object"),
    ("POST", PREDICT, {"instances": [{"x": ROW, "z": 1}]}, 400, r"instances\[0\] has inputs \['x', 'z'\] but signature 'serving_default' takes \['x'\]: unknown \['z'\]"),
    ("POST", PREDICT, {"instances": [{"x": ROW}, ROW]}, 400, r"Expecting object but got a list at item 1 of 'instances'"),
    ("POST", PREDICT, {"instances": [ROW, {"x": ROW}]}, 400, r"Expecting value/list but got object at item 1"),
    ("POST", PREDICT, {"instances": [[2**70, 0, 0, 0]]}, 400, r"instances\[0\]\[0\] is 1180591620717411303424, outside the range of a 64-bit integer"),
    ("POST", PREDICT, {"signature_name": "two:serving_default", "instances": [ROW]}, 400, r"'instances' is a plain list, but signature 'two:serving_default' takes several inputs \['a', 'b'\]"),
    # The columnar format.
    ("POST", PREDICT, {"inputs": {"y": [ROW]}}, 400, r"'inputs' has inputs \['y'\] but signature 'serving_default' takes \['x'\]: missing \['x'\]; unknown \['y'\]"),
    ("POST", PREDICT, {"signature_name": "two:serving_default", "inputs": [ROW]}, 400, r"'inputs' is a plain value/list, but signature 'two:serving_default' takes several inputs"),
    ("POST", PREDICT, {"inputs": "1,2,3,4"}, 400, r"inputs is a string \('1,2,3,4'\); input 'x' takes float32 numbers"),
    # Signatures.
    ("POST", PREDICT, {"signature_name": "nope", "instances": [ROW]}, 400, r'Serving signature name: "nope" not found in signature def; available: \[.*\'serving_default\''),
    ("POST", PREDICT, {"signature_name": 5, "instances": [ROW]}, 400, r"'signature_name' must be a string; received a number"),
    # Dtypes: only safe casts.
    ("POST", PREDICT, {"signature_name": "ids:serving_default", "instances": [[0.5, 1.0, 2.0, 3.0]]}, 400, r"Input 'ids' expects int64 but received float64 values; a float cannot be converted to int safely"),
    ("POST", PREDICT, {"signature_name": "pixels:serving_default", "instances": [[0, 1, 2, 300]]}, 400, r"Input 'pixels' expects uint8 but holds values in \[0, 300\], outside its range \[0, 255\]"),
    ("POST", PREDICT, {"signature_name": "pixels:serving_default", "instances": [[0, 1, 2, -1]]}, 400, r"Input 'pixels' expects uint8 but holds values in \[-1, 2\]"),
    # b64 values.
    ("POST", PREDICT, {"signature_name": "pixels:serving_default", "instances": [{"b64": "@@not base64@@"}]}, 400, r"instances\[0\]: 'b64' is not valid base64"),
    ("POST", PREDICT, {"signature_name": "pixels:serving_default", "instances": [b64(b"\x01\x02\x03")]}, 400, r"instances\[0\] decodes to 3 uint8 values, which do not fill input 'pixels''s shape \[4\]"),
    ("POST", PREDICT, {"instances": [b64(b"\x00" * 5)]}, 400, r"instances\[0\]: 5 bytes are not a whole number of float32 values \(4 bytes each\)"),
    ("POST", PREDICT, {"instances": [{"b64": 3}]}, 400, r"unknown \['b64'\] \(\{\"b64\": ...\} must hold a base64 string\)"),
    # Classify and regress.
    ("POST", f"/v1/models/{NAME}:classify", {"examples": [{"x": ROW}]}, 400, r"Expected classification signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/predict"),
    ("POST", f"/v1/models/{NAME}:regress", {"signature_name": "classification", "examples": [{"x": ROW}]}, 400, r"Expected regression signature method_name to be tensorflow/serving/regress"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification"}, 400, r"When method is classify, key 'examples' is expected and was not found"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification", "examples": {"x": ROW}}, 400, r"Expecting 'examples' value to be an list/array"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification", "examples": []}, 400, r"'examples' value is an empty array"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification", "examples": [ROW]}, 400, r"Example must be JSON object but got JSON a list \(examples\[0\]\)"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification", "examples": [{"x": [1.0, 2.0, 3.0]}]}, 400, r"examples\[0\]\['x'\] has 3 value\(s\), but input 'x' takes 4 per example"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "classification", "examples": [{"y": ROW}]}, 400, r"examples\[0\] \(with 'context'\) has features \['y'\] but signature 'classification' takes inputs \['x'\]: missing \['x'\]; unknown \['y'\]"),
    ("POST", f"/v1/models/{NAME}:classify", {"signature_name": "two:classification", "context": {"a": ROW}, "examples": [{"a": ROW, "b": ROW}]}, 400, r"Features \['a'\] appear in both 'context' and examples\[0\]"),
    ("POST", f"/v1/models/{NAME}:regress", {"signature_name": "regression", "context": [ROW], "examples": [{"x": ROW}]}, 400, r"'context' must be a JSON object"),
    # Open Inference Protocol.
    ("POST", f"/v2/models/{NAME}/infer", {"outputs": []}, 400, r"'inputs' must be a non-empty list"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]), 400, r"Input 'x': shape \[1, 4\] needs 4 values but 'data' has 3"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "y", "shape": [1, 4], "datatype": "FP32", "data": ROW}]), 400, r"Unexpected inference input 'y' \(inputs\[0\]\); the model takes \['x'\]"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["abcd"]}]), 400, r"Input 'x' BYTES element 0 decodes to 1 float32 values, which do not fill input 'x''s shape \[4\]"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1e39, 0, 0, 0]}]), 400, r"Input 'x' holds 1e\+39, outside the range of float32 .*it would become infinite"),
    ("POST", PREDICT, {"instances": [[1.0, 2.0, -1e39, 4.0]]}, 400, r"Input 'x' holds -1e\+39, outside the range of float32 \(largest finite value 3.40282e\+38\); it would become infinite"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": ROW}]), 400, r"Input 'x': unknown datatype 'FP99'"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": ROW}]), 400, r"Input 'x': datatype INT32 but 'data' holds 'f'-kind values \(floats\)"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, -4], "datatype": "FP32", "data": ROW}]), 400, r"Input 'x': 'shape' must be a list of non-negative integers"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "FP32"}]), 400, r"inputs\[0\] lacks \['data'\]"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}], outputs=[{"name": "nope"}]), 400, r"Unexpected requested outputs \['nope'\]"),
    ("POST", f"/v2/models/{NAME}/infer", v2([{"name": "ids", "shape": [1, 4], "datatype": "FP32", "data": ROW}], parameters={"signature_name": "ids:serving_default"}), 400, r"Input 'ids' expects int64 but received float32 values"),
    # Unknown models, versions and paths.
    ("POST", "/v1/models/nope:predict", {"instances": [ROW]}, 404, r"^Servable not found for request: Latest\(nope\)"),
    ("POST", f"/v1/models/{NAME}/versions/99:predict", {"instances": [ROW]}, 404, rf"^Servable not found for request: Specific\({NAME}, 99\)$"),
    ("POST", f"/v1/models/{NAME}/labels/stable:predict", {"instances": [ROW]}, 404, r"Unrecognized servable version label: stable"),
    ("GET", "/v1/models/nope", None, 404, r"^Could not find any versions of model nope$"),
    ("GET", f"/v1/models/{NAME}/versions/99", None, 404, rf"^Could not find version 99 of model {NAME}$"),
    ("GET", f"/v1/models/{NAME}/versions/99/metadata", None, 404, rf"Specific\({NAME}, 99\)"),
    ("GET", "/v1/models", None, 400, r"^Missing model name in request.$"),
    ("GET", f"/v1/models/{NAME}/extra", None, 400, rf"^Malformed request: GET /v1/models/{NAME}/extra$"),
    ("GET", "/favicon.ico", None, 404, r"^Not found: /favicon.ico"),
    ("GET", "/v2/models/nope", None, 404, r"Servable not found for request: Latest\(nope\)"),
    ("GET", "/v2/models/nope/ready", None, 404, r"Unknown model 'nope'"),
    ("POST", "/v2/models/nope/infer", v2([]), 404, r"Servable not found for request: Latest\(nope\)"),
    # Wrong methods.
    ("GET", PREDICT, None, 405, rf"Method GET is not allowed for {PREDICT}; use POST"),
    ("PUT", PREDICT, {"instances": [ROW]}, 405, r"Method PUT is not allowed"),
    ("DELETE", f"/v1/models/{NAME}", None, 405, r"Method DELETE is not allowed for /v1/models/tiny; use GET"),
    ("POST", f"/v1/models/{NAME}", {"instances": [ROW]}, 405, r"use GET"),
    ("POST", "/v2/health/live", {}, 405, r"use GET"),
    ("GET", f"/v2/models/{NAME}/infer", None, 405, r"use POST"),
    ("PATCH", f"/v1/models/{NAME}/metadata", b"{}", 405, r"Method PATCH is not allowed"),
    # Size.
    ("POST", PREDICT, {"instances": [ROW] * 5000}, 413, rf"Request body is \d+ bytes; the limit is {LIMIT} bytes"),
]


def _case_id(case):
    method, path, body, status, _ = case
    return f"{status}-{method}-{path.rsplit('/', 1)[-1]}-{json.dumps(body)[:40] if not isinstance(body, bytes) else body[:20]!r}"


@pytest.mark.parametrize("method, path, body, status, message", CASES, ids=[_case_id(c) for c in CASES])
def test_a_bad_request_gets_its_status_and_message(server, method, path, body, status, message):
    client = Client(server.port)
    answer_status, answer, headers = client.request(method, path, body)
    assert answer_status == status, answer
    assert headers["content-type"] == "application/json"
    assert set(answer) == {"error"}
    assert re.search(message, answer["error"]), answer["error"]
    if status == 405:
        assert headers["allow"] in ("POST", "GET, HEAD")


def test_there_are_at_least_thirty_hostile_requests():
    assert len(CASES) + len(RAW_CASES) >= 30


# Requests that need raw bytes: broken framing, lengths and request lines.
RAW_CASES = [
    (b"POST %s HTTP/1.1\r\nHost: x\r\n\r\n" % PREDICT.encode(), 411, r"A POST needs a Content-Length header"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" % PREDICT.encode(), 400, r"Bad request: Invalid character in Content-Length"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n" % PREDICT.encode(), 400, r"Bad request: Duplicate Content-Length"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" % PREDICT.encode(), 413, r"Request body is 99999999 bytes"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n" % PREDICT.encode(), 413, r"the limit is 65536 bytes"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" % PREDICT.encode(), 400, r"Bad request: Request has invalid `Transfer-Encoding`"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Encoding: br\r\n\r\n{}" % PREDICT.encode(), 415, r"Content-Encoding 'br' is not supported; send gzip, deflate or an uncompressed body"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" % PREDICT.encode(), 400, r"Content-Length can't be present with Transfer-Encoding"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" % PREDICT.encode(), 400, r"Bad request: Invalid character in chunk size"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (PREDICT.encode(), LIMIT + 1, b"x" * (LIMIT + 1)), 413, r"Request body is more than 65536 bytes \(chunked\); the limit is 65536 bytes"),
    (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"instances\"" % PREDICT.encode(), 408, r"The request body did not arrive in time \(12 of 100 bytes"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, r"The request line is longer than 65536 bytes"),
    (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, r"The request line and headers are longer than 65536 bytes"),
    (b"HELLO\r\n\r\n", 400, r"Bad request"),
    (b"GET / HTTP/9.9\r\n\r\n", 400, r"Bad request: Invalid HTTP version"),
    (b"GET /v2/health/live HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431, r"Too many headers"),
]


@pytest.mark.parametrize("data, status, message", RAW_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(RAW_CASES)])
def test_a_broken_http_request_gets_its_status_and_message(server, data, status, message):
    answer_status, answer = parse_raw_response(raw_exchange(server.port, data))
    assert answer_status == status, answer
    assert re.search(message, answer["error"]), answer["error"]


def test_a_chunked_body_is_read(server):
    body = json.dumps({"instances": [ROW]}).encode()
    data = (b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % PREDICT.encode()
            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:]))
    status, answer = parse_raw_response(raw_exchange(server.port, data))
    assert status == 200 and len(answer["predictions"]) == 1


def test_a_keep_alive_connection_survives_client_errors(server):
    client = Client(server.port)
    for _ in range(3):
        assert client.post(PREDICT, {"instances": []})[0] == 400
        assert client.post(PREDICT, {"instances": [ROW]})[0] == 200
    assert client.get("/nope")[0] == 404
    assert client.post(PREDICT, {"instances": [ROW]})[0] == 200


def test_the_server_is_healthy_after_every_hostile_request(server):
    """Runs after the tables above (pytest keeps file order): the same server still answers."""
    client = Client(server.port)
    assert client.get("/v2/health/live")[0] == 200
    assert client.get(f"/v1/models/{NAME}")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.post(PREDICT, {"instances": [ROW, ROW]})[0] == 200
    assert server.open_connections <= 2  # every broken connection was closed


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_beyond_max_connections_the_longest_idle_connection_makes_room(tmp_path_factory):
    base = tmp_path_factory.mktemp("connections_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with serve(base, NAME, port=0, poll_secs=0, max_connections=3) as server:
        sockets = []
        try:
            for _ in range(3):
                sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
                assert _wait_for(lambda: server.open_connections == len(sockets))
                time.sleep(0.02)  # distinct idle times: sockets[0] has waited longest
            sockets[1].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers started, not finished
            assert Client(server.port).get("/v2/health/live")[:2] == (200, {"live": True})
            assert sockets[0].recv(1) == b""  # the longest idle connection was closed to make room
            assert server.open_connections <= 3
        finally:
            for sock in sockets:
                sock.close()


def test_when_every_connection_is_working_a_new_one_gets_503(tmp_path):
    release = threading.Event()

    def slow(inputs):
        release.wait(20)
        return {"y": inputs["x"]}

    base = fake_base(tmp_path, [1])
    with serve(base, "slow", port=0, poll_secs=0, max_connections=2, self_check=False,
               load_fn=lambda path: fake_model(slow)) as server:
        posts = [threading.Thread(target=lambda: Client(server.port).post("/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}))
                 for _ in range(2)]
        for thread in posts:
            thread.start()
        try:
            assert _wait_for(lambda: server.in_flight == 2)
            status, answer = parse_raw_response(raw_exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\n\r\n"))
            assert (status, answer) == (503, {"error": "Too many open connections; retry later."})
        finally:
            release.set()
            for thread in posts:
                thread.join(20)
        assert _wait_for(lambda: server.open_connections == 0)
        assert Client(server.port).get("/v2/health/live")[0] == 200


def test_headers_that_do_not_arrive_in_time_get_408_and_the_connection_is_closed(tmp_path_factory):
    base = tmp_path_factory.mktemp("headers_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with (
        serve(base, NAME, port=0, poll_secs=0, header_timeout_secs=0.5) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        started = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        for _ in range(3):  # dripping bytes does not extend the deadline
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                sock.sendall(b"X-A: b\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        status, answer = parse_raw_response(data)
        assert (status, answer) == (408, {"error": "The request line and headers did not arrive within 0.5s "
                                                   "(header_timeout_secs)."})
        assert 0.4 < time.monotonic() - started < 5


def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path_factory):
    base = tmp_path_factory.mktemp("idle_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with (
        serve(base, NAME, port=0, poll_secs=0, idle_timeout_secs=0.3) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        started = time.monotonic()
        assert sock.recv(1) == b""  # the server closed it
        assert time.monotonic() - started < 4


# ----------------------------------------------------------------------------------------------------------
# The model's own errors


def _fragile(inputs):
    if bool((inputs["x"] < 0).any()):
        raise RuntimeError("The following operation failed in the TorchScript interpreter.\nboom: negative input")
    return {"y": inputs["x"] * 2}


@pytest.fixture
def fragile(tmp_path):
    base = fake_base(tmp_path, [1])
    with serve(base, "fragile", port=0, poll_secs=0, load_fn=lambda path: fake_model(_fragile)) as running:
        yield running


def test_a_model_error_is_a_500_naming_the_signature_and_version(fragile):
    client = Client(fragile.port)
    status, answer, _ = client.post("/v1/models/fragile:predict", {"instances": [[-1.0, 0.0]]})
    assert (status, answer) == (500, {"error": "Model error in signature 'serving_default' (model 'fragile', version 1): "
                                               "RuntimeError: boom: negative input"})
    assert client.post("/v1/models/fragile:predict", {"instances": [[1.0, 0.0]]})[:2] == (200, {"predictions": [[2.0, 0.0]]})


def test_outputs_that_cannot_be_split_into_rows_are_refused_in_the_row_format(tmp_path):
    base = fake_base(tmp_path, [1])
    model = fake_model(lambda i: {"y": i["x"] * 2, "total": i["x"].sum().reshape(1)},
                       outputs={"y": {"dtype": "float32", "shape": [-1, 2]}, "total": {"dtype": "float32", "shape": [1]}})
    with serve(base, "m", port=0, poll_secs=0, load_fn=lambda path: model, self_check=False) as server:
        client = Client(server.port)
        status, answer, _ = client.post("/v1/models/m:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
        assert (status, answer["error"]) == (400, "Tensor name: y has inconsistent batch size: 2 expecting: 1; use the "
                                                  "columnar 'inputs' format.")
        assert client.post("/v1/models/m:predict", {"inputs": [[1.0, 2.0], [3.0, 4.0]]})[1] == {
            "outputs": {"total": [10.0], "y": [[2.0, 4.0], [6.0, 8.0]]}}


def test_a_busy_server_answers_503_after_the_queue_timeout(tmp_path):
    release = threading.Event()

    def slow(inputs):
        release.wait(10)
        return {"y": inputs["x"]}

    base = fake_base(tmp_path, [1])
    with serve(base, "slow", port=0, poll_secs=0, threads=1, queue_timeout_secs=0.3, self_check=False,
               load_fn=lambda path: fake_model(slow)) as server:
        first = threading.Thread(target=lambda: Client(server.port).post("/v1/models/slow:predict", {"instances": [[1.0, 2.0]]}))
        first.start()
        time.sleep(0.3)
        status, answer, _ = Client(server.port).post("/v1/models/slow:predict", {"instances": [[1.0, 2.0]]})
        release.set()
        first.join(10)
    assert (status, answer) == (503, {"error": "All 1 inference slots stayed busy for 0.3s; retry later."})


def test_tensors_json_cannot_carry_are_a_500(tmp_path):
    base = fake_base(tmp_path, [1])
    model = fake_model(lambda i: {"y": torch.complex(i["x"], i["x"])},
                       outputs={"y": {"dtype": "complex64", "shape": [-1, 2]}})
    with serve(base, "c", port=0, poll_secs=0, load_fn=lambda path: model, self_check=False) as server:
        status, answer, _ = Client(server.port).post("/v1/models/c:predict", {"instances": [[1.0, 2.0]]})
    assert (status, answer) == (500, {"error": "The model returned a torch.complex64 tensor, which JSON cannot represent."})


def test_a_get_with_a_body_is_answered_and_the_connection_stays_usable(server):
    data = raw_exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                                     b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200 ") == 2, data


def test_bodies_being_uploaded_at_once_are_bounded(tmp_path_factory):
    base = tmp_path_factory.mktemp("budget_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    with serve(base, NAME, port=0, poll_secs=0, max_body_bytes=1000, max_inflight_body_bytes=1000,
               queue_timeout_secs=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{" % PREDICT.encode())
            time.sleep(0.2)  # the server has reserved 900 bytes for this body
            status, answer, _ = Client(server.port).post(PREDICT, {"instances": [ROW] * 10})  # > 100 bytes
            assert (status, answer) == (503, {"error": "Too many large requests at once (max_inflight_body_bytes=1000); retry later."})
        deadline = time.monotonic() + 10
        while server._app.budget.used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Client(server.port).post(PREDICT, {"instances": [ROW]})[0] == 200
