"""The content hash every checkpoint carries and every load checks."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["CONTENT_HASH_KEY", "CHUNK_DIGESTS", "content_hash", "raw_bytes"]


# The content hash: SHA-256 over the metadata (all but the hash itself) and, per tensor in key order, its
# name, dtype, shape and a digest of each 4 MiB chunk of its bytes: XXH3-128 (``xxh3-tree``, the default
# where the ``xxhash`` package is installed), else CRC-32 (``crc32-tree``); SHA-256 (``sha256-tree``) is read.
# All three catch truncation, zeroing and bit rot alike, and none resists a forger, who can rewrite any
# unkeyed hash stored beside the data; they differ in speed (benchmarks/checkpoint_hash.py: per 100 MB,
# about 25-37 ms for CRC-32, 60-110 ms for SHA-256, 4-13 ms for XXH3 on one core). Chunks of large
# checkpoints are hashed by a thread pool (the digests release the GIL), before the file is written: hashing
# while safetensors writes was tried and cost more on a 2-core machine. Loading accepts every kind.
CONTENT_HASH_KEY = "content_hash"
CHUNK_DIGESTS: dict[str, Any] = {
    "crc32-tree": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "sha256-tree": lambda data: hashlib.sha256(data).digest(),
}
try:
    import xxhash  # type: ignore[import-not-found, unused-ignore]

    CHUNK_DIGESTS["xxh3-tree"] = lambda data: xxhash.xxh3_128_digest(data)
except ImportError:  # optional: only needed to write, or check, xxh3-tree hashes
    pass
# What new checkpoints get: XXH3 where xxhash is installed (it keeps the hash under 10% of a save), else CRC-32.
_HASH_ALGORITHM = "xxh3-tree" if "xxh3-tree" in CHUNK_DIGESTS else "crc32-tree"
_HASH_CHUNK = 4 << 20
_PARALLEL_HASH_BYTES = 16 << 20  # below this, threads cost more than they save
_MIN_HASH_THREADS = 4  # on 2 (virtual) cores, two hashing threads were slower than one


def raw_bytes(tensor: torch.Tensor) -> Any:
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().data


def content_hash(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], algorithm: str | None = None) -> str:
    """The content hash of a checkpoint's tensors and metadata (chunks on a thread pool when large)."""
    algorithm = algorithm or _HASH_ALGORITHM
    keys = sorted(tensors)
    views = {key: raw_bytes(tensors[key]) for key in keys}
    chunks = [(key, view[at:at + _HASH_CHUNK]) for key in keys for view in [views[key]]
              for at in range(0, len(view), _HASH_CHUNK)]
    workers = min(8, os.cpu_count() or 1)
    if sum(len(view) for view in views.values()) >= _PARALLEL_HASH_BYTES and workers >= _MIN_HASH_THREADS:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="checkpoint-hash") as pool:
            digests = list(pool.map(CHUNK_DIGESTS[algorithm], [c for _, c in chunks]))
    else:
        digests = [CHUNK_DIGESTS[algorithm](c) for _, c in chunks]
    by_key: dict[str, list[bytes]] = {key: [] for key in keys}
    for (key, _), digest in zip(chunks, digests):
        by_key[key].append(digest)
    total = hashlib.sha256()
    for name in sorted(metadata):
        if name != CONTENT_HASH_KEY:
            total.update(json.dumps(["meta", name, metadata[name]]).encode() + b"\n")
    for key in keys:
        tensor = tensors[key]
        total.update(json.dumps(["tensor", key, str(tensor.dtype), list(tensor.shape), len(views[key])]).encode() + b"\n")
        total.update(b"".join(by_key[key]))
    return f"{algorithm}:{total.hexdigest()}"
