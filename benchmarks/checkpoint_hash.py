"""What does the checkpoint content hash cost? Time and space per save (and per load) of a ~100 MB model.

Every checkpoint carries ``content_hash`` (see :mod:`torch_estimator.checkpoint`): SHA-256 over the metadata
and over a digest (XXH3-128, CRC-32 or SHA-256: ``--algorithm``) of each 4 MiB chunk of every tensor, the
chunks of checkpoints of 16 MiB and more hashed on a thread pool. Loading recomputes it. This script measures, on the CPU, for one model of ``--mb`` megabytes of float32 weights:

* ``save``: ``write_checkpoint`` with and without the hash; both write a temporary file, ``fsync`` it,
  rename it and ``fsync`` the directory, exactly as the Estimator's saves do;
* ``hash``: the hash alone, on one thread and on the pool;
* ``restore``: reading the file and copying it into the model, with and without verification;
* ``space``: the file size with and without the hash.

Saves alternate (with / without, then without / with) so that drifts of a shared machine hit both sides; the
report gives medians over ``--rounds`` rounds, the median of the per-round ratios (the figure judged) and,
for a loaded machine, the ratio of the fastest saves. Target: the hash adds less than 10% to a save.

Usage::

    python benchmarks/checkpoint_hash.py                 # 100 MB, 9 rounds
    python benchmarks/checkpoint_hash.py --mb 400 --rounds 5 --optimizer adam
    python benchmarks/checkpoint_hash.py --dir /mnt/ssd  # measure on another disk (default: a temp dir)
    python benchmarks/checkpoint_hash.py --algorithm crc32-tree
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from safetensors import safe_open

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import hashing as ckpt_hashing
from torch_estimator.checkpoint import restore as ckpt_restore


def build(mb: float, optimizer: str) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    width = 2048
    layers = max(1, round(mb * 1e6 / 4 / (width * width + width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    if optimizer == "none":
        return model, None
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    return model, opt


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="megabytes of model weights")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--optimizer", choices=["none", "sgd", "adam"], default="none",
                        help="adam triples the checkpoint; sgd (no momentum) and none add nothing")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--algorithm", choices=sorted(ckpt_hashing.CHUNK_DIGESTS), default=ckpt_hashing._HASH_ALGORITHM,
                        help=f"chunk digest (default: the library's, {ckpt_hashing._HASH_ALGORITHM})")
    args = parser.parse_args()
    ckpt_hashing._HASH_ALGORITHM = args.algorithm

    model, optimizer = build(args.mb, args.optimizer)
    directory = tempfile.mkdtemp(dir=args.dir, prefix="checkpoint_hash_")
    hashed, plain = os.path.join(directory, "model.ckpt-1.safetensors"), os.path.join(directory, "model.ckpt-2.safetensors")
    save = {
        True: lambda: ckpt.write_checkpoint(hashed, 1, {"model": model, "optimizer": optimizer}),
        False: lambda: ckpt.write_checkpoint(plain, 2, {"model": model, "optimizer": optimizer}, content_hash=False),
    }
    save[True](), save[False]()  # warm up: page cache, allocator, thread pool
    times: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for round_ in range(args.rounds):
        order = (True, False) if round_ % 2 else (False, True)
        this = {side: timed(save[side]) for side in order}
        for side in order:
            times[side].append(this[side])
        ratios.append(this[True] / this[False])

    with safe_open(hashed, framework="pt") as handle:  # every tensor of the file: model, optimizer, RNG
        tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    nbytes = os.path.getsize(plain)
    metadata = {"format": ckpt.CHECKPOINT_FORMAT}
    workers = max(ckpt_hashing._MIN_HASH_THREADS, min(8, os.cpu_count() or 1))  # the pool the library would use

    def hash_on(threads: int) -> float:
        real, ckpt_hashing.os.cpu_count = ckpt_hashing.os.cpu_count, lambda: threads
        try:
            return statistics.median(timed(lambda: ckpt_hashing.content_hash(tensors, metadata, args.algorithm)) for _ in range(args.rounds))
        finally:
            ckpt_hashing.os.cpu_count = real

    hash_serial, hash_pool = hash_on(1), hash_on(workers)
    def restore(verify: bool) -> None:  # read, check, copy into the model: what a resume does
        ckpt_restore._apply(ckpt.read_checkpoint(hashed, verify=verify), {"model": model}, "benchmark")

    load = {verify: statistics.median(timed(lambda verify=verify: restore(verify)) for _ in range(args.rounds)) for verify in (True, False)}
    with_hash, without = statistics.median(times[True]), statistics.median(times[False])
    overhead = statistics.median(ratios) - 1.0
    fastest = min(times[True]) / min(times[False]) - 1.0
    print(f"checkpoint: {nbytes / 1e6:.1f} MB ({args.optimizer} optimizer), hash {args.algorithm}, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, in {directory}")
    print(f"save without hash   {without * 1e3:8.1f} ms   ({nbytes / without / 1e9:.2f} GB/s)")
    print(f"save with hash      {with_hash * 1e3:8.1f} ms   overhead {overhead * 100:+.1f}% (median of paired "
          f"rounds; medians alone {(with_hash / without - 1) * 100:+.1f}%, fastest of each {fastest * 100:+.1f}%)  "
          f"{'PASS' if overhead < 0.10 else 'FAIL'} (< 10%)")
    print(f"hash alone          {hash_serial * 1e3:8.1f} ms on 1 thread ({nbytes / hash_serial / 1e9:.2f} GB/s), "
          f"{hash_pool * 1e3:.1f} ms on {workers} threads")
    print(f"restore, no verify  {load[False] * 1e3:8.1f} ms")
    print(f"restore, verify     {load[True] * 1e3:8.1f} ms   overhead {(load[True] / load[False] - 1) * 100:+.1f}%")
    print(f"space               {os.path.getsize(hashed) - nbytes:+d} bytes per checkpoint "
          f"({len(args.algorithm) + 65}-character hash in the header, padding included)")
    for path in (hashed, plain):
        os.remove(path)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
