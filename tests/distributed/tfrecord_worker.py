"""Training from TFRecord files under torchrun, run by tests/test_distribute.py (2 processes, gloo, CPU).

Every process logs the record ids of each training step to MODEL_DIR/seen-rank<R>.jsonl as ``[step, ids]``.
PATTERN ``numpy:N`` trains from numpy_input_fn over N examples numbered as the records are instead.

Usage: python -m torch.distributed.run --nproc_per_node=2 tfrecord_worker.py MODEL_DIR PATTERN UNEVEN SHUFFLE EPOCHS [KILL_STEP]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import torch_estimator as te

SPEC = {
    "x": te.inputs.FixedLenFeature([2], torch.float32),
    "y": te.inputs.FixedLenFeature([], torch.int64),
    "i": te.inputs.FixedLenFeature([], torch.int64),
}


class Log(te.Hook):
    """Appends ``[global_step, ids of the step's batch]`` to this process's log after every step."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids: list[int] = []

    def after_run(self, run_context, run_values):
        with open(self.path, "a") as handle:
            handle.write(json.dumps([run_context.global_step, self.ids]) + "\n")


class Die(te.Hook):
    """Every process ends at once after ``step`` (a preempted job): no final checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_run(self, run_context, run_values):
        if run_context.global_step == self.step:
            os._exit(17)


def main() -> None:
    model_dir, pattern, uneven, shuffle, epochs = sys.argv[1:6]
    kill_step = int(sys.argv[6]) if len(sys.argv) > 6 else None
    rank = int(os.environ["RANK"])
    log = Log(os.path.join(model_dir, f"seen-rank{rank}.jsonl"))

    def model_fn(features, labels, mode, model):
        ids = features.pop("i")
        if mode == te.ModeKeys.TRAIN:
            log.ids = ids.tolist()
        logits = model(features["x"])
        loss = F.cross_entropy(logits, labels)
        return te.EstimatorSpec(mode, loss=loss, eval_metric_ops={"mean_id": te.metrics.mean(ids.float())})

    torch.manual_seed(0)
    est = te.Estimator(model_fn, model_dir=model_dir, model=torch.nn.Linear(2, 2),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       config=te.RunConfig(device="cpu", random_seed=7, save_checkpoints_steps=4, log_step_count_steps=2,
                                           distributed_timeout_secs=60))

    def input_fn(num_epochs):
        if pattern.startswith("numpy:"):
            i = np.arange(int(pattern[len("numpy:"):]))
            x = np.stack([i, -i], axis=1).astype(np.float32)
            return te.inputs.numpy_input_fn({"x": x, "i": i}, i % 2, batch_size=3, num_epochs=num_epochs,
                                            shuffle=shuffle == "shuffle")
        return te.inputs.tfrecord_input_fn(pattern, SPEC, batch_size=3, num_epochs=num_epochs, shuffle=shuffle == "shuffle",
                                           shuffle_buffer_size=4, label_key="y", uneven_shards=uneven)

    hooks = [log] + ([Die(kill_step)] if kill_step is not None else [])
    est.train(input_fn(int(epochs)), hooks=hooks)
    out = {"global_step": int(est.get_variable_value("global_step")),
           "eval": {k: float(v) for k, v in est.evaluate(input_fn(1)).items()}}
    with open(os.path.join(model_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(out, handle)
    time.sleep(0.1)


if __name__ == "__main__":
    main()
