"""``torch-estimator``: inspect and run exports from the command line, in the spirit of ``saved_model_cli``.

Usage::

    torch-estimator show --dir EXPORT                       # the signature keys
    torch-estimator show --dir EXPORT --signature_def KEY   # one signature's inputs and outputs
    torch-estimator show --dir EXPORT --all                 # everything
    torch-estimator run --dir EXPORT [--tag_set serve] [--signature_def KEY] [--outdir DIR [--overwrite]]
                        (--inputs 'x=batch.npy' | --input_exprs 'x=np.ones((2,784))' | --input_examples ...)
    torch-estimator serve --model_base_path DIR --model_name NAME [--port 8501] [--host 127.0.0.1]
                          [--poll_secs 1] [--threads N] [--batching ...]   # see docs/serving.md
    torch-estimator convert-checkpoint --tf_checkpoint TF_MODEL_DIR --output FILE [--model MODULE:CALLABLE]
                                       # a TensorFlow checkpoint -> safetensors; see docs/migration.md

``EXPORT`` is a version directory or a base directory (its highest numeric version). ``show`` and ``run``
verify it as the loader and the server do (sizes and SHA-256 recorded in ``signature.json``, the embedded
copy agreeing, no pickle in ``model.pt2``) and refuse it, naming the file, otherwise. ``run`` takes
``saved_model_cli run``'s flags; its inputs are read by :mod:`torch_estimator.cli_inputs` (files without
pickle, numpy expressions against a whitelist, never ``eval``). Input flags may repeat or separate entries
with ``;``. Errors print one line on stderr and exit with status 1 (2 for bad usage).

Each command is a ``_add_<name>(subparsers)`` function listed in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import cli_inputs
from .cli_convert import add_convert_checkpoint
from .serving import loader

__all__ = ["main", "COMMANDS"]

PROG = "torch-estimator"


class CommandError(Exception):
    """A user error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------------------------------------
# show


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _tensor_lines(kind: str, tensors: dict[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}The given export SignatureDef contains the following {kind}(s):"]
    for name in sorted(tensors):
        info = tensors[name]
        lines += [
            f"{indent}  {kind}s[{name!r}] tensor_info:",
            f"{indent}      dtype: {info['dtype']}",
            f"{indent}      shape: {_shape_text(info['shape'])}",
        ]
    return lines


def _signature_lines(signature: dict[str, Any], indent: str = "") -> list[str]:
    lines = _tensor_lines("input", signature["inputs"], indent) + _tensor_lines("output", signature["outputs"], indent)
    if "class_labels" in signature:
        lines.append(f"{indent}Class labels: {signature['class_labels']}")
    lines.append(f"{indent}Function: {signature['function']}")
    lines.append(f"{indent}Method name is: {signature['method_name']}")
    return lines


def _header(path: str, version: int | None, document: dict[str, Any], format: str | None) -> str:
    names = (loader.TORCHSCRIPT_FILE, loader.PT2_FILE, loader.AOTI_FILE)
    artifacts = [name for name in names if os.path.isfile(os.path.join(path, name))]
    checked = {"torchscript": loader.TORCHSCRIPT_FILE, "pt2": loader.PT2_FILE, "aoti": loader.AOTI_FILE}.get(
        format or "", artifacts[0] if artifacts else "none")
    return (
        f"Export {path} (version {version if version is not None else '-'}, global step "
        f"{document.get('global_step')}, torch {document.get('torch_version')}; artifacts: "
        f"{', '.join(artifacts) or 'none'}; {checked} verified against {loader.SIGNATURE_FILE})"
    )


def _show(args: argparse.Namespace) -> None:
    path, version, document = loader.read_document(args.dir, format=args.format)
    signatures, default = document["signatures"], document["default_signature"]
    if args.signature_def is not None:
        if args.signature_def not in signatures:
            raise CommandError(
                f"Signature {args.signature_def!r} not found in {path}; available: {sorted(signatures)}."
            )
        print("\n".join(_signature_lines(signatures[args.signature_def])))
    elif args.all:
        print(_header(path, version, document, args.format))
        for key in sorted(signatures):
            print(f"\nsignature_def[{key!r}]:")
            print("\n".join(_signature_lines(signatures[key], "  ")))
    else:
        print(f"The given export contains the following signatures (default {default!r}):")
        for key in sorted(signatures):
            print(f'SignatureDef key: "{key}"')


def _add_show(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "show", help="show an export's signatures", description="Show an export's signatures."
    )
    parser.add_argument("--dir", required=True, help="a version directory, or a base directory (its highest version)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every signature with its inputs and outputs")
    which.add_argument("--signature_def", metavar="KEY", help="one signature's inputs and outputs")
    parser.add_argument("--format", choices=loader.FORMATS,
                        help="which artifact to verify (default: model.pt if present, as run and serve load)")
    parser.set_defaults(func=_show)


# ----------------------------------------------------------------------------------------------------------
# run


def _entries(values: Sequence[str] | None, flag: str) -> list[tuple[str, str]]:
    """``name=value`` pairs from repeated flags, each possibly ``;``-separated."""
    pairs = []
    for value in values or ():
        for entry in filter(None, (part.strip() for part in value.split(";"))):
            name, sep, rest = entry.partition("=")
            if not sep or not name.strip() or not rest.strip():
                raise CommandError(f"{flag} entry {entry!r} is malformed; expected name=value.")
            pairs.append((name.strip(), rest.strip()))
    return pairs


def _gather_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, Any]]]]]:
    """The arrays of --inputs and --input_exprs, and the example lists of --input_examples (converted once the
    signature is known), each read and checked before the model is loaded."""
    inputs: dict[str, Any] = {}
    examples: list[tuple[str, list[dict[str, Any]]]] = []
    sources: list[tuple[str, str, Callable[[str, str], np.ndarray]]]
    sources = [(n, v, cli_inputs.read_input_file) for n, v in _entries(args.inputs, "--inputs")]
    sources += [(n, v, cli_inputs.evaluate_expression) for n, v in _entries(args.input_exprs, "--input_exprs")]
    for name, value, read in sources:
        if name in inputs:
            raise CommandError(f"Input {name!r} is given more than once.")
        inputs[name] = read(value, name)
    for name, value in _entries(args.input_examples, "--input_examples"):
        examples.append((name, cli_inputs.parse_examples(value, name)))
    if not inputs and not examples:
        raise CommandError("No inputs: give --inputs name=file.npy, --input_exprs 'name=np.ones((2, 784))' or "
                           "--input_examples 'name=[{\"x\": [1.0]}]'.")
    if examples and (inputs or len(examples) > 1):
        raise CommandError("--input_examples gives every input of the signature: use it alone, once.")
    return inputs, examples


