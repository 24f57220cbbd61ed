"""Estimator.export_saved_model end to end: directory, signatures, round trips through the loader, and
every way an export can fail (always leaving no directory behind)."""

from __future__ import annotations

import json
import logging
import os
import warnings

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import export
from torch_estimator.export import builder, torchscript
from torch_estimator.serving import loader

from .export_support import (
    LABELS,
    NUM_CLASSES,
    NUM_FEATURES,
    data,
    make_model_fn,
    predict,
    raw_receiver_fn,
    train_estimator,
)


def _signature(path: str) -> dict:
    with open(os.path.join(path, "signature.json"), encoding="utf-8") as file:
        return json.load(file)


def _assert_close(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(np.asarray(actual[name]), np.asarray(expected[name]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The directory


def test_export_dir_is_a_timestamp_under_the_base(tmp_path):
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    assert os.path.dirname(path) == str(tmp_path / "exports")
    assert os.listdir(tmp_path / "exports") == [os.path.basename(path)]
    assert os.path.basename(path).isdigit()


def test_export_writes_model_and_signature(tmp_path):
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    assert sorted(os.listdir(path)) == ["model.pt", "signature.json"]


def test_signature_records_the_global_step(tmp_path):
    est = train_estimator(tmp_path / "model", steps=5)
    assert _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))["global_step"] == 5


def test_a_second_export_in_the_same_second_waits_for_the_next(tmp_path, monkeypatch):
    est = train_estimator(tmp_path / "model")
    clock = iter([1000, 1001])
    monkeypatch.setattr(builder, "_now", lambda: next(clock))
    monkeypatch.setattr(builder, "_sleep", lambda seconds: None)
    (tmp_path / "exports" / "1000").mkdir(parents=True)
    assert os.path.basename(est.export_saved_model(tmp_path / "exports", raw_receiver_fn())) == "1001"


def test_no_free_directory_name_after_ten_attempts_raises(tmp_path, monkeypatch):
    est = train_estimator(tmp_path / "model")
    sleeps = []
    monkeypatch.setattr(builder, "_now", lambda: 1000)
    monkeypatch.setattr(builder, "_sleep", sleeps.append)
    (tmp_path / "exports" / "1000").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="unique export directory name .* after 10 attempts"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    assert sleeps == [1.0] * 9


def test_assets_extra_are_copied(tmp_path):
    (tmp_path / "vocab.txt").write_text("ant\nbee\n")
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), assets_extra={"data/vocab.txt": str(tmp_path / "vocab.txt")})
    with open(os.path.join(path, "assets.extra", "data", "vocab.txt")) as file:
        assert file.read() == "ant\nbee\n"


def test_assets_extra_destination_must_stay_inside(tmp_path):
    (tmp_path / "vocab.txt").write_text("ant\n")
    est = train_estimator(tmp_path / "model")
    with pytest.raises(ValueError, match="must be a relative path inside assets.extra"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), assets_extra={"../x": str(tmp_path / "vocab.txt")})


def test_assets_extra_source_must_exist(tmp_path):
    est = train_estimator(tmp_path / "model")
    with pytest.raises(ValueError, match="source .*missing.txt' does not exist"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), assets_extra={"x": str(tmp_path / "missing.txt")})


# ----------------------------------------------------------------------------------------------------------
# Round trips: the loaded artifact reproduces Estimator.predict


def test_default_signature_predicts_the_predictions(tmp_path):
    est = train_estimator(tmp_path / "model")
    model = loader.load(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))
    x, _ = data(5, seed=1)
    _assert_close({k: v.numpy() for k, v in model({"x": x}).items()}, predict(est, x))


def test_default_signature_is_a_predict_signature(tmp_path):
    est = train_estimator(tmp_path / "model")
    signature = _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))
    assert signature["signatures"]["serving_default"] == {
        "method_name": "tensorflow/serving/predict",
        "function": "forward",
        "inputs": {"x": {"dtype": "float32", "shape": [-1, NUM_FEATURES]}},
        "outputs": {
            "classes": {"dtype": "int64", "shape": [-1]},
            "probabilities": {"dtype": "float32", "shape": [-1, NUM_CLASSES]},
        },
    }


