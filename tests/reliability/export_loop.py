"""Export a trained model again and again: the target the export kill test SIGKILLs.

Usage: ``python export_loop.py MODEL_DIR EXPORT_BASE COUNT EVENTS_FILE``

``MODEL_DIR`` holds a checkpoint of ``train_to_step.Net``. Each export writes ``model.pt`` and ``model.pt2``
(``format="all"``, the longest export). Events are appended to ``EVENTS_FILE``, one unbuffered line each, so
that they survive a SIGKILL:

* ``S 0 <time>`` started (torch imported, estimator built);
* ``B <n> <time>`` / ``A <n> <time>`` before and after export number ``n`` (``A`` carries the version).
"""

from __future__ import annotations

import os
import sys
import time

import torch

import torch_estimator as te
from torch_estimator import export

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_to_step import Net  # noqa: E402


def model_fn(features, labels, mode, model):
    """train_to_step's model_fn, for the receiver's dict of features."""
    logits = model(features["x"] if isinstance(features, dict) else features)
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=logits)
    return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))


def main() -> None:
    model_dir, base, count, events = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    est = te.Estimator(model_fn, model=Net(), model_dir=model_dir, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None, save_summary_steps=None))
    receiver_fn = export.build_raw_serving_input_receiver_fn({"x": export.TensorSpec([None, 32], torch.float32)})
    os.write(fd, f"S 0 {time.time()}\n".encode())
    for number in range(1, count + 1):
        os.write(fd, f"B {number} {time.time()}\n".encode())
        path = est.export_saved_model(base, receiver_fn, format="all")
        os.write(fd, f"A {os.path.basename(path)} {time.time()}\n".encode())


if __name__ == "__main__":
    main()
