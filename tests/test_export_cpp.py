"""Self-containment from C++: clients built against the libtorch inside the torch wheel load model.pt
(tests/cpp/client.cpp, ``torch::jit::load``) and model.aoti.pt2 (tests/cpp/aoti_client.cpp,
``torch::inductor::AOTIModelPackageLoader``), read the embedded signature.json, run each signature and print
numbers that match Estimator.predict.

Each client is built once and cached under the temporary directory, keyed by the torch version, the ABI
and a hash of the sources, client_io.h included (about 30 s to 3 min on 2 cores); the AOTInductor export compiles every signature
(tens of seconds each). Slow: CI runs it with ``pytest -m slow``. Skipped, saying why, only where no
compiler or no C++ headers are present.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_estimator import export

from .export_support import LABELS, data, make_model_fn, predict, raw_receiver_fn, train_estimator

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent / "cpp" / "client.cpp"
AOTI_SOURCE = Path(__file__).resolve().parent / "cpp" / "aoti_client.cpp"
AOTI_HEADER = "torch/csrc/inductor/aoti_package/model_package_loader.h"
SHARED_HEADER = SOURCE.parent / "client_io.h"  # both clients include it


def _build_client(source: Path = SOURCE, header: str = "torch/script.h") -> Path:
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or $CXX) on PATH: cannot build the libtorch client")
    torch_dir = Path(torch.__file__).resolve().parent
    if not (torch_dir / "include" / header).is_file():
        pytest.skip(f"this torch wheel ships no C++ headers ({torch_dir}/include/{header} is missing)")
    abi = int(torch.compiled_with_cxx11_abi())
    digest = hashlib.sha256(source.read_bytes() + SHARED_HEADER.read_bytes() + f"{torch.__version__}|{abi}|{compiler}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "torch_estimator_cpp" / f"torch-{torch.__version__}-{digest}"
    binary = cache / source.stem
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f"{source.stem}.{os.getpid()}"
    # --no-as-needed keeps libtorch.so loaded: the compiled models AOTInductor loads with dlopen need it.
    command = [
        compiler, "-std=c++20", "-O1", str(source), "-o", str(building),
        f"-I{torch_dir}/include", f"-I{torch_dir}/include/torch/csrc/api/include", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-L{torch_dir}/lib", f"-Wl,-rpath,{torch_dir}/lib", "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        pytest.fail(f"building the libtorch client failed:\n{' '.join(command)}\n{result.stderr[-4000:]}")
    os.replace(building, binary)  # atomic: concurrent sessions never run a half-written binary
    return binary


@pytest.fixture(scope="session")
def client() -> Path:
    return _build_client()


@pytest.fixture(scope="session")
def aoti_client() -> Path:
    return _build_client(AOTI_SOURCE, AOTI_HEADER)


def _outputs(p, logits):
    return {
        "serving_default": export.PredictOutput(p),
        "classify": export.ClassificationOutput(p["probabilities"], p["classes"], labels=LABELS),
        "regress": export.RegressionOutput(p["probabilities"][:, 0]),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpp")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    path = est.export_saved_model(tmp / "exports", raw_receiver_fn())
    x, _ = data(3, seed=12)
    x.tofile(tmp / "x.bin")
    return path, tmp / "x.bin", x.shape, predict(est, x)


def _run(client: Path, model: str, method: str, x_file: Path, shape) -> dict:
    argument = f"x=float32:{'x'.join(map(str, shape))}:{x_file}"
    result = subprocess.run([str(client), model, method, argument], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    parsed: dict = {"methods": [], "outputs": {}}
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "signature":
            parsed["signature"] = json.loads(rest)
        elif kind == "method":
            parsed["methods"].append(rest)
        elif kind == "output":
            name, dtype, shape_text, *values = rest.split(" ")
            shape = [int(d) for d in shape_text.split("x")] if shape_text else []
            parsed["outputs"][name] = (dtype, np.array(values, dtype=np.float64).reshape(shape))
    return parsed


def test_cpp_client_reads_the_embedded_signature(client, exported):
    path, x_file, shape, _ = exported
    parsed = _run(client, os.path.join(path, "model.pt"), "forward", x_file, shape)
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        beside = json.load(file)
    assert {**parsed["signature"], "files": beside["files"]} == beside  # the embedded copy: less the file records


def test_cpp_client_sees_one_method_per_signature(client, exported):
    path, x_file, shape, _ = exported
    parsed = _run(client, os.path.join(path, "model.pt"), "forward", x_file, shape)
    assert set(parsed["methods"]) >= {"forward", "classify", "regress"}


def test_cpp_forward_matches_estimator_predict(client, exported):
    path, x_file, shape, expected = exported
    outputs = _run(client, os.path.join(path, "model.pt"), "forward", x_file, shape)["outputs"]
    assert {name: dtype for name, (dtype, _) in outputs.items()} == {"classes": "int64", "probabilities": "float32"}
    np.testing.assert_array_equal(outputs["classes"][1], expected["classes"])
    np.testing.assert_allclose(outputs["probabilities"][1], expected["probabilities"], rtol=0, atol=1e-6)


def test_cpp_other_signatures_match_estimator_predict(client, exported):
    path, x_file, shape, expected = exported
    classify = _run(client, os.path.join(path, "model.pt"), "classify", x_file, shape)["outputs"]
    regress = _run(client, os.path.join(path, "model.pt"), "regress", x_file, shape)["outputs"]
    np.testing.assert_array_equal(classify["classes"][1], expected["classes"])
    np.testing.assert_allclose(classify["scores"][1], expected["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(regress["outputs"][1], expected["probabilities"][:, 0], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# model.aoti.pt2 through AOTIModelPackageLoader


@pytest.fixture(scope="module")
def aoti_exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpp_aoti")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    path = est.export_saved_model(tmp / "exports", raw_receiver_fn(), format="aoti")
    x, _ = data(5, seed=13)
    x.tofile(tmp / "x.bin")
    return path, tmp / "x.bin", x.shape, predict(est, x)


def _run_aoti(client: Path, path: str, model: str, x_file: Path, shape) -> dict:
    argument = f"x=float32:{'x'.join(map(str, shape))}:{x_file}"
    command = [str(client), os.path.join(path, "model.aoti.pt2"), model, argument]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    parsed: dict = {"metadata": {}, "outputs": {}}
    values = {}
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "signature":
            parsed["signature"] = json.loads(rest)
        elif kind == "metadata":
            key, _, value = rest.partition(" ")
            parsed["metadata"][key] = value
        elif kind in ("in_spec", "out_spec"):
            parsed[kind] = json.loads(rest)
        elif kind == "output":
            index, dtype, shape_text, *numbers = rest.split(" ")
            dims = [int(d) for d in shape_text.split("x")] if shape_text else []
            values[int(index)] = (dtype, np.array(numbers, dtype=np.float64).reshape(dims))
    names = json.loads(parsed["out_spec"][1]["context"])  # the call spec names the outputs, in order
    parsed["outputs"] = {names[i]: value for i, value in values.items()}
    return parsed


def test_cpp_aoti_client_reads_the_embedded_signature_and_call_spec(aoti_client, aoti_exported):
    path, x_file, shape, _ = aoti_exported
    parsed = _run_aoti(aoti_client, path, "model", x_file, shape)
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        signature = json.load(file)
    assert {**parsed["signature"], "files": signature["files"]} == signature  # the embedded copy: less "files"
    assert parsed["metadata"]["AOTI_DEVICE_KEY"] == signature["device"] == "cpu"
    inputs = json.loads(parsed["in_spec"][1]["children_spec"][0]["children_spec"][0]["context"])
    assert inputs == sorted(signature["signatures"]["serving_default"]["inputs"])  # signature.json's order
    assert list(parsed["outputs"]) == sorted(signature["signatures"]["serving_default"]["outputs"])


def test_cpp_aoti_every_signature_matches_estimator_predict(aoti_client, aoti_exported):
    path, x_file, shape, expected = aoti_exported
    default = _run_aoti(aoti_client, path, "model", x_file, shape)["outputs"]
    assert {name: dtype for name, (dtype, _) in default.items()} == {"classes": "int64", "probabilities": "float32"}
    np.testing.assert_array_equal(default["classes"][1], expected["classes"])
    np.testing.assert_allclose(default["probabilities"][1], expected["probabilities"], rtol=1e-5, atol=1e-6)
    classify = _run_aoti(aoti_client, path, "classify", x_file, shape)["outputs"]
    np.testing.assert_array_equal(classify["classes"][1], expected["classes"])
    np.testing.assert_allclose(classify["scores"][1], expected["probabilities"], rtol=1e-5, atol=1e-6)
    regress = _run_aoti(aoti_client, path, "regress", x_file, shape)["outputs"]
    np.testing.assert_allclose(regress["outputs"][1], expected["probabilities"][:, 0], rtol=1e-5, atol=1e-6)
