"""Train a small model with frequent checkpoints to a given step: the target the kill test SIGKILLs.

Usage: ``python train_to_step.py MODEL_DIR MAX_STEPS EVENTS_FILE``

Everything is deterministic (fixed seeds, one thread, a seeded shuffling ``numpy_input_fn``), so a run that
is killed and resumed any number of times must end with the same bytes as one that never was. Events are
appended to ``EVENTS_FILE``, one line each, written unbuffered so that they survive a SIGKILL:

* ``R <step> <time>`` training resumed at ``step`` (after the restore, before the first step);
* ``B <step> <time>`` / ``A <step> <time>`` before and after each checkpoint save;
* ``E <step> <time>`` training ended.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import torch_estimator as te

SAVE_EVERY = 1
KEEP = 3
REPEAT = 6


class Net(torch.nn.Module):
    """~0.3 MB of weights (about 1 MB per checkpoint with Adam's state), dropout so that the RNG matters, and
    the middle layer applied ``REPEAT`` times so that a step costs a few milliseconds of compute, as a save
    does: random kills land in both."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(32, 256)
        self.middle = torch.nn.Linear(256, 256)
        self.dropout = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x))
        for _ in range(REPEAT):
            h = torch.relu(self.middle(h))
        return self.out(self.dropout(h))


def model_fn(features, labels, mode, model):
    logits = model(features)
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=logits)
    return te.EstimatorSpec(mode, loss=F.cross_entropy(logits, labels))


class Events(te.Hook, te.CheckpointSaverListener):
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, kind: str, step: int) -> None:
        os.write(self._fd, f"{kind} {step} {time.time():.6f}\n".encode())

    def after_restore(self, run_context) -> None:  # Hook
        self.write("R", run_context.global_step)

    def before_save(self, global_step: int) -> None:  # listener
        self.write("B", global_step)

    def after_save(self, global_step: int) -> bool:
        self.write("A", global_step)
        return False


def main(model_dir: str, max_steps: int, events_path: str) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 32)).astype("float32")
    y = (np.abs(x[:, :4]).argmax(1)).astype("int64")
    events = Events(events_path)
    torch.manual_seed(0)
    est = te.Estimator(
        model_fn, model_dir=model_dir, model=Net(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-4),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=50, gamma=0.5),
        config=te.RunConfig(device="cpu", random_seed=0, save_checkpoints_steps=SAVE_EVERY, keep_checkpoint_max=KEEP,
                            log_step_count_steps=None, save_summary_steps=None, progress_bar=False),
    )
    input_fn = te.inputs.numpy_input_fn(x, y, batch_size=64, num_epochs=None, shuffle=True, seed=7)
    est.train(input_fn, max_steps=max_steps, hooks=[events], saving_listeners=[events])
    events.write("E", int(est.get_variable_value("global_step")))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
