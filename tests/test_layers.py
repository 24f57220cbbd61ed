"""The package's layering (DESIGN.md, "Layout"): imports only go down.

Layer 1: spec, run_config, distribute, lock, _checks, protocols, grads, serving/loader — import only each other;
serving/loader imports nothing from the package at all (it must load exports where the package is not installed).
Layer 2: inputs, prefetch, inputs_pandas, hooks, checkpoint, metrics, summary, export, serving (the rest of it),
the TFRecord readers and TF converters — import layer 1 and each other.
Layer 3: estimator, training, cli, canned (the canned estimators) — import anything below (and each other);
canned.heads, canned.multi_head, canned.feature_columns, canned.encoding, canned.optimizers and
canned.parse_spec are layer 2.
``torch_estimator/__init__.py`` may import anything. Every import counts, including ones inside functions
and under ``if TYPE_CHECKING:``: a lower layer must not know a higher one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch_estimator

PACKAGE = "torch_estimator"
PACKAGE_DIR = Path(torch_estimator.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# Module (dotted, relative to the package) -> layer. A package entry covers its submodules ("export" covers
# "export.signature"); a more specific entry wins ("serving.loader").
LAYERS: dict[str, int] = {
    "spec": 1,
    "run_config": 1,
    "distribute": 1,
    "serving.loader": 1,
    "_host": 1,  # tensors brought to the host as numpy, for hooks and evaluation results
    "_checks": 1,  # what error messages say about a received value; the check of a dict of named values
    "protocols": 1,  # the shapes of hooks, saving listeners, exporters and stateful parts
    "grads": 1,  # optimizer.zero_grad()'s effect without its per-call wrapping
    # serving/'s REST server (layer 2): only the loader, torch, numpy and the standard library below it.
    "serving": 2,  # the package itself imports none of its modules
    "serving.rest": 2,
    "serving.versions": 2,
    "serving.batching": 2,
    "serving.server": 2,
    "serving.app": 2,
    "serving.transport": 2,
    "inputs": 2,
    "prefetch": 2,
    "inputs_pandas": 2,
    "inputs_tfrecord": 2,
    "tfrecord": 2,
    "tf_example": 2,
    "example_layout": 2,
    "row_shuffle": 2,
    "example_cache": 2,
    "crc_runs": 2,
    "tf_checkpoint": 2,
    "tf_convert": 2,
    "hooks": 2,
    "nan_tracking": 2,  # the NaN policy of a train() call (NanTensorHook configures it)
    # checkpoint/: one job per module (see its __init__); they import each other and layers 1-2.
    "checkpoint": 2,
    "checkpoint.encoding": 2,
    "checkpoint.hashing": 2,
    "checkpoint.files": 2,
    "checkpoint.format": 2,
    "checkpoint.finite": 2,
    "checkpoint.index": 2,
    "checkpoint.restore": 2,
    "checkpoint.manager": 2,
    "checkpoint.saver": 2,
    "checkpoint.warm_start": 2,
    "checkpoint.parts": 2,
    "checkpoint.renames": 2,
    "lock": 1,
    "metrics": 2,
    "summary": 2,
    "export": 2,
    "export.aoti": 2,  # model.aoti.pt2: compiles with torch's AOTInductor, loads with serving.loader's checks
    "exporters": 2,
    "early_stopping": 2,
    "estimator": 3,
    "training": 3,
    "cli": 3,
    "cli_convert": 3,
    "cli_inputs": 3,
    # canned/: heads, feature columns and optimizers serve any model_fn (layer 2); the canned estimators
    # build Estimators (layer 3).
    "canned": 3,
    "canned.heads": 2,
    "canned.multi_head": 2,
    "canned.feature_columns": 2,
    "canned.encoding": 2,  # strings to fingerprints on the host, data checks on the device
    "canned.optimizers": 2,
    "canned.parse_spec": 2,
}
ROOT = ""  # torch_estimator/__init__.py


def discover_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name (relative to the package; ROOT for the package's __init__) -> file."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int | None:
    """The layer of a module: its own entry, else its nearest package's; None if the table lacks it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def _package_parts(module: str, is_package: bool) -> list[str]:
    parts = module.split(".") if module else []
    return parts if is_package else parts[:-1]