def _check_tag_set(tag_set: str | None) -> None:
    if tag_set is None:
        return
    tags = {tag.strip() for tag in tag_set.split(",") if tag.strip()}
    if tags != {"serve"}:
        raise CommandError(f"--tag_set {tag_set!r} not found: a torch_estimator export has the one tag-set 'serve' "
                           f"(TF's exports for serving), so pass --tag_set serve or leave it out.")


def _run(args: argparse.Namespace) -> None:
    _check_tag_set(args.tag_set)
    inputs, examples = _gather_inputs(args)
    model = loader.load(args.dir, format=args.format)
    if examples:
        name, rows = examples[0]
        inputs = cli_inputs.examples_to_inputs(rows, model.signature_def(args.signature_def)["inputs"], name)
    outputs = model(inputs, args.signature_def)
    arrays = {name: value.cpu().numpy() for name, value in outputs.items()}
    if args.outdir is None:
        for name in sorted(arrays):
            print(f"Result for output key {name}:\n{arrays[name]}")
        return
    os.makedirs(args.outdir, exist_ok=True)
    paths = {name: os.path.join(args.outdir, f"{name}.npy") for name in arrays}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not args.overwrite:
        raise CommandError(f"Output file {existing[0]} already exists; pass --overwrite to replace it.")
    for name in sorted(arrays):
        np.save(paths[name], arrays[name], allow_pickle=False)
        print(f"Output {name} is saved to {paths[name]}")


def _add_run(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run a signature on inputs",
        description="Run a signature on inputs, as saved_model_cli run (its flags are accepted).")
    parser.add_argument("--dir", required=True, help="a version directory, or a base directory (its highest version)")
    parser.add_argument("--tag_set", metavar="serve", help="accepted for saved_model_cli's sake: only 'serve'")
    parser.add_argument("--signature_def", metavar="KEY", help="the signature to run (default: serving_default)")
    parser.add_argument("--inputs", action="append", metavar="NAME=FILE",
                        help="name=file.npy, name=file.npz[key] or name=file.json[key] ([key]: when the file holds "
                             "several); repeat or separate with ';'. Pickle files are refused")
    parser.add_argument("--input_exprs", action="append", metavar="NAME=EXPR",
                        help="name=<expression>, e.g. 'x=np.ones((2,784))', evaluated against a whitelist (never "
                             "eval): " + cli_inputs.ALLOWED.replace("%", "%%") + "; repeat or separate with ';'")
    parser.add_argument("--input_examples", action="append", metavar="NAME=EXAMPLES",
                        help="name=[{feature: [values]}, ...]: examples as :classify takes them, one input per feature")
    parser.add_argument("--outdir", help="save each output as <outdir>/<output key>.npy instead of printing")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --outdir")
    parser.add_argument(
        "--format", choices=loader.FORMATS, help="which artifact (default: model.pt if present)"
    )
    parser.set_defaults(func=_run)


