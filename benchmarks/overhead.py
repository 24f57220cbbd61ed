"""How much does the Estimator cost over a hand-written PyTorch loop? Per step, per call, and at import.

Two cases train the same model on the same pre-built batches (a list of tensors, shared by both), from the
same seed, on the CPU:

* ``mlp``: a tiny MLP (32 -> 64 -> 10, batch 32), where the framework's per-step overhead dominates;
* ``cnn``: the tutorial CNN of ``examples/mnist.py`` (batch 100), where the compute dominates.

The hand-written loop is::

    for x, y in batches:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()

and the Estimator runs ``est.train(lambda: batches, steps=N)`` with a ``model_fn`` doing the same
forward/loss, ``RunConfig(device="cpu", save_checkpoints_steps=1000, progress_bar=False)`` and the default
hooks (NaN check; ``log_step_count_steps=100``: loss/step logging and the steps/sec counter;
``save_summary_steps=100``: TensorBoard summaries). ``--progress-bar`` adds the tqdm bar a terminal would show.

**Method.** Every ``est.train()`` call has fixed costs (building hooks, the checkpoint at step 0 of a fresh
``model_dir``, the final checkpoint). To separate them from the per-step cost, each side is timed at N and
at 2N steps, and the *marginal* cost per step is ``(t(2N) - t(N)) / N``; fixed costs cancel. The two sides
alternate within each round (and which goes first alternates between rounds), so drifts of the machine hit
both. Time is process CPU time with ``--threads 1`` (``--clock``): on a shared machine it ignores time spent
descheduled, so other jobs disturb it far less than wall time. The MLP's marginal steps include the periodic
checkpoint every 1000 steps (amortized, as a user pays it). The report gives medians over rounds of the
*paired* per-round figures:

* ``ratio`` = Estimator steps/s over hand-loop steps/s, marginal (higher is better; 1.0 = no overhead);
* ``overhead`` = Estimator minus hand-loop marginal time per step, in µs;
* ``fixed`` = the Estimator's per-call cost beyond N marginal steps (setup + checkpoints), in ms.

Targets (``PASS``/``FAIL`` printed beside each): ratio >= 0.97 on the CNN, overhead <= 50 µs/step on the
MLP, and ``import torch_estimator`` adding <= 0.3 s to ``import torch`` (fresh interpreters, median).

Usage::

    python benchmarks/overhead.py             # full run, a few minutes
    python benchmarks/overhead.py --quick     # smoke run for CI, well under a minute
    python benchmarks/overhead.py --threads 2 --case cnn --rounds 9

``--threads`` (default 1) sets ``torch.set_num_threads`` for stable numbers. ``--strict`` exits with status 1
when a target fails (timings on shared CI machines are noisy: off by default).

**Counting instructions** (a noise-free view of the per-step overhead). ``--only estimator|hand --steps N``
runs just one side for N steps (after setup and nothing else), so a shell can count instructions of N and of
2N steps and take the difference::

    for side in hand estimator; do for n in 2000 4000; do
      perf stat -x, -e instructions:u python benchmarks/overhead.py --case mlp --only $side --steps $n 2>&1 \\
        | grep instructions
    done; done
    # per-step instructions = (count(4000) - count(2000)) / 2000, for each side

``perf`` needs hardware counters: inside many VMs ``perf stat -e instructions:u true`` prints
``<not supported>``; then only software events (``-e task-clock``) work, which measure time like this script.
Valgrind counts instructions without hardware support (about 50x slower, and ~2 minutes to import torch),
which is enough for a thousand or two MLP steps or a few CNN steps; pin what varies between runs::

    export PYTHONHASHSEED=0 OMP_NUM_THREADS=1
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        "$(python -c 'import sys; print(sys.executable)')" \\
        benchmarks/overhead.py --case mlp --only estimator --steps 1000 2>&1 | grep "I *refs"
    # likewise --steps 2000, and --only hand; per step = (I refs(2000) - I refs(1000)) / 1000

(Give valgrind the interpreter itself, not a pyenv shim, which is a shell script. Use N >= 1000 for the MLP:
without the two variables, counts of 200 and 400 steps differed by noise of a few hundred million.)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
try:
    import torch_estimator as te
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
    import torch_estimator as te

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _load_example_cnn() -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("examples_mnist", ROOT / "examples" / "mnist.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.CNN


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    steps: int  # N: each side is timed at N and at 2N steps
    quick_steps: int


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def _cases() -> dict[str, Case]:
    cnn = _load_example_cnn()
    return {
        "mlp": Case("mlp", _mlp,
                    lambda g: (torch.randn(32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)),
                    steps=2000, quick_steps=300),
        "cnn": Case("cnn", cnn,
                    lambda g: (torch.rand(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g)),
                    steps=20, quick_steps=3),
    }


def make_batches(case: Case, count: int, seed: int) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    return [case.make_batch(generator) for _ in range(count)]


def model_fn(features: torch.Tensor, labels: torch.Tensor, mode: str, model: nn.Module) -> te.EstimatorSpec:
    """The same forward and loss as the hand-written loop."""
    return te.EstimatorSpec(mode, loss=F.cross_entropy(model(features), labels))


def _lr() -> float:
    return 0.01


# ----------------------------------------------------------------------------------------------------
# The two sides. Each returns the seconds spent training `steps` steps (setup excluded, fixed costs of a
# train() call included).


# The clock: process CPU time by default with one thread (robust when other jobs share the machine: time
# spent descheduled is not counted, nor waiting for the disk); wall time with several threads, whose CPU
# time would add up across threads. Set by main() from --clock.
clock: Callable[[], float] = time.process_time
# RunConfig.progress_bar for the Estimator: off, so that results do not depend on whether stderr is a
# terminal (the default, None, shows a tqdm bar only there). Set by main() from --progress-bar.
progress_bar = False


def run_hand(case: Case, batches: Batches, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = case.build()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=_lr())
    data = batches[:steps]
    gc.collect()
    start = clock()
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return clock() - start


def run_estimator(case: Case, batches: Batches, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = case.build()
    model_dir = tempfile.mkdtemp(prefix="te_overhead_")
    try:
        est = te.Estimator(
            model_fn, model_dir=model_dir, model=model,
            optimizer=lambda p: torch.optim.SGD(p, lr=_lr()),
            config=te.RunConfig(device="cpu", save_checkpoints_steps=1000, progress_bar=progress_bar),
        )
        gc.collect()
        start = clock()
        est.train(lambda: batches, steps=steps)
        return clock() - start
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


SIDES: dict[str, Callable[[Case, Batches, int, int], float]] = {"hand": run_hand, "estimator": run_estimator}


# ----------------------------------------------------------------------------------------------------
# Measurement.


@dataclass
class Round:
    hand_n: float
    hand_2n: float
    est_n: float
    est_2n: float

    def marginal(self, n: int) -> tuple[float, float]:
        """Seconds per step at the margin (hand, estimator)."""
        return (self.hand_2n - self.hand_n) / n, (self.est_2n - self.est_n) / n


def measure(case: Case, n: int, rounds: int, seed: int) -> list[Round]:
    batches = make_batches(case, 2 * n + 1, seed)
    run_hand(case, batches, min(n, 50), seed)  # warm up both paths (allocator, autograd, lazy imports)
    run_estimator(case, batches, min(n, 50), seed)
    results = []
    for r in range(rounds):
        order = ["hand", "estimator"] if r % 2 == 0 else ["estimator", "hand"]
        times: dict[str, float] = {}
        for side in order:
            # Also alternate N and 2N so neither always runs on a "warmer" machine.
            sizes = (n, 2 * n) if r % 4 < 2 else (2 * n, n)
            for size in sizes:
                times[f"{side}_{size}"] = SIDES[side](case, batches, size, seed)
        results.append(Round(times[f"hand_{n}"], times[f"hand_{2 * n}"],
                             times[f"estimator_{n}"], times[f"estimator_{2 * n}"]))
    return results


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_case(case: Case, n: int, rounds: list[Round]) -> dict[str, Any]:
    ratios, overheads, fixed, hand_rates, est_rates, whole = [], [], [], [], [], []
    for r in rounds:
        hand, est = r.marginal(n)
        if hand <= 0 or est <= 0:  # a hiccup made 2N faster than N: no information in this round
            continue
        ratios.append(hand / est)
        overheads.append((est - hand) * 1e6)
        fixed.append((r.est_n - n * est) * 1e3)
        hand_rates.append(1 / hand)
        est_rates.append(1 / est)
        whole.append(r.hand_2n / r.est_2n)
    if not ratios:
        print(f"[{case.name}] every round was too noisy to measure; use more --rounds or --steps.")
        return {"ok": False}
    med = statistics.median
    spread = (min(ratios), max(ratios))
    print(f"[{case.name}] N={n} / 2N={2 * n} steps, {len(ratios)} rounds (marginal per-step cost: (t(2N) - t(N)) / N)")
    print(f"  hand loop : {med(hand_rates):10.1f} steps/s  ({1e6 / med(hand_rates):9.1f} µs/step)")
    print(f"  estimator : {med(est_rates):10.1f} steps/s  ({1e6 / med(est_rates):9.1f} µs/step)")
    print(f"  ratio estimator/hand (median of paired rounds): {med(ratios):.3f}  "
          f"[min {spread[0]:.3f}, max {spread[1]:.3f}]")
    print(f"  overhead: {med(overheads):+.1f} µs/step   fixed cost per train() call: {med(fixed):.1f} ms")
    print(f"  whole-call ratio at 2N steps (fixed costs included): {med(whole):.3f}")
    # Noise on a shared machine only ever adds time, so the fastest of the rounds is another robust view.
    best_hand = (min(r.hand_2n for r in rounds) - min(r.hand_n for r in rounds)) / n
    best_est = (min(r.est_2n for r in rounds) - min(r.est_n for r in rounds)) / n
    if best_hand > 0 and best_est > 0:
        print(f"  best-of-rounds: hand {1e6 * best_hand:.1f} µs/step, estimator {1e6 * best_est:.1f} µs/step, "
              f"ratio {best_hand / best_est:.3f}, overhead {1e6 * (best_est - best_hand):+.1f} µs/step")
    return {"ratio": med(ratios), "overhead_us": med(overheads), "fixed_ms": med(fixed)}


# ----------------------------------------------------------------------------------------------------
# Variants: what each built-in hook costs when active, and bf16, accumulation and compile against a
# hand-written loop doing the same.


def _hand_variant(name: str, model: nn.Module) -> Callable[[Batches], None]:
    opt = torch.optim.SGD(model.parameters(), lr=_lr())
    forward = torch.compile(model) if name == "compile" else model
    dtype = torch.bfloat16 if name == "bf16" else None
    accumulate = 2 if name == "accumulate x2" else 1

    def loop(batches: Batches) -> None:
        for i in range(0, len(batches) - accumulate + 1, accumulate):
            opt.zero_grad()
            for x, y in batches[i : i + accumulate]:
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(forward(x), y)
                (loss / accumulate if accumulate > 1 else loss).backward()
            opt.step()

    return loop


VARIANTS: dict[str, tuple[dict[str, Any], Callable[[], list[Any]]]] = {
    # name: (RunConfig options, hooks); every row but the first also has TF's default hooks off unless named.
    "no hooks": ({"log_step_count_steps": None, "save_summary_steps": None}, list),
    "default hooks": ({}, list),
    "+ LoggingTensorHook every step": ({"log_step_count_steps": None, "save_summary_steps": None},
                                       lambda: [te.LoggingTensorHook(["loss"], every_n_iter=1)]),
    "+ StepCounterHook every step": ({"log_step_count_steps": None, "save_summary_steps": None},
                                     lambda: [te.StepCounterHook(every_n_steps=1)]),
    "+ SummarySaverHook every step": ({"log_step_count_steps": None, "save_summary_steps": 1}, list),
    "+ ProgressBarHook": ({"log_step_count_steps": None, "save_summary_steps": None, "progress_bar": True}, list),
    "bf16": ({"precision": "bf16"}, list),
    "accumulate x2": ({"gradient_accumulation_steps": 2}, list),
    "compile": ({"compile": True}, list),
}


def measure_variants(case: Case, n: int, rounds: int, seed: int, names: Sequence[str]) -> None:
    """Marginal µs/step of each variant: one Estimator (and one hand loop) per variant, trained N and 2N more
    steps per round; the default-hooks row is the reference for the hooks' costs."""
    batches = make_batches(case, 2 * n + 2, seed)
    print(f"[variants, {case.name}] N={n}, {rounds} rounds; µs/step, medians (marginal: (t(2N) - t(N)) / N)")
    print(f"  {'variant':34} {'estimator':>10} {'hand':>10} {'overhead':>9} {'vs no hooks':>12}")
    baseline = None
    for name in names:
        options, hooks = VARIANTS[name]
        torch.manual_seed(seed)
        model_dir = tempfile.mkdtemp(prefix="te_variant_")
        with contextlib.redirect_stderr(io.StringIO()):  # the progress bar row draws to stderr
            est = te.Estimator(model_fn, model_dir=model_dir, model=case.build(),
                               optimizer=lambda p: torch.optim.SGD(p, lr=_lr()),
                               config=te.RunConfig(device="cpu", save_checkpoints_steps=1000,
                                                   **{"progress_bar": False, **options}))
            hand = _hand_variant(name if name in ("bf16", "accumulate x2", "compile") else "plain", case.build())
            est.train(lambda: batches[:20], hooks=hooks())  # warm-up (compilation, lazy state)
            hand(batches[:20])
            est_times, hand_times = [], []
            for _ in range(rounds):
                start = clock(); est.train(lambda: batches[:n], hooks=hooks()); t1 = clock() - start
                start = clock(); est.train(lambda: batches[: 2 * n], hooks=hooks()); t2 = clock() - start
                est_times.append((t2 - t1) / n * 1e6)
                start = clock(); hand(batches[:n]); h1 = clock() - start
                start = clock(); hand(batches[: 2 * n]); h2 = clock() - start
                hand_times.append((h2 - h1) / n * 1e6)
        shutil.rmtree(model_dir, ignore_errors=True)
        est_us, hand_us = statistics.median(est_times), statistics.median(hand_times)
        baseline = est_us if name == "no hooks" else baseline
        delta = f"{est_us - baseline:+.1f}" if baseline is not None and name != "no hooks" else ""
        print(f"  {name:34} {est_us:10.1f} {hand_us:10.1f} {est_us - hand_us:+9.1f} {delta:>12}")


