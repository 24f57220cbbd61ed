"""Tests for examples/mnist.py: the CNN, the IDX loader, and (slow) the script end to end."""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_estimator as te

from .serving_support import cli_server

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist.py"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _load_example():
    spec = importlib.util.spec_from_file_location("examples_mnist", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mnist = _load_example()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8 or int32) as an IDX file; gzip it when the name ends in .gz."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(data)
    return path


def write_dataset(directory: Path, n_train: int = 6, n_eval: int = 4, gz: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_eval, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_eval, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


# ----------------------------------------------------------------------------------------------------
# The model.


def glorot_bound(weight: torch.Tensor) -> float:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_out, fan_in = weight.shape[0] * receptive, weight.shape[1] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_cnn_layer_shapes():
    model = mnist.CNN()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "conv1.weight": (32, 1, 5, 5), "conv1.bias": (32,),
        "conv2.weight": (64, 32, 5, 5), "conv2.bias": (64,),
        "dense.weight": (1024, 3136), "dense.bias": (1024,),
        "logits.weight": (10, 1024), "logits.bias": (10,),
    }
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_cnn_init_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = mnist.CNN()
    for layer in (model.conv1, model.conv2, model.dense, model.logits):
        bound = glorot_bound(layer.weight)
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrower one
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
        assert torch.count_nonzero(layer.bias) == 0


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model, x = mnist.CNN(), torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_model_fn_specs_per_mode():
    torch.manual_seed(0)
    model = mnist.CNN()
    features, labels = {"x": torch.rand(5, 784)}, torch.tensor([0, 1, 2, 3, 4])
    predict = mnist.model_fn(features, None, te.ModeKeys.PREDICT, {}, model)
    assert predict.predictions["classes"].shape == (5,)
    assert predict.predictions["probabilities"].shape == (5, 10)
    torch.testing.assert_close(predict.predictions["probabilities"].sum(1), torch.ones(5))
    train = mnist.model_fn(features, labels, te.ModeKeys.TRAIN, {}, model)
    assert train.loss.shape == () and train.train_op is None
    evaluation = mnist.model_fn(features, labels, te.ModeKeys.EVAL, {}, model)
    assert set(evaluation.eval_metric_ops) == {"accuracy"}


