"""Throughput of ``tfrecord_input_fn`` against ``numpy_input_fn`` on the same data, and against tf.data.

Two data sets: MNIST-shaped (784 floats and an int64 label per example) and tabular (10 floats and a label).
Each round iterates one epoch of every reader, shuffled, in batches of 100, in alternating order; the script
prints examples/s per reader (median over rounds) and the paired ratios (median of per-round ratios), of wall
time and of this process's CPU time (steadier than wall time on a shared machine). Two TFRecord rows:
reading the files in every pass (every byte read and checksummed, the records parsed), and ``cache=True``'s
later passes (the parsed examples in memory, as ``numpy_input_fn``'s arrays; its first pass, which reads the
files and keeps the examples, is printed too).

Targets: tfrecord >= 0.5x numpy_input_fn, and >= tf.data's TFRecordDataset + shuffle + batch + parse_example
(measured only with ``--tf-python``: a Python with TensorFlow installed, never a dependency of this project,
e.g. ``python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu``).

    python benchmarks/tfrecord.py [--examples 20000] [--rounds 5] [--tf-python /tmp/tfenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch_estimator as te  # noqa: E402
from torch_estimator.tf_example import make_example  # noqa: E402
from torch_estimator.tfrecord import write_records  # noqa: E402

BATCH = 100
TF_READER = r"""
import json, sys, time
import tensorflow as tf
path, width, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = {"x": tf.io.FixedLenFeature([width], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64)}
def epoch():
    ds = tf.data.TFRecordDataset(path).shuffle(10000, seed=0).batch(%d).map(lambda r: tf.io.parse_example(r, spec))
    n = 0
    for batch in ds:
        n += int(batch["label"].shape[0])
    return n
epoch()  # warm-up: graph tracing
rates = []
for _ in range(rounds):
    start = time.perf_counter(); n = epoch(); rates.append(n / (time.perf_counter() - start))
print(json.dumps(rates))
""" % BATCH  # noqa: UP031 (the script's own braces are dicts: %-formatting leaves them alone)


def make_data(directory: str, n: int, width: int) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, width), dtype=np.float32)
    y = rng.integers(0, 10, n)
    path = os.path.join(directory, f"data-{width}.tfrecord")
    write_records(path, (make_example({"x": row, "label": int(label)}).SerializeToString() for row, label in zip(x, y)))
    return path, x, y


def rate(input_fn) -> tuple[float, float]:
    """Examples per second of wall time and of CPU time, over one epoch."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for _, labels in input_fn():
        n += len(labels)
    return n / (time.perf_counter() - start), n / max(time.process_time() - cpu, 1e-9)


def hand_loop(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The floor: shuffled slices of in-memory arrays made tensors, no library code."""
    start, cpu, order = time.perf_counter(), time.process_time(), np.random.default_rng(0).permutation(len(x))
    for i in range(0, len(x), BATCH):
        index = order[i : i + BATCH]
        torch.from_numpy(x[index]), torch.from_numpy(y[index])
    return len(x) / (time.perf_counter() - start), len(x) / max(time.process_time() - cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tf-python", help="a Python with TensorFlow, to time tf.data's reader")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        for width, name in ((784, "MNIST-shaped (784 floats + label)"), (10, "tabular (10 floats + label)")):
            path, x, y = make_data(directory, args.examples, width)
            spec = {"x": te.inputs.FixedLenFeature([width], torch.float32),
                    "label": te.inputs.FixedLenFeature([], torch.int64)}
            def make_cached(path=path, spec=spec):
                return te.inputs.tfrecord_input_fn(path, spec, batch_size=BATCH, shuffle=True, seed=0, label_key="label",
                                                   cache=True)

            cached = make_cached()
            rate(cached)  # reads the files and keeps the examples
            readers = {
                "hand loop": lambda x=x, y=y: hand_loop(x, y),
                "numpy_input_fn": lambda x=x, y=y: rate(te.inputs.numpy_input_fn({"x": x}, y, batch_size=BATCH, shuffle=True, seed=0)),
                "tfrecord_input_fn": lambda path=path, spec=spec: rate(
                    te.inputs.tfrecord_input_fn(path, spec, batch_size=BATCH, shuffle=True, seed=0, label_key="label")),
                "tfrecord, cache=True": lambda cached=cached: rate(cached),
            }
            rates: dict[str, list[float]] = {key: [] for key in readers}
            cpu: dict[str, list[float]] = {key: [] for key in readers}
            for round_ in range(args.rounds):
                for key in (list(readers) if round_ % 2 == 0 else list(reversed(readers))):
                    wall_rate, cpu_rate = readers[key]()
                    rates[key].append(wall_rate)
                    cpu[key].append(cpu_rate)
            if args.tf_python:
                out = subprocess.run([args.tf_python, "-c", TF_READER, path, str(width), str(args.rounds)],
                                     capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                rates["tf.data (TensorFlow)"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name}, {args.examples} examples, batch {BATCH}, shuffled, {os.path.getsize(path) / 1e6:.1f} MB file:")
            for key, values in rates.items():
                print(f"  {key:<22} {statistics.median(values):>12,.0f} examples/s")
            # A cache's first pass reads the files and keeps the examples: timed in this process, now warm (a process's
            # very first pass over new data also pays for fresh memory, with or without the cache).
            first_pass = statistics.median(rate(make_cached())[0] for _ in range(3))
            print(f"  {'cache=True, 1st pass':<22} {first_pass:>12,.0f} examples/s (reads the files and keeps them)")
            for key, what in (("tfrecord_input_fn", "reading the files"), ("tfrecord, cache=True", "cached passes")):
                paired = [t / n for t, n in zip(rates[key], rates["numpy_input_fn"])]
                paired_cpu = [t / n for t, n in zip(cpu[key], cpu["numpy_input_fn"])]
                print(f"  tfrecord / numpy_input_fn, {what}: {statistics.median(paired):.2f}x wall time, "
                      f"{statistics.median(paired_cpu):.2f}x CPU time (target >= 0.5x)")
            if "tf.data (TensorFlow)" in rates:
                ratio = statistics.median(rates["tfrecord_input_fn"]) / statistics.median(rates["tf.data (TensorFlow)"])
                print(f"  tfrecord / tf.data: {ratio:.2f}x (target >= 1x; medians of wall time, not paired: separate "
                      f"processes, and tf.data uses several threads)")


if __name__ == "__main__":
    main()
