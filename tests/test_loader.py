"""serving/loader.py: finding the version, loading either artifact, and checking inputs against the
signature (names, safe dtype casts, shapes) with errors that name the input."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_estimator import export
from torch_estimator.serving import loader
from torch_estimator.serving.loader import ExportIntegrityError, InvalidInputError, UnsafeArchiveError

from .export_support import LABELS, NUM_FEATURES, data, make_model_fn, predict, raw_receiver_fn, train_estimator


def _outputs(p, logits):
    return {
        "serving_default": export.PredictOutput(p),
        "classify": export.ClassificationOutput(p["probabilities"], labels=LABELS),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(estimator, base directory, export directory) with model.pt and model.pt2."""
    tmp = tmp_path_factory.mktemp("loader")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    return est, str(tmp / "exports"), est.export_saved_model(tmp / "exports", raw_receiver_fn(), format="all")


@pytest.fixture(scope="module")
def model(exported):
    return loader.load(exported[2])


def _versions_dir(tmp_path, exported, names):
    for name in names:
        shutil.copytree(exported[2], tmp_path / name)
    return tmp_path


# Finding the export


def test_a_base_directory_loads_its_highest_version(tmp_path, exported):
    base = _versions_dir(tmp_path, exported, ["7", "12", "9"])
    assert loader.load(base).version == 12


def test_non_numeric_directories_are_ignored(tmp_path, exported):
    base = _versions_dir(tmp_path, exported, ["3", "temp-99", "latest"])
    assert loader.load(base).version == 3


def test_list_versions_sorts_numerically(tmp_path, exported):
    base = _versions_dir(tmp_path, exported, ["10", "9", "temp-11"])
    assert loader.list_versions(base) == [9, 10]


def test_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No export at .*nowhere.*no such directory"):
        loader.load(tmp_path / "nowhere")


def test_a_directory_without_exports_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No export found in .*numeric version directories"):
        loader.load(tmp_path)