# ----------------------------------------------------------------------------------------------------
# Data.


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_read_idx_round_trips(tmp_path, suffix, dtype):
    array = np.arange(2 * 3 * 4, dtype=dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    result = mnist.read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.shape == (2, 3, 4)
    np.testing.assert_array_equal(result, array)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01x")
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="shape"):
        mnist.read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    train_x, train_y, eval_x, eval_y = mnist.load_idx_dataset(tmp_path)
    assert train_x.shape == (6, 784) and train_x.dtype == np.float32
    assert eval_x.shape == (4, 784) and eval_y.dtype == np.int64
    assert train_x.min() >= 0.0 and train_x.max() <= 1.0
    np.testing.assert_allclose(train_x * 255, arrays["train-images-idx3-ubyte"].reshape(6, 784), atol=1e-4)
    np.testing.assert_array_equal(eval_y, arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_layout(tmp_path, dataset, folder):
    write_dataset(tmp_path / folder / "raw")
    train_x, *_ = mnist.load_idx_dataset(tmp_path, dataset)
    assert train_x.shape == (6, 784)


def test_missing_files_error_names_directory_and_files(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte") as error:
        mnist.load_idx_dataset(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert "train-images-idx3-ubyte" in str(error.value)


def test_synthetic_dataset_is_seeded_and_shaped():
    a, b = mnist.synthetic_dataset(seed=3), mnist.synthetic_dataset(seed=3)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)
    train_x, train_y, eval_x, eval_y = a
    assert train_x.shape == (2000, 784) and eval_x.shape == (500, 784)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int64
    assert set(np.unique(train_y)) == set(range(10))


def test_bad_flags_exit():
    with pytest.raises(SystemExit):
        mnist.parse_args(["--steps", "0"])


# ----------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_main_synthetic(tmp_path, capsys):
    result = mnist.main(["--synthetic", "--steps", "30", "--model-dir", str(tmp_path), "--device", "cpu"])
    assert set(result) == {"accuracy", "loss", "global_step"}
    assert int(result["global_step"]) == 30
    assert 0.0 <= float(result["accuracy"]) <= 1.0 and np.isfinite(result["loss"])
    assert (tmp_path / "checkpoint").is_file()
    assert (tmp_path / "model.ckpt-30.safetensors").is_file()
    out = capsys.readouterr().out
    assert "image 0: predicted" in out and "label" in out


@pytest.mark.slow
def test_main_synthetic_learns(tmp_path):
    result = mnist.main(["--synthetic", "--steps", "100", "--learning-rate", "0.05", "--model-dir", str(tmp_path),
                         "--device", "cpu", "--predict", "0"])
    assert float(result["accuracy"]) > 0.8


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_main_fashion_mnist(tmp_path):
    # 50 steps at lr 0.1 reach 0.68-0.70 accuracy over seeds 0..3 (CPU); 0.5 leaves a wide margin.
    result = mnist.main(["--dataset", "fashion-mnist", "--data-dir", str(FASHION_MNIST), "--steps", "50",
                         "--learning-rate", "0.1", "--model-dir", str(tmp_path), "--device", "cpu"])
    assert int(result["global_step"]) == 50
    assert float(result["accuracy"]) > 0.5


# ----------------------------------------------------------------------------------------------------
# No data and no network: one line, status 2, nothing left behind.


def _offline_env() -> dict[str, str]:
    """The environment of a process whose downloads fail at once: every proxy is a closed local port."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there, the connection is refused
    env.update(http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed, no_proxy="", NO_PROXY="",
               PYTHONPATH=str(EXAMPLE.parent.parent))
    return env


def test_offline_without_data_is_one_line_and_leaves_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "1"], cwd=tmp_path, env=_offline_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist.py: error: cannot download mnist into data/MNIST"), lines
    for fix in ("--dataset fashion-mnist", "--data-dir", "--synthetic"):
        assert fix in lines[0]
    assert list(tmp_path.iterdir()) == []  # no empty data/MNIST, no partial download


def test_offline_keeps_what_was_already_in_the_data_directory(tmp_path):
    (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"partial")
    (tmp_path / "data" / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=_offline_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "cannot download mnist" in result.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "data", "data/MNIST", "data/MNIST/raw", "data/MNIST/raw/train-images-idx3-ubyte", "data/notes.txt"]


def test_a_data_dir_without_the_files_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--data-dir", str(tmp_path)], cwd=tmp_path,
                            env=_offline_env(), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("mnist.py: error: No complete mnist IDX data set in") and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------------
# The logging hook's summary line, and --export-dir served by `torch-estimator serve`.


def test_first_row_formatter_is_one_short_line():
    probabilities = torch.full((100, 10), 0.05)
    probabilities[0, 3] = 0.55
    probabilities[0, 4] = 1e-6
    line = mnist.first_row_formatter({"probabilities": probabilities})
    assert line == ("probabilities[0] = [0.050 0.050 0.050 0.550 0.000 0.050 0.050 0.050 0.050 0.050] "
                    "(argmax 3; batch of shape (100, 10))")
    assert mnist.first_row_formatter({"step": np.int64(7)}) == "step = 7"


def _run_example(tmp_path, *argv):
    return subprocess.run([sys.executable, str(EXAMPLE), *argv], cwd=tmp_path, env=_offline_env(),
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_the_logging_hook_logs_a_summary_by_default_and_the_full_dump_on_request(tmp_path):
    short = _run_example(tmp_path, "--synthetic", "--steps", "51", "--model-dir", "a", "--predict", "0", "--device", "cpu")
    assert short.returncode == 0, short.stderr
    dumps = [line for line in short.stderr.splitlines() if "probabilities" in line]
    assert len(dumps) == 2 and all("(argmax " in line and "batch of shape (100, 10)" in line for line in dumps)
    full = _run_example(tmp_path, "--synthetic", "--steps", "1", "--model-dir", "b", "--predict", "0", "--device", "cpu",
                        "--log-full-tensors")
    assert full.returncode == 0, full.stderr
    start = full.stderr.index("probabilities = [[")
    assert full.stderr[start:].count("]") >= 100  # TF's dump: every row of the batch


@pytest.mark.slow
def test_export_dir_is_served_as_is(tmp_path):
    import json
    import urllib.request

    result = _run_example(tmp_path, "--synthetic", "--steps", "5", "--model-dir", "run", "--predict", "0",
                          "--device", "cpu", "--export_dir", "exports")
    assert result.returncode == 0, result.stderr
    (version,) = os.listdir(tmp_path / "exports")
    assert version.isdigit() and f"exported to exports/{version}" in result.stdout
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parent.parent)}
    with cli_server("exports", "mnist", cwd=tmp_path, env=env) as url:
        body = json.dumps({"instances": [{"x": [0.5] * 784}, {"x": [0.0] * 784}]}).encode()
        request = urllib.request.Request(f"{url}/v1/models/mnist:predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2
        assert set(predictions[0]) == {"classes", "probabilities"}
        assert sum(predictions[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_help_shows_defaults_and_no_rest_markup(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], cwd=tmp_path, env=_offline_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    out, flat = result.stdout, " ".join(result.stdout.split())  # argparse wraps lines
    for default in ("(default: 20000)", "(default: 0.001)", "(default: 100)", "(default: mnist)", "(default: auto)"):
        assert default in flat, default
    assert "``" not in out and "::" not in out and "(default: None)" not in out and "(default: False)" not in out
    assert "The TensorFlow Estimator CNN tutorial (cnn_mnist.py)" in out
    assert "python examples/mnist.py --synthetic --steps 200" in out  # the examples, as written
