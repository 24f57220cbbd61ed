"""Shared fixtures: a tiny classification problem and a model_fn in the tutorial's shape."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_estimator as te


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: on small shared CI machines torch's default thread pool makes tiny ops
    # (a softmax over 32x2) take milliseconds instead of microseconds.
    torch.set_num_threads(1)
    # Compiled code (torch.compile, AOTInductor exports) goes to a cache of this run's own: test runs
    # side by side on one machine would otherwise race in the shared default cache under /tmp.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="te-inductor-cache-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class TinyNet(torch.nn.Module):
    """4 -> 8 -> 2 with dropout, so that training uses the RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.dropout = torch.nn.Dropout(0.2)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.relu(self.hidden(x))))


def classifier_fn(features, labels, mode, model):
    logits = model(features["x"])
    predictions = {"classes": logits.argmax(1), "probabilities": logits.softmax(1)}
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=predictions)
    loss = F.cross_entropy(logits, labels)
    return te.EstimatorSpec(
        mode,
        loss=loss,
        predictions=predictions,
        eval_metric_ops={"accuracy": te.metrics.accuracy(labels, predictions["classes"])},
    )


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    return x, y


@pytest.fixture
def make_estimator(tmp_path):
    """Build an Estimator over TinyNet with SGD; keyword arguments override the RunConfig."""

    def make(model_dir=None, model_fn=classifier_fn, optimizer="sgd", seed=0, **config):
        torch.manual_seed(seed)
        config.setdefault("device", "cpu")
        config.setdefault("log_step_count_steps", None)
        opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adam": lambda p: torch.optim.Adam(p, lr=0.01)}.get(optimizer, optimizer)
        return te.Estimator(
            model_fn,
            model_dir=str(model_dir or tmp_path / "model"),
            model=TinyNet(),
            optimizer=opt,
            config=te.RunConfig(**config),
        )

    return make
