"""Throughput of data-parallel training: 1 process vs N processes (torchrun, gloo on CPU, nccl on CUDA).

Each process trains the tutorial CNN of ``examples/mnist.py`` on synthetic MNIST-shaped batches (per-process
batch ``--batch-size``), so N processes see N times the examples per step. The figure is examples/sec over
the timed steps (after ``--warmup`` steps), measured by the chief between two barriers, for each world size.
On this project's 2-core CPU machines the point is correctness and the absence of stalls, not scaling: two
processes share two cores. Run on a multi-GPU machine for real scaling figures.

Usage::

    python benchmarks/distributed.py                  # 1 and 2 processes
    python benchmarks/distributed.py --nproc 1 2 4 --steps 60
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import torch_estimator as te

    spec = importlib.util.spec_from_file_location("mnist_example", ROOT / "examples" / "mnist.py")
    mnist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mnist)
    torch.set_num_threads(args.threads)

    def model_fn(features, labels, mode, model):
        loss = F.cross_entropy(model(features.view(-1, 1, 28, 28)), labels)
        return te.EstimatorSpec(mode, loss=loss)

    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size * 8, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size * 8)
    est = te.Estimator(model_fn, model=mnist.CNN(), optimizer=lambda p: torch.optim.SGD(p, lr=0.001),
                       model_dir=args.model_dir,
                       config=te.RunConfig(device=args.device, random_seed=0, save_checkpoints_steps=None,
                                           save_checkpoints_secs=None, log_step_count_steps=None, save_summary_steps=None))
    input_fn = te.inputs.numpy_input_fn(x, y, batch_size=args.batch_size, num_epochs=None, shuffle=True)
    est.train(input_fn, steps=args.warmup)
    te.distribute.barrier()
    start = time.perf_counter()
    est.train(input_fn, steps=args.steps)
    te.distribute.barrier()
    elapsed = time.perf_counter() - start
    if est.config.is_chief:
        examples = args.steps * args.batch_size * est.config.world_size
        print(json.dumps({"world_size": est.config.world_size, "seconds": elapsed, "examples_per_sec": examples / elapsed}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    results = []
    for nproc in args.nproc:
        with tempfile.TemporaryDirectory() as model_dir:
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                       "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, "--worker",
                       "--model-dir", model_dir, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
            run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if run.returncode != 0:
                sys.exit(f"{nproc} processes failed:\n{run.stderr[-3000:]}")
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    base = results[0]["examples_per_sec"]
    print(f"{'processes':>9} {'examples/s':>11} {'speed-up':>9}")
    for result in results:
        print(f"{result['world_size']:>9} {result['examples_per_sec']:>11.1f} {result['examples_per_sec'] / base:>8.2f}x")


if __name__ == "__main__":
    main()
