"""String features end to end: a canned estimator with string columns is exported with string inputs
(signature.json dtype "string", encoding "fingerprint64"), and the raw strings that TF Serving clients send
are accepted by the loader, the REST layer and a real `torch-estimator serve`, with the training path's ids."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import canned
from torch_estimator.export import receivers
from torch_estimator.serving import loader, rest

from .serving_support import cli_server

SIZES = ["small", "medium", "large"]
CITIES = ["paris", "lyon", "nice", "lille", "brest"]
REPO = Path(__file__).resolve().parent.parent


def _raw(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {"size": rng.choice(SIZES + [""], n), "city": rng.choice(CITIES, n),
           "x": rng.normal(size=n).astype(np.float32)}
    y = ((raw["size"] == "large") | (raw["city"] == "nice")).astype(np.int64)
    return raw, y


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strings")
    size = canned.categorical_column_with_vocabulary_list("size", SIZES)
    city = canned.categorical_column_with_hash_bucket("city", 16)
    columns = [canned.indicator_column(size), canned.indicator_column(city), canned.numeric_column("x")]
    est = canned.DNNClassifier([8], columns, model_dir=str(tmp / "model"), label_vocabulary=["no", "yes"],
                               config=te.RunConfig(random_seed=0, progress_bar=False, device="cpu"))
    raw, y = _raw(200, seed=0)
    features = canned.encode_features(raw, columns)
    est.train(te.inputs.numpy_input_fn(features, y, batch_size=50, num_epochs=None, shuffle=True), steps=30)
    spec = canned.make_feature_spec(columns)
    path = est.export_saved_model(tmp / "exports", te.build_raw_serving_input_receiver_fn(spec))
    return est, columns, path


def _predict(est, columns, raw):
    features = canned.encode_features(raw, columns)
    return list(est.predict(te.inputs.numpy_input_fn(features, shuffle=False, batch_size=len(raw["x"]))))


def test_the_fingerprint_is_one_function_everywhere():
    words = ["", "medium", "Ünïcødé ✓", "a" * 300, "\x00", "東京"]
    for word in words:
        assert loader.fingerprint(word) == receivers.fingerprint(word) == canned.fingerprint(word)
        assert loader.fingerprint(word.encode("utf-8")) == receivers.fingerprint(word)
    assert canned.fingerprint("red") == 714311032125047324  # the value training has always used


def test_the_artifact_encodes_strings_as_training_does(exported):
    import warnings

    words = ["", "medium", "Ünïcødé ✓", "東京", "a" * 300, "x\x00y", "😀", "large"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        artifact = torch.jit.load(os.path.join(exported[2], "model.pt"))
    codes = getattr(artifact, receivers.STRING_MODULE)(words).tolist()
    assert codes == [-1] + [canned.fingerprint(w) for w in words[1:]]
    assert codes == loader.encode_strings(words, "w").tolist()


def test_exports_without_string_inputs_carry_no_encoder(tmp_path):
    def model_fn(features, labels, mode, model):
        y = model(features["x"])
        return te.EstimatorSpec(mode, predictions={"y": y}, loss=None if labels is None else (y - labels).pow(2).mean())

    est = te.Estimator(model_fn, model=torch.nn.Linear(2, 1), model_dir=str(tmp_path / "m"),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", progress_bar=False))
    est.train(lambda: [({"x": torch.ones(4, 2)}, torch.zeros(4, 1))], steps=1)
    path = est.export_saved_model(tmp_path / "e", te.build_raw_serving_input_receiver_fn(
        {"x": te.export.TensorSpec([None, 2], torch.float32)}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        artifact = torch.jit.load(os.path.join(path, "model.pt"))
    assert not hasattr(artifact, receivers.STRING_MODULE)


def test_signature_declares_string_inputs(exported):
    _, _, path = exported
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        document = json.load(file)
    inputs = document["signatures"]["serving_default"]["inputs"]
    assert inputs == {
        "city": {"dtype": "string", "shape": [-1], "encoding": "fingerprint64"},
        "size": {"dtype": "string", "shape": [-1], "encoding": "fingerprint64"},
        "x": {"dtype": "float32", "shape": [-1]},
    }


def test_the_loader_takes_raw_strings_and_matches_predict(exported):
    est, columns, path = exported
    raw = {"size": np.array(["medium", "large", "", "tiny"]), "city": np.array(["nice", "paris", "brest", "rome"]),
           "x": np.array([0.1, -1.0, 2.0, 0.0], dtype=np.float32)}
    expected = _predict(est, columns, raw)
    model = loader.load(path)
    outputs = model({"size": raw["size"].tolist(), "city": list(raw["city"]), "x": raw["x"]}, "predict")
    np.testing.assert_allclose(outputs["probabilities"].numpy(), np.stack([p["probabilities"] for p in expected]),
                               atol=1e-6)
    # numpy string arrays, bytes and fingerprints sent by the client give the same result
    fingerprints = np.array([loader.fingerprint(c) for c in raw["city"]])
    again = model({"size": raw["size"].astype(bytes), "city": fingerprints, "x": raw["x"]}, "predict")
    torch.testing.assert_close(again["probabilities"], outputs["probabilities"])


def test_the_loader_refuses_numbers_for_string_inputs(exported):
    model = loader.load(exported[2])
    with pytest.raises(loader.InvalidInputError, match=r"Input 'size' takes strings \(or their int64 fingerprints\); "
                                                       r"received float 1.5"):
        model({"size": [1.5], "city": ["paris"], "x": [0.0]}, "predict")
    with pytest.raises(loader.InvalidInputError, match=r"Input 'city' is ragged"):
        model({"size": [["small"]], "city": [["paris"], ["lyon", "nice"]], "x": [0.0]}, "predict")


def test_rest_classify_and_predict_take_strings(exported):
    est, columns, path = exported
    model = loader.load(path)
    body = {"examples": [{"size": "medium", "city": "nice", "x": 0.5}, {"size": "small", "city": "lyon", "x": -0.5}]}
    request = rest.parse_examples(body, model, "classify")
    response = rest.classify_response(model(request.inputs, request.signature), model.signature_def(request.signature),
                                      request.signature)
    expected = _predict(est, columns, {"size": np.array(["medium", "small"]), "city": np.array(["nice", "lyon"]),
                                       "x": np.array([0.5, -0.5], dtype=np.float32)})
    for result, prediction in zip(response["results"], expected):
        assert [label for label, _ in result] == ["no", "yes"]
        np.testing.assert_allclose([score for _, score in result], prediction["probabilities"], atol=1e-6)
    b64 = {"instances": [{"size": {"b64": "bWVkaXVt"}, "city": "nice", "x": 0.5}], "signature_name": "predict"}
    predicted = rest.parse_predict(b64, model)
    np.testing.assert_array_equal(predicted.inputs["size"].numpy(), [loader.fingerprint("medium")])


def test_rest_names_a_number_sent_for_a_string_input(exported):
    model = loader.load(exported[2])
    with pytest.raises(rest.ServingError, match=r"examples\[0\]\['size'\] is a number \(2\.5\); input 'size' takes "
                                                r"strings \(dtype string; null or \"\" for no value\)"):
        rest.parse_examples({"examples": [{"size": 2.5, "city": "nice", "x": 0.5}]}, model, "classify")


def test_rest_metadata_says_dt_string(exported):
    metadata = rest.model_metadata("m", loader.load(exported[2]))
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["size"]["dtype"] == "DT_STRING" and inputs["x"]["dtype"] == "DT_FLOAT"


@pytest.mark.slow
def test_a_real_server_classifies_strings(exported):
    est, columns, path = exported
    base = os.path.dirname(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with cli_server(base, "tabular", env=env) as url:
        def post(verb: str, body: dict) -> dict:
            request = urllib.request.Request(f"{url}/v1/models/tabular:{verb}", data=json.dumps(body).encode(),
                                             method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())

        classified = post("classify", {"examples": [{"size": "medium", "city": "nice", "x": 0.5}]})
        expected = _predict(est, columns, {"size": np.array(["medium"]), "city": np.array(["nice"]),
                                           "x": np.array([0.5], dtype=np.float32)})[0]
        np.testing.assert_allclose([s for _, s in classified["results"][0]], expected["probabilities"], atol=1e-6)
        predicted = post("predict", {"signature_name": "predict",
                                     "instances": [{"size": "medium", "city": "nice", "x": 0.5}]})
        np.testing.assert_allclose(predicted["predictions"][0]["probabilities"], expected["probabilities"], atol=1e-6)
        with pytest.raises(urllib.error.HTTPError) as refused:
            post("classify", {"examples": [{"size": 3, "city": True, "x": 0.5}]})
        assert refused.value.code == 400 and "input 'city' takes strings" in refused.value.read().decode()


@pytest.mark.slow
def test_a_cpp_client_sends_strings(exported, tmp_path):
    from .test_export_cpp import _build_client

    client = _build_client()
    est, columns, path = exported
    raw = {"size": np.array(["medium", "", "large"]), "city": np.array(["nice", "paris", "Besançon"]),
           "x": np.array([0.5, 0.0, -1.0], dtype=np.float32)}
    (tmp_path / "size.txt").write_text("\n".join(raw["size"]) + "\n", encoding="utf-8")
    (tmp_path / "city.txt").write_text("\n".join(raw["city"]) + "\n", encoding="utf-8")
    raw["x"].tofile(tmp_path / "x.bin")
    result = subprocess.run([str(client), os.path.join(path, "model.pt"), "predict", f"size=string:3:{tmp_path / 'size.txt'}",
                             f"city=string:3:{tmp_path / 'city.txt'}", f"x=float32:3:{tmp_path / 'x.bin'}"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("output probabilities "))
    probabilities = np.array(line.split(" ")[4:], dtype=np.float64).reshape(3, 2)
    expected = np.stack([p["probabilities"] for p in _predict(est, columns, raw)])
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_open_inference_protocol_takes_bytes_tensors(exported):
    model = loader.load(exported[2])
    body = {"inputs": [{"name": "size", "shape": [2], "datatype": "BYTES", "data": ["medium", "small"]},
                       {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["nice", ""]},
                       {"name": "x", "shape": [2], "datatype": "FP32", "data": [0.5, 1.0]}]}
    request = rest.parse_v2_infer(body, model)
    np.testing.assert_array_equal(request.inputs["size"].numpy(), [loader.fingerprint("medium"), loader.fingerprint("small")])
    np.testing.assert_array_equal(request.inputs["city"].numpy(), [loader.fingerprint("nice"), -1])
    body["inputs"][0]["datatype"] = "INT64"
    with pytest.raises(rest.ServingError, match=r"Input 'size' takes strings: send datatype BYTES; received 'INT64'"):
        rest.parse_v2_infer(body, model)
    metadata = rest.v2_model_metadata("m", model, [1])
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]}["size"] == "BYTES"


def test_a_crossed_raw_key_is_a_string_input(tmp_path):
    size = canned.categorical_column_with_vocabulary_list("size", SIZES)
    columns = [canned.indicator_column(canned.crossed_column(["shop", size], 16)), canned.numeric_column("x")]
    est = canned.DNNClassifier([4], columns, model_dir=str(tmp_path / "model"),
                               config=te.RunConfig(random_seed=0, progress_bar=False, device="cpu"))
    raw, y = _raw(60, seed=1)
    raw["shop"] = np.random.default_rng(2).choice(["north", "south"], 60)
    est.train(te.inputs.numpy_input_fn(canned.encode_features(raw, columns), y, batch_size=20, num_epochs=None,
                                       shuffle=True), steps=5)
    path = est.export_saved_model(tmp_path / "e", te.build_raw_serving_input_receiver_fn(canned.make_feature_spec(columns)))
    model = loader.load(path)
    assert model.signatures["predict"]["inputs"]["shop"]["dtype"] == "string"
    request = {"shop": ["south", "north"], "size": ["large", ""], "x": [0.5, -0.5]}
    expected = _predict(est, columns, {k: np.array(v, dtype=np.float32 if k == "x" else None) for k, v in request.items()})
    np.testing.assert_allclose(model(request, "predict")["probabilities"].numpy(),
                               np.stack([p["probabilities"] for p in expected]), atol=1e-6)
