"""How much does the Estimator cost over a hand-written PyTorch loop? Per step, per call, and at import.

Two cases train the same model on the same pre-built batches (a list of tensors, shared by both), from the
same seed, on the CPU:

* ``mlp``: a tiny MLP (32 -> 64 -> 10, batch 32), where the framework's per-step overhead dominates;
* ``cnn``: the tutorial CNN of ``examples/mnist.py`` (batch 100), where the compute dominates.

The hand-written loop is::

    for step, (x, y) in enumerate(batches, 1):
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
        if step % 1000 == 0:
            save_file(model.state_dict(), path)  # safetensors, as the Estimator's checkpoint every 1000 steps

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

**Further rows** (``--rows``, all by default; paired rounds, medians; wall time for prefetching, whose gain
is overlap, process CPU time of all threads for the others, whose question is cost):

* ``instructions``: the valgrind counts below, run by the script itself (two at a time; skipped with
  ``--quick``): hand loop, Estimator with the default hooks (target <= 1.03x the hand loop's instructions
  per step) and with the hooks off (``log_step_count_steps=None, save_summary_steps=None``; target <=
  1.01x), marginal from N to 2N steps (``--steps``, default 2000), ``--instruction-runs`` counts of each
  (default 3, the median taken), both ratios printed against their targets. The Estimator clears gradients
  without ``Optimizer.zero_grad``'s per-call wrapping (``torch_estimator.grads``), which the hand loop pays;
  a fourth side, the hand loop setting the gradients to None itself, shows the Estimator's own work apart
  from that saving. A count also depends on the
  process's heap layout, which moves malloc's and CPython's caches by several thousand instructions per step
  between configurations: differences under ~1% of a step are within the method's noise. Repeats of one
  layout agree within a thousand instructions, so each run gets its own layout (an environment variable of
  another length, the same for every side of that run), and [min, max] shows the spread over layouts. 24
  processes of a few minutes each;
* ``prefetch``: the CNN on an input that decompresses and augments images with zlib and torch (calibrated
  to cost about one step of CPU time) and on a cheap one (pre-built tensors), a serial hand loop against the
  Estimator with its default prefetching ("auto") and with ``prefetch_batches=2`` (targets: >= 1.3
  expensive, >= 0.99 cheap). Beside the wall-time ratio it prints the CPU time of the loop's thread and of
  the prefetching thread, the ratio they bound with a free core, and the load average: overlap needs a
  core that no other job takes (see ``measure_prefetch``);
* ``eval``: ``evaluate`` and ``predict`` against ``no_grad`` hand loops over the same batches, with the
  default and with ``prefetch_batches=2``, whole calls (target >= 0.97);
* ``repeated``: ``train(steps=10)`` of the CNN called again and again (as the tutorial alternates train and
  evaluate) against a hand loop of 10 steps that saves the weights with ``safetensors.torch.save_file`` once
  per call; prints the Estimator's fixed cost per call (target >= 0.97).

Usage::

    python benchmarks/overhead.py             # full run, a few minutes
    python benchmarks/overhead.py --quick     # smoke run for CI, well under a minute
    python benchmarks/overhead.py --threads 2 --case cnn --rounds 9
    python benchmarks/overhead.py --case none --skip-import --rows prefetch eval repeated

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
without the two variables, counts of 200 and 400 steps differed by noise of a few hundred million.) The
``instructions`` row does this for 2000 and 4000 steps, several times. To see where a difference goes,
``valgrind --tool=callgrind`` of each side at N and 2N steps, and ``callgrind_annotate`` of each file: the
difference of a C function's cost between 2N and N, divided by N, is its marginal cost per step
(``THPVariable_detach``, ``_int_malloc``, ``gc_collect_main``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import math
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


SAVE_EVERY = 1000  # both sides save the weights every 1000 steps (RunConfig.save_checkpoints_steps)


def run_hand(case: Case, batches: Batches, steps: int, seed: int, clear_directly: bool = False) -> float:
    """The hand-written loop, saving the weights with ``safetensors.torch.save_file`` every SAVE_EVERY steps
    as the Estimator checkpoints (the same work; the Estimator's save also writes the optimizer and RNG
    states, a content hash and an index, durably). With ``clear_directly`` it sets the gradients to None
    itself instead of calling ``opt.zero_grad()``, as the Estimator does (see ``torch_estimator.grads``):
    the loop against which the Estimator's own work shows."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = case.build()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=_lr())
    data = batches[:steps]
    save_dir = tempfile.mkdtemp(prefix="te_overhead_hand_")
    try:
        gc.collect()
        start = clock()
        for step, (x, y) in enumerate(data, 1):
            if clear_directly:
                for group in opt.param_groups:
                    for parameter in group["params"]:
                        parameter.grad = None
            else:
                opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step % SAVE_EVERY == 0:
                save_file(model.state_dict(), os.path.join(save_dir, f"model-{step}.safetensors"))
        return clock() - start
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)


