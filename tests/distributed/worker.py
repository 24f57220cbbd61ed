"""A training script run under torchrun by tests/test_distribute.py (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 worker.py SCENARIO MODEL_DIR
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


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype("float32")
    y = (x[:, 0] - x[:, 1] > 0).astype("int64")
    return x, y


def model_fn(features, labels, mode, model):
    logits = model(features["x"])
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions={"classes": logits.argmax(1)})
    loss = F.cross_entropy(logits, labels)
    metrics = {"accuracy": te.metrics.accuracy(labels, logits.argmax(1)), "n": te.metrics.mean(labels.float())}
    return te.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics)


def build(model_dir, batch_size, **config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    config.setdefault("save_checkpoints_steps", 5)
    config.setdefault("log_step_count_steps", 4)
    est = te.Estimator(model_fn, model_dir=model_dir, model=model, optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                       config=te.RunConfig(device="cpu", random_seed=3, **config))
    x, y = data()
    return est, te.inputs.numpy_input_fn({"x": x}, y, batch_size=batch_size, num_epochs=None, shuffle=True)


class StopOnRankOne(te.Hook):
    """Only rank 1 asks to stop, at step 6: every process must stop at the same agreed step."""

    def after_run(self, run_context, run_values):
        if int(os.environ["RANK"]) == 1 and run_context.global_step >= 6:
            run_context.request_stop()


def main() -> None:
    scenario, model_dir = sys.argv[1], sys.argv[2]
    rank = int(os.environ.get("RANK", "0"))
    out = {"rank": rank}
    if scenario == "train":
        batch = int(sys.argv[3])
        est, train_fn = build(model_dir, batch)
        est.train(train_fn, steps=12)
        x, y = data()
        out["eval"] = {k: float(v) for k, v in est.evaluate(te.inputs.numpy_input_fn({"x": x}, y, batch_size=33, shuffle=False)).items()}
        out["weights"] = [p.detach().numpy().tolist() for p in est.model.parameters()]
        out["global_step"] = est.get_variable_value("global_step").item()
        out["config"] = {"rank": est.config.rank, "world_size": est.config.world_size, "is_chief": est.config.is_chief}
    elif scenario == "stop":
        est, train_fn = build(model_dir, 10)
        est.train(train_fn, steps=100, hooks=[StopOnRankOne()])
        out["global_step"] = int(est.get_variable_value("global_step"))
    elif scenario == "train_and_evaluate":
        est, train_fn = build(model_dir, 10)
        x, y = data()
        exporter = te.LatestExporter("latest", te.build_raw_serving_input_receiver_fn({"x": te.TensorSpec([None, 6], torch.float32)}))
        eval_spec = te.EvalSpec(te.inputs.numpy_input_fn({"x": x}, y, batch_size=50, shuffle=False), steps=None,
                                throttle_secs=0, exporters=[exporter])
        result, exports = te.train_and_evaluate(est, te.TrainSpec(train_fn, max_steps=12), eval_spec)
        out["result"] = None if result is None else {k: float(v) for k, v in result.items()}
        out["exports"] = exports
        out["global_step"] = int(est.get_variable_value("global_step"))
    elif scenario == "kill":
        est, train_fn = build(model_dir, 10, distributed_timeout_secs=20, save_checkpoints_steps=2)

        class Die(te.Hook):
            def after_run(self, run_context, run_values):
                if rank == 1 and run_context.global_step == 7:
                    os._exit(17)

        try:
            est.train(train_fn, steps=1000, hooks=[Die()])
        except Exception as error:  # the survivor must fail clearly, not hang
            out["error"] = f"{type(error).__name__}: {error}"[:300]
    with open(os.path.join(model_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(out, handle)
    time.sleep(0.1)


if __name__ == "__main__":
    main()
