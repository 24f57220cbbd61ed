"""Triton's and KServe's own Python clients against the server, unchanged: health, metadata, inference with
JSON and with the binary tensor data extension (inputs and outputs), compressed bodies, BYTES tensors; and the
wire rules behind them (framing errors, a zip bomb) with raw requests."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import numpy as np
import pytest

from torch_estimator.serving import loader
from torch_estimator.serving.server import serve

from .export_support import data
from .serving_support import V2, Client, copy_version, exports

httpclient = pytest.importorskip("tritonclient.http", reason="the dev extra installs tritonclient[http]")
kserve = pytest.importorskip("kserve", reason="the dev extra installs kserve")

NAME = "tiny"
LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("clients_base")
    copy_version(exports(tmp_path_factory)[V2], base, V2)
    return base


@pytest.fixture(scope="module")
def server(base):
    with serve(base, NAME, port=0, poll_secs=0, max_body_bytes=LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def model(base):
    return loader.load(base / str(V2))


@pytest.fixture
def triton(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def _x(n=3, seed=31):
    return data(n, seed=seed)[0].astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# tritonclient


def test_triton_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(NAME)
    metadata = triton.get_model_metadata(NAME)
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("binary_output", [True, False])
def test_triton_infer_equals_the_loader(triton, model, binary_input, binary_output):
    x = _x()
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=binary_input)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_output) for name in ("probabilities", "classes")]
    result = triton.infer(NAME, inputs, outputs=outputs, request_id="r1")
    expected = model({"x": x})
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"].numpy())
    np.testing.assert_array_equal(result.as_numpy("classes"), expected["classes"].numpy())
    assert result.get_response()["id"] == "r1"


def test_triton_default_request_is_binary_both_ways(triton, model):
    """``set_data_from_numpy`` and no requested outputs: binary input, every output binary."""
    x = _x(2)
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = triton.infer(NAME, inputs)
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(outputs) == {"classes", "probabilities"}
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in outputs.values())
    np.testing.assert_array_equal(result.as_numpy("probabilities"), model({"x": x})["probabilities"].numpy())


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_triton_compressed_requests(triton, model, algorithm):
    x = _x(4)
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = triton.infer(NAME, inputs, request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("classes"), model({"x": x})["classes"].numpy())


def test_triton_bytes_tensor_fills_a_uint8_input(triton, model):
    """A BYTES element holds the raw bytes of one row of a numeric input (here uint8 [-1, 4])."""
    pixels = np.array([[0, 64, 128, 255], [1, 2, 3, 4]], dtype=np.uint8)
    inputs = [httpclient.InferInput("pixels", [2], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([row.tobytes() for row in pixels], dtype=np.object_))
    result = triton.infer(NAME, inputs, parameters={"signature_name": "pixels:serving_default"})
    expected = model({"pixels": pixels}, "pixels:serving_default")
    np.testing.assert_array_equal(result.as_numpy("classes"), expected["classes"].numpy())


def test_triton_errors_name_the_input(triton):
    wrong = [httpclient.InferInput("x", [1, 3], "FP32")]
    wrong[0].set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(Exception, match=r"Input 'x' expects shape \[-1, 4\] \(-1: any size\) but received \[1, 3\]"):
        triton.infer(NAME, wrong)


# ----------------------------------------------------------------------------------------------------------
# KServe's InferenceRESTClient


def _kserve(server, calls):
    async def main():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
        try:
            return [await call(client, server.url) for call in calls]
        finally:
            await client.close()

    return asyncio.run(main())


def test_kserve_health_and_readiness(server):
    live, ready, model_ready = _kserve(server, [
        lambda c, url: c.is_server_live(url),
        lambda c, url: c.is_server_ready(url),
        lambda c, url: c.is_model_ready(url, NAME),
    ])
    assert (live, ready, model_ready) == (True, True, True)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_infer_equals_the_loader(server, model, binary):
    x = _x(3, seed=5)
    tensor = kserve.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    request = kserve.InferRequest(model_name=NAME, infer_inputs=[tensor], request_id="k1")
    (response,) = _kserve(server, [lambda c, url: c.infer(url, request, model_name=NAME)])
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    expected = model({"x": x})
    np.testing.assert_array_equal(outputs["probabilities"], expected["probabilities"].numpy())
    np.testing.assert_array_equal(outputs["classes"], expected["classes"].numpy())
    assert response.id == "k1"


# ----------------------------------------------------------------------------------------------------------
# The wire rules, with raw requests


def _binary_request(x, json_extra=None):
    header = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}], **(json_extra or {})}
    head = json.dumps(header).encode()
    return head, x.astype("<f4").tobytes()


def test_binary_framing_errors_say_what_is_wrong(server):
    x = _x(1)
    head, raw = _binary_request(x)
    infer = f"/v2/models/{NAME}/infer"
    client = Client(server.port)
    status, body, _ = client.request("POST", infer, head + raw, {"Inference-Header-Content-Length": str(len(head) + len(raw) + 1)})
    assert (status, body["error"]) == (400, f"Inference-Header-Content-Length must be the byte length of the JSON part "
                                            f"of the body (at most {len(head) + len(raw)}); received '{len(head) + len(raw) + 1}'.")
    status, body, _ = client.request("POST", infer, head + raw[:-4], {"Inference-Header-Content-Length": str(len(head))})
    assert (status, body["error"]) == (400, "Input 'x': binary_data_size is 16 but only 12 bytes of binary data remain after "
                                            "the JSON part of the body.")
    status, body, _ = client.request("POST", infer, head + raw + b"xx", {"Inference-Header-Content-Length": str(len(head))})
    assert (status, body["error"]) == (400, "2 bytes of binary data after the JSON part of the body belong to no input (each "
                                            "binary input declares parameters.binary_data_size).")
    status, body, headers = client.request("POST", infer, head + raw, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and headers["content-type"] == "application/json"  # outputs as JSON unless asked


def test_a_zip_bomb_stops_at_the_body_limit(server):
    bomb = gzip.compress(b"[" + b" " * (64 * LIMIT) + b"]")  # 16 MiB of spaces: about 16 KiB compressed
    assert len(bomb) < LIMIT
    status, body, headers = Client(server.port).request("POST", f"/v1/models/{NAME}:predict", bomb, {"Content-Encoding": "gzip"})
    assert (status, body["error"]) == (413, f"Request body decodes to more than {LIMIT} bytes (Content-Encoding: gzip); the "
                                            f"limit is {LIMIT} bytes (max_body_bytes, --max_body_bytes).")


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate too
])
def test_compressed_tf_serving_requests(server, model, encoding, compress):
    x = _x(2)
    body = compress(json.dumps({"instances": x.tolist()}).encode())
    status, answer, _ = Client(server.port).request("POST", f"/v1/models/{NAME}:predict", body, {"Content-Encoding": encoding})
    assert status == 200
    assert [row["classes"] for row in answer["predictions"]] == model({"x": x})["classes"].tolist()


def test_a_truncated_compressed_body_is_400(server):
    body = gzip.compress(json.dumps({"instances": _x(2).tolist()}).encode())[:-10]
    status, answer, _ = Client(server.port).request("POST", f"/v1/models/{NAME}:predict", body, {"Content-Encoding": "gzip"})
    assert (status, answer["error"]) == (400, "The request body's gzip data is truncated (Content-Encoding: gzip).")
