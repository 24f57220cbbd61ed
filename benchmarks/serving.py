"""Is ``torch-estimator serve`` as fast as a plain starlette + uvicorn app serving the same model?

The tutorial CNN of ``examples/mnist.py`` is trained for a few steps on the seeded synthetic data set by a real
Estimator and exported (``build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 784], float32)})``).
Then, for 1, 16 and 64 concurrent clients, each posting batch-1 requests ``{"instances": [[784 floats]]}``
back to back on its own keep-alive ``http.client`` connection (the body is encoded once; the client parses
each answer), three servers run side by side, each in its own process:

* ``reference``: a 30-line starlette app on uvicorn (:data:`REFERENCE_APP`, the shape of a FastAPI app)
  that parses the JSON, runs the loaded export in starlette's thread pool and writes the predictions;
* ``te serve``: ``torch-estimator serve`` with its defaults (TF Serving's request checks and answers);
* ``te serve --batching``: the same with ``--batching``.

**Method.** All servers run throughout; each round measures every cell (side x clients) for ``--seconds``
after ``--warmup`` seconds, the sides in an order that alternates between rounds, so that drifts in the
machine's load hit all sides. Per round, ``te serve``'s throughput and p99 are divided by the reference's
from the same round (paired ratios); the figures are medians over ``--rounds`` rounds. Targets: throughput
ratio >= 1.0 and p99 ratio <= 1.2 at every client count. Clients, servers and model share this machine's
cores, so the client's own work counts against the servers: read the figures as "what one box does".

Usage::

    python benchmarks/serving.py                   # about three minutes
    python benchmarks/serving.py --quick           # smoke run
    python benchmarks/serving.py --rounds 5 --num-torch-threads 1
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

CLIENTS = (1, 16, 64)

# The reference: what a user would write with starlette (or FastAPI) and uvicorn to serve the export.
REFERENCE_APP = """
import socket, sys
import torch, uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route
from torch_estimator.serving import loader

model = loader.load(sys.argv[1])
if len(sys.argv) > 2:
    torch.set_num_threads(int(sys.argv[2]))
for _ in range(20):  # warm up as te serve's self-check does (TorchScript optimizes after its first runs)
    model({"x": torch.zeros(1, 784)})

async def predict(request):
    body = await request.json()
    x = torch.tensor(body["instances"], dtype=torch.float32)
    outputs = await run_in_threadpool(model, {"x": x})
    rows = [{name: value[i].tolist() for name, value in outputs.items()} for i in range(len(x))]
    return JSONResponse({"predictions": rows})

app = Starlette(routes=[Route("/v1/models/mnist:predict", predict, methods=["POST"])])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as uvicorn --port binds it
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"Serving model at http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


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


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _started(process: subprocess.Popen) -> tuple[subprocess.Popen, int]:
    line = process.stdout.readline()  # type: ignore[union-attr]
    if "Serving model" not in line:
        process.kill()
        raise RuntimeError(f"The server did not start: {line!r}")
    return process, int(line.split("http://127.0.0.1:")[1].split("/")[0].split(" ")[0])


def start_server(base: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """``torch-estimator serve`` in a subprocess: (process, port)."""
    return _started(subprocess.Popen(
        [sys.executable, "-m", "torch_estimator.cli", "serve", "--model_base_path", base, "--model_name", "mnist",
         "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()))


def start_reference(export_dir: str, torch_threads: int | None) -> tuple[subprocess.Popen, int]:
    """:data:`REFERENCE_APP` in a subprocess: (process, port)."""
    extra = [str(torch_threads)] if torch_threads else []
    return _started(subprocess.Popen([sys.executable, "-c", REFERENCE_APP, export_dir, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()))


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
    parser.add_argument("--threads", type=int, default=4, help="te serve's --threads (inferences at once)")
    parser.add_argument("--num-torch-threads", type=int, default=None, help="torch.set_num_threads in the servers")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="one round of 0.5 s per cell (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 0.5, 0.3, 1
    torch_flags = ["--num_torch_threads", str(args.num_torch_threads)] if args.num_torch_threads else []

    workdir = tempfile.mkdtemp(prefix="te_serving_bench_")
    servers: list[subprocess.Popen] = []
    try:
        base, export_dir, images = export_mnist(workdir, args.steps)
        ports = {}
        process, ports["reference"] = start_reference(export_dir, args.num_torch_threads)
        servers.append(process)
        flags = {"te serve": ["--threads", str(args.threads)],
                 "te serve --batching": ["--threads", str(args.threads), "--batching", "--max_batch_size",
                                         str(args.max_batch_size)]}
        for name, extra in flags.items():
            process, ports[name] = start_server(base, extra + torch_flags)
            servers.append(process)
        print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; te serve --threads {args.threads}; batching: --max_batch_size "
              f"{args.max_batch_size}; {args.rounds} round(s) of {args.seconds:g}s per cell after {args.warmup:g}s "
              f"warm-up, sides alternating; figures are medians over rounds", flush=True)
        sides = list(ports)
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {(n, c): [] for n in sides for c in CLIENTS}
        for r in range(args.rounds):
            for clients in CLIENTS:
                for name in (sides if r % 2 == 0 else sides[::-1]):
                    samples[(name, clients)].append(over_http(ports[name], images, clients, args.seconds, args.warmup))
        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in sides}
        for (name, clients), runs in samples.items():
            cell = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99")}
            cell["errors"] = sum(run["errors"] for run in runs)
            reference = samples[("reference", clients)]
            cell["rps_ratio"] = statistics.median(run["rps"] / ref["rps"] for run, ref in zip(runs, reference))
            cell["p99_ratio"] = statistics.median(run["p99"] / ref["p99"] for run, ref in zip(runs, reference))
            results[name][clients] = cell
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"\n{'side':<22}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'req/s vs ref':>14}{'p99 vs ref':>12}")
        for name in sides:
            for clients in CLIENTS:
                cell = results[name][clients]
                ratios = "" if name == "reference" else f"{cell['rps_ratio']:>13.2f}x{cell['p99_ratio']:>11.2f}x"
                print(f"{name:<22}{clients:>8}{cell['rps']:>9.0f}{cell['p50']:>9.2f}{cell['p99']:>9.2f}"
                      f"{cell['errors']:>8}{ratios}")
        met = all(results["te serve"][c]["rps_ratio"] >= 1.0 and results["te serve"][c]["p99_ratio"] <= 1.2
                  for c in CLIENTS)
        print(f"\ntarget (te serve vs reference: req/s >= 1.0x, p99 <= 1.2x at {', '.join(map(str, CLIENTS))} "
              f"clients): {'met' if met else 'NOT met'}")
        return results
    finally:
        for process in servers:
            stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    figures = main()
    sys.exit(1 if any(cell["errors"] for cells in figures.values() for cell in cells.values()) else 0)
