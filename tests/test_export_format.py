"""Golden test: pins signature.json's format ("torch_estimator.export/1") byte for byte, and the archive's
layout that clients rely on (the embedded copy, one method per signature)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import torch

import torch_estimator as te
from torch_estimator import export
from torch_estimator.export import signature, torchscript

GOLDEN = """{
  "format": "torch_estimator.export/1",
  "default_signature": "serving_default",
  "signatures": {
    "serving_default": {
      "method_name": "tensorflow/serving/classify",
      "function": "forward",
      "inputs": {
        "x": {"dtype": "float32", "shape": [-1, 2]}
      },
      "outputs": {
        "classes": {"dtype": "int64", "shape": [-1]},
        "scores": {"dtype": "float32", "shape": [-1, 2]}
      },
      "class_labels": ["no", "yes"]
    },
    "predict": {
      "method_name": "tensorflow/serving/predict",
      "function": "predict",
      "inputs": {
        "x": {"dtype": "float32", "shape": [-1, 2]}
      },
      "outputs": {
        "logits": {"dtype": "float32", "shape": [-1, 2]}
      }
    },
    "regress": {
      "method_name": "tensorflow/serving/regress",
      "function": "regress",
      "inputs": {
        "x": {"dtype": "float32", "shape": [-1, 2]}
      },
      "outputs": {
        "outputs": {"dtype": "float32", "shape": [-1]}
      }
    }
  },
  "global_step": 2,
  "torch_version": "TORCH_VERSION",
  "device": "cpu",
  "files": {
    "model.pt": {"bytes": BYTES, "sha256": "SHA256"}
  }
}
"""


def model_fn(features, labels, mode, model):
    logits = model(features["x"])
    if mode == te.ModeKeys.PREDICT:
        scores = logits.softmax(1)
        return te.EstimatorSpec(mode, predictions={"logits": logits}, export_outputs={
            "serving_default": export.ClassificationOutput(scores, scores.argmax(1), labels=["no", "yes"]),
            "predict": export.PredictOutput({"logits": logits}),
            "regress": export.RegressionOutput(scores[:, 1]),
        })
    return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))


def _export(tmp_path) -> str:
    est = te.Estimator(model_fn, model_dir=str(tmp_path / "model"), model=torch.nn.Linear(2, 2),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), config=te.RunConfig(device="cpu", log_step_count_steps=None))
    est.train(lambda: [({"x": torch.ones(4, 2)}, torch.ones(4, dtype=torch.int64))] * 2, steps=2)
    receiver_fn = export.build_raw_serving_input_receiver_fn({"x": export.TensorSpec([None, 2], torch.float32)})
    return est.export_saved_model(tmp_path / "exports", receiver_fn)


def test_signature_json_matches_the_golden_text(tmp_path):
    path = _export(tmp_path)
    with open(os.path.join(path, "model.pt"), "rb") as file:
        model = file.read()
    expected = (GOLDEN.replace("TORCH_VERSION", str(torch.__version__)).replace("BYTES", str(len(model)))
                .replace("SHA256", hashlib.sha256(model).hexdigest()))
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        assert file.read() == expected


def test_model_pt_embeds_signature_json_without_the_file_records(tmp_path):
    """The embedded copy cannot hold its own archive's hash: it is the beside copy less ``files``, byte for byte."""
    path = _export(tmp_path)
    with zipfile.ZipFile(os.path.join(path, "model.pt")) as archive:
        embedded = [name for name in archive.namelist() if name.endswith("/extra/signature.json")]
        assert len(embedded) == 1
        with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
            document = json.loads(file.read())
        del document["files"]
        assert archive.read(embedded[0]).decode("utf-8") == signature.dumps(document)


def test_model_pt_has_one_method_per_signature(tmp_path):
    path = _export(tmp_path)
    module, _ = torchscript.load(os.path.join(path, "model.pt"))
    functions = [s["function"] for s in json.loads(Path(os.path.join(path, "signature.json")).read_text())["signatures"].values()]
    schemas = {f: str(module._c._get_method(f).schema) for f in functions}
    assert all("Dict(str, Tensor) inputs) -> Dict(str, Tensor)" in schema for schema in schemas.values()), schemas
