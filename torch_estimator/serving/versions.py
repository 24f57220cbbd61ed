"""Which version of a model the server answers with: the highest numeric directory under a base path,
hot-swapped when a new one appears, and older versions loaded on demand within a bound.

Policy (TF Serving's ``latest`` policy, plus on-demand pinning):

* **Latest.** :meth:`VersionManager.poll` lists the numeric version directories (exporters write
  ``temp-<ts>`` and rename it, so a numeric directory is complete). The highest one that is not known to be
  broken becomes the served version once it has loaded *and passed a self-check* (every signature runs on
  small drawn inputs at batch sizes 1 and 2, and its outputs must have the declared names, dtypes and fixed
  dimensions, and be finite). The swap is one reference assignment: a request holds the model it started
  with, so in-flight requests finish on the old version and new ones use the new one.
* **Failures.** A version that fails to load or to self-check is not served; the previous one stays, the
  log says why, and the status endpoint lists the version as ``END`` with the reason. It is retried only
  when its files change (size or modification time), so a half-copied directory is picked up once complete.
* **Removal.** If the served version's directory disappears, the highest remaining version that loads is
  served (TF's rollback-by-deletion); if none loads, the one in memory keeps serving.
* **Pinned versions** (``/versions/N``): the latest is answered directly; another version on disk is loaded
  on demand (with the same self-check) into a least-recently-used cache of ``max_cached_versions`` models,
  which also receives the version that a swap replaces. So at most ``1 + max_cached_versions`` models are
  in memory, plus one while it loads. ``max_cached_versions=0`` serves the latest version only, as TF does.

Example:
    >>> import tempfile
    >>> manager = VersionManager(tempfile.mkdtemp(), "demo")
    >>> manager.poll(), manager.latest, manager.statuses()
    (None, None, [])
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable

import torch

from torch_estimator.serving import loader
from torch_estimator.serving.loader import STRING, ExportedModel
from torch_estimator.serving.rest import last_line as _last_line

__all__ = [
    "VersionManager", "VersionStatus", "VersionNotFoundError", "SelfCheckError", "self_check", "list_version_dirs",
]

logger = logging.getLogger("torch_estimator.serving")

LoadFn = Callable[[str], ExportedModel]


class VersionNotFoundError(LookupError):
    """No servable version answers the request (the server's 404)."""


class SelfCheckError(ValueError):
    """A loaded version failed its self-check, so it is not served."""


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state, as TF Serving's ``ModelVersionStatus`` reports it.

    Attributes:
        version: The version number.
        state: ``LOADING``, ``AVAILABLE`` or ``END`` (unloaded, or failed).
        error_code: ``OK``, or ``UNKNOWN`` when it failed to load.
        error_message: Why it failed, or ``""``.
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


def list_version_dirs(base_path: str) -> dict[int, str]:
    """Version number -> directory for the numeric directories under ``base_path`` (others are ignored)."""
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        int(name): os.path.join(base_path, name)
        for name in names
        if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(base_path, name))
    }