def test_tensor_predictions_are_named_output(tmp_path):
    def model_fn(features, labels, mode, model):
        logits = model(features["x"])
        if mode == te.ModeKeys.PREDICT:
            return te.EstimatorSpec(mode, predictions=logits)
        return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))

    est = train_estimator(tmp_path / "model", model_fn)
    model = loader.load(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))
    x, _ = data(3, seed=1)
    _assert_close({k: v.numpy() for k, v in model({"x": x}).items()}, predict(est, x))


def test_classification_output_keeps_labels_in_the_signature(tmp_path):
    model_fn = make_model_fn(lambda p, logits: {"classify": export.ClassificationOutput(scores=p["probabilities"], labels=LABELS)})
    est = train_estimator(tmp_path / "model", model_fn)
    signature = _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))["signatures"]["classify"]
    assert (signature["method_name"], signature["class_labels"]) == ("tensorflow/serving/classify", LABELS)


def test_classification_output_round_trips_scores_and_int64_classes(tmp_path):
    model_fn = make_model_fn(lambda p, logits: {"classify": export.ClassificationOutput(
        scores=p["probabilities"], classes=p["classes"].int(), labels=LABELS)})
    est = train_estimator(tmp_path / "model", model_fn)
    model = loader.load(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))
    x, _ = data(4, seed=2)
    outputs = model({"x": x}, "classify")
    expected = predict(est, x)
    assert outputs["classes"].dtype == torch.int64
    _assert_close({k: v.numpy() for k, v in outputs.items()}, {"classes": expected["classes"], "scores": expected["probabilities"]})


def test_regression_output_round_trips(tmp_path):
    model_fn = make_model_fn(lambda p, logits: {"regression": export.RegressionOutput(p["probabilities"][:, 0])})
    est = train_estimator(tmp_path / "model", model_fn)
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    x, _ = data(4, seed=2)
    outputs = loader.load(path)({"x": x}, "regression")
    _assert_close({k: v.numpy() for k, v in outputs.items()}, {"outputs": predict(est, x)["probabilities"][:, 0]})
    assert _signature(path)["signatures"]["regression"]["method_name"] == "tensorflow/serving/regress"


def test_a_single_export_output_is_also_the_default(tmp_path):
    model_fn = make_model_fn(lambda p, logits: {"regression": export.RegressionOutput(logits[:, 0])})
    est = train_estimator(tmp_path / "model", model_fn)
    signatures = _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))["signatures"]
    assert {k: v["function"] for k, v in signatures.items()} == {"serving_default": "forward", "regression": "regression"}


def _several(p, logits):
    return {
        "serving_default": export.ClassificationOutput(scores=p["probabilities"], labels=LABELS),
        "predict": export.PredictOutput(p),
        "regress": export.RegressionOutput(logits[:, 0]),
        "eval": export.PredictOutput(logits),  # clashes with nn.Module.eval: the method is renamed
    }


def test_several_signatures_get_one_method_each(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(_several))
    signatures = _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))["signatures"]
    assert {k: v["function"] for k, v in signatures.items()} == {
        "serving_default": "forward", "eval": "eval_1", "predict": "predict", "regress": "regress"}


def test_several_signatures_each_round_trip(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(_several))
    model = loader.load(est.export_saved_model(tmp_path / "exports", raw_receiver_fn()))
    x, _ = data(6, seed=3)
    expected = predict(est, x)
    _assert_close({k: v.numpy() for k, v in model({"x": x}, "predict").items()}, expected)
    _assert_close({k: v.numpy() for k, v in model({"x": x}).items()}, {"scores": expected["probabilities"]})
    np.testing.assert_allclose(model({"x": x}, "eval")["output"].softmax(1).numpy(), expected["probabilities"], atol=1e-6)


def test_a_preprocessing_receiver_is_captured(tmp_path):
    """Clients send uint8 pixels; the receiver normalises them before model_fn."""
    est = train_estimator(tmp_path / "model")

    def receiver_fn():
        return export.ServingInputReceiver(
            features=lambda r: {"x": r["pixels"].float() / 255.0},
            receiver_tensors={"pixels": export.TensorSpec([None, NUM_FEATURES], torch.uint8, high=256)},
        )

    path = est.export_saved_model(tmp_path / "exports", receiver_fn)
    pixels = np.array([[0, 17, 128, 255], [3, 200, 90, 1]], dtype=np.uint8)
    outputs = loader.load(path)({"pixels": pixels})
    _assert_close({k: v.numpy() for k, v in outputs.items()}, predict(est, pixels.astype("float32") / 255.0))
    assert _signature(path)["signatures"]["serving_default"]["inputs"] == {"pixels": {"dtype": "uint8", "shape": [-1, NUM_FEATURES]}}


