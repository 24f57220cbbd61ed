"""The content hash: its specification, computed serially and on threads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from torch_estimator import checkpoint as ckpt
from torch_estimator.checkpoint import hashing as ckpt_hashing

from .checkpoint_support import flip_a_data_byte, trained_parts


def _reference_hash(path: str, algorithm: str = "sha256-tree") -> str:
    """The content hash as documented, computed independently from the file (pins the algorithm)."""
    import hashlib
    import zlib

    if algorithm == "xxh3-tree":
        import xxhash

        chunk_digest = xxhash.xxh3_128_digest
    else:
        chunk_digest = {"sha256-tree": lambda b: hashlib.sha256(b).digest(), "crc32-tree": lambda b: zlib.crc32(b).to_bytes(4, "big")}[algorithm]

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
    total = hashlib.sha256()
    for name in sorted(metadata):
        if name != "content_hash":
            total.update(json.dumps(["meta", name, metadata[name]]).encode() + b"\n")
    for key in sorted(tensors):
        tensor = tensors[key]
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        total.update(json.dumps(["tensor", key, str(tensor.dtype), list(tensor.shape), len(data)]).encode() + b"\n")
        for at in range(0, len(data), 4 << 20):
            total.update(chunk_digest(data[at:at + (4 << 20)]))
    return f"{algorithm}:" + total.hexdigest()


ALGORITHMS = ["crc32-tree", "sha256-tree", pytest.param("xxh3-tree", marks=pytest.mark.skipif(
    "xxh3-tree" not in ckpt_hashing.CHUNK_DIGESTS, reason="the optional xxhash package is not installed"))]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_content_hash_matches_its_specification(tmp_path, monkeypatch, algorithm):
    monkeypatch.setattr(ckpt_hashing, "_HASH_ALGORITHM", algorithm)
    model, optimizer, scheduler = trained_parts()
    path = str(tmp_path / "model.ckpt-2.safetensors")
    ckpt.write_checkpoint(path, 2, {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler})
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata()["content_hash"] == _reference_hash(path, algorithm)
    monkeypatch.undo()  # a reader of the other default still verifies it
    ckpt.verify_checkpoint(path)
    flip_a_data_byte(path)
    with pytest.raises(ckpt.CheckpointCorruptError, match="content hash does not match"):
        ckpt.verify_checkpoint(path)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_hash_computed_on_threads_is_the_same(tmp_path, monkeypatch, algorithm):
    monkeypatch.setattr(ckpt_hashing, "_HASH_ALGORITHM", algorithm)
    class Big(torch.nn.Module):  # 5 MiB: more than one 4 MiB chunk, and a 0-d and an empty tensor
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1310720))
            self.register_buffer("scalar", torch.tensor(3, dtype=torch.int64))
            self.register_buffer("empty", torch.zeros(0, 4, dtype=torch.bfloat16))

    model = Big()
    (tmp_path / "parallel").mkdir()
    serial, parallel = str(tmp_path / "model.ckpt-1.safetensors"), str(tmp_path / "parallel" / "model.ckpt-1.safetensors")
    ckpt.write_checkpoint(serial, 1, {"model": model})
    monkeypatch.setattr(ckpt_hashing, "_PARALLEL_HASH_BYTES", 0)
    monkeypatch.setattr(ckpt_hashing.os, "cpu_count", lambda: 4)
    ckpt.write_checkpoint(parallel, 1, {"model": model})
    for path in (serial, parallel):
        with safe_open(path, framework="pt") as handle:
            assert handle.metadata()["content_hash"] == _reference_hash(path, algorithm)
        assert torch.equal(ckpt.read_checkpoint(path).model["w"], model.w.detach())  # verified on the pool too
