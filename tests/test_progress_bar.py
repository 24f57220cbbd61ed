"""The progress bar as a terminal shows it: log lines and the caller's prints never land on the bar's line,
evaluate and predict show a total when the input's length is known, and logging is restored afterwards."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torch_estimator as te

from .conftest import TinyNet, classifier_fn

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import logging, sys
    import numpy as np, torch
    import torch_estimator as te
    from tests.conftest import TinyNet, classifier_fn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    logging.getLogger("torch_estimator").setLevel(logging.INFO)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    est = te.Estimator(classifier_fn, model_dir=sys.argv[1], model=TinyNet(),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", progress_bar=True, log_step_count_steps=10))
    est.train(te.inputs.numpy_input_fn({"x": x}, y, batch_size=10, num_epochs=None, shuffle=True), steps=30)
    est.evaluate(te.inputs.numpy_input_fn({"x": x}, y, batch_size=25, num_epochs=1, shuffle=False))
    for i, p in enumerate(est.predict(te.inputs.numpy_input_fn({"x": x[:6]}, batch_size=2, shuffle=False))):
        print(f"prediction {i}: {int(p['classes'])}")
    print("handlers after:", [type(h).__name__ for h in logging.getLogger().handlers])
''')


@pytest.fixture(scope="module")
def terminal_output(tmp_path_factory) -> list[str]:
    """What a terminal receives from a train/evaluate/predict run with INFO logging: stdout and stderr in
    one stream, unbuffered, split into lines (a carriage return rewrites its line)."""
    tmp = tmp_path_factory.mktemp("progress")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-u", "-c", SCRIPT, str(tmp / "model")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout
    return result.stdout.split("\n")


def _visible(line: str) -> str:
    """The text a terminal shows for a line: what follows its last carriage return."""
    return line.split("\r")[-1]


def test_log_lines_do_not_land_on_the_bar_line(terminal_output):
    logged = [line for line in terminal_output if "INFO:torch_estimator:" in line]
    assert any("loss = " in line for line in logged) and any("Saving dict" in line for line in logged)
    for line in logged:
        assert _visible(line).startswith("INFO:"), repr(line)


def test_evaluate_and_predict_show_their_totals(terminal_output):
    text = "\n".join(terminal_output)
    assert "train: 100%" in text and "30/30" in text
    assert "evaluate: 100%" in text and "4/4" in text  # 100 examples in batches of 25
    assert "predict: 100%" in text and "3/3" in text


def test_the_callers_prints_do_not_land_on_the_bar_line(terminal_output):
    printed = [line for line in terminal_output if "prediction " in line]
    assert len(printed) == 6
    for line in printed:
        assert _visible(line).startswith("prediction "), repr(line)


def test_logging_handlers_are_restored_after_the_run(terminal_output):
    assert "handlers after: ['StreamHandler']" in terminal_output


def test_a_failed_run_restores_logging_and_closes_the_bar(tmp_path, data, capsys):
    package = logging.getLogger("torch_estimator")
    handler = logging.StreamHandler(sys.stderr)
    package.addHandler(handler)
    before = list(package.handlers)

    calls = []

    def failing_fn(features, labels, mode, model):
        calls.append(mode)
        if len(calls) == 4:  # the fourth step fails
            raise RuntimeError("boom at step 3")
        return classifier_fn(features, labels, mode, model)

    try:
        est = te.Estimator(failing_fn, model_dir=str(tmp_path), model=TinyNet(),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                           config=te.RunConfig(device="cpu", progress_bar=True, log_step_count_steps=None))
        x, y = data
        with pytest.raises(RuntimeError, match="boom at step 3"):
            est.train(te.inputs.numpy_input_fn({"x": x}, y, batch_size=10, num_epochs=None, shuffle=True), steps=10)
        assert package.handlers == before
    finally:
        package.removeHandler(handler)
    assert "train:" in capsys.readouterr().err


def test_predict_abandoned_early_closes_its_bar(make_estimator, data, capsys):
    est = make_estimator(progress_bar=True)
    x, y = data
    est.train(te.inputs.numpy_input_fn({"x": x}, y, batch_size=10, num_epochs=None, shuffle=True), steps=2)
    capsys.readouterr()
    predictions = est.predict(te.inputs.numpy_input_fn({"x": x}, batch_size=10, shuffle=False))
    next(predictions)
    predictions.close()  # the caller stops iterating: the bar is closed, with a newline
    err = capsys.readouterr().err
    assert "predict:" in err and err.endswith("\n")