def imported_modules(module: str, source: str, known: set[str], is_package: bool = False) -> list[tuple[int, str]]:
    """(line, target) for every import of a package module in ``source``; target ROOT is the package itself."""
    targets = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    targets.append((node.lineno, alias.name[len(PACKAGE) + 1 :]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_parts(module, is_package)
                if node.level - 1 > len(base):
                    targets.append((node.lineno, "<outside the package>"))
                    continue
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base = base + node.module.split(".")
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module.split(".")[1:]
            else:
                continue
            parent = ".".join(base)
            for alias in node.names:
                child = f"{parent}.{alias.name}" if parent else alias.name
                targets.append((node.lineno, child if child in known else parent))
    return targets


def layer_violations(module: str, source: str, known: set[str], is_package: bool = False) -> list[str]:
    """Human-readable violations of the layering by ``module`` (empty when it only imports down)."""
    if module == ROOT:
        return []
    layer = layer_of(module)
    if layer is None:
        return [f"{module} is not in the LAYERS table of tests/test_layers.py; add it there (and to DESIGN.md)"]
    problems = []
    for line, target in imported_modules(module, source, known, is_package):
        where = f"{module} (layer {layer}) line {line}"
        if target == ROOT:
            problems.append(f"{where} imports the package root {PACKAGE}, which imports every layer")
        elif module.startswith("serving.loader"):
            problems.append(f"{where} imports {target}; the serving loader imports nothing from {PACKAGE}")
        elif layer_of(target) is None:
            problems.append(f"{where} imports {target}, which is not in the LAYERS table of tests/test_layers.py")
        elif layer_of(target) > layer:
            problems.append(f"{where} imports {target} (layer {layer_of(target)}); a layer never imports a higher one")
    return problems


MODULES = discover_modules()
KNOWN = set(MODULES)


def _check(module: str) -> list[str]:
    path = MODULES[module]
    return layer_violations(module, path.read_text(encoding="utf-8"), KNOWN, is_package=path.name == "__init__.py")


# ---------------------------------------------------------------------------
# The package itself
# ---------------------------------------------------------------------------


def test_the_package_has_modules():
    assert {"spec", "run_config", "hooks", "estimator"} <= KNOWN


@pytest.mark.parametrize("module", sorted(KNOWN - {ROOT}))
def test_module_is_in_the_layer_table(module):
    assert layer_of(module) is not None, (
        f"torch_estimator/{MODULES[module].relative_to(PACKAGE_DIR)} is not in the layer table: add "
        f"{module!r} to LAYERS in tests/test_layers.py (and to DESIGN.md's layout)."
    )


@pytest.mark.parametrize("module", sorted(KNOWN - {ROOT}))
def test_module_imports_only_lower_layers(module):
    assert _check(module) == []


def test_serving_loader_imports_only_torch_and_the_standard_library():
    if "serving.loader" not in MODULES:
        pytest.skip("torch_estimator/serving/loader.py does not exist yet")
    tree = ast.parse(MODULES["serving.loader"].read_text(encoding="utf-8"))
    allowed = set(sys.stdlib_module_names) | {"torch"}
    top_level = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert sorted(top_level - allowed) == []


def test_the_serving_package_imports_nothing():
    tree = ast.parse(MODULES["serving"].read_text(encoding="utf-8"))
    imports = [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports == [], "torch_estimator/serving/__init__.py imports something; loading the loader would load it too"


def test_import_does_not_load_tensorboard():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", "import torch_estimator, sys; print('tensorboard' in sys.modules)"],
        capture_output=True, text=True, env=env, cwd=str(REPO_ROOT), timeout=120, check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


# ---------------------------------------------------------------------------
# The checker (so that a broken checker cannot pass silently)
# ---------------------------------------------------------------------------

FAKE = {"", "spec", "hooks", "metrics", "estimator", "export", "export.signature", "serving", "serving.loader", "run_config", "distribute"}


def test_checker_allows_a_lower_layer():
    assert layer_violations("hooks", "from .spec import ModeKeys\n", FAKE) == []


def test_checker_allows_the_same_layer_in_layer_2():
    assert layer_violations("hooks", "from .metrics import accuracy\n", FAKE) == []


def test_checker_allows_the_same_layer_in_layer_3():
    assert layer_violations("training", "from .estimator import Estimator\n", FAKE) == []


def test_checker_allows_third_party_imports():
    assert layer_violations("spec", "import torch\nfrom collections import abc\n", FAKE) == []


def test_checker_allows_anything_in_the_root_init():
    assert layer_violations(ROOT, "from .estimator import Estimator\n", FAKE, is_package=True) == []


def test_checker_flags_a_higher_layer():
    assert layer_violations("hooks", "from .estimator import Estimator\n", FAKE) == [
        "hooks (layer 2) line 1 imports estimator (layer 3); a layer never imports a higher one"
    ]


def test_checker_flags_a_submodule_imported_by_name():
    assert layer_violations("metrics", "from . import estimator\n", FAKE) == [
        "metrics (layer 2) line 1 imports estimator (layer 3); a layer never imports a higher one"
    ]


def test_checker_flags_an_absolute_import():
    assert len(layer_violations("hooks", "import torch_estimator.estimator\n", FAKE)) == 1


def test_checker_flags_an_import_inside_a_function():
    source = "def f():\n    from torch_estimator.estimator import Estimator\n"
    assert layer_violations("hooks", source, FAKE) == [
        "hooks (layer 2) line 2 imports estimator (layer 3); a layer never imports a higher one"
    ]


def test_checker_flags_the_package_root():
    assert layer_violations("hooks", "from torch_estimator import Estimator\n", FAKE) == [
        "hooks (layer 2) line 1 imports the package root torch_estimator, which imports every layer"
    ]


def test_checker_flags_the_package_root_through_a_relative_import():
    assert len(layer_violations("hooks", "from . import Estimator\n", FAKE)) == 1


def test_checker_flags_a_higher_import_from_layer_1():
    assert layer_violations("spec", "from .metrics import is_metric\n", FAKE) == [
        "spec (layer 1) line 1 imports metrics (layer 2); a layer never imports a higher one"
    ]


def test_checker_allows_the_same_layer_in_layer_1():
    assert layer_violations("run_config", "from .distribute import context_from_env\n", FAKE) == []


def test_checker_flags_a_layer_1_module_in_a_subpackage():
    assert len(layer_violations("serving.loader", "from ..spec import ModeKeys\n", FAKE)) == 1


def test_checker_resolves_relative_imports_inside_a_subpackage():
    assert layer_violations("export.signature", "from ..estimator import Estimator\n", FAKE) == [
        "export.signature (layer 2) line 1 imports estimator (layer 3); a layer never imports a higher one"
    ]


def test_checker_resolves_a_subpackage_init():
    assert layer_violations("export", "from .signature import x\nfrom ..spec import ModeKeys\n", FAKE, is_package=True) == []


def test_checker_flags_an_unlisted_target():
    assert layer_violations("estimator", "from .plugins import registry\n", FAKE) == [
        "estimator (layer 3) line 1 imports plugins, which is not in the LAYERS table of tests/test_layers.py"
    ]


def test_subpackage_modules_take_their_package_layer():
    assert layer_of("export.torchscript") == 2


def test_checker_flags_a_module_missing_from_the_table():
    assert layer_violations("plugins.unlisted", "import json\n", FAKE) == [
        "plugins.unlisted is not in the LAYERS table of tests/test_layers.py; add it there (and to DESIGN.md)"
    ]


def test_a_specific_entry_wins_over_its_package():
    assert (layer_of("serving.loader"), layer_of("serving.server")) == (1, 2)


def test_discovery_names_modules_and_packages(tmp_path):
    (tmp_path / "export").mkdir()
    for name in ("__init__.py", "spec.py", "export/__init__.py", "export/signature.py"):
        (tmp_path / name).write_text("")
    assert set(discover_modules(tmp_path)) == {ROOT, "spec", "export", "export.signature"}