def run_estimator(case: Case, batches: Batches, steps: int, seed: int, **options: Any) -> float:
    torch.manual_seed(seed)
    model = case.build()
    model_dir = tempfile.mkdtemp(prefix="te_overhead_")
    try:
        est = te.Estimator(
            model_fn, model_dir=model_dir, model=model,
            optimizer=lambda p: torch.optim.SGD(p, lr=_lr()),
            config=te.RunConfig(**{"device": "cpu", "save_checkpoints_steps": SAVE_EVERY, "progress_bar": progress_bar, **options}),
        )
        gc.collect()
        start = clock()
        est.train(lambda: batches, steps=steps)
        return clock() - start
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def run_bare(case: Case, batches: Batches, steps: int, seed: int) -> float:
    """The Estimator with TF's default hooks off (no logging, step counter or summaries; the NaN check stays)."""
    return run_estimator(case, batches, steps, seed, log_step_count_steps=None, save_summary_steps=None)


def run_hand_direct(case: Case, batches: Batches, steps: int, seed: int) -> float:
    """The hand-written loop clearing the gradients as the Estimator does."""
    return run_hand(case, batches, steps, seed, clear_directly=True)


SIDES: dict[str, Callable[[Case, Batches, int, int], float]] = {
    "hand": run_hand, "estimator": run_estimator, "bare": run_bare, "hand_direct": run_hand_direct}


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
                start = clock()
                est.train(lambda: batches[:n], hooks=hooks())
                t1 = clock() - start
                start = clock()
                est.train(lambda: batches[: 2 * n], hooks=hooks())
                t2 = clock() - start
                est_times.append((t2 - t1) / n * 1e6)
                start = clock()
                hand(batches[:n])
                h1 = clock() - start
                start = clock()
                hand(batches[: 2 * n])
                h2 = clock() - start
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
# Instructions: valgrind counts of N and 2N steps of each side, in subprocesses (immune to the machine's noise).


