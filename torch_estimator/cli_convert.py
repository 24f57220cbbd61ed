"""``torch-estimator convert-checkpoint``: a TensorFlow checkpoint -> a torch_estimator (safetensors) checkpoint.

Usage::

    torch-estimator convert-checkpoint --tf_checkpoint TF_MODEL_DIR_OR_PREFIX --output FILE.safetensors
        [--model MODULE:CALLABLE | --model path/to/file.py:CALLABLE]   # the torch model to map onto
        [--map MODEL_NAME=TF_NAME ...] [--rename 'TF_REGEX=MODEL_NAME_REPLACEMENT' ...]
        [--no_nhwc_flatten] [--overwrite]

With ``--model`` (a callable taking no arguments that returns an ``nn.Module`` or an Estimator, whose
``model`` is used), TF variables are matched and converted as :mod:`torch_estimator.tf_convert` describes and
the output is a torch_estimator checkpoint of the matched tensors (``warm_start_from=FILE`` reads it); every
match is printed, then the TF variables left unmatched and the model tensors left unfilled. Without
``--model``, every readable TF variable is written under its TF name, in TF's layout, for inspection. The TF
files are only read; the output is written atomically and an existing one is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
from typing import Any

import torch

from . import checkpoint
from .checkpoint.renames import check_rules
from .tf_checkpoint import TFCheckpoint
from .tf_convert import is_optimizer_variable, map_tf_variables

__all__ = ["add_convert_checkpoint", "load_model"]


class _Tensors:
    """What ``write_checkpoint`` needs of a model: a ``state_dict``, here only the converted tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._tensors)


def load_model(spec: str) -> torch.nn.Module:
    """``module:callable`` or ``path/to/file.py:callable`` -> the ``nn.Module`` it returns (an Estimator's model).

    Raises:
        ValueError: If the spec is malformed, cannot be imported, or does not give a module.
    """
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ValueError(f"--model {spec!r} must be MODULE:CALLABLE or path/to/file.py:CALLABLE.")
    try:
        if where.endswith(".py"):
            if not os.path.isfile(where):
                raise ValueError(f"--model: {where} does not exist.")
            module_spec = importlib.util.spec_from_file_location(f"_te_convert_{abs(hash(where))}", where)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            sys.modules[module_spec.name] = module  # type: ignore[union-attr]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except ImportError as error:
        raise ValueError(f"--model: cannot import {where!r}: {error}.") from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--model: {where!r} has no callable {name!r}.")
    made = factory()
    model = getattr(made, "model", made)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model: {spec} returned {type(made).__name__}, not an nn.Module or an Estimator.")
    return model


def _pairs(entries: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for entry in entries or []:
        left, sep, right = entry.partition("=")
        if not sep or not left or not right:
            raise ValueError(f"{flag} entry {entry!r} is malformed; expected LEFT=RIGHT.")
        pairs.append((left, right))
    return pairs


def _convert(args: argparse.Namespace) -> None:
    output = args.output
    if os.path.exists(output) and not args.overwrite:
        raise ValueError(f"Output file {output} already exists; pass --overwrite to replace it.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise ValueError(f"--output: directory {os.path.dirname(os.path.abspath(output))} does not exist.")
    reader = TFCheckpoint(args.tf_checkpoint)
    values, unreadable = reader.read_all()
    step = int(values["global_step"]) if "global_step" in values and values["global_step"].size == 1 else 0
    print(f"Read {len(values)} variables from TF checkpoint {reader.prefix} (global step {step}).")
    for name, reason in unreadable.items():
        print(f"  not read ({reason}): {name}")
    if args.model is None:
        from safetensors.numpy import save_file

        kept = {name: value for name, value in values.items() if not is_optimizer_variable(name)}
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=os.path.dirname(os.path.abspath(output)))
        os.close(handle)
        try:
            save_file(kept, temporary, metadata={"source": reader.prefix})
            os.replace(temporary, output)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        for name, value in kept.items():
            print(f"  {name} {list(value.shape)} {value.dtype}")
        print(f"Wrote {len(kept)} TF variables (TF names and layouts; optimizer state left out) to {output}.")
        return
    model = load_model(args.model)
    mapped = map_tf_variables(values, model, var_name_to_prev_var_name=dict(_pairs(args.map, "--map")),
                              rename=check_rules(_pairs(args.rename, "--rename"), "--rename"), nhwc_flatten=not args.no_nhwc_flatten,
                              unreadable=unreadable, where="--rename", map_flag="--map")
    if mapped.problems:
        raise ValueError("shapes differ: " + "; ".join(mapped.problems) + "; nothing was written.")
    if not mapped.tensors:
        raise ValueError(f"no TF variable matches a model tensor; give --map or --rename. TF: "
                         f"{sorted(n for n in values if not is_optimizer_variable(n))}; model: {sorted(model.state_dict())}.")
    for name in sorted(mapped.tensors):
        print(f"  {name} {list(mapped.tensors[name].shape)} <- {mapped.sources[name]} {list(values[mapped.sources[name]].shape)}")
    checkpoint.write_checkpoint(output, step, {"model": _Tensors(mapped.tensors)})
    print(f"Wrote {len(mapped.tensors)} tensors to {output} (warm_start_from={output!r} reads it).")
    print(f"Unmatched TF variables ({len(mapped.unmatched)}): {', '.join(mapped.unmatched) or 'none'}")
    print(f"Model tensors without a TF variable ({len(mapped.missing)}): {', '.join(mapped.missing) or 'none'}")
    print(f"Optimizer state and global_step left out: {len(mapped.ignored)} variables.")


def add_convert_checkpoint(subparsers: Any) -> None:
    """Register the ``convert-checkpoint`` subcommand."""
    parser = subparsers.add_parser(
        "convert-checkpoint", help="convert a TensorFlow checkpoint to a torch_estimator checkpoint",
        description="Read a TensorFlow checkpoint (a model_dir or a prefix) without TensorFlow and write a "
                    "safetensors checkpoint; with --model, mapped onto that model's parameter names and layouts.",
    )
    parser.add_argument("--tf_checkpoint", required=True, metavar="PATH", help="a TF model_dir or checkpoint prefix")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .safetensors file to write")
    parser.add_argument("--model", metavar="MODULE:CALLABLE",
                        help="a callable returning the torch model (or an Estimator); e.g. examples/mnist.py:CNN")
    parser.add_argument("--map", action="append", metavar="MODEL_NAME=TF_NAME", help="an explicit match (repeatable)")
    parser.add_argument("--rename", action="append", metavar="TF_REGEX=REPLACEMENT",
                        help="TF names matching the regex become re.sub's replacement (repeatable)")
    parser.add_argument("--no_nhwc_flatten", action="store_true",
                        help="keep the first dense kernel after a conv in TF's row order")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.set_defaults(func=_convert)