def measure_import(runs: int) -> float | None:
    """Median seconds that ``import torch_estimator`` adds after ``import torch``, in fresh interpreters."""
    code = (
        "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
        "import torch_estimator; t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    torch_times, added = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        torch_s, te_s = map(float, out.stdout.split())
        torch_times.append(torch_s)
        added.append(te_s)
    median = statistics.median(added)
    print(f"[import] import torch: {statistics.median(torch_times):.3f} s; import torch_estimator adds "
          f"{median:.3f} s (median of {runs}; min {min(added):.3f}, max {max(added):.3f})")
    return median


# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["mlp", "cnn", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds and steps (CI)")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 15, or 3 with --quick; cnn: 7 / 2)")
    parser.add_argument("--steps", type=int, help="N (each side is timed at N and 2N); with --only, the steps to run")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                        help="process CPU time or wall time (auto: cpu with --threads 1, else wall)")
    parser.add_argument("--import-runs", type=int, help="fresh interpreters for the import time (default 7, quick 3)")
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--progress-bar", action="store_true", help="let the Estimator show its tqdm bar")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    parser.add_argument("--variants", nargs="*", metavar="NAME",
                        help=f"also measure variants on the MLP (all when none named): {', '.join(VARIANTS)}")
    parser.add_argument("--only", choices=sorted(SIDES),
                        help="run one side once for --steps steps and exit (for perf stat; see the docstring)")
    args = parser.parse_args(argv)
    if args.only and (args.case == "all" or args.steps is None):
        parser.error("--only needs --case mlp|cnn and --steps N")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    global clock, progress_bar
    progress_bar = args.progress_bar
    torch.set_num_threads(args.threads)
    use_cpu = args.clock == "cpu" or (args.clock == "auto" and args.threads == 1)
    clock = time.process_time if use_cpu else time.perf_counter
    cases = _cases()
    if args.only:
        case = cases[args.case]
        batches = make_batches(case, args.steps + 1, args.seed)
        seconds = SIDES[args.only](case, batches, args.steps, args.seed)
        print(f"{args.only} {case.name}: {args.steps} steps in {seconds:.3f} s")
        return 0

    print(f"torch {torch.__version__}, torch_estimator {te.__version__}, python {sys.version.split()[0]}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, clock: {'process CPU' if use_cpu else 'wall'} time")
    ok = True
    if not args.skip_import:
        added = measure_import(args.import_runs or (3 if args.quick else 7))
        target = added is not None and added <= 0.3
        ok &= target
        print(f"  import overhead <= 0.3 s: {_verdict(target)}")
    for name in (["mlp", "cnn"] if args.case == "all" else [args.case]):
        case = cases[name]
        n = args.steps or (case.quick_steps if args.quick else case.steps)
        default_rounds = (3 if name == "mlp" else 2) if args.quick else (15 if name == "mlp" else 7)
        result = report_case(case, n, measure(case, n, args.rounds or default_rounds, args.seed))
        if name == "mlp" and "overhead_us" in result:
            target = result["overhead_us"] <= 50
            print(f"  overhead <= 50 µs/step: {_verdict(target)}")
        elif name == "cnn" and "ratio" in result:
            target = result["ratio"] >= 0.97
            print(f"  ratio >= 0.97: {_verdict(target)}")
        else:
            target = False
        ok &= target
    if args.variants is not None:
        names = args.variants or list(VARIANTS)
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        measure_variants(cases["mlp"], 200 if args.quick else 1000, 2 if args.quick else 7, args.seed, names)
    if args.quick:
        print("(--quick: few rounds; the figures are a smoke test, not a measurement)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
