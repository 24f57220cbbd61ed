"""Self-containment from C++: a client built against the libtorch inside the torch wheel loads model.pt,
reads the embedded signature.json, runs each signature and prints numbers that match Estimator.predict.

The client (tests/cpp/client.cpp) is built once and cached under the temporary directory, keyed by the
torch version, the ABI and a hash of the source (about 30 s to 3 min on 2 cores). Slow: CI runs it with
``pytest -m slow``. Skipped, saying why, only where no compiler or no C++ headers are present.
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

from .test_export_support import LABELS, data, make_model_fn, predict, raw_receiver_fn, train_estimator

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent / "cpp" / "client.cpp"


def _build_client() -> Path:
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or $CXX) on PATH: cannot build the libtorch client")
    torch_dir = Path(torch.__file__).resolve().parent
    if not (torch_dir / "include" / "torch" / "script.h").is_file():
        pytest.skip(f"this torch wheel ships no C++ headers ({torch_dir}/include/torch/script.h is missing)")
    abi = int(torch.compiled_with_cxx11_abi())
    digest = hashlib.sha256(SOURCE.read_bytes() + f"{torch.__version__}|{abi}|{compiler}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "torch_estimator_cpp" / f"torch-{torch.__version__}-{digest}"
    binary = cache / "client"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f"client.{os.getpid()}"
    command = [
        compiler, "-std=c++20", "-O1", str(SOURCE), "-o", str(building),
        f"-I{torch_dir}/include", f"-I{torch_dir}/include/torch/csrc/api/include", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-L{torch_dir}/lib", f"-Wl,-rpath,{torch_dir}/lib", "-ltorch", "-ltorch_cpu", "-lc10",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        pytest.fail(f"building the libtorch client failed:\n{' '.join(command)}\n{result.stderr[-4000:]}")
    os.replace(building, binary)  # atomic: concurrent sessions never run a half-written binary
    return binary


@pytest.fixture(scope="session")
def client() -> Path:
    return _build_client()


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
        assert parsed["signature"] == json.load(file)


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