# ----------------------------------------------------------------------------------------------------------
# serve


def _serve(args: argparse.Namespace) -> None:
    import logging

    from .serving import server

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("torch_estimator").setLevel(logging.INFO)
    options = {name: getattr(args, name) for name in (
        "host", "port", "poll_secs", "threads", "batching", "max_batch_size", "max_body_bytes",
        "max_inflight_body_bytes", "num_torch_threads", "max_cached_versions", "max_connections",
        "header_timeout_secs", "idle_timeout_secs", "device", "format")}
    running = server.ModelServer(args.model_base_path, args.model_name, server.ServerConfig(**options)).start()
    name = args.model_name
    print(f"Serving model {name!r} at {running.url} (REST: {running.url}/v1/models/{name}:predict, "
          f"Open Inference Protocol: {running.url}/v2/models/{name}/infer); SIGTERM or Ctrl-C stops it.", flush=True)
    running.serve_until_signal()


SERVE_DESCRIPTION = """\
Serve the highest numeric version under --model_base_path over TF Serving's REST API
(/v1/models/NAME:predict|classify|regress, status, metadata) and the Open Inference Protocol (/v2).
New versions are picked up as they appear.

Trust: an exported model is a program. Calling a signature runs the code stored in model.pt or
model.pt2 (loading model.aoti.pt2 runs its native code), which can do what torch operations can do
(read or write files, use all memory and CPU); nothing sandboxes it. Serve only directories that only
people you trust can write to.

What the server reads: the entries of --model_base_path (numeric directories; temp-* and other names
are ignored), the names, sizes and times of a version directory's entries, and its signature.json and
the one artifact it serves (the first of model.pt, model.pt2, model.aoti.pt2, or --format's). The
artifact is checked against the size and SHA-256 that signature.json records, and its embedded
signature.json must agree with the one beside it; a model.pt2 or model.aoti.pt2 with any member that
would need unpickling is refused. A refused version is not served (its status says why) and the
previous one keeps serving.

What it never does: use Python's pickle (model.pt's data is read by TorchScript's own loader, which
rebuilds only tensors and TorchScript types); write, move or delete anything under --model_base_path;
read assets.extra/; listen beyond loopback unless --host says so.
"""


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve exports over TF Serving's REST API (serve only directories you trust)",
        description=SERVE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model_base_path", required=True, metavar="DIR",
                        help="the directory holding numeric version directories (an exporter's export_dir_base)")
    parser.add_argument("--model_name", required=True, metavar="NAME", help="the model's name in URLs")
    parser.add_argument("--port", "--rest_api_port", type=int, default=8501, help="port (default 8501; 0: any free)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0: all)")
    parser.add_argument("--poll_secs", "--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between looks for new versions (default 1; 0: never)")
    parser.add_argument("--threads", type=int, default=4, help="inferences that may run at once (default 4)")
    parser.add_argument("--batching", "--enable_batching", action="store_true",
                        help="merge small requests that wait at the same time into batches (a lone request "
                             "never waits)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="rows per merged batch (default 32)")
    parser.add_argument("--max_body_bytes", type=int, default=32 * 1024 * 1024,
                        help="larger request bodies get 413 (default 32 MiB)")
    parser.add_argument("--max_inflight_body_bytes", type=int, default=128 * 1024 * 1024,
                        help="request-body bytes decoded at once, all requests together (default 128 MiB)")
    parser.add_argument("--num_torch_threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--max_cached_versions", type=int, default=1,
                        help="older versions kept loaded for /versions/N requests (default 1; 0: latest only)")
    parser.add_argument("--max_connections", type=int, default=1024,
                        help="open connections; beyond it the longest idle one is closed (default 1024)")
    parser.add_argument("--header_timeout_secs", type=float, default=10.0,
                        help="seconds a request line and headers may take once started (default 10; then 408)")
    parser.add_argument("--idle_timeout_secs", type=float, default=30.0,
                        help="seconds an idle connection is kept open (default 30)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    parser.add_argument("--format", choices=loader.FORMATS, help="which artifact (default: model.pt if present)")
    parser.set_defaults(func=_serve)


# ----------------------------------------------------------------------------------------------------------
# main

COMMANDS: list[Callable[[Any], None]] = [_add_show, _add_run, _add_serve, add_convert_checkpoint]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect and run torch_estimator exports.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 error, 2 bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse prints usage and its error (status 2), or help (status 0)
        return int(exit_.code or 0)
    try:
        args.func(args)
    except (CommandError, FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if isinstance(error, RuntimeError) and lines:  # a TorchScript error: its traceback, then the message
            lines = [re.sub(r"^\w+(Error|Exception): ", "", lines[-1])]
        message = " ".join(lines) or type(error).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