def measure_instructions(n: int, runs: int = 3) -> dict[str, float] | None:
    """Per-step instructions of the hand loop, the Estimator (default hooks) and the bare Estimator (hooks
    off), marginal from N to 2N MLP steps under valgrind: ``runs`` counts of each side at N and at 2N steps
    (two processes at a time), the median of the ``runs`` paired differences per side. Prints each side's
    figures and both ratios against the targets (1.03x default hooks, 1.01x hooks off)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("[instructions] valgrind is not installed (apt-get install valgrind); skipped")
        return None
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    sides = ("hand", "estimator", "bare", "hand_direct")
    jobs = [((side, steps, run), [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                                  os.path.realpath(sys.executable), str(Path(__file__).resolve()), "--case", "mlp",
                                  "--only", side, "--steps", str(steps)])
            for run in range(runs) for side in sides for steps in (n, 2 * n)]
    counts: dict[tuple[str, int, int], int] = {}
    print(f"[instructions] valgrind, MLP, {n} and {2 * n} steps per side, {runs} runs each "
          f"({len(jobs)} processes, two at a time: many minutes)...", flush=True)
    while jobs:
        batch, jobs = jobs[:2], jobs[2:]
        # Each run gets its own heap layout (an environment variable of another length shifts what the
        # interpreter allocates first), the same for every side and size of that run: the median is then
        # taken over layouts, not over repeats of one layout, which agree within a thousand instructions.
        running = [(key, subprocess.Popen(cmd, env={**env, "OVERHEAD_LAYOUT": "." * (4099 * key[2])},
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                   for key, cmd in batch]
        for key, process in running:
            out, _ = process.communicate()
            refs = [line for line in out.splitlines() if "I refs:" in line or "I   refs:" in line]
            if process.returncode or not refs:
                print(f"[instructions] valgrind failed for {key}:\n{out[-2000:]}")
                return None
            counts[key] = int(refs[-1].split(":")[1].replace(",", ""))
    marginals = {side: [(counts[(side, 2 * n, r)] - counts[(side, n, r)]) / n for r in range(runs)] for side in sides}
    per_step = {side: statistics.median(values) for side, values in marginals.items()}
    hand = per_step["hand"]
    print(f"[instructions] per step, marginal {n} -> {2 * n} steps, median of {runs} runs [min, max]:")
    for side, label in (("hand", "hand loop"), ("estimator", "Estimator, default hooks"), ("bare", "Estimator, hooks off"),
                        ("hand_direct", "hand loop, grads set None")):
        values = marginals[side]
        ratio = "" if side == "hand" else f"  ratio {per_step[side] / hand:.3f}  ({per_step[side] - hand:+,.0f} per step)"
        print(f"  {label:26}: {per_step[side] / 1e3:8,.1f}k  [{min(values) / 1e3:,.1f}k, {max(values) / 1e3:,.1f}k]{ratio}")
    # The Estimator clears gradients without Optimizer.zero_grad's wrapping; against a hand loop that does the
    # same, what remains is the Estimator's own work per step.
    direct = per_step["hand_direct"]
    for side, label in (("estimator", "default hooks"), ("bare", "hooks off")):
        print(f"  Estimator's own work, {label:13}: {per_step[side] - direct:+,.0f} per step "
              f"({per_step[side] / direct:.3f}x the hand loop that sets grads to None)")
    return per_step


# ----------------------------------------------------------------------------------------------------
# Input prefetching (wall time: its gain is overlap), evaluate/predict and repeated short train() calls (process
# CPU time: their question is cost), paired rounds.


def _augmenting_input(images: list[bytes], labels: list[torch.Tensor], passes: int):
    """An input_fn doing per batch what an image pipeline does: decompress, convert, blur ``passes`` times (a
    5x5 convolution over the batch), downsample, flip and add noise.

    Its work runs in zlib and torch operations, which release the GIL while they run, as image decoders (PIL,
    torchvision.io) and numpy do; the Python between them is a few dozen calls per batch. An input whose work
    is Python bytecode could not overlap with the step in any thread-based prefetcher (the GIL runs one
    thread's bytecode at a time): it needs worker processes (a DataLoader with ``num_workers``)."""
    import zlib

    kernel = torch.full((1, 1, 5, 5), 1 / 25)

    def input_fn():
        generator = torch.Generator().manual_seed(0)
        for blob, y in zip(images, labels):
            x = torch.frombuffer(bytearray(zlib.decompress(blob)), dtype=torch.uint8).view(-1, 1, 56, 56).float() / 255
            for _ in range(passes):
                x = F.conv2d(x, kernel, padding=2)
            x = F.avg_pool2d(x, 2)
            if torch.rand((), generator=generator) < 0.5:
                x = x.flip(3)
            yield x + 0.01 * torch.randn(x.shape, generator=generator), y

    return input_fn


def _encoded_images(count: int, seed: int, batch_size: int) -> tuple[list[bytes], list[torch.Tensor]]:
    import zlib

    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(count):
        pixels = (torch.rand(batch_size, 1, 14, 14, generator=generator) * 255).to(torch.uint8)
        pixels = pixels.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :56, :56]  # compressible
        images.append(zlib.compress(pixels.contiguous().numpy().tobytes(), 1))
        labels.append(torch.randint(0, 10, (batch_size,), generator=generator))
    return images, labels


def _timed(fn: Callable[[], Any], timer: Callable[[], float] = time.perf_counter) -> float:
    gc.collect()
    start = timer()
    fn()
    return timer() - start


def _cpu_timed(fn: Callable[[], Any]) -> float:
    """Process CPU time (all threads): what a call costs, robust to the machine's other jobs."""
    return _timed(fn, time.process_time)


def _cnn_estimator(case: Case, seed: int, **options: Any) -> tuple[te.Estimator, str]:
    torch.manual_seed(seed)
    model_dir = tempfile.mkdtemp(prefix="te_overhead_")
    config = te.RunConfig(device="cpu", save_checkpoints_steps=1000, progress_bar=False, **options)
    return te.Estimator(model_fn, model_dir=model_dir, model=case.build(),
                        optimizer=lambda p: torch.optim.SGD(p, lr=_lr()), config=config), model_dir


@dataclass(frozen=True)
class Clocks:
    """Seconds of one timed call: wall, CPU of the whole process (all threads), CPU of the calling thread."""

    wall: float
    cpu: float
    main: float

    def __sub__(self, other: Clocks) -> Clocks:
        return Clocks(self.wall - other.wall, self.cpu - other.cpu, self.main - other.main)


def _clocked(fn: Callable[[], Any]) -> Clocks:
    gc.collect()
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    fn()
    return Clocks(time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main)


