"""The AOTInductor artifact, ``model.aoti.pt2``: export, its package, loading (library, plain torch, the CLI
and the server), and the refusals: another torch, another device kind, another CPU, pickled members.

Compiling takes tens of seconds per signature, so one module-scoped export (two signatures) serves every
test here; the refusal tests rewrite copies of its package.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_estimator import cli, export
from torch_estimator.export import aoti
from torch_estimator.serving import loader

from .export_support import LABELS, data, make_model_fn, predict, raw_receiver_fn, train_estimator

ROOT = Path(__file__).resolve().parents[1]


def _outputs(p, logits):
    return {
        "serving_default": export.PredictOutput(p),
        "classify": export.ClassificationOutput(p["probabilities"], p["classes"], labels=LABELS),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aoti")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    return est, est.export_saved_model(tmp / "exports", raw_receiver_fn(), format="aoti")


def _signature(path) -> dict:
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        return json.load(file)


def _members(path) -> list[str]:
    with zipfile.ZipFile(os.path.join(path, aoti.MODEL_FILE)) as archive:
        return [name.split("/", 1)[1] for name in archive.namelist()]


def _copy_with(path, tmp_path, replace=None, add=None) -> str:
    """A copy of the export whose package has members replaced (``{suffix: bytes or bytes -> bytes}``) or added."""
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    source, package = os.path.join(path, aoti.MODEL_FILE), target / aoti.MODEL_FILE
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(package, "w") as new:
        prefix = old.namelist()[0].split("/", 1)[0] + "/"
        for name in old.namelist():
            data_ = old.read(name)
            for suffix, content in (replace or {}).items():
                if name.endswith(suffix):
                    data_ = content(data_) if callable(content) else content
            new.writestr(name, data_)
        for member, content in (add or {}).items():
            new.writestr(prefix + member, content)
    _refit_signature(target, package)
    return str(target)


def _refit_signature(directory, package) -> None:
    """What a forger who controls the directory does: signature.json beside the package made to agree with the
    package's embedded copy and its new hash, so that the loader's own checks of the package are reached."""
    with zipfile.ZipFile(package) as archive:
        embedded = [n for n in archive.namelist() if n.endswith("extra/signature.json")]
        document = json.loads(archive.read(embedded[0])) if embedded else _signature(directory)
    document["files"] = {aoti.MODEL_FILE: loader.file_record(Path(package).read_bytes())}
    Path(directory, "signature.json").write_text(json.dumps(document))


def _rewritten_signature(path, tmp_path, **changes) -> str:
    document = {key: value for key, value in {**_signature(path), **changes}.items() if key != "files"}
    return _copy_with(path, tmp_path, replace={"extra/signature.json": json.dumps(document).encode()})


# ----------------------------------------------------------------------------------------------------------
# The export


def test_export_writes_the_package_and_signature(exported):
    _, path = exported
    assert sorted(os.listdir(path)) == ["model.aoti.pt2", "signature.json"]
    document = _signature(path)
    assert document["torch_version"] == torch.__version__ and document["device"] == "cpu"
    assert sorted(document["signatures"]) == ["classify", "serving_default"]


def test_the_package_holds_one_compiled_model_per_signature_and_the_signature(exported):
    _, path = exported
    members = _members(path)
    models = {m.split("/")[2] for m in members if m.startswith("data/aotinductor/")}
    assert models == {"model", "classify"}  # "model": the default, what aoti_load_package loads
    assert all(any(m.startswith(f"data/aotinductor/{name}/") and m.endswith(".so") for m in members) for name in models)
    with zipfile.ZipFile(os.path.join(path, aoti.MODEL_FILE)) as archive:
        embedded = archive.read(next(n for n in archive.namelist() if n.endswith("extra/signature.json")))
    beside = _signature(path)
    assert beside.pop("files") == {aoti.MODEL_FILE: loader.file_record(Path(path, aoti.MODEL_FILE).read_bytes())}
    assert json.loads(embedded) == beside  # the embedded copy is signature.json less its file records


def test_the_package_has_no_pickled_member(exported):
    _, path = exported
    members = _members(path)
    assert not [m for m in members if m.startswith(("models/", "data/weights/", "data/constants/", "data/sample"))]
    with zipfile.ZipFile(os.path.join(path, aoti.MODEL_FILE)) as archive:
        for name in archive.namelist():
            head = archive.read(name)[:2]
            assert not (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{name} is a pickle"


# ----------------------------------------------------------------------------------------------------------
# Loading


def test_loader_runs_every_signature_like_estimator_predict_at_any_batch_size(exported):
    est, path = exported
    model = loader.load(path)
    assert model.format == "aoti"
    for n in (1, 2, 7, 64):
        x, _ = data(n, seed=n)
        expected = predict(est, x)
        outputs = model({"x": x})
        np.testing.assert_array_equal(outputs["classes"].numpy(), expected["classes"])
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected["probabilities"], rtol=1e-5, atol=1e-6)
        classify = model({"x": x}, "classify")
        np.testing.assert_allclose(classify["scores"].numpy(), expected["probabilities"], rtol=1e-5, atol=1e-6)


def test_plain_torch_loads_the_default_signature(exported):
    est, path = exported
    x, _ = data(3, seed=5)
    compiled = torch._inductor.aoti_load_package(os.path.join(path, aoti.MODEL_FILE))
    outputs = compiled({"x": torch.from_numpy(x)})
    np.testing.assert_allclose(outputs["probabilities"].numpy(), predict(est, x)["probabilities"], rtol=1e-5, atol=1e-6)


def test_run_and_show_use_the_package(exported, capsys):
    _, path = exported
    assert cli.main(["show", "--dir", path, "--all"]) == 0
    assert "artifacts: model.aoti.pt2" in capsys.readouterr().out
    assert cli.main(["run", "--dir", path, "--format", "aoti", "--signature_def", "classify",
                     "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]"]) == 0
    assert "Result for output key scores" in capsys.readouterr().out


def test_serve_answers_from_the_package(exported):
    est, path = exported
    base = os.path.dirname(path)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch_estimator.cli", "serve", "--model_base_path", base, "--model_name", "m",
         "--port", "0", "--poll_secs", "0", "--format", "aoti"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"http://[\w.]+:(\d+)", line)
        assert found, process.stderr.read() if process.poll() is not None else line
        x, _ = data(2, seed=8)
        request = urllib.request.Request(
            f"http://127.0.0.1:{found.group(1)}/v1/models/m:predict", json.dumps({"instances": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        expected = predict(est, x)
        assert [p["classes"] for p in predictions] == expected["classes"].tolist()
        np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-5, atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()
        process.stderr.close()


def test_default_format_prefers_torchscript_when_both_are_there(exported, tmp_path):
    est, path = exported
    both = est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    shutil.copy(os.path.join(path, aoti.MODEL_FILE), both)  # the same model, so the same signature.json
    assert loader.load(both).format == "torchscript"
    with pytest.raises(loader.ExportIntegrityError, match=r"records no content hash for model.aoti.pt2"):
        loader.load(both, format="aoti")  # copied in: signature.json does not vouch for it
    document = _signature(both)
    document["files"][aoti.MODEL_FILE] = _signature(path)["files"][aoti.MODEL_FILE]
    Path(both, "signature.json").write_text(json.dumps(document))
    assert loader.load(both, format="aoti").format == "aoti"


# ----------------------------------------------------------------------------------------------------------
# Refusals: each before any compiled code is loaded


def test_another_torch_release_is_refused(exported, tmp_path):
    _, path = exported
    copy = _rewritten_signature(path, tmp_path, torch_version="2.0.0+cu118")
    with pytest.raises(loader.IncompatibleArtifactError, match=r"compiled by torch 2\.0\.0 but this is torch"):
        loader.load(copy, format="aoti")


def test_another_device_kind_is_refused(exported, tmp_path):
    _, path = exported
    with pytest.raises(loader.IncompatibleArtifactError, match=r"compiled for cpu but device='cuda' was requested"):
        loader.load(path, device="cuda")
    copy = _rewritten_signature(path, tmp_path, device="cuda")
    with pytest.raises(loader.IncompatibleArtifactError, match=r"compiled for cuda but device='cpu'"):
        loader.load(copy)


def test_a_cpu_without_the_compiled_vector_instructions_is_refused(exported, monkeypatch):
    _, path = exported
    monkeypatch.setattr(loader, "_cpu_flags", lambda: {"sse2"})  # as if on an older CPU
    with pytest.raises(loader.IncompatibleArtifactError, match=r"vector instructions, which this machine lacks"):
        loader.load(path)


def test_another_machine_architecture_is_refused(exported, tmp_path):
    _, path = exported

    def elsewhere(text: bytes) -> bytes:
        return json.dumps({**json.loads(text), "AOTI_MACHINE": "riscv64"}).encode()

    copy = _copy_with(path, tmp_path, replace={"_metadata.json": elsewhere})  # what the compiler recorded
    with pytest.raises(loader.IncompatibleArtifactError, match=r"compiled for a riscv64 CPU but this machine is"):
        loader.load(copy)


class _Trap:
    """Unpickling this creates a file: proof that a member was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("member", ["data/weights/weight_0", "data/constants/custom_obj_0", "models/model.json"])
