"""What does serving from the export cost, compared with eager PyTorch? Latency per call, and export time.

The tutorial CNN of ``examples/mnist.py`` (its ``CNN`` and ``model_fn``) is trained for a few steps on the
seeded synthetic data set by a real Estimator and exported with
``build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 784], float32)})``. Then, at batch 1 and 64:

* ``eager``: what ``Estimator.predict`` runs per batch, without its input pipeline: ``model_fn`` in PREDICT
  mode under ``torch.no_grad()``, the model in eval mode;
* ``torchscript``: the exported ``model.pt``'s ``forward``, called directly (``torch.jit.load``);
* ``aoti``: the same export's ``model.aoti.pt2`` (``format="aoti"``, compiled by AOTInductor), its default
  signature called directly (the loader's runner: one native call, no input checks);
* ``loader``: ``torch_estimator.serving.loader.load(...)(inputs)``, i.e. the TorchScript call plus input checks;
* ``loader_aoti``: the same with ``format="aoti"``.

**Method.** After warm-up calls (TorchScript's profiling executor optimizes on its first calls), each round
times ``--calls`` calls of every side, in an order that alternates between rounds, so drifts of the machine
hit all sides; a side's figure is the median over rounds of its per-call time, and ``ratio`` is the median of
the per-round ratios side/eager (lower is better; 1.0 = as fast as eager). Export time is the wall time of
``Estimator.export_saved_model`` (tracing, saving, loading back and verifying at two batch sizes), median of
``--export-runs`` exports into fresh directories (so none waits for a new second). The AOTInductor export
is timed once (``torch.export``, compiling, packaging, loading back and verifying), its compile step
reported apart; the inductor cache of earlier runs can shorten it (``--fresh-cache`` compiles from scratch).

Targets (``PASS``/``FAIL`` printed): the TorchScript artifact no slower than eager at batch 64, i.e. a ratio of
at most 1.0 plus ``--tolerance`` (default 0.02, the noise of this measurement on a shared 2-core machine);
the AOTInductor artifact at most 0.8 times eager at batch 1 and at batch 64.

Usage::

    python benchmarks/export.py               # a minute or two
    python benchmarks/export.py --quick       # smoke run for CI
    python benchmarks/export.py --threads 2 --rounds 31 --pt2
    python benchmarks/export.py --no-aoti     # without the compiled artifact (no C++ compiler needed)

``--threads`` (default 1) sets ``torch.set_num_threads``; ``--strict`` exits with status 1 when the target fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
AOTI_TARGET = 0.8  # the compiled artifact's latency, at most this fraction of eager's
try:
    import torch_estimator as te
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
    import torch_estimator as te
from torch_estimator.export import aoti as aoti_io  # noqa: E402 (after the checkout fallback above)
from torch_estimator.export import torchscript as torchscript_io  # noqa: E402 (after the checkout fallback above)
from torch_estimator.serving import loader  # noqa: E402 (after the checkout fallback above)


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_mnist", ROOT / "examples" / "mnist.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_estimator(mnist: ModuleType, model_dir: str, steps: int) -> te.Estimator:
    torch.manual_seed(0)
    est = te.Estimator(
        mnist.model_fn, model_dir=model_dir, model=mnist.CNN(), params={"learning_rate": 0.05},
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        config=te.RunConfig(device="cpu", log_step_count_steps=None),
    )
    train_x, train_y, _, _ = mnist.synthetic_dataset(num_train=500, num_eval=10)
    input_fn = te.inputs.numpy_input_fn({"x": train_x}, train_y, batch_size=50, num_epochs=None, shuffle=True)
    est.train(input_fn, steps=steps)
    return est


def receiver_fn() -> Any:
    return te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 784], torch.float32)})


def time_exports(est: te.Estimator, runs: int, format: str) -> list[float]:
    seconds = []
    for _ in range(runs):
        base = tempfile.mkdtemp(prefix="te_export_bench_")
        try:
            start = time.perf_counter()
            est.export_saved_model(base, receiver_fn(), format=format)
            seconds.append(time.perf_counter() - start)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return seconds


def time_aoti_export(est: te.Estimator, base: str) -> tuple[str, float, float]:
    """``(export directory, total seconds, compile seconds)`` of one ``format="aoti"`` export."""
    compile_seconds: list[float] = []
    original = aoti_io.compile_package

    def timed(*args: Any, **kwargs: Any) -> float:
        seconds = original(*args, **kwargs)
        compile_seconds.append(seconds)
        return seconds

    aoti_io.compile_package = timed  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        path = est.export_saved_model(base, receiver_fn(), format="aoti")
        total = time.perf_counter() - start
    finally:
        aoti_io.compile_package = original  # type: ignore[assignment]
    return path, total, compile_seconds[0]


def make_sides(
    mnist: ModuleType, est: te.Estimator, export_dir: str, aoti_dir: str | None
) -> dict[str, Callable[[torch.Tensor], Any]]:
    model = est._model  # the Estimator's in-memory model, restored from the exported checkpoint
    model.eval()
    params = {"learning_rate": 0.05}
    scripted, _ = torchscript_io.load(os.path.join(export_dir, "model.pt"))  # torch.jit.load, its warning silenced
    served = loader.load(export_dir)
    sides: dict[str, Callable[[torch.Tensor], Any]] = {}

    def eager(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return mnist.model_fn({"x": x}, None, te.ModeKeys.PREDICT, params, model).predictions

    def torchscript(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return scripted({"x": x})

    sides.update(eager=eager, torchscript=torchscript)
    if aoti_dir is not None:
        runners, _ = aoti_io.load(os.path.join(aoti_dir, aoti_io.MODEL_FILE))
        compiled = runners["forward"]
        served_aoti = loader.load(aoti_dir, format="aoti")

        def aoti(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return compiled({"x": x})

        sides["aoti"] = aoti
    sides["loader"] = lambda x: served({"x": x})
    if aoti_dir is not None:
        sides["loader_aoti"] = lambda x: served_aoti({"x": x})
    return sides


def measure(
    sides: dict[str, Callable[[torch.Tensor], Any]], batch: int, rounds: int, calls: int, warmup: int
) -> dict[str, list[float]]:
    x = torch.rand(batch, 784, generator=torch.Generator().manual_seed(batch))
    for side in sides.values():
        for _ in range(warmup):
            side(x)
    per_call: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            side = sides[name]
            start = time.perf_counter()
            for _ in range(calls):
                side(x)
            per_call[name].append((time.perf_counter() - start) / calls)
    return per_call


def report(batch: int, per_call: dict[str, list[float]]) -> dict[str, float]:
    med = statistics.median
    eager = per_call["eager"]
    print(f"[batch {batch}] median per call over {len(eager)} rounds (ratio: median of per-round side/eager)")
    ratios = {}
    for name, times in per_call.items():
        ratio = med(t / e for t, e in zip(times, eager))
        ratios[name] = ratio
        print(f"  {name:<12} {med(times) * 1e3:9.3f} ms  ({batch / med(times):10.0f} examples/s)  ratio {ratio:.3f}"
              f"  [min {min(times) * 1e3:.3f} ms]")
    return ratios


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds (CI)")
    parser.add_argument("--rounds", type=int, help="timing rounds per batch size (default 21, quick 3)")
    parser.add_argument("--calls", type=int, help="calls per side per round (default: 50 at batch 1, 5 at 64)")
    parser.add_argument("--export-runs", type=int, help="exports to time (default 3, quick 1)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="allowed ratio above 1.0 at batch 64")
    parser.add_argument("--pt2", action="store_true", help="also time an export with format='pt2'")
    parser.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor artifact (format='aoti')")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="compile into an empty inductor cache (TORCHINDUCTOR_CACHE_DIR), as a first export does")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the target fails")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fresh_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="te_inductor_cache_")
    torch.set_num_threads(args.threads)
    mnist = _load_example()
    print(f"torch {torch.__version__}, torch_estimator {te.__version__}, python {sys.version.split()[0]}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    work = tempfile.mkdtemp(prefix="te_export_bench_")
    try:
        est = build_estimator(mnist, os.path.join(work, "model"), args.train_steps)
        runs = args.export_runs or (1 if args.quick else 3)
        seconds = time_exports(est, runs, "torchscript")
        print(f"[export] format='torchscript': median {statistics.median(seconds):.2f} s over {runs} exports "
              f"(min {min(seconds):.2f}, max {max(seconds):.2f}); trace + save + load + verify at batch 1 and 3")
        if args.pt2:
            pt2_seconds = time_exports(est, 1, "pt2")
            print(f"[export] format='pt2': {pt2_seconds[0]:.2f} s")
        export_dir = est.export_saved_model(os.path.join(work, "exports"), receiver_fn())
        aoti_dir = None
        if not args.no_aoti:
            aoti_dir, total, compiled = time_aoti_export(est, os.path.join(work, "aoti"))
            print(f"[export] format='aoti': {total:.2f} s, of which AOTInductor compiling {compiled:.2f} s "
                  f"(torch.export + compile + package + load + verify at batch 1 and 3)")
        sides = make_sides(mnist, est, export_dir, aoti_dir)
        rounds = args.rounds or (3 if args.quick else 21)
        ratios, medians = {}, {}
        for batch in (1, 64):
            calls = args.calls or (50 if batch == 1 else 5)
            per_call = measure(sides, batch, rounds, calls, warmup=5)
            ratios[batch] = report(batch, per_call)
            medians[batch] = {name: statistics.median(times) for name, times in per_call.items()}
        print("[side by side] median per call, ms (ratio to eager)")
        names = [name for name in ("eager", "torchscript", "aoti") if name in ratios[1]]
        for batch in (1, 64):
            cells = [f"{name} {medians[batch][name] * 1e3:.3f} ({ratios[batch][name]:.2f}x)" for name in names]
            print(f"  batch {batch:>2}: " + "   ".join(cells))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.fresh_cache:
            shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    ok = ratios[64]["torchscript"] <= 1.0 + args.tolerance
    limit = 1.0 + args.tolerance
    print(f"  torchscript no slower than eager at batch 64 (ratio <= {limit:.2f}): {'PASS' if ok else 'FAIL'}")
    if "aoti" in ratios[1]:
        aoti_ok = all(ratios[batch]["aoti"] <= AOTI_TARGET for batch in (1, 64))
        print(f"  aoti at most {AOTI_TARGET}x eager at batch 1 ({ratios[1]['aoti']:.2f}) and 64 "
              f"({ratios[64]['aoti']:.2f}): {'PASS' if aoti_ok else 'FAIL'}")
        ok = ok and aoti_ok
    if args.quick:
        print("(--quick: few rounds; the figures are a smoke test, not a measurement)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
