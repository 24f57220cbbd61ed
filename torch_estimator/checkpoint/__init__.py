"""Checkpoints: one safetensors file per save, a JSON index, TF's rotation, restore and warm start.

This package's modules, one job each: :mod:`.format` (one file: write, read, verify), :mod:`.encoding` (nested
state and RNG states without pickle), :mod:`.hashing` (the content hash), :mod:`.files` (atomic, durable
writes), :mod:`.index` (the index, the latest checkpoint, ``model_dir`` checks), :mod:`.restore` (loading into
a model and optimizer), :mod:`.manager` (saving with rotation), :mod:`.saver` (when to save during training),
:mod:`.warm_start`, :mod:`.finite` (NaN checks of the training state) and :mod:`.parts` (the named parts a
checkpoint holds, one mapping). What they export is imported here.

File ``model.ckpt-<step>.safetensors`` holds every tensor under a prefixed key (``model/…``,
``optimizer/…``, ``lr_scheduler/…``, ``grad_scaler/…``, ``rng/…``, ``input/…``); everything else (global
step, param groups, python and numpy RNG states, the format version) is JSON in the safetensors metadata,
with a content hash of all of it (``content_hash``) that every load checks. Loading never unpickles.

Both the file and the ``checkpoint`` index are written to a temporary file, flushed to disk (``fsync``) and
moved into place with ``os.replace`` (then the directory is flushed), so a crash at any moment leaves the
previous state intact; leftover temporary files are removed when the next writer starts. A damaged latest
checkpoint (truncated, zeroed, altered) is reported naming the file, and :func:`restore_latest` falls back
to the newest intact one; a checkpoint rotated away while a reader opens it is skipped the same way. A
missing or unreadable index is rebuilt from the files present.

Example:
    >>> import os, tempfile, torch
    >>> model_dir = tempfile.mkdtemp()
    >>> manager = CheckpointManager(model_dir, keep_checkpoint_max=2)
    >>> for step in (10, 20, 30):
    ...     _ = manager.save(step, {"model": torch.nn.Linear(2, 1)})
    >>> [os.path.basename(p) for p in read_index(model_dir).paths]
    ['model.ckpt-20.safetensors', 'model.ckpt-30.safetensors']
    >>> restore_latest(model_dir, {"model": torch.nn.Linear(2, 1)}).global_step
    30
"""

from __future__ import annotations

from .encoding import decode_state, encode_state
from .files import fsync_dir
from .finite import non_finite_tensors, training_state_tensors
from .format import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointCorruptError,
    checkpoint_identity,
    checkpoint_path_for_step,
    list_variables,
    read_checkpoint,
    save_file,
    step_of,
    verify_checkpoint,
    write_checkpoint,
)
from .hashing import CONTENT_HASH_KEY
from .index import (
    CheckpointIndex,
    check_model_dir,
    latest_checkpoint,
    latest_intact_checkpoint,
    make_writable_model_dir,
    read_index,
    read_latest_checkpoint,
)
from .manager import CheckpointManager
from .parts import Parts
from .restore import apply_rng_state, restore_checkpoint, restore_latest
from .saver import CheckpointSaver
from .warm_start import WarmStartSettings, warm_start

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONTENT_HASH_KEY",
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointManager",
    "CheckpointSaver",
    "CheckpointIndex",
    "Parts",
    "WarmStartSettings",
    "apply_rng_state",
    "check_model_dir",
    "checkpoint_identity",
    "checkpoint_path_for_step",
    "decode_state",
    "encode_state",
    "fsync_dir",
    "step_of",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "make_writable_model_dir",
    "non_finite_tensors",
    "training_state_tensors",
    "list_variables",
    "read_index",
    "read_checkpoint",
    "read_latest_checkpoint",
    "restore_checkpoint",
    "restore_latest",
    "save_file",
    "verify_checkpoint",
    "warm_start",
    "write_checkpoint",
]