def _paired_overlap(label: str, hand: Callable[[int], Clocks], est: Callable[[int], Clocks], n: int, rounds: int) -> float:
    """Like :func:`_paired` on wall time (the ratio returned), and prints where the CPU time went: the hand
    loop's, the Estimator's loop thread's and its prefetching thread's, marginal per step. ``bound`` is the
    ratio the Estimator would reach with a free core for its thread: hand CPU / max(loop CPU, thread CPU)."""
    ratios, hand_ms, est_ms, hand_cpu, loop_cpu, thread_cpu, bounds = [], [], [], [], [], [], []
    for r in range(rounds):
        first, second = (hand, est) if r % 2 == 0 else (est, hand)
        a_n, b_n = first(n), second(n)  # A B B A: a drift of the machine within the round hits both sides
        b_2n, a_2n = second(2 * n), first(2 * n)
        h, e = (a_2n - a_n, b_2n - b_n) if r % 2 == 0 else (b_2n - b_n, a_2n - a_n)
        if h.wall <= 0 or e.wall <= 0 or h.cpu <= 0 or e.main <= 0:
            continue
        ratios.append(h.wall / e.wall)
        hand_ms.append(h.wall / n * 1e3)
        est_ms.append(e.wall / n * 1e3)
        hand_cpu.append(h.cpu / n * 1e3)
        loop_cpu.append(e.main / n * 1e3)
        thread_cpu.append(max(0.0, e.cpu - e.main) / n * 1e3)
        bounds.append(h.cpu / max(e.main, e.cpu - e.main))
    if not ratios:
        print(f"  {label}: too noisy to measure")
        return math.nan
    med = statistics.median
    print(f"  {label:48} hand {med(hand_ms):7.2f} ms/step  estimator {med(est_ms):7.2f} ms/step  "
          f"ratio {med(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]")
    print(f"  {'':48} CPU ms/step: hand {med(hand_cpu):.1f}; estimator loop {med(loop_cpu):.1f} + prefetching "
          f"thread {med(thread_cpu):.1f}; bound with a free core {med(bounds):.3f}")
    return med(ratios)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cpus"


def measure_prefetch(case: Case, n: int, rounds: int, seed: int, batch_size: int = 100) -> dict[str, float]:
    """The CNN on an expensive input (made to cost about one step) and on a cheap one (pre-built tensors):
    a serial hand loop against the Estimator with its default (auto) prefetching, and with it forced on.

    Wall time is what overlap gains, and it shows only where a core is free for the prefetching thread: on a
    machine busy with other jobs, and with Linux's autogroup scheduling (on by default on desktops and many
    VMs), the scheduler splits the CPU between sessions, not threads, so a second thread does not enlarge
    the process's share. The row therefore also prints the CPU time of each thread and the ratio they bound
    with a free core, and the load average, to tell a missing overlap from a missing core."""
    batches = [(x[:batch_size], y[:batch_size]) for x, y in make_batches(case, 2 * n + 1, seed)]
    # Calibrate the input's cost to about one step of the hand loop.
    model = case.build()
    opt = torch.optim.SGD(model.parameters(), lr=_lr())

    def hand_steps(data: Any, steps: int) -> None:
        for (x, y), _ in zip(data, range(steps)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    hand_steps(batches, 3)
    step_s = _cpu_timed(lambda: hand_steps(batches, 5)) / 5
    images, labels = _encoded_images(2 * n + 1, seed, batch_size)
    passes = 1
    while passes < 64:
        input_s = _cpu_timed(lambda passes=passes: list(zip(_augmenting_input(images[:5], labels[:5], passes)(), range(5)))) / 5
        if input_s >= 0.8 * step_s:
            break
        passes *= 2
    print(f"[prefetch, {case.name}, batch {batch_size}] N={n}, {rounds} rounds, wall time; the input makes a batch in "
          f"{input_s * 1e3:.1f} ms of CPU ({passes} blur passes), a step takes {step_s * 1e3:.1f} ms; {_load()}")
    expensive = _augmenting_input(images, labels, passes)
    results = {}
    for label, input_fn, options in (
        ("expensive input, prefetch auto (default)", expensive, {}),
        ("cheap input (tensors), prefetch auto (default)", lambda: batches, {}),
        ("cheap input (tensors), prefetch_batches=2", lambda: batches, {"prefetch_batches": 2}),
    ):
        est, model_dir = _cnn_estimator(case, seed, **options)
        est.train(input_fn, steps=8)  # warm-up: "auto" decides after 7 batches, and the thread starts

        def hand(steps: int, input_fn: Any = input_fn) -> Clocks:
            return _clocked(lambda: hand_steps(input_fn(), steps))

        def estimator(steps: int, est: te.Estimator = est, input_fn: Any = input_fn) -> Clocks:
            return _clocked(lambda: est.train(input_fn, steps=steps))

        results[label] = _paired_overlap(label, hand, estimator, n, rounds)
        shutil.rmtree(model_dir, ignore_errors=True)
    print(f"  ({_load()} at the end)")
    return results


def _eval_model_fn(features: torch.Tensor, labels: torch.Tensor, mode: str, model: nn.Module) -> te.EstimatorSpec:
    logits = model(features)
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=logits.softmax(1))
    return te.EstimatorSpec(mode, loss=F.cross_entropy(logits, labels),
                            eval_metric_ops={"accuracy": te.metrics.accuracy(labels, logits.argmax(1))})