def test_a_package_with_a_pickled_member_is_refused_unopened(exported, tmp_path, member):
    _, path = exported
    trap = tmp_path / "unpickled"
    copy = _copy_with(path, tmp_path, add={member: pickle.dumps(_Trap(str(trap)))})
    with pytest.raises(ValueError, match=rf"holds '{member}'.*pickle"):
        loader.load(copy)
    assert not trap.exists()


def test_a_package_without_signature_is_refused(exported, tmp_path):
    _, path = exported
    copy = tmp_path / "bare"
    os.mkdir(copy)
    with zipfile.ZipFile(os.path.join(path, aoti.MODEL_FILE)) as old, zipfile.ZipFile(copy / aoti.MODEL_FILE, "w") as new:
        for name in old.namelist():
            if not name.endswith("extra/signature.json"):
                new.writestr(name, old.read(name))
    shutil.copy(os.path.join(path, "signature.json"), copy / "signature.json")
    _refit_signature(copy, copy / aoti.MODEL_FILE)
    with pytest.raises(ValueError, match=r"model.aoti.pt2 does not embed exactly one signature.json"):
        loader.load(copy)


# ----------------------------------------------------------------------------------------------------------
# Compile failures


def test_a_compile_failure_names_the_fix_and_leaves_no_directory(tmp_path, monkeypatch):
    est = train_estimator(tmp_path / "model")
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("no-such-compiler-g++",))
    with pytest.raises(ValueError, match=r"AOTInductor could not compile the export: .*C\+\+ compiler"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="aoti")
    assert not os.path.exists(tmp_path / "exports") or os.listdir(tmp_path / "exports") == []
