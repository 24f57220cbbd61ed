"""Self-containment: model.pt runs in an isolated interpreter where torch_estimator cannot be imported,
with plain torch.jit.load and the signature read from the archive, and matches Estimator.predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from torch_estimator import export

from .export_support import LABELS, data, make_model_fn, predict, raw_receiver_fn, train_estimator

CLIENT = r'''
import importlib.abc, json, sys


class BlockTorchEstimator(importlib.abc.MetaPathFinder):
    """The package is installed (editable): make importing it fail, so nothing can come from it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch_estimator":
            raise ModuleNotFoundError(f"blocked: {name}")
        return None


sys.meta_path.insert(0, BlockTorchEstimator())
try:
    import torch_estimator  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("torch_estimator is importable: the test would prove nothing")

import torch

model_path, inputs_path = sys.argv[1:3]
extra = {"signature.json": ""}
module = torch.jit.load(model_path, _extra_files=extra)
signature = json.loads(extra["signature.json"])
with open(inputs_path) as file:
    inputs = json.load(file)
results = {}
with torch.no_grad():
    for key, sig in signature["signatures"].items():
        feed = {name: torch.tensor(inputs[name], dtype=getattr(torch, info["dtype"])) for name, info in sig["inputs"].items()}
        results[key] = {name: value.tolist() for name, value in getattr(module, sig["function"])(feed).items()}
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch_estimator")
print(json.dumps({"signature": signature, "results": results, "loaded": loaded}))
'''


def _outputs(p, logits):
    return {
        "serving_default": export.ClassificationOutput(p["probabilities"], p["classes"], labels=LABELS),
        "predict": export.PredictOutput(p),
        "regress": export.RegressionOutput(p["probabilities"][:, 0]),
    }


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standalone")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    path = est.export_saved_model(tmp / "exports", raw_receiver_fn())
    x, _ = data(5, seed=11)
    (tmp / "inputs.json").write_text(json.dumps({"x": x.tolist()}))
    (tmp / "client.py").write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run(
        [sys.executable, "-I", str(tmp / "client.py"), os.path.join(path, "model.pt"), str(tmp / "inputs.json")],
        cwd=str(tmp), env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), predict(est, x), path


def test_the_client_never_imports_torch_estimator(standalone):
    assert standalone[0]["loaded"] == []


def test_the_embedded_signature_is_signature_json_less_its_file_records(standalone):
    result, _, path = standalone
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        beside = json.load(file)
    assert {**result["signature"], "files": beside["files"]} == beside and "files" not in result["signature"]


def test_every_signature_matches_estimator_predict(standalone):
    result, expected, _ = standalone
    want = {
        "serving_default": {"classes": expected["classes"], "scores": expected["probabilities"]},
        "predict": expected,
        "regress": {"outputs": expected["probabilities"][:, 0]},
    }
    assert sorted(result["results"]) == sorted(want)
    for key, outputs in want.items():
        assert sorted(result["results"][key]) == sorted(outputs), key
        for name, value in outputs.items():
            np.testing.assert_allclose(np.asarray(result["results"][key][name]), value, rtol=0, atol=1e-6, err_msg=f"{key}/{name}")