def _paired_calls(label: str, hand: Callable[[], float], est: Callable[[], float], n: int, rounds: int) -> float:
    """Whole calls of both sides, A B B A within each round (which side is A alternates between rounds);
    prints per-batch times and returns the median of the rounds' ratios hand/estimator."""
    hand(), est()  # warm-up
    ratios, hand_ms, est_ms = [], [], []
    for r in range(rounds):
        first, second = (hand, est) if r % 2 == 0 else (est, hand)
        a1, b1, b2, a2 = first(), second(), second(), first()
        h, e = (a1 + a2, b1 + b2) if r % 2 == 0 else (b1 + b2, a1 + a2)
        ratios.append(h / e)
        hand_ms.append(h / 2 / n * 1e3)
        est_ms.append(e / 2 / n * 1e3)
    med = statistics.median
    print(f"  {label:48} hand {med(hand_ms):7.2f} ms/batch  estimator {med(est_ms):7.2f} ms/batch  "
          f"ratio {med(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]")
    return med(ratios)


def measure_eval_predict(case: Case, n: int, rounds: int, seed: int) -> dict[str, float]:
    """evaluate() against a no_grad loop summing the loss and the correct predictions; predict() against a
    no_grad loop handing out each example's probabilities; each with the default and with prefetching on.
    Process CPU time (all threads): the cost of each, robust to the machine's other jobs. Whole calls of N
    batches (the Estimator's fixed costs per call, restoring and writing the summaries, included), A B B A
    within each round."""
    batches = make_batches(case, n, seed)
    torch.manual_seed(seed)
    model = case.build().eval()

    def hand_eval() -> float:
        def run() -> None:
            with torch.no_grad():
                loss, correct, count = torch.zeros(()), torch.zeros(()), 0
                for x, y in batches[:n]:
                    logits = model(x)
                    loss += F.cross_entropy(logits, y)
                    correct += (logits.argmax(1) == y).sum()
                    count += len(y)
                float(loss / n), float(correct / count)
        return _cpu_timed(run)

    def hand_predict() -> float:
        def run() -> None:
            with torch.no_grad():
                out = []
                for x, _ in batches[:n]:
                    out.extend(model(x).softmax(1).numpy())
        return _cpu_timed(run)

    print(f"[evaluate/predict, {case.name}] N={n} batches, {rounds} rounds, process CPU time")
    results = {}
    for options in ({}, {"prefetch_batches": 2}):
        torch.manual_seed(seed)
        model_dir = tempfile.mkdtemp(prefix="te_overhead_")
        est = te.Estimator(_eval_model_fn, model_dir=model_dir, model=case.build(),
                           config=te.RunConfig(device="cpu", progress_bar=False, **options))
        est.model.load_state_dict(model.state_dict())
        suffix = ", prefetch_batches=2" if options else ", default"
        results["evaluate" + suffix] = _paired_calls(
            "evaluate" + suffix, hand_eval, lambda est=est: _cpu_timed(lambda: est.evaluate(lambda: batches, steps=n)), n, rounds)
        results["predict" + suffix] = _paired_calls(
            "predict" + suffix, hand_predict,
            lambda est=est: _cpu_timed(lambda: list(est.predict(lambda: (x for x, _ in batches[:n])))), n, rounds)
        shutil.rmtree(model_dir, ignore_errors=True)
    return results


