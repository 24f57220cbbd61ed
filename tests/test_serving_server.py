"""serving/server.py over real HTTP on 127.0.0.1: every endpoint, both request formats, metadata built
from signature.json, answers equal to the loader's, the config's checks, and the serve command."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_estimator import cli
from torch_estimator.serving import loader
from torch_estimator.serving.server import ModelServer, ServerConfig, serve

from .export_support import LABELS, data
from .serving_support import V1, V2, Client, copy_version, exports

NAME = "tiny"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base directory holding versions 1 and 2 (2 is served)."""
    dirs = exports(tmp_path_factory)
    base = tmp_path_factory.mktemp("serving_base")
    for version, source in dirs.items():
        copy_version(source, base, version)
    return base


@pytest.fixture(scope="module")
def server(base):
    with serve(base, NAME, port=0, poll_secs=0) as running:
        yield running


@pytest.fixture(scope="module")
def model(base):
    """The loader's view of the served version: the reference answers."""
    return loader.load(base / str(V2))


@pytest.fixture
def client(server):
    client = Client(server.port)
    yield client
    client.close()


def _x(n=3, seed=21):
    return data(n, seed=seed)[0]


def _close(actual, expected):
    np.testing.assert_array_equal(np.asarray(actual, dtype=np.asarray(expected).dtype), expected)


# ----------------------------------------------------------------------------------------------------------
# Status and metadata


