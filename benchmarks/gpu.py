"""The Estimator against a hand-written loop on a CUDA GPU: the tutorial CNN in fp32, bf16 and compiled.

Both sides train ``examples/mnist.py``'s CNN on the same pinned host batches (batch 100, synthetic MNIST
shapes), moved to the GPU with non-blocking copies. The hand-written loop is::

    for x, y in batches:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        opt.zero_grad(); with autocast: loss = F.cross_entropy(model(x), y)
        loss.backward(); opt.step()

The Estimator runs with its default hooks, its default input prefetching (on CUDA: a background thread pins
the next batches and copies them on a side stream) and a checkpoint every 1000 steps. Cases: ``fp32``,
``bf16``, ``compile`` (both sides ``torch.compile``d); ``graphs``: the Estimator with
``RunConfig(compile="reduce-overhead")`` (CUDA graphs: one launch per step) against the plain eager hand
loop, the pair the CUDA-graph target (>= 1.5x where the loop is launch-bound) is about; ``unpinned``: both
sides read ordinary (pageable) host batches, so the hand loop's copies block while the Estimator's are
made ahead. Each round times N and 2N steps
of each side (CUDA synchronised before reading the clock) and keeps the marginal time per step, so fixed
per-call costs cancel; sides alternate; the table shows medians of the paired ratios
(Estimator steps/s over hand-loop steps/s; 1.00 = no overhead).

Usage::

    python benchmarks/gpu.py --rounds 5 --steps 200
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import torch_estimator as te

ROOT = Path(__file__).resolve().parents[1]


def _cnn_class():
    spec = importlib.util.spec_from_file_location("mnist_example", ROOT / "examples" / "mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CNN


def _batches(count: int, pin: bool, batch_size: int = 100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.random((batch_size, 784), dtype=np.float32)), torch.from_numpy(rng.integers(0, 10, batch_size)))
               for _ in range(count)]
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches] if pin else batches


def _hand_loop(model, optimizer, batches, dtype, device) -> None:
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x.view(-1, 1, 28, 28)), y)
        loss.backward()
        optimizer.step()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def run_case(name: str, steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    CNN = _cnn_class()
    dtype = torch.bfloat16 if name == "bf16" else None
    compile_ = {"compile": True, "graphs": "reduce-overhead"}.get(name, False)
    batches = _batches(2 * steps, pin=device.type == "cuda" and name != "unpinned")

    torch.manual_seed(0)
    hand = CNN().to(device)
    hand_module = torch.compile(hand) if name == "compile" else hand
    hand_opt = torch.optim.SGD(hand.parameters(), lr=1e-3)

    def model_fn(features, labels, mode, model):
        return te.EstimatorSpec(mode, loss=F.cross_entropy(model(features.view(-1, 1, 28, 28)), labels))

    torch.manual_seed(0)
    est = te.Estimator(model_fn, model=CNN(), optimizer=lambda p: torch.optim.SGD(p, lr=1e-3),
                       model_dir=tempfile.mkdtemp(),
                       config=te.RunConfig(device=str(device), precision="bf16" if dtype else "32", compile=compile_,
                                           save_checkpoints_steps=1000, progress_bar=False))
    # Warm-up: cuDNN autotuning, compilation, the first checkpoint.
    _hand_loop(hand_module, hand_opt, batches[:20], dtype, device)
    est.train(lambda: batches[:20])
    ratios, hand_rates, est_rates = [], [], []
    for r in range(rounds):
        order = ("hand", "est") if r % 2 == 0 else ("est", "hand")
        times = {}
        for side in order:
            if side == "hand":
                t1 = _timed(lambda: _hand_loop(hand_module, hand_opt, batches[:steps], dtype, device))
                t2 = _timed(lambda: _hand_loop(hand_module, hand_opt, batches, dtype, device))
            else:
                t1 = _timed(lambda: est.train(lambda: batches[:steps]))
                t2 = _timed(lambda: est.train(lambda: batches))
            times[side] = (t2 - t1) / steps
        hand_rates.append(1 / times["hand"])
        est_rates.append(1 / times["est"])
        ratios.append(times["hand"] / times["est"])
    return {"hand": statistics.median(hand_rates), "estimator": statistics.median(est_rates), "ratio": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["fp32", "bf16", "compile", "graphs", "unpinned"])
    parser.add_argument("--device", default="cuda", help="cpu runs a smoke test of the script itself")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (or --device cpu for a smoke run).")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'case':>8} {'hand steps/s':>13} {'estimator steps/s':>18} {'ratio':>6}")
    for case in args.cases:
        result = run_case(case, args.steps, args.rounds, device)
        print(f"{case:>8} {result['hand']:>13.1f} {result['estimator']:>18.1f} {result['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