def measure_repeated(case: Case, k: int, calls: int, rounds: int, seed: int) -> float:
    """``train(steps=k)`` called again and again (the tutorial alternates train and evaluate), against a hand
    loop of k steps that saves the weights once per call with safetensors.torch.save_file."""
    from safetensors.torch import save_file

    batches = make_batches(case, k + 1, seed)
    torch.manual_seed(seed)
    model = case.build()
    opt = torch.optim.SGD(model.parameters(), lr=_lr())
    hand_dir = tempfile.mkdtemp(prefix="te_overhead_hand_")
    est, model_dir = _cnn_estimator(case, seed)
    est.train(lambda: batches, steps=k)

    def hand_call(i: int) -> None:
        for x, y in batches[:k]:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        save_file({name: t.contiguous() for name, t in model.state_dict().items()}, os.path.join(hand_dir, f"model-{i % 5}.safetensors"))

    ratios, hand_ms, est_ms = [], [], []
    for r in range(rounds):
        times = {}
        for side in (("hand", "est") if r % 2 == 0 else ("est", "hand")):
            if side == "hand":
                times[side] = _cpu_timed(lambda: [hand_call(i) for i in range(calls)]) / calls
            else:
                times[side] = _cpu_timed(lambda: [est.train(lambda: batches, steps=k) for _ in range(calls)]) / calls
        ratios.append(times["hand"] / times["est"])
        hand_ms.append(times["hand"] * 1e3)
        est_ms.append(times["est"] * 1e3)
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(hand_dir, ignore_errors=True)
    med = statistics.median
    print(f"[repeated train(steps={k}), {case.name}] {calls} calls per round, {rounds} rounds, process CPU time (the fsyncs' waits are not in it)")
    print(f"  per call: hand (+ save_file) {med(hand_ms):.1f} ms, estimator {med(est_ms):.1f} ms, "
          f"ratio {med(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]; "
          f"the Estimator's fixed cost beyond the hand loop's: {med(est_ms) - med(hand_ms):+.1f} ms per call")
    return med(ratios)


# ----------------------------------------------------------------------------------------------------


ROWS = ("instructions", "prefetch", "eval", "repeated")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["mlp", "cnn", "all", "none"], default="all",
                        help="the per-step rows to run (none: only the --rows)")
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
    parser.add_argument("--rows", nargs="*", metavar="ROW", choices=list(ROWS),
                        help=f"which of the further rows to run (default all): {', '.join(ROWS)}")
    parser.add_argument("--instruction-runs", type=int, default=3,
                        help="valgrind counts per side and step count for the instructions row (default 3; median)")
    parser.add_argument("--only", choices=sorted(SIDES),
                        help="run one side once for --steps steps and exit (for perf stat; see the docstring)")
    args = parser.parse_args(argv)
    if args.only and (args.case in ("all", "none") or args.steps is None):
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
    for name in {"all": ["mlp", "cnn"], "none": []}.get(args.case, [args.case]):
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
    rows = ROWS if args.rows is None else args.rows
    if "instructions" in rows and not args.quick:  # minutes under valgrind: not in the smoke run
        per_step = measure_instructions(args.steps or 2000, args.instruction_runs)
        if per_step is not None:
            for side, target in (("estimator", 1.03), ("bare", 1.01)):
                verdict = per_step[side] / per_step["hand"] <= target
                ok &= verdict
                print(f"  {side} instructions {per_step[side] / per_step['hand']:.3f}x hand <= {target}x: {_verdict(verdict)}")
    if "prefetch" in rows:
        ratios = measure_prefetch(cases["cnn"], 8 if args.quick else 12, 2 if args.quick else 5, args.seed,
                                  batch_size=25 if args.quick else 100)
        for label, ratio in ratios.items():
            target = 1.3 if label.startswith("expensive") else 0.99
            verdict = ratio >= target
            ok &= verdict
            print(f"  {label}: ratio >= {target}: {_verdict(verdict)}")
    if "eval" in rows:
        ratios = measure_eval_predict(cases["cnn"], 4 if args.quick else 20, 2 if args.quick else 7, args.seed)
        for label, ratio in ratios.items():
            verdict = ratio >= 0.97
            ok &= verdict
            print(f"  {label}: ratio >= 0.97: {_verdict(verdict)}")
    if "repeated" in rows:
        ratio = measure_repeated(cases["cnn"], 10, 2 if args.quick else 5, 2 if args.quick else 7, args.seed)
        verdict = ratio >= 0.97
        ok &= verdict
        print(f"  repeated train(steps=10): ratio >= 0.97: {_verdict(verdict)}")
    if args.quick:
        print("(--quick: few rounds; the figures are a smoke test, not a measurement)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
