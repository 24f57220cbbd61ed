"""examples/tabular.py: a canned classifier and regressor on scikit-learn's bundled data, trained, evaluated,
exported and served."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tabular.py"


@pytest.fixture(scope="module")
def tabular():
    spec = importlib.util.spec_from_file_location("examples_tabular", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: the thread pool only adds hand-offs
    yield
    torch.set_num_threads(threads)


def test_classifier_learns_exports_and_serves(tabular, tmp_path):
    result = tabular.train_classifier(tmp_path / "model", tmp_path / "export", steps=300)
    metrics = result["metrics"]
    assert metrics["accuracy"] > 0.9 > metrics["accuracy_baseline"] and metrics["auc"] > 0.95
    assert result["labels"] == ["malignant", "benign"]
    np.testing.assert_allclose(result["served"]["scores"].numpy(), result["predictions"]["probabilities"], rtol=1e-5, atol=1e-6)


def test_regressor_beats_the_mean_and_serves_raw_measurements(tabular, tmp_path):
    result = tabular.train_regressor(tmp_path / "model", tmp_path / "export", steps=300)
    assert result["metrics"]["average_loss"] < 0.8 * result["variance"]
    assert result["served"]["outputs"].shape == (5, 1)
    assert 25 < float(result["served"]["outputs"].mean()) < 350  # back in the label's units


def test_main_prints_both_models(tabular, tmp_path, capsys):
    tabular.main(["--model-dir", str(tmp_path), "--steps", "20"])
    out = capsys.readouterr().out
    assert "classifier: accuracy" in out and "regressor: average loss" in out and "served from" in out
    served = re.search(r"regressor_export/\d+: (\[.*?\]) \(true: (\[.*?\])\)", out)
    for printed in served.groups():  # rounded to one decimal, not float32's 115.0999984741211
        assert all(re.fullmatch(r"-?\d+\.\d", v) for v in printed.strip("[]").split(", ")), printed


def test_main_runs_as_a_script_and_help_shows_defaults(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "(default: 500)" in result.stdout and "(default: runs/tabular)" in result.stdout