class Standardize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([1.0, -1.0, 0.5, 0.0]))

    def forward(self, received: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": received["raw"] - self.mean}


def test_a_receiver_module_travels_with_the_export(tmp_path):
    est = train_estimator(tmp_path / "model")

    def receiver_fn():
        return export.ServingInputReceiver(Standardize(), {"raw": export.TensorSpec([None, NUM_FEATURES], "float32")})

    module, text = torchscript.load(os.path.join(est.export_saved_model(tmp_path / "exports", receiver_fn), "model.pt"))
    x, _ = data(3, seed=4)
    outputs = module({"raw": torch.from_numpy(x)})
    assert torch.equal(module.receiver.mean, Standardize().mean)
    _assert_close({k: v.detach().numpy() for k, v in outputs.items()}, predict(est, x - Standardize().mean.numpy()))


def test_tensor_features_reach_model_fn_as_one_tensor(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(dict_features=False), dict_features=False)

    def receiver_fn():
        return export.TensorServingInputReceiver(None, export.TensorSpec([None, NUM_FEATURES], torch.float32))

    path = est.export_saved_model(tmp_path / "exports", receiver_fn)
    x, _ = data(3, seed=5)
    outputs = loader.load(path)(x)  # one input: the bare value is enough
    _assert_close({k: v.numpy() for k, v in outputs.items()}, predict(est, x, dict_features=False))
    assert list(_signature(path)["signatures"]["serving_default"]["inputs"]) == ["input"]


def test_receiver_alternatives_add_signatures(tmp_path):
    est = train_estimator(tmp_path / "model")

    def receiver_fn():
        return export.ServingInputReceiver(
            lambda r: {"x": r["pixels"].float() / 255.0},
            {"pixels": export.TensorSpec([None, NUM_FEATURES], torch.uint8, high=256)},
            receiver_tensors_alternatives={"raw": {"x": export.TensorSpec([None, NUM_FEATURES], torch.float32)}},
        )

    model = loader.load(est.export_saved_model(tmp_path / "exports", receiver_fn))
    assert model.signatures["raw:serving_default"]["function"] == "raw_serving_default"
    x, _ = data(2, seed=6)
    _assert_close({k: v.numpy() for k, v in model({"x": x}, "raw:serving_default").items()}, predict(est, x))


def test_a_default_batch_size_is_fixed_in_the_signature(tmp_path):
    est = train_estimator(tmp_path / "model")
    signature = _signature(est.export_saved_model(tmp_path / "exports", raw_receiver_fn(batch_size=4)))
    assert signature["signatures"]["serving_default"]["outputs"]["probabilities"]["shape"] == [4, NUM_CLASSES]


def _sequence_model_fn(features, labels, mode, model):  # a "sequence" of 4-vectors, averaged
    logits = model(features["x"].mean(1))
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions={"logits": logits, "tokens": features["x"].sum(2)})
    return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))


def test_dynamic_non_batch_dimensions_stay_dynamic(tmp_path):
    est = te.Estimator(_sequence_model_fn, model_dir=str(tmp_path / "model"), model=torch.nn.Linear(NUM_FEATURES, NUM_CLASSES),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), config=te.RunConfig(device="cpu", log_step_count_steps=None))
    est.train(lambda: [({"x": torch.randn(4, 6, NUM_FEATURES)}, torch.randint(0, 3, (4,)))], steps=1)
    receiver_fn = export.build_raw_serving_input_receiver_fn({"x": export.TensorSpec([None, None, NUM_FEATURES], torch.float32)})
    path = est.export_saved_model(tmp_path / "exports", receiver_fn)
    outputs = _signature(path)["signatures"]["serving_default"]["outputs"]
    assert outputs == {"logits": {"dtype": "float32", "shape": [-1, NUM_CLASSES]}, "tokens": {"dtype": "float32", "shape": [-1, -1]}}
    assert loader.load(path)({"x": np.ones((2, 11, NUM_FEATURES))})["tokens"].shape == (2, 11)


class Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, NUM_FEATURES)
        self.net = torch.nn.Linear(NUM_FEATURES, NUM_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(self.embedding(ids).mean(1))


def _ids_model_fn(features, labels, mode, model):
    logits = model(features["ids"])
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions={"logits": logits})
    return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.parametrize("spec", [
    export.TensorSpec([None, 5], torch.int64),  # drawn small: 0..1
    export.TensorSpec([None, 5], torch.int64, low=0, high=10),
    export.TensorSpec([None, 5], torch.int64, example=torch.tensor([[9, 8, 7, 6, 5], [1, 2, 3, 4, 0]])),
], ids=["default-range", "low-high", "example"])
def test_integer_inputs_are_drawn_as_valid_ids(tmp_path, spec):
    est = te.Estimator(_ids_model_fn, model_dir=str(tmp_path / "model"), model=Embedder(),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), config=te.RunConfig(device="cpu", log_step_count_steps=None))
    est.train(lambda: [({"ids": torch.randint(0, 10, (4, 5))}, torch.randint(0, 3, (4,)))], steps=1)
    path = est.export_saved_model(tmp_path / "exports", export.build_raw_serving_input_receiver_fn({"ids": spec}))
    assert loader.load(path)({"ids": [[9, 9, 9, 9, 9]]})["logits"].shape == (1, NUM_CLASSES)


def test_an_example_tensor_defines_the_receiver(tmp_path):
    est = train_estimator(tmp_path / "model")
    x, _ = data(2)
    path = est.export_saved_model(tmp_path / "exports", export.build_raw_serving_input_receiver_fn({"x": x}))
    assert _signature(path)["signatures"]["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [-1, NUM_FEATURES]}}


# ----------------------------------------------------------------------------------------------------------
# torch.export


def test_pt2_format_writes_model_pt2_only(tmp_path):
    est = train_estimator(tmp_path / "model")
    assert sorted(os.listdir(est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="pt2"))) == ["model.pt2", "signature.json"]


def test_pt2_round_trips_every_signature(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(_several))
    model = loader.load(est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="pt2"))
    x, _ = data(5, seed=7)
    expected = predict(est, x)
    assert model.format == "pt2"
    _assert_close({k: v.numpy() for k, v in model({"x": x}, "predict").items()}, expected)
    _assert_close({k: v.numpy() for k, v in model({"x": x}).items()}, {"scores": expected["probabilities"]})


def test_pt2_default_program_loads_with_plain_torch_export(tmp_path):
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="pt2")
    extra = {"signature.json": ""}
    program = torch.export.load(os.path.join(path, "model.pt2"), extra_files=extra)
    x, _ = data(3, seed=8)
    outputs = program.module()({"x": torch.from_numpy(x)})
    _assert_close({k: v.detach().numpy() for k, v in outputs.items()}, predict(est, x))
    assert {**json.loads(extra["signature.json"]), "files": _signature(path)["files"]} == _signature(path)


def test_all_format_writes_both_artifacts_with_equal_outputs(tmp_path):
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="all")
    x, _ = data(3, seed=9)
    scripted, exported = loader.load(path, format="torchscript"), loader.load(path, format="pt2")
    _assert_close({k: v.numpy() for k, v in scripted({"x": x}).items()}, {k: v.numpy() for k, v in exported({"x": x}).items()})


# ----------------------------------------------------------------------------------------------------------
# Warnings: TorchScript's deprecation is said once, in docs/formats.md, not by the library's own calls


def _deprecation_noise(caught, records) -> list[str]:
    noise = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "jit" in str(w.message)]
    return noise + [f"{r.levelname}: {r.getMessage()}" for r in records
                    if r.levelno >= logging.WARNING or "TorchScript" in r.getMessage()]


def test_export_and_load_emit_no_torchscript_deprecation_noise(tmp_path, caplog):
    est = train_estimator(tmp_path / "model")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="torch_estimator"):
        warnings.simplefilter("always")
        path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="all")
        for format in ("torchscript", "pt2"):
            loader.load(path, format=format)({"x": data(2, seed=3)[0]})
        torchscript.load(os.path.join(path, "model.pt"))
    assert _deprecation_noise(caught, caplog.records) == []