def test_status_lists_the_served_version(client):
    status, body, headers = client.get(f"/v1/models/{NAME}")
    assert (status, headers["content-type"]) == (200, "application/json")
    assert body == {"model_version_status": [
        {"version": str(V2), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_status_of_one_version(client):
    assert client.get(f"/v1/models/{NAME}/versions/{V2}")[1]["model_version_status"][0]["version"] == str(V2)


def test_metadata_matches_signature_json(client, base):
    status, body, _ = client.get(f"/v1/models/{NAME}/metadata")
    document = json.loads((base / str(V2) / "signature.json").read_text())
    assert status == 200
    assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": str(V2)}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == sorted(document["signatures"])
    for key, signature in document["signatures"].items():
        assert signatures[key]["method_name"] == signature["method_name"]
        for side in ("inputs", "outputs"):
            assert sorted(signatures[key][side]) == sorted(signature[side])
            for name, info in signature[side].items():
                served = signatures[key][side][name]
                assert served["dtype"] == {"float32": "DT_FLOAT", "int64": "DT_INT64", "uint8": "DT_UINT8"}[info["dtype"]]
                assert [int(d["size"]) for d in served["tensor_shape"]["dim"]] == info["shape"]


def test_metadata_of_the_default_signature_in_tf_shape(client):
    signature = client.get(f"/v1/models/{NAME}/metadata")[1]["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x", "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False}}},
        "outputs": {
            "classes": {"dtype": "DT_INT64", "name": "classes", "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}},
            "probabilities": {"dtype": "DT_FLOAT", "name": "probabilities", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False}},
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


def test_head_answers_like_get_without_a_body(client):
    status, body, headers = client.request("HEAD", f"/v1/models/{NAME}")
    assert (status, body, int(headers["content-length"]) > 0) == (200, b"", True)


# ----------------------------------------------------------------------------------------------------------
# Predict


def test_predict_row_format_equals_the_loader(client, model):
    x = _x()
    status, body, _ = client.post(f"/v1/models/{NAME}:predict", {"instances": x.tolist()})
    expected = model({"x": x})
    assert status == 200
    assert [row["classes"] for row in body["predictions"]] == expected["classes"].tolist()
    _close([row["probabilities"] for row in body["predictions"]], expected["probabilities"].numpy())


def test_predict_row_format_with_named_instances(client, model):
    x = _x(2)
    body = client.post(f"/v1/models/{NAME}:predict", {"instances": [{"x": row} for row in x.tolist()]})[1]
    _close([row["probabilities"] for row in body["predictions"]], model({"x": x})["probabilities"].numpy())


def test_predict_columnar_format_with_named_inputs(client, model):
    x = _x()
    status, body, _ = client.post(f"/v1/models/{NAME}:predict", {"inputs": {"x": x.tolist()}})
    expected = model({"x": x})
    assert (status, sorted(body["outputs"])) == (200, ["classes", "probabilities"])
    assert body["outputs"]["classes"] == expected["classes"].tolist()
    _close(body["outputs"]["probabilities"], expected["probabilities"].numpy())


def test_predict_columnar_format_with_a_bare_value(client, model):
    x = _x()
    body = client.post(f"/v1/models/{NAME}:predict", {"inputs": x.tolist()})[1]
    assert body["outputs"]["classes"] == model({"x": x})["classes"].tolist()


def test_a_single_output_is_unwrapped_in_both_formats(client, model):
    x = _x()
    expected = model({"x": x}, "single")["output"].numpy()
    rows = client.post(f"/v1/models/{NAME}:predict", {"signature_name": "single", "instances": x.tolist()})[1]
    columns = client.post(f"/v1/models/{NAME}:predict", {"signature_name": "single", "inputs": x.tolist()})[1]
    _close(rows["predictions"], expected)
    _close(columns["outputs"], expected)


def test_floats_are_written_as_their_shortest_float32_decimal(server):
    raw = Client(server.port).post(f"/v1/models/{NAME}:predict", {"signature_name": "single", "instances": _x(1).tolist()})
    values = raw[1]["predictions"][0]
    assert [repr(v) for v in values] == [str(np.float32(v)) for v in values]  # e.g. 0.2447358, not 0.24473579227924347


def test_predict_with_several_inputs_in_both_formats(client, model):
    a, b = _x(2, seed=1), _x(2, seed=2)
    expected = model({"a": a, "b": b}, "two:serving_default")["probabilities"].numpy()
    rows = client.post(f"/v1/models/{NAME}:predict", {
        "signature_name": "two:serving_default",
        "instances": [{"a": ra, "b": rb} for ra, rb in zip(a.tolist(), b.tolist())]})[1]
    columns = client.post(f"/v1/models/{NAME}:predict", {
        "signature_name": "two:serving_default", "inputs": {"a": a.tolist(), "b": b.tolist()}})[1]
    _close([row["probabilities"] for row in rows["predictions"]], expected)
    _close(columns["outputs"]["probabilities"], expected)


def test_b64_rows_fill_a_uint8_input(client, model):
    pixels = np.array([[0, 64, 128, 255], [1, 2, 3, 4]], dtype=np.uint8)
    instances = [{"b64": base64.b64encode(row.tobytes()).decode()} for row in pixels]
    body = client.post(f"/v1/models/{NAME}:predict", {"signature_name": "pixels:serving_default", "instances": instances})[1]
    expected = model({"pixels": pixels}, "pixels:serving_default")
    assert [row["classes"] for row in body["predictions"]] == expected["classes"].tolist()


def test_one_b64_value_fills_a_whole_columnar_input(client, model):
    pixels = np.arange(8, dtype=np.uint8).reshape(2, 4)
    body = client.post(f"/v1/models/{NAME}:predict", {
        "signature_name": "pixels:serving_default", "inputs": {"b64": base64.b64encode(pixels.tobytes()).decode()}})[1]
    assert body["outputs"]["classes"] == model({"pixels": pixels}, "pixels:serving_default")["classes"].tolist()


def test_ints_reach_an_int64_input(client, model):
    ids = [[0, 1, 2, 3]]
    body = client.post(f"/v1/models/{NAME}:predict", {"signature_name": "ids:serving_default", "instances": ids})[1]
    assert body["predictions"][0]["classes"] == int(model({"ids": ids}, "ids:serving_default")["classes"][0])


def test_a_pinned_version_answers_with_that_version(client, base):
    x = _x()
    old = loader.load(base / str(V1))({"x": x})["probabilities"].numpy()
    new = loader.load(base / str(V2))({"x": x})["probabilities"].numpy()
    assert not np.allclose(old, new)  # the two versions really differ
    body = client.post(f"/v1/models/{NAME}/versions/{V1}:predict", {"inputs": {"x": x.tolist()}})[1]
    _close(body["outputs"]["probabilities"], old)


def test_url_keywords_are_case_insensitive_as_tf(client):
    assert client.post(f"/V1/Models/{NAME}:PREDICT", {"instances": _x(1).tolist()})[0] == 200


def test_a_query_string_is_ignored(client):
    assert client.get(f"/v1/models/{NAME}?verbose=1")[0] == 200


# ----------------------------------------------------------------------------------------------------------
# Classify and regress


def test_classify_pairs_labels_with_scores(client, model):
    x = _x(2)
    status, body, _ = client.post(f"/v1/models/{NAME}:classify", {
        "signature_name": "classification", "examples": [{"x": row} for row in x.tolist()]})
    scores = model({"x": x}, "classification")["scores"].numpy()
    assert status == 200
    assert [[label for label, _ in example] for example in body["results"]] == [LABELS, LABELS]
    _close([[score for _, score in example] for example in body["results"]], scores)


def test_classify_with_class_ids_uses_their_labels(client, model):
    x = _x(1)
    body = client.post(f"/v1/models/{NAME}:classify", {"signature_name": "classify_ids", "examples": [{"x": x[0].tolist()}]})[1]
    expected = model({"x": x}, "classify_ids")
    assert [label for label, _ in body["results"][0]] == [LABELS[i] for i in expected["classes"][0].tolist()]


def test_classify_takes_context_features(client, model):
    a, b = _x(2, seed=3), _x(1, seed=4)
    body = client.post(f"/v1/models/{NAME}:classify", {
        "signature_name": "two:classification", "context": {"b": b[0].tolist()},
        "examples": [{"a": row} for row in a.tolist()]})[1]
    expected = model({"a": a, "b": np.repeat(b, 2, axis=0)}, "two:classification")["scores"].numpy()
    _close([[score for _, score in example] for example in body["results"]], expected)


def test_regress_returns_one_value_per_example(client, model):
    x = _x(3)
    status, body, _ = client.post(f"/v1/models/{NAME}:regress", {
        "signature_name": "regression", "examples": [{"x": row} for row in x.tolist()]})
    assert status == 200
    _close(body["results"], model({"x": x}, "regression")["outputs"].numpy().reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# Open Inference Protocol


def test_v2_health_and_server_metadata(client):
    assert client.get("/v2/health/live")[:2] == (200, {"live": True})
    assert client.get("/v2/health/ready")[:2] == (200, {"ready": True})
    status, body, _ = client.get("/v2")
    assert (status, body["name"], body["extensions"]) == (200, "torch_estimator", ["binary_tensor_data"])


def test_v2_model_metadata_and_readiness(client):
    status, body, _ = client.get(f"/v2/models/{NAME}")
    assert status == 200
    assert body["name"] == NAME and str(V2) in body["versions"] and body["platform"] == "pytorch_torchscript"
    assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [{"name": "classes", "datatype": "INT64", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get(f"/v2/models/{NAME}/ready")[0] == 200
    assert client.get(f"/v2/models/{NAME}/versions/{V2}/ready")[0] == 200


def test_v2_infer_equals_the_loader(client, model):
    x = _x(2)
    status, body, _ = client.post(f"/v2/models/{NAME}/infer", {
        "id": "req-7", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}]})
    expected = model({"x": x})
    assert (status, body["model_name"], body["model_version"], body["id"]) == (200, NAME, str(V2), "req-7")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["classes"]["datatype"] == "INT64" and outputs["classes"]["shape"] == [2]
    assert outputs["classes"]["data"] == expected["classes"].tolist()
    assert outputs["probabilities"]["shape"] == [2, 3]
    _close(outputs["probabilities"]["data"], expected["probabilities"].numpy().reshape(-1))


def test_v2_infer_takes_nested_data_and_selects_outputs(client):
    x = _x(1)
    body = client.post(f"/v2/models/{NAME}/versions/{V2}/infer", {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": x.tolist()}],
        "outputs": [{"name": "classes"}]})[1]
    assert [o["name"] for o in body["outputs"]] == ["classes"]


def test_v2_infer_with_a_signature_parameter(client, model):
    a, b = _x(1, seed=5), _x(1, seed=6)
    body = client.post(f"/v2/models/{NAME}/infer", {
        "parameters": {"signature_name": "two:single"},
        "inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32", "data": v.reshape(-1).tolist()} for n, v in (("a", a), ("b", b))]})[1]
    _close(body["outputs"][0]["data"], model({"a": a, "b": b}, "two:single")["output"].numpy().reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# Python API and configuration


def test_serve_binds_loopback_by_default_and_stops(base):
    server = serve(base, "other", port=0, poll_secs=0)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert Client(server.port).get("/v1/models/other")[0] == 200
    finally:
        server.stop()
    server.stop()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        Client(server.port, timeout=2).get("/v1/models/other")


def test_a_missing_base_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model base path .*nowhere.* is not a directory"):
        serve(tmp_path / "nowhere", NAME, port=0)


@pytest.mark.parametrize("name", ["", "a/b", "a:b", "a b"])
def test_a_model_name_that_cannot_appear_in_a_url_is_an_error(tmp_path, name):
    with pytest.raises(ValueError, match="`model_name` must be a non-empty name without"):
        ModelServer(tmp_path, name)


@pytest.mark.parametrize("field, value, message", [
    ("port", 70000, r"`port` must be an integer in \[0, 65535\]; received 70000"),
    ("threads", 0, "`threads` must be an integer >= 1; received 0"),
    ("poll_secs", -1, "`poll_secs` must be a number >= 0"),
    ("max_body_bytes", 1.5, "`max_body_bytes` must be an integer >= 1; received 1.5"),
    ("num_torch_threads", 0, "`num_torch_threads` must be None or an integer >= 1"),
    ("max_cached_versions", -1, "`max_cached_versions` must be an integer >= 0"),
    ("format", "onnx", "`format` must be 'torchscript', 'pt2', 'aoti' or None; received 'onnx'"),
    ("batching", "yes", "`batching` must be a bool"),
])
def test_config_checks_each_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})


def test_an_unknown_option_is_a_type_error(base):
    with pytest.raises(TypeError, match="unexpected keyword argument 'prot'"):
        serve(base, NAME, prot=0)


def test_num_torch_threads_sets_torch(base):
    before = torch.get_num_threads()
    try:
        with serve(base, NAME, port=0, poll_secs=0, num_torch_threads=1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_missing_artifact_leaves_no_version_and_the_status_says_why(base):
    with serve(base, NAME, port=0, poll_secs=0, format="pt2") as server:  # these exports have model.pt only
        client = Client(server.port)
        status, body, _ = client.get(f"/v1/models/{NAME}")
        assert status == 200
        assert body["model_version_status"][0]["state"] == "END"
        assert "FileNotFoundError: No model.pt2 in" in body["model_version_status"][0]["status"]["error_message"]
        assert client.get("/v2/health/ready")[:2] == (503, {"ready": False})
        assert client.post(f"/v1/models/{NAME}:predict", {"instances": [[1, 2, 3, 4]]})[:2] == (
            404, {"error": f"Servable not found for request: Latest({NAME})"})


@pytest.mark.parametrize("name, extra", [
    ("server", set()), ("rest", set()), ("versions", set()), ("batching", set()),
    ("app", {"starlette", "anyio"}), ("transport", {"uvicorn", "httptools"}),
])
def test_serving_modules_import_only_the_loader_torch_numpy_and_the_standard_library(name, extra):
    """The HTTP stack (the serve extra) is imported by app and transport only, and by server lazily."""
    folder = Path(loader.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy"} | extra
    tree = ast.parse((folder / f"{name}.py").read_text())
    absolute = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    absolute |= {m.split(".")[0] for m in modules}
    package = {m for m in modules if m.startswith("torch_estimator")}
    assert sorted(absolute - allowed - {"torch_estimator"}) == [], name
    layers = ("", ".loader", ".rest", ".versions", ".batching") + ((".app", ".transport") if name == "server" else ())
    assert package <= {f"torch_estimator.serving{m}" for m in layers}, name
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), f"{name}: relative import"


# ----------------------------------------------------------------------------------------------------------
# The serve command


def test_serve_is_a_cli_command():
    args = cli.build_parser().parse_args(["serve", "--model_base_path", "d", "--model_name", "m", "--rest_api_port", "9",
                                          "--enable_batching", "--file_system_poll_wait_seconds", "3"])
    assert (args.port, args.batching, args.poll_secs, args.host, args.threads) == (9, True, 3.0, "127.0.0.1", 4)


def test_serve_command_reports_a_bad_base_path(tmp_path, capsys):
    assert cli.main(["serve", "--model_base_path", str(tmp_path / "nowhere"), "--model_name", "m", "--port", "0"]) == 1
    assert "torch-estimator: error: Model base path" in capsys.readouterr().err


def _start_cli(base, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch_estimator.cli", "serve", "--model_base_path", str(base), "--model_name", NAME,
         "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()  # "Serving model 'tiny' at http://127.0.0.1:PORT ..." once ready
    assert "Serving model" in line, process.stderr.read() if process.poll() is not None else line
    return process, int(line.split("http://127.0.0.1:")[1].split(" ")[0].split("/")[0])


@pytest.mark.slow
def test_serve_command_answers_and_stops_on_sigterm_after_finishing_a_request(base):
    process, port = _start_cli(base)
    try:
        assert Client(port).post(f"/v1/models/{NAME}:predict", {"instances": _x(1).tolist()})[0] == 200
        # A request in flight: headers and half the body sent before SIGTERM, the rest after.
        body = json.dumps({"instances": _x(2).tolist()}).encode()
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            time.sleep(0.5)
            process.terminate()
            time.sleep(0.5)
            sock.sendall(body[10:])
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert process.wait(timeout=30) == 0
        with pytest.raises(ConnectionRefusedError):
            Client(port, timeout=2).get(f"/v1/models/{NAME}")
    finally:
        process.kill()
        process.communicate(timeout=30)  # reaps it and closes its pipes
