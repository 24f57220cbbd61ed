"""serving/loader.py: finding the version, loading either artifact, and checking inputs against the
signature (names, safe dtype casts, shapes) with errors that name the input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from torch_estimator import export
from torch_estimator.serving import loader
from torch_estimator.serving.loader import InvalidInputError

from .test_export_support import LABELS, NUM_FEATURES, data, make_model_fn, predict, raw_receiver_fn, train_estimator


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


def test_read_document_falls_back_to_the_embedded_copy(tmp_path, exported):
    shutil.copytree(exported[2], tmp_path / "1")
    os.remove(tmp_path / "1" / "signature.json")
    assert loader.read_document(tmp_path)[2] == json.loads(open(os.path.join(exported[2], "signature.json")).read())


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
    receiver_fn = lambda: export.ServingInputReceiver(
        lambda r: {"x": r["ids"].float()}, {"ids": export.TensorSpec([None, NUM_FEATURES], torch.int64)})
    model = loader.load(est.export_saved_model(tmp_path / "exports", receiver_fn))
    with pytest.raises(InvalidInputError, match="Input 'ids' expects int64 but received float32 values; a float cannot be converted to int safely"):
        model({"ids": [[0.5, 1.0, 2.0, 3.0]]})


def test_integers_out_of_range_are_rejected(tmp_path):
    est = train_estimator(tmp_path / "model")
    receiver_fn = lambda: export.ServingInputReceiver(
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