def test_the_silencing_is_local_to_the_library_calls(tmp_path):
    est = train_estimator(tmp_path / "model")
    path = est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.load(os.path.join(path, "model.pt"))  # the user's own call still gets torch's warning
    assert any(issubclass(w.category, FutureWarning) and "torch.jit.load" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------------------------------------
# Errors: each names the problem, and no export directory is left behind


def _assert_nothing_written(base) -> None:
    assert not os.path.exists(base) or os.listdir(base) == []


def test_no_receiver_fn_is_an_error(tmp_path):
    est = train_estimator(tmp_path / "model")
    with pytest.raises(ValueError, match="serving_input_receiver_fn"):
        est.export_saved_model(tmp_path / "exports", None)


def test_direct_export_without_receiver_fn_is_tf_s_error(tmp_path):
    with pytest.raises(ValueError, match="An input_receiver_fn must be defined"):
        export.export_saved_model(tmp_path, None, predict_fn=lambda f: None, model=None, global_step=0)


def test_export_without_a_checkpoint_is_an_error(tmp_path):
    est = te.Estimator(make_model_fn(), model_dir=str(tmp_path / "model"), model=torch.nn.Linear(4, 3), config=te.RunConfig(device="cpu"))
    with pytest.raises(ValueError, match="Couldn't find trained model at"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_an_unknown_format_is_an_error(tmp_path):
    est = train_estimator(tmp_path / "model")
    with pytest.raises(ValueError, match="`format` must be one of .*'onnx'"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="onnx")


def test_receiver_fn_must_return_a_receiver(tmp_path):
    est = train_estimator(tmp_path / "model")
    with pytest.raises(TypeError, match="must return a ServingInputReceiver .* returned dict"):
        est.export_saved_model(tmp_path / "exports", lambda: {"x": export.TensorSpec([None, 4], torch.float32)})


def test_export_outputs_values_must_be_export_outputs(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(lambda p, logits: {"serving_default": logits}))
    with pytest.raises(TypeError, match=r"export_outputs\['serving_default'\]` must be an ExportOutput"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    _assert_nothing_written(tmp_path / "exports")


def test_several_export_outputs_without_a_default_is_an_error(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(
        lambda p, logits: {"a": export.PredictOutput(logits), "b": export.RegressionOutput(logits[:, 0])}))
    with pytest.raises(ValueError, match="Multiple export_outputs were provided .* none of them is the default"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_class_ids_beyond_the_labels_are_an_error(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(
        lambda p, logits: {"c": export.ClassificationOutput(classes=p["classes"] + 5, labels=LABELS)}))
    with pytest.raises(ValueError, match="class ids index `labels`"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_a_spec_the_model_cannot_take_names_the_sample_inputs(tmp_path):
    est = train_estimator(tmp_path / "model")
    receiver_fn = export.build_raw_serving_input_receiver_fn({"x": export.TensorSpec([None, 5], torch.float32)})
    with pytest.raises(ValueError, match=r"model_fn failed in PREDICT mode on sample inputs .*x: float32 \[2, 5\]"):
        est.export_saved_model(tmp_path / "exports", receiver_fn)
    _assert_nothing_written(tmp_path / "exports")


def _baked_view(x):
    return x.view(int(x.shape[0]), -1)  # a batch size baked in by tracing


def test_a_baked_batch_size_fails_verification(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=_baked_view))
    with pytest.raises(export.ExportVerificationError, match=r"signature 'serving_default' .*x: float32 \[1, 4\].*int\(x.shape\[0\]\)"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_a_failed_verification_leaves_no_directory(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=_baked_view))
    with pytest.raises(export.ExportVerificationError):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())
    _assert_nothing_written(tmp_path / "exports")


def test_a_failed_verification_quotes_the_tracer_warning(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=_baked_view))
    with pytest.raises(export.ExportVerificationError, match=r"Tracing warned.*test_export.py:\d+: Converting a tensor to a Python integer"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_a_baked_python_number_names_the_output_that_differs(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=lambda x: x * float(x.shape[0])))
    with pytest.raises(export.ExportVerificationError, match="output '(classes|probabilities)' differs from eager model_fn"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_a_random_model_fn_is_reported_as_non_deterministic(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=lambda x: x + torch.rand_like(x)))
    with pytest.raises(export.ExportVerificationError, match="model_fn itself gives different outputs for the same input"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn())


def test_pt2_names_a_baked_batch_size_at_export(tmp_path):
    est = train_estimator(tmp_path / "model", make_model_fn(transform=_baked_view))
    with pytest.raises(ValueError, match="torch.export could not capture signature 'serving_default'.*specialized it to be a constant"):
        est.export_saved_model(tmp_path / "exports", raw_receiver_fn(), format="pt2")
    _assert_nothing_written(tmp_path / "exports")