def test_a_foreign_signature_is_rejected(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    text = (tmp_path / "1" / "signature.json").read_text().replace("torch_estimator.export/1", "other/9")
    (tmp_path / "1" / "signature.json").write_text(text)
    with pytest.raises(ValueError, match="is not a torch_estimator export signature .*'other/9'"):
        loader.read_document(tmp_path)


def test_an_unknown_format_is_an_error(exported):
    with pytest.raises(ValueError, match="`format` must be 'torchscript', 'pt2', 'aoti' or None; received 'onnx'"):
        loader.load(exported[2], format="onnx")


def test_a_missing_artifact_is_an_error(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    os.remove(tmp_path / "1" / "model.pt2")
    with pytest.raises(FileNotFoundError, match="No model.pt2 in"):
        loader.load(tmp_path / "1", format="pt2")


def test_a_missing_signature_json_is_refused(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    os.remove(tmp_path / "1" / "signature.json")
    for call in (loader.read_document, loader.load):
        with pytest.raises(ExportIntegrityError, match=r"No signature.json beside the model in .*1'.*cannot be verified"):
            call(tmp_path)


# Trust: content hashes, the embedded signature, and model.pt2 without pickle


class _Marker:
    """Unpickling this creates a file: the proof that a load ran a pickle."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))  # creates the file and leaves no handle open


def _members(archive) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zipped:
        return {info.filename: zipped.read(info) for info in zipped.infolist()}


def _rewrite(archive, change) -> None:
    """Rewrite a zip archive with ``change(members)`` applied (relative names: without the root folder)."""
    members = _members(archive)
    root = next(iter(members)).split("/", 1)[0]
    relative = {name.split("/", 1)[1]: data for name, data in members.items()}
    change(relative)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for name, data in relative.items():
            zipped.writestr(f"{root}/{name}", data)


def _rehash(version_dir) -> None:
    """What a forger who controls the directory does: make signature.json's hashes fit the files again."""
    path = os.path.join(version_dir, "signature.json")
    document = json.loads(Path(path).read_text())
    for name in document["files"]:
        document["files"][name] = loader.file_record(Path(os.path.join(version_dir, name)).read_bytes())
    with open(path, "w") as file:
        json.dump(document, file)


def _forged(tmp_path, exported, change):
    version = tmp_path / "1"
    shutil.copytree(exported[2], version)
    _rewrite(version / "model.pt2", change)
    _rehash(version)
    return version


def test_signature_json_records_each_file(exported):
    document = json.loads(Path(os.path.join(exported[2], "signature.json")).read_text())
    assert sorted(document["files"]) == ["model.pt", "model.pt2"]
    for name, record in document["files"].items():
        assert record == loader.file_record(Path(os.path.join(exported[2], name)).read_bytes())


def test_model_pt2_holds_no_member_that_unpickles(exported):
    members = _members(os.path.join(exported[2], "model.pt2"))
    samples = [name for name in members if "/data/sample_inputs/" in name]
    assert samples and all(members[name] == b"" for name in samples)
    assert not [name for name in members if name.endswith(".pkl") or "custom_obj" in name or "opaque_obj" in name]
    loader.check_pt2_archive(Path(os.path.join(exported[2], "model.pt2")).read_bytes(), "model.pt2")


def _torch_runs_it(tmp_path, exported, change, control) -> bool:
    """Whether torch's own pt2 loader runs what ``change`` plants (the attack is real, not hypothetical)."""
    from torch.export.pt2_archive._package import load_pt2

    shutil.copy(os.path.join(exported[2], "model.pt2"), tmp_path / "control.pt2")
    _rewrite(tmp_path / "control.pt2", change)
    with contextlib.suppress(Exception):
        load_pt2(str(tmp_path / "control.pt2")).exported_programs["model"].module()
    return control.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's, reading the planted pickle
def test_forged_sample_inputs_run_in_torch_but_are_refused_here(tmp_path, exported):
    control, marker = tmp_path / "torch-ran-it", tmp_path / "pwned"
    plant = lambda path: lambda m: m.update({"data/sample_inputs/model.pt": pickle.dumps(_Marker(path))})  # noqa: E731
    assert _torch_runs_it(tmp_path, exported, plant(control), control)
    version = _forged(tmp_path, exported, plant(marker))
    for call in (lambda: loader.load(version, format="pt2"), lambda: loader.read_document(version, format="pt2")):
        with pytest.raises(UnsafeArchiveError, match=r"model.pt2 holds sample inputs for program 'model' .*unpickle"):
            call()
    assert not marker.exists()


def test_a_weight_stored_with_pickle_is_refused(tmp_path, exported):
    marker = tmp_path / "pwned"

    def change(members):
        config = json.loads(members["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        members[f"data/weights/{entry['path_name']}"] = pickle.dumps(_Marker(marker))

    version = _forged(tmp_path, exported, change)
    with pytest.raises(UnsafeArchiveError, match=r"weight '.*' of program 'model' is stored with pickle"):
        loader.load(version, format="pt2")
    assert not marker.exists()


@pytest.mark.parametrize("member", ["data/weights/model.pt", "data/constants/custom_obj_0", "data/aotinductor/model/x.so",
                                    "data/constants/opaque_obj_0"])
def test_members_that_torch_would_unpickle_or_execute_are_refused(tmp_path, exported, member):
    version = _forged(tmp_path, exported, lambda m: m.update({member: pickle.dumps(_Marker(tmp_path / "pwned"))}))
    with pytest.raises(UnsafeArchiveError, match=f"holds member {re.escape(repr(member))}, which torch_estimator never writes"):
        loader.load(version, format="pt2")
    assert not (tmp_path / "pwned").exists()


def test_a_size_expression_that_is_python_code_is_refused(tmp_path, exported):
    control, marker = tmp_path / "torch-ran-it", tmp_path / "pwned"

    def plant(path):
        def change(members):
            code = json.dumps(f"open({str(path)!r}, 'w').close() or 2")
            members["models/model.json"] = re.sub(r'"expr_str": "[^"]*"', lambda _: f'"expr_str": {code}',
                                                  members["models/model.json"].decode()).encode()
        return change

    assert _torch_runs_it(tmp_path, exported, plant(control), control)
    version = _forged(tmp_path, exported, plant(marker))
    with pytest.raises(UnsafeArchiveError, match=r"program 'model' expression holds .*open.* not arithmetic on sizes"):
        loader.load(version, format="pt2")
    assert not marker.exists()


def test_a_program_with_a_non_tensor_input_is_refused(tmp_path, exported):
    def change(members):
        program = json.loads(members["models/model.json"])
        program["graph_module"]["graph"]["inputs"][-1] = {"as_string": "x' or open('pwned', 'w') or '"}
        members["models/model.json"] = json.dumps(program).encode()

    with pytest.raises(UnsafeArchiveError, match=r"program 'model' takes inputs other than tensors"):
        loader.load(_forged(tmp_path, exported, change), format="pt2")


def _flip_weight_byte(archive) -> str:
    """Flip one byte inside the first tensor record of a model archive, in place; return its member name."""
    with zipfile.ZipFile(archive) as zipped:
        info = next(i for i in zipped.infolist() if re.search(r"/data/(weights/weight_)?\d+$", i.filename))
    with open(archive, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        file.seek(info.header_offset + 30 + name_length + extra_length + 1)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x10]))
    return info.filename


@pytest.mark.parametrize("name,format", [("model.pt", "torchscript"), ("model.pt2", "pt2")])
def test_a_flipped_byte_in_a_weight_is_refused_naming_the_file(tmp_path, exported, name, format):
    shutil.copytree(exported[2], tmp_path / "1")
    _flip_weight_byte(tmp_path / "1" / name)
    for call in (lambda: loader.load(tmp_path / "1", format=format), lambda: loader.read_document(tmp_path, format=format)):
        with pytest.raises(ExportIntegrityError, match=re.escape(str(tmp_path / "1" / name)) + " is damaged or was altered "
                           "after export: its SHA-256 is [0-9a-f]{64}, .*signature.json records [0-9a-f]{64}"):
            call()


def test_a_truncated_artifact_is_refused_with_its_sizes(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    data = (tmp_path / "1" / "model.pt").read_bytes()
    (tmp_path / "1" / "model.pt").write_bytes(data[:-10])
    with pytest.raises(ExportIntegrityError, match=f"model.pt is damaged .*: it is {len(data) - 10} bytes, .* records {len(data)}"):
        loader.load(tmp_path / "1")


def test_an_artifact_without_a_recorded_hash_is_refused(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    path = tmp_path / "1" / "signature.json"
    document = json.loads(path.read_text())
    del document["files"]["model.pt2"]
    path.write_text(json.dumps(document))
    with pytest.raises(ExportIntegrityError, match=r"records no content hash for model.pt2 .*export the model again"):
        loader.load(tmp_path / "1", format="pt2")
    assert loader.load(tmp_path / "1").format == "torchscript"  # model.pt is still recorded


def test_a_signature_json_that_disagrees_with_the_embedded_copy_is_refused(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    path = tmp_path / "1" / "signature.json"
    document = json.loads(path.read_text())
    document["signatures"]["classify"]["class_labels"] = ["x", "y", "z"]
    path.write_text(json.dumps(document))
    for format in ("torchscript", "pt2"):
        for call in (lambda format=format: loader.load(tmp_path / "1", format=format),
                     lambda format=format: loader.read_document(tmp_path / "1", format=format)):
            with pytest.raises(ExportIntegrityError, match=r"signature.json disagrees with the copy embedded in .*model.pt2?"
                               r" \(differing keys: \['signatures'\]\)"):
                call()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_the_artifact_is_refused_without_blocking(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    os.remove(tmp_path / "1" / "signature.json")
    os.mkfifo(tmp_path / "1" / "signature.json")
    with pytest.raises(ExportIntegrityError, match="signature.json is not a regular file"):
        loader.load(tmp_path / "1")


# What a loaded export offers


def test_signatures_and_default(model):
    assert (sorted(model.signatures), model.default_signature) == (["classify", "serving_default"], "serving_default")


def test_class_labels_are_in_the_signature(model):
    assert model.signatures["classify"]["class_labels"] == LABELS


def test_global_step_is_read(model):
    assert model.global_step == 3


def test_torchscript_is_preferred_when_both_exist(model):
    assert model.format == "torchscript"


@pytest.mark.parametrize("form", ["tensor", "numpy", "list"])
def test_inputs_may_be_tensors_arrays_or_lists(model, exported, form):
    x, _ = data(3, seed=13)
    value = {"tensor": torch.from_numpy(x), "numpy": x, "list": x.tolist()}[form]
    outputs = model({"x": value})
    np.testing.assert_allclose(outputs["probabilities"].numpy(), predict(exported[0], x)["probabilities"], atol=1e-6)


def test_pt2_gives_the_same_outputs(model, exported):
    x, _ = data(3, seed=14)
    exported_model = loader.load(exported[2], format="pt2")
    np.testing.assert_allclose(exported_model({"x": x}, "classify")["scores"].numpy(), model({"x": x}, "classify")["scores"].numpy(), atol=1e-6)


def test_outputs_do_not_require_grad(model):
    assert not model({"x": np.ones((1, NUM_FEATURES))})["probabilities"].requires_grad


# Validation


def test_an_unknown_signature_is_an_error(model):
    with pytest.raises(InvalidInputError, match="Serving signature name: 'nope' not found; available: \\['classify', 'serving_default'\\]"):
        model({"x": np.ones((1, NUM_FEATURES))}, "nope")


def test_a_missing_input_is_named(model):
    with pytest.raises(InvalidInputError, match=r"takes inputs \['x'\]: missing \['x'\]"):
        model({})


def test_an_unknown_input_is_named(model):
    with pytest.raises(InvalidInputError, match=r"unknown \['y'\]"):
        model({"x": np.ones((1, NUM_FEATURES)), "y": [1]})


def test_ints_are_cast_to_float(model):
    assert model({"x": [[1, 2, 3, 4]]})["probabilities"].shape == (1, 3)


def test_float64_is_cast_to_float32(model):
    assert model({"x": np.ones((2, NUM_FEATURES), dtype=np.float64)})["probabilities"].dtype == torch.float32


def test_floats_are_not_cast_to_ints(tmp_path):
    est = train_estimator(tmp_path / "model")

    def receiver_fn():
        return export.ServingInputReceiver(
            lambda r: {"x": r["ids"].float()}, {"ids": export.TensorSpec([None, NUM_FEATURES], torch.int64)})

    model = loader.load(est.export_saved_model(tmp_path / "exports", receiver_fn))
    with pytest.raises(InvalidInputError, match="Input 'ids' expects int64 but received float32 values; a float cannot be converted to int safely"):
        model({"ids": [[0.5, 1.0, 2.0, 3.0]]})


def test_integers_out_of_range_are_rejected(tmp_path):
    est = train_estimator(tmp_path / "model")

    def receiver_fn():
        return export.ServingInputReceiver(
            lambda r: {"x": r["pixels"].float() / 255}, {"pixels": export.TensorSpec([None, NUM_FEATURES], torch.uint8)})

    model = loader.load(est.export_saved_model(tmp_path / "exports", receiver_fn))
    assert model({"pixels": [[0, 1, 2, 255]]})["classes"].shape == (1,)
    with pytest.raises(InvalidInputError, match=r"Input 'pixels' expects uint8 but holds values in \[0, 300\], outside its range \[0, 255\]"):
        model({"pixels": [[0, 1, 2, 300]]})


def test_bools_are_cast_to_float(model):
    assert model({"x": np.ones((1, NUM_FEATURES), dtype=bool)})["probabilities"].shape == (1, 3)


def test_bools_are_not_taken_from_ints():
    with pytest.raises(InvalidInputError, match="Input 'flag' expects bool but received int64"):
        loader._cast(torch.tensor([1]), torch.bool, "flag")


def test_a_wrong_shape_is_named(model):
    with pytest.raises(InvalidInputError, match=r"Input 'x' expects shape \[-1, 4\] \(-1: any size\) but received \[2, 3\]"):
        model({"x": np.ones((2, 3))})


def test_a_wrong_rank_is_named(model):
    with pytest.raises(InvalidInputError, match=r"Input 'x' expects shape \[-1, 4\] .* received \[4\]"):
        model({"x": [1.0, 2.0, 3.0, 4.0]})


def test_a_ragged_list_is_rejected(model):
    with pytest.raises(InvalidInputError, match="Input 'x' is not a rectangular array of numbers"):
        model({"x": [[1.0, 2.0, 3.0, 4.0], [1.0]]})


def test_strings_are_rejected(model):
    with pytest.raises(InvalidInputError, match="Input 'x' must be numbers .* received str"):
        model({"x": "1,2,3,4"})


def test_a_single_input_signature_takes_a_bare_value(model):
    assert model(np.ones((2, NUM_FEATURES)))["classes"].shape == (2,)


def test_negative_strides_are_accepted(model):
    assert model({"x": np.ones((2, NUM_FEATURES))[::-1]})["classes"].shape == (2,)
