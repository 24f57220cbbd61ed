"""What does the REST server cost? Requests per second and latency for the MNIST CNN at batch 1.

The tutorial CNN of ``examples/mnist.py`` is trained for a few steps on the seeded synthetic data set by a real
Estimator and exported (``build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 784], float32)})``).
Then, for 1, 4 and 16 concurrent clients, each sending batch-1 requests back to back:

* ``in-process``: threads calling the loaded model (``torch_estimator.serving.loader.load(...)({"x": x})``) in
  this process: the floor, with no HTTP or JSON;
* ``http``: ``torch-estimator serve`` in a subprocess, clients on loopback with one keep-alive
  ``http.client`` connection each, posting ``{"instances": [[784 floats]]}`` to ``:predict`` (the body is
  encoded once; the client parses each answer);
* ``http+batching``: the same with ``--batching`` (``--max_batch_size``, ``--batch_timeout_ms``).

**Method.** Both servers run throughout; each round measures every cell (side x clients) for ``--seconds``
after ``--warmup`` seconds, in an order that alternates between rounds, so that drifts in the machine's load
hit all sides; a cell's figure is the median over ``--rounds`` rounds. Latency is per request as the client
sees it (p50, p99), throughput is requests completed over the measured time; ``errors`` counts non-200
answers (must be 0). Clients, servers and model share this machine's cores, so the client's own work counts
against the server: read the figures as "what one box does", not as the server's ceiling.

Usage::

    python benchmarks/serving.py                   # about two minutes
    python benchmarks/serving.py --quick           # smoke run
    python benchmarks/serving.py --rounds 5 --num-torch-threads 1 --threads 2
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
try:
    import torch_estimator as te
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
    import torch_estimator as te
from torch_estimator.serving import loader

CLIENTS = (1, 4, 16)


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_mnist", ROOT / "examples" / "mnist.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def export_mnist(workdir: str, steps: int) -> tuple[str, str, np.ndarray]:
    """Train the tutorial CNN briefly and export it: (base directory, export directory, sample images)."""
    mnist = _load_example()
    torch.manual_seed(0)
    est = te.Estimator(
        mnist.model_fn, model_dir=os.path.join(workdir, "model"), model=mnist.CNN(), params={"learning_rate": 0.05},
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05), config=te.RunConfig(device="cpu", log_step_count_steps=None),
    )
    train_x, train_y, eval_x, _ = mnist.synthetic_dataset(num_train=500, num_eval=64)
    est.train(te.inputs.numpy_input_fn({"x": train_x}, train_y, batch_size=50, num_epochs=None, shuffle=True), steps=steps)
    base = os.path.join(workdir, "exports")
    receiver = te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 784], torch.float32)})
    return base, est.export_saved_model(base, receiver), eval_x


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(clients: int, seconds: float, warmup: float, call: Any) -> dict[str, Any]:
    """``clients`` threads calling ``call(client_index, state)`` back to back; latencies after the warm-up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_measuring = time.perf_counter() + warmup
    stop_at = start_measuring + seconds
    barrier = threading.Barrier(clients)

    def loop(index: int) -> None:
        state: dict[str, Any] = {}
        barrier.wait()
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                break
            ok = call(index, state)
            ended = time.perf_counter()
            if began >= start_measuring:
                latencies[index].append(ended - began)
                errors[index] += 0 if ok else 1
        if "connection" in state:
            state["connection"].close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [t for per_client in latencies for t in per_client]
    return {"rps": len(flat) / seconds, "p50": _percentile(flat, 50) * 1e3, "p99": _percentile(flat, 99) * 1e3,
            "errors": sum(errors), "requests": len(flat)}


def in_process(model: loader.ExportedModel, images: np.ndarray, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    rows = [torch.from_numpy(images[i % len(images)][None]) for i in range(clients)]

    def call(index: int, state: dict[str, Any]) -> bool:
        model({"x": rows[index]})
        return True

    return run_clients(clients, seconds, warmup, call)


def over_http(port: int, images: np.ndarray, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    bodies = [json.dumps({"instances": [images[i % len(images)].tolist()]}).encode() for i in range(clients)]
    headers = {"Content-Type": "application/json"}

    def call(index: int, state: dict[str, Any]) -> bool:
        connection = state.get("connection")
        if connection is None:
            connection = state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/v1/models/mnist:predict", body=bodies[index], headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        return response.status == 200 and len(answer["predictions"]) == 1

    return run_clients(clients, seconds, warmup, call)


def start_server(base: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch_estimator.cli", "serve", "--model_base_path", base, "--model_name", "mnist",
         "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if "Serving model" not in line:
        process.kill()
        raise RuntimeError(f"The server did not start: {line!r}")
    return process, int(line.split("http://127.0.0.1:")[1].split("/")[0].split(" ")[0])


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cells (figures: medians)")
    parser.add_argument("--steps", type=int, default=20, help="training steps before the export")
    parser.add_argument("--threads", type=int, default=4, help="the server's --threads (inferences at once)")
    parser.add_argument("--num-torch-threads", type=int, default=None, help="torch.set_num_threads, here and in the servers")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="one round of 0.5 s per cell (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 0.5, 0.3, 1
    if args.num_torch_threads:
        torch.set_num_threads(args.num_torch_threads)
    torch_flags = ["--num_torch_threads", str(args.num_torch_threads)] if args.num_torch_threads else []

    workdir = tempfile.mkdtemp(prefix="te_serving_bench_")
    servers: list[subprocess.Popen] = []
    try:
        base, export_dir, images = export_mnist(workdir, args.steps)
        flags = {
            "http": ["--threads", str(args.threads)],
            "http+batching": ["--threads", str(args.threads), "--batching", "--max_batch_size", str(args.max_batch_size),
                              "--batch_timeout_ms", str(args.batch_timeout_ms)],
        }
        ports = {}
        for name, extra in flags.items():
            process, ports[name] = start_server(base, extra + torch_flags)
            servers.append(process)
        model = loader.load(export_dir)
        print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}; server --threads "
              f"{args.threads}; batching: --max_batch_size {args.max_batch_size} --batch_timeout_ms "
              f"{args.batch_timeout_ms:g}; {args.rounds} round(s) of {args.seconds:g}s per cell after {args.warmup:g}s "
              f"warm-up", flush=True)
        sides = {
            "in-process": lambda c: in_process(model, images, c, args.seconds, args.warmup),
            "http": lambda c: over_http(ports["http"], images, c, args.seconds, args.warmup),
            "http+batching": lambda c: over_http(ports["http+batching"], images, c, args.seconds, args.warmup),
        }
        cells = [(name, clients) for clients in CLIENTS for name in sides]
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {cell: [] for cell in cells}
        for r in range(args.rounds):
            for name, clients in (cells if r % 2 == 0 else cells[::-1]):
                samples[(name, clients)].append(sides[name](clients))
        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in sides}
        for (name, clients), runs in samples.items():
            results[name][clients] = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99")}
            results[name][clients]["errors"] = sum(run["errors"] for run in runs)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"\n{'side':<15}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for name in sides:
            for clients in CLIENTS:
                cell = results[name][clients]
                print(f"{name:<15}{clients:>8}{cell['rps']:>10.0f}{cell['p50']:>9.2f}{cell['p99']:>9.2f}{cell['errors']:>8}")
        return results
    finally:
        for process in servers:
            stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    figures = main()
    sys.exit(1 if any(cell["errors"] for cells in figures.values() for cell in cells.values()) else 0)
