"""``export_saved_model``: plan the signatures from eager runs, write each artifact, verify it, and move
the export under its final name ``<export_dir_base>/<unix seconds>/``.

Steps (TF's ``_export_all_saved_models``, plus verification):

1. Call the receiver fn; draw sample inputs from its specs at the trace batch size and at two others.
2. Run ``model_fn`` (PREDICT) eagerly on each: the export outputs (TF's default rules) name the signatures,
   the outputs' dtypes and shapes go to ``signature.json``, and the values are the references.
3. Remove the ``temp-*`` directories of exports that died; claim ``<base>/temp-<ts>`` (``<base>/<ts>`` must
   not exist; else wait a second and retry, 10 times) and lock it (:mod:`~torch_estimator.export.durable`).
4. Per format, trace/export, save, load the saved file back (through the serving loader's checks) and
   compare every signature with the references; a mismatch raises
   :class:`~torch_estimator.export.verify.ExportVerificationError`.
5. Copy ``assets.extra/``, flush every file to disk recording its size and SHA-256, write ``signature.json``
   (the embedded copy plus those records, ``files``), then rename ``temp-<ts>`` to ``<ts>`` durably. On any
   error the temporary directory is removed: no half-written export is ever left behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import aoti, durable, pt2, torchscript
from .outputs import DEFAULT_SERVING_SIGNATURE_DEF_KEY, ExportOutput, resolve_export_outputs
from .receivers import STRING_MODULE, ServingInputReceiver, dtype_name, string_fingerprint_module
from .signature import FILES_KEY, SIGNATURE_FILE, SignatureDef, dumps, function_names, output_info, signature_document
from .verify import (
    TRACE_ROUND,
    TRACING_HINT,
    VERIFY_ROUNDS,
    ExportVerificationError,
    Round,
    compare_outputs,
    describe_warnings,
    sample_inputs,
)

__all__ = ["export_saved_model", "FORMATS", "ASSETS_EXTRA", "MAX_DIRECTORY_CREATION_ATTEMPTS"]

logger = logging.getLogger("torch_estimator")

FORMATS = {"torchscript": ("torchscript",), "pt2": ("pt2",), "aoti": ("aoti",), "all": ("torchscript", "pt2")}
ASSETS_EXTRA = "assets.extra"
MAX_DIRECTORY_CREATION_ATTEMPTS = 10  # TF's export_utils constant

PredictFn = Callable[[Any], Any]
Inputs = dict[str, torch.Tensor]


@dataclasses.dataclass
class _Plan:
    """Everything the writers need: signatures, their functions, and the sample inputs and references."""

    signatures: list[SignatureDef]
    functions: dict[str, Callable[[Inputs], Inputs]]
    receiver_modules: dict[str, torch.nn.Module]
    trace_inputs: dict[str, Inputs]  # receiver name -> inputs
    checks: list[tuple[Round, dict[str, Inputs], dict[str, Inputs]]]  # round, inputs, references by signature


def export_saved_model(
    export_dir_base: str | os.PathLike[str],
    serving_input_receiver_fn: Callable[[], ServingInputReceiver] | None,
    *,
    predict_fn: PredictFn,
    model: torch.nn.Module | None,
    global_step: int,
    device: torch.device | str = "cpu",
    assets_extra: Mapping[str, str] | None = None,
    format: str = "torchscript",
) -> str:
    """Export ``predict_fn`` (``model_fn`` in PREDICT mode) behind the receiver's signature(s).

    Args:
        export_dir_base: Receives one directory per export, named by its Unix time in seconds.
        serving_input_receiver_fn: Returns a :class:`ServingInputReceiver` (or ``TensorServingInputReceiver``).
        predict_fn: ``predict_fn(features) -> EstimatorSpec`` in PREDICT mode, the model in eval mode.
        model: The module ``predict_fn`` uses; its parameters become the artifact's (None: captured as constants).
        global_step: Recorded in ``signature.json``.
        device: Where ``model`` lives; sample inputs are made there.
        assets_extra: ``{path relative to assets.extra/: source file or directory}`` to copy.
        format: ``"torchscript"`` (``model.pt``), ``"pt2"`` (``model.pt2``), ``"all"`` (both) or ``"aoti"``
            (``model.aoti.pt2``: compiled by AOTInductor, tens of seconds per signature; it runs only with this
            torch release on this kind of device and CPU).

    Returns:
        The export directory, ``<export_dir_base>/<unix seconds>``.

    Raises:
        ValueError: For a missing receiver fn, a bad format or assets, bad export outputs, or an export that
            fails tracing or its verification (``ExportVerificationError``).
        TypeError: If the receiver fn returns something other than a receiver.
        RuntimeError: If no unused directory name was found in 10 attempts.
    """
    if not serving_input_receiver_fn:
        raise ValueError("An input_receiver_fn must be defined: pass serving_input_receiver_fn, e.g. "
                         "build_raw_serving_input_receiver_fn({'x': TensorSpec([None, 784], torch.float32)}).")
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {sorted(FORMATS)}; received {format!r}.")
    assets = _check_assets(assets_extra)
    receiver = serving_input_receiver_fn()
    if not isinstance(receiver, ServingInputReceiver):
        raise TypeError(
            f"serving_input_receiver_fn must return a ServingInputReceiver or TensorServingInputReceiver; "
            f"it returned {type(receiver).__name__}."
        )
    device = torch.device(device)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):  # export leaves the training RNG streams alone
        plan = _plan(receiver, predict_fn, device)
        document = signature_document(plan.signatures, global_step, device.type)
        text = dumps(document)
        base = os.fspath(export_dir_base)
        os.makedirs(base, exist_ok=True)
        durable.remove_dead_temp_dirs(base)
        export_dir, writer = _claim_export_dir(base)
        temp_dir = writer.temp_dir
        try:
            for name in FORMATS[format]:
                _WRITERS[name](temp_dir, plan, model, text, device)
            _copy_assets(assets, os.path.join(temp_dir, ASSETS_EXTRA))
            files = durable.sync_and_record(temp_dir)
            with open(os.path.join(temp_dir, SIGNATURE_FILE), "w", encoding="utf-8") as file:
                file.write(dumps({**document, FILES_KEY: files}))
                file.flush()
                os.fsync(file.fileno())
            writer.publish(export_dir)
        finally:
            writer.abandon()  # after publish: nothing left to remove
    logger.info("Export written to %s (signatures: %s).", export_dir, ", ".join(s.key for s in plan.signatures))
    return export_dir


# ----------------------------------------------------------------------------------------------------------
# Planning: eager runs on sample inputs.


def _run(receiver: ServingInputReceiver, predict_fn: PredictFn, inputs: Inputs) -> dict[str, ExportOutput]:
    spec = predict_fn(receiver.to_features(dict(inputs)))
    predictions = getattr(spec, "predictions", None)
    if predictions is None:
        raise TypeError(f"predict_fn must return an EstimatorSpec with predictions; it returned {type(spec).__name__}.")
    return resolve_export_outputs(getattr(spec, "export_outputs", None), predictions)


def _signature_function(
    receiver: ServingInputReceiver, predict_fn: PredictFn, output_key: str
) -> Callable[[Inputs], Inputs]:
    def signature_function(inputs: Inputs) -> Inputs:
        outputs = _run(receiver, predict_fn, inputs)[output_key].outputs
        return {name: outputs[name] for name in sorted(outputs)}

    return signature_function


def _describe_inputs(inputs: Inputs) -> str:
    return ", ".join(f"{name}: {dtype_name(t.dtype)} {list(t.shape)}" for name, t in inputs.items())


def _eager(receiver: ServingInputReceiver, predict_fn: PredictFn, inputs: Inputs) -> dict[str, ExportOutput]:
    try:
        with torch.no_grad():
            return _run(receiver, predict_fn, inputs)
    except (RuntimeError, KeyError, IndexError) as error:  # our ValueError/TypeError speak for themselves
        reason = f"{type(error).__name__}: {error}" if isinstance(error, LookupError) else str(error)
        raise ValueError(
            f"model_fn failed in PREDICT mode on sample inputs drawn from the receiver's specs "
            f"({_describe_inputs(inputs)}): {reason}. Check the receiver (input names, TensorSpec shapes, dtypes, "
            f"value ranges: give low=/high= or example=)."
        ) from error


def _signature_keys(outputs: Mapping[str, Any]) -> list[str]:
    return sorted(outputs, key=lambda k: (k != DEFAULT_SERVING_SIGNATURE_DEF_KEY, k))


def _plan(receiver: ServingInputReceiver, predict_fn: PredictFn, device: torch.device) -> _Plan:
    receivers = {"": receiver, **receiver.receiver_tensors_alternatives}
    rounds = [TRACE_ROUND, *VERIFY_ROUNDS]
    modules = {}
    for name, item in receivers.items():
        if isinstance(item.features, torch.nn.Module):
            suffix = "_" + re.sub(r"\W", "_", name) if name else ""
            modules["receiver" + suffix] = item.features.to(device).eval()
    inputs = {r: {n: sample_inputs(item.receiver_tensors, r, device) for n, item in receivers.items()} for r in rounds}
    resolved = {r: {n: _eager(item, predict_fn, inputs[r][n]) for n, item in receivers.items()} for r in rounds}

    first = resolved[TRACE_ROUND][""]
    entries = [(key, "", key) for key in _signature_keys(first)]
    alternatives = sorted(receiver.receiver_tensors_alternatives)
    entries += [(f"{alt}:{key}", alt, key) for alt in alternatives for key in _signature_keys(first)]
    names = function_names([key for key, _, _ in entries])
    signatures = [
        SignatureDef(key, names[key], receivers[rname], rname, okey, first[okey].method_name,
                     class_labels=first[okey].class_labels)
        for key, rname, okey in entries
    ]
    references: dict[Round, dict[str, Inputs]] = {r: {} for r in rounds}
    for r in rounds:
        for sig in signatures:
            outputs = resolved[r][sig.receiver_name]
            if sorted(outputs) != sorted(first):
                raise ValueError(
                    f"model_fn returned export_outputs {sorted(first)} for one sample batch and {sorted(outputs)} "
                    f"for another; a serving signature needs the same keys for every input."
                )
            references[r][sig.key] = outputs[sig.output_key].outputs
    for sig in signatures:
        _describe_outputs(sig, [references[r][sig.key] for r in rounds])
    functions = {sig.function: _signature_function(sig.receiver, predict_fn, sig.output_key) for sig in signatures}
    return _Plan(
        signatures=signatures,
        functions=functions,
        receiver_modules=modules,
        trace_inputs=inputs[TRACE_ROUND],
        checks=[(r, inputs[r], references[r]) for r in VERIFY_ROUNDS],
    )


def _describe_outputs(sig: SignatureDef, observed: list[Inputs]) -> None:
    """Fill ``sig.outputs`` from the eager runs; check class ids against the labels."""
    for outputs in observed[1:]:
        if sorted(outputs) != sorted(observed[0]):
            raise ValueError(
                f"Signature {sig.key!r} returned outputs {sorted(observed[0])} for one sample batch and "
                f"{sorted(outputs)} for another; a serving signature needs the same outputs for every input."
            )
    sig.outputs = {
        name: output_info([o[name] for o in observed], f"Output {name!r} of signature {sig.key!r}")
        for name in sorted(observed[0])
    }
    if sig.class_labels is not None and "classes" in observed[0]:
        for outputs in observed:
            classes = outputs["classes"]
            if classes.numel() and not (int(classes.min()) >= 0 and int(classes.max()) < len(sig.class_labels)):
                raise ValueError(
                    f"Signature {sig.key!r}: ClassificationOutput `classes` holds ids in "
                    f"[{int(classes.min())}, {int(classes.max())}] but there are {len(sig.class_labels)} labels; "
                    f"class ids index `labels`."
                )


# ----------------------------------------------------------------------------------------------------------
# Writers: build, save, load back, verify.


def _verify(plan: _Plan, call: Callable[[SignatureDef, Inputs], Any], artifact: str, warned: list[str]) -> None:
    for _round, inputs, references in plan.checks:
        for sig in plan.signatures:
            feed = inputs[sig.receiver_name]
            where = (f"signature {sig.key!r} (function {sig.function!r}) of {artifact} on sample inputs "
                     f"{{{_describe_inputs(feed)}}}")
            try:
                with torch.no_grad():
                    actual = call(sig, dict(feed))
            except Exception as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
                first = re.sub(r"^\w+(Error|Exception): ", "", first)  # TorchScript repeats the type
                raise ExportVerificationError(
                    f"Export verification failed: {where} raised {type(error).__name__}: {first}. "
                    f"{TRACING_HINT}{describe_warnings(warned)}"
                ) from error
            problem = compare_outputs(references[sig.key], actual)
            if problem is None:
                continue
            name, what = problem
            output = f" output {name!r}" if name else ""
            with torch.no_grad():
                again = plan.functions[sig.function](dict(feed))
            if compare_outputs(references[sig.key], again) is not None:
                hint = ("model_fn itself gives different outputs for the same input (is Dropout active, or does "
                        "it draw random numbers in PREDICT mode?); export cannot verify a non-deterministic "
                        "model_fn.")
            else:
                hint = TRACING_HINT + describe_warnings(warned)
            raise ExportVerificationError(f"Export verification failed: {where}:{output} {what}. {hint}")


def _write_torchscript(
    temp_dir: str, plan: _Plan, model: torch.nn.Module | None, text: str, device: torch.device
) -> None:
    modules = dict(plan.receiver_modules)
    if any(spec.strings for sig in plan.signatures for spec in sig.receiver.receiver_tensors.values()):
        modules[STRING_MODULE] = string_fingerprint_module()  # clients with only model.pt encode strings with it
    module = torchscript.ServingModule(model, modules, plan.functions)
    examples = {sig.function: plan.trace_inputs[sig.receiver_name] for sig in plan.signatures}
    try:
        traced, warned = torchscript.trace(module, examples)
    except Exception as error:
        raise ValueError(
            f"Tracing model_fn into TorchScript failed: {type(error).__name__}: {_lines(error)}. Export traces "
            f"model_fn as TF built a graph: predictions must be computed with torch operations on the features "
            f"(no .numpy(), .item() or Python containers as outputs)."
        ) from error
    path = os.path.join(temp_dir, torchscript.MODEL_FILE)
    torchscript.save(traced, path, text)
    loaded, embedded = torchscript.load(path, device)
    if embedded != text:
        raise ExportVerificationError(f"{path} does not hold the signature.json written into it.")
    _verify(plan, lambda sig, inputs: getattr(loaded, sig.function)(inputs), torchscript.MODEL_FILE, warned)
    if warned:
        logger.info("Tracing warned%s; the export passed verification anyway: %s",
                    f" {len(warned)} times" if len(warned) > 1 else "", warned[0])


def _export_programs(plan: _Plan, model: torch.nn.Module | None) -> dict[str, torch.export.ExportedProgram]:
    """One ``torch.export`` program per signature, by program name (``model.pt2``'s and ``model.aoti.pt2``'s)."""
    programs = {}
    for sig in plan.signatures:
        try:
            programs[pt2.program_name(sig.function)] = pt2.export_program(
                model, plan.receiver_modules, plan.functions[sig.function],
                sig.receiver.receiver_tensors, plan.trace_inputs[sig.receiver_name],
            )
        except Exception as error:
            raise ValueError(
                f"torch.export could not capture signature {sig.key!r}: {type(error).__name__}: {_lines(error, 2)} "
                f"{TRACING_HINT} Or export with format='torchscript'."
            ) from error
    return programs


def _write_pt2(
    temp_dir: str, plan: _Plan, model: torch.nn.Module | None, text: str, device: torch.device
) -> None:
    programs = _export_programs(plan, model)
    path = os.path.join(temp_dir, pt2.MODEL_FILE)
    pt2.save(programs, path, text)
    loaded, embedded = pt2.load(path)
    if embedded != text:
        raise ExportVerificationError(f"{path} does not hold the signature.json written into it.")
    modules = {name: program.module() for name, program in loaded.items()}
    _verify(plan, lambda sig, inputs: modules[pt2.program_name(sig.function)](inputs), pt2.MODEL_FILE, [])


def _write_aoti(
    temp_dir: str, plan: _Plan, model: torch.nn.Module | None, text: str, device: torch.device
) -> None:
    programs = {aoti.model_name(sig.function): program for sig, program in
                zip(plan.signatures, _export_programs(plan, model).values())}
    path = os.path.join(temp_dir, aoti.MODEL_FILE)
    try:
        seconds = aoti.compile_package(programs, path, text)
    except Exception as error:
        raise ValueError(
            f"AOTInductor could not compile the export: {type(error).__name__}: {_lines(error, 2)}. It needs a "
            f"C++ compiler (g++ or $CXX) and, for CUDA, triton. Or export with format='torchscript'."
        ) from error
    runners, embedded = aoti.load(path, device)
    if embedded != text:
        raise ExportVerificationError(f"{path} does not hold the signature.json written into it.")
    _verify(plan, lambda sig, inputs: runners[sig.function](inputs), aoti.MODEL_FILE, [])
    logger.info("AOTInductor compiled %d signature(s) in %.1f s.", len(programs), seconds)


_WRITERS = {"torchscript": _write_torchscript, "pt2": _write_pt2, "aoti": _write_aoti}


def _lines(error: BaseException, count: int = 1) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()][:count]
    return " ".join(line for line in lines if not line.endswith(":")) or type(error).__name__


# ----------------------------------------------------------------------------------------------------------
# Directories and assets.


def _now() -> int:
    return int(time.time())  # TF: seconds since the epoch


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _claim_export_dir(base: str) -> tuple[str, durable.ExportWriter]:
    """``(<base>/<ts>, the writer holding <base>/temp-<ts>)``; as TF, wait a second on a clash."""
    for attempt in range(MAX_DIRECTORY_CREATION_ATTEMPTS):
        stamp = _now()
        export_dir = os.path.join(base, str(stamp))
        if not os.path.lexists(export_dir):
            writer = durable.ExportWriter.claim(base, stamp)  # a concurrent export of the same second waits
            if writer is not None:
                return export_dir, writer
        if attempt + 1 < MAX_DIRECTORY_CREATION_ATTEMPTS:
            _sleep(1.0)
    raise RuntimeError(
        f"Failed to obtain a unique export directory name under {base} after "
        f"{MAX_DIRECTORY_CREATION_ATTEMPTS} attempts."
    )


def _check_assets(assets_extra: Mapping[str, str] | None) -> dict[str, str]:
    if assets_extra is None:
        return {}
    if not isinstance(assets_extra, Mapping):
        raise ValueError(
            f"`assets_extra` must be a dict of destination (relative to assets.extra/) to source path; "
            f"received {assets_extra!r}."
        )
    checked = {}
    for destination, source in assets_extra.items():
        destination = os.fspath(destination)
        parts = os.path.normpath(destination).split(os.sep)
        if not destination or os.path.isabs(destination) or parts[0] in ("..", "."):
            raise ValueError(
                f"`assets_extra` destination {destination!r} must be a relative path inside assets.extra/."
            )
        if not os.path.exists(os.fspath(source)):
            raise ValueError(f"`assets_extra[{destination!r}]` source {os.fspath(source)!r} does not exist.")
        checked[os.path.normpath(destination)] = os.fspath(source)
    return checked


def _copy_assets(assets: Mapping[str, str], target: str) -> None:
    for destination, source in assets.items():
        path = os.path.join(target, destination)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, path)
        else:
            shutil.copy2(source, path)