def _fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    """The directory's files (name, size, mtime): a failed version is retried only when this changes."""
    entries = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                stat = entry.stat()
                entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _drawn_inputs(signature: dict, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Small inputs for a signature: floats in [0, 1), integers 0 or 1, free dimensions 3 (batch: given)."""
    inputs = {}
    for name, info in signature["inputs"].items():
        shape = [batch_size if i == 0 and d == -1 else (3 if d == -1 else d) for i, d in enumerate(info["shape"])]
        dtype = torch.int64 if info["dtype"] == STRING else getattr(torch, info["dtype"])  # strings: fingerprints
        if dtype == torch.bool:
            inputs[name] = torch.rand(shape, generator=generator) < 0.5
        elif dtype.is_floating_point or dtype.is_complex:
            inputs[name] = torch.rand(shape, generator=generator).to(dtype)
        else:
            inputs[name] = torch.randint(0, 2, shape, generator=generator).to(dtype)
    return inputs



def self_check(model: ExportedModel) -> None:
    """Run every signature on drawn inputs at batch sizes 1 and 2 and check the outputs against the signature.

    This also warms the model up (TorchScript optimizes on its first calls), so the first request after a
    swap is not the slow one.

    Raises:
        SelfCheckError: Naming the signature and what went wrong.
    """
    generator = torch.Generator().manual_seed(0)
    for key, signature in model.signatures.items():
        for batch_size in (1, 2):
            inputs = _drawn_inputs(signature, batch_size, generator)
            try:
                outputs = model(inputs, key)
            except Exception as error:  # the model's own failure, whatever its type
                raise SelfCheckError(
                    f"signature {key!r} failed on a drawn batch of {batch_size}: {type(error).__name__}: "
                    f"{_last_line(error)}"
                ) from error
            declared = signature["outputs"]
            if sorted(outputs) != sorted(declared):
                raise SelfCheckError(
                    f"signature {key!r} returned outputs {sorted(outputs)}, declared {sorted(declared)}.")
            for name, info in declared.items():
                tensor = outputs[name]
                dims_ok = tensor.dim() == len(info["shape"]) and all(
                    d in (-1, s) for d, s in zip(info["shape"], tensor.shape))
                if str(tensor.dtype).removeprefix("torch.") != info["dtype"] or not dims_ok:
                    raise SelfCheckError(
                        f"signature {key!r} output {name!r} is {tensor.dtype} {list(tensor.shape)}, declared "
                        f"{info['dtype']} {info['shape']}."
                    )
                if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
                    raise SelfCheckError(f"signature {key!r} output {name!r} is not finite on a drawn batch of "
                                         f"{batch_size} (NaN or infinite weights?).")


class VersionManager:
    """The versions of one model under ``base_path``: the served (latest) one, a cache of pinned ones, and
    the status of each. Thread-safe: requests call :meth:`get` while a poller calls :meth:`poll`.

    Args:
        base_path: The directory holding numeric version directories.
        model_name: The model's name, for log lines.
        load_fn: Loads one version directory (default :func:`loader.load`).
        max_cached_versions: How many versions other than the latest stay loaded (least recently used go).
        check: Whether to self-check each version before serving it.
    """

    def __init__(
        self,
        base_path: str,
        model_name: str,
        *,
        load_fn: LoadFn = loader.load,
        max_cached_versions: int = 1,
        check: bool = True,
    ) -> None:
        self.base_path, self.model_name = os.fspath(base_path), model_name
        self._load_fn, self._max_cached, self._check = load_fn, max_cached_versions, check
        self._latest: ExportedModel | None = None
        self._cache: collections.OrderedDict[int, ExportedModel] = collections.OrderedDict()
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple[tuple, str]] = {}  # version -> (fingerprint, reason)
        self._orphan: int | None = None  # a served version whose directory is gone (warned once)
        self._lock = threading.Lock()  # guards the dicts above and _latest
        self._poll_lock = threading.Lock()  # one poll at a time
        self._pin_lock = threading.Lock()  # one on-demand load at a time

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def latest(self) -> ExportedModel | None:
        """The served version, or None before one has loaded."""
        return self._latest

    def get(self, version: int | None = None) -> ExportedModel:
        """The model for a request: the latest, or a pinned version (loaded on demand).

        Raises:
            VersionNotFoundError: If there is no such servable version (the message says why).
        """
        latest = self._latest
        if version is None:
            if latest is None:
                raise VersionNotFoundError(f"Servable not found for request: Latest({self.model_name})")
            return latest
        if latest is not None and latest.version == version:
            return latest
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
        return self._load_pinned(version)

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        """The known versions' states, highest version first (one version's if given)."""
        with self._lock:
            entries = sorted(self._status.values(), key=lambda s: -s.version)
        return [s for s in entries if version is None or s.version == version]

    # -- loading ------------------------------------------------------------------------------------------

    def _set_status(self, version: int, state: str, message: str = "") -> None:
        with self._lock:
            self._status[version] = VersionStatus(version, state, "UNKNOWN" if message else "OK", message)

    def _load(self, version: int, path: str) -> ExportedModel:
        """Load and self-check one version; record a failure (and raise) or return the model."""
        fingerprint = _fingerprint(path)
        self._set_status(version, "LOADING")
        started = time.monotonic()
        try:
            model = self._load_fn(path)
            model.version = version  # the directory's number, whatever the loader made of its name
            if self._check:
                self_check(model)
        except Exception as error:  # a broken export must never take the server down
            reason = f"{type(error).__name__}: {_last_line(error)}"
            with self._lock:
                self._failed[version] = (fingerprint, reason)
            self._set_status(version, "END", f"Version {version} failed to load and is not served: {reason}")
            raise
        with self._lock:
            self._failed.pop(version, None)
        logger.info("Model %r version %d loaded and self-checked in %.2fs (%s).", self.model_name, version,
                    time.monotonic() - started, path)
        return model

    def _known_broken(self, version: int, path: str) -> str | None:
        with self._lock:
            failed = self._failed.get(version)
        return failed[1] if failed is not None and failed[0] == _fingerprint(path) else None

    def _remember(self, version: int, model: ExportedModel) -> None:
        """Put a model in the pinned cache (evicting the least recently used beyond the bound)."""
        with self._lock:
            if self._max_cached <= 0:
                self._status[version] = VersionStatus(version, "END")
                return
            self._cache[version] = model
            self._cache.move_to_end(version)
            self._status[version] = VersionStatus(version, "AVAILABLE")
            while len(self._cache) > self._max_cached:
                evicted, _ = self._cache.popitem(last=False)
                self._status[evicted] = VersionStatus(evicted, "END")
                logger.info("Model %r version %d unloaded (least recently used).", self.model_name, evicted)

    def _load_pinned(self, version: int) -> ExportedModel:
        if self._max_cached <= 0:
            raise VersionNotFoundError(
                f"Servable not found for request: Specific({self.model_name}, {version}); this server serves the "
                f"latest version only (max_cached_versions=0)."
            )
        with self._pin_lock:
            with self._lock:  # another request may have loaded it while this one waited
                if version in self._cache:
                    return self._cache[version]
            path = list_version_dirs(self.base_path).get(version)
            if path is None:
                raise VersionNotFoundError(f"Servable not found for request: Specific({self.model_name}, {version})")
            broken = self._known_broken(version, path)
            if broken is not None:
                raise VersionNotFoundError(
                    f"Servable not found for request: Specific({self.model_name}, {version}); it failed to load: "
                    f"{broken}")
            try:
                model = self._load(version, path)
            except Exception as error:
                logger.error("Model %r version %d (pinned by a request) failed to load: %s", self.model_name,
                             version, _last_line(error))
                raise VersionNotFoundError(
                    f"Servable not found for request: Specific({self.model_name}, {version}); it failed to load: "
                    f"{type(error).__name__}: {_last_line(error)}"
                ) from error
            self._remember(version, model)
            return model

    def poll(self) -> None:
        """Look at the base directory once: serve the highest version that loads, as the module explains."""
        with self._poll_lock:
            dirs = list_version_dirs(self.base_path)
            current = self._latest
            for version in sorted(dirs, reverse=True):
                if current is not None and version == current.version:
                    break  # the highest servable version is already served
                if self._known_broken(version, dirs[version]) is not None:
                    continue
                try:
                    model = self._load(version, dirs[version])
                except Exception as error:
                    still = f"still serving version {current.version}" if current is not None else "no version served"
                    logger.error("Model %r version %d failed to load and is not served (%s): %s: %s",
                                 self.model_name, version, still, type(error).__name__, _last_line(error))
                    continue
                self._swap(model)
                break
            else:
                if current is not None and current.version not in dirs and self._orphan != current.version:
                    self._orphan = current.version
                    logger.warning("Model %r version %s was removed from disk and no other version loads; it keeps "
                                   "serving from memory.", self.model_name, current.version)
            self._prune(dirs)

    def _swap(self, model: ExportedModel) -> None:
        old = self._latest
        version = int(model.version or 0)
        with self._lock:
            self._cache.pop(version, None)
            self._latest = model  # the atomic swap: new requests see the new model from here on
            self._status[version] = VersionStatus(version, "AVAILABLE")
        if old is not None:
            logger.info("Model %r now serves version %d (was %s).", self.model_name, version, old.version)
            self._remember(int(old.version or 0), old)
        else:
            logger.info("Model %r now serves version %d.", self.model_name, model.version)

    def _prune(self, dirs: dict[int, str]) -> None:
        """Forget status and failures of versions that are neither on disk nor loaded (keeps memory bounded)."""
        with self._lock:
            loaded = set(self._cache) | ({self._latest.version} if self._latest is not None else set())
            for version in list(self._status):
                if version not in dirs and version not in loaded:
                    del self._status[version]
                    self._failed.pop(version, None)
            for version in [v for v in self._cache if v not in dirs]:
                del self._cache[version]  # deleted from disk: stop answering pinned requests for it
                self._status.pop(version, None)
