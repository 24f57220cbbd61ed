"""PredictOutput, ClassificationOutput, RegressionOutput and TF's rules for the default signature."""

from __future__ import annotations

import pytest
import torch

from torch_estimator.export import ClassificationOutput, PredictOutput, RegressionOutput
from torch_estimator.export.outputs import resolve_export_outputs

SCORES = torch.tensor([[0.2, 0.8], [0.6, 0.4]])


def test_predict_output_wraps_a_tensor_as_output():
    assert list(PredictOutput(SCORES).outputs) == ["output"]


def test_predict_output_joins_tuple_keys():
    assert list(PredictOutput({("head", "logits"): SCORES}).outputs) == ["head/logits"]


def test_predict_output_rejects_non_tensors():
    with pytest.raises(TypeError, match="output 'a' must be a Tensor; received list"):
        PredictOutput({"a": [1.0]})


def test_predict_output_rejects_an_empty_dict():
    with pytest.raises(ValueError, match="must not be empty"):
        PredictOutput({})


def test_classification_output_needs_scores_or_classes():
    with pytest.raises(ValueError, match="needs `scores`, `classes` or both"):
        ClassificationOutput()


def test_classification_scores_must_be_floating():
    with pytest.raises(TypeError, match="`scores` must be a floating-point Tensor"):
        ClassificationOutput(scores=torch.tensor([[1, 2]]))


def test_classification_classes_must_be_ids():
    with pytest.raises(TypeError, match="`classes` must be an integer Tensor of class ids.*labels="):
        ClassificationOutput(classes=["cat", "dog"])


def test_classification_classes_are_int64():
    assert ClassificationOutput(classes=torch.tensor([1, 0], dtype=torch.int32)).outputs["classes"].dtype == torch.int64


def test_classification_labels_must_match_score_columns():
    with pytest.raises(ValueError, match="has 3 labels but `scores` has 2 columns"):
        ClassificationOutput(scores=SCORES, labels=["a", "b", "c"])


def test_classification_labels_must_be_strings():
    with pytest.raises(TypeError, match="`labels` must be a list of strings"):
        ClassificationOutput(scores=SCORES, labels=[0, 1])


def test_classification_outputs_are_classes_and_scores():
    assert sorted(ClassificationOutput(SCORES, SCORES.argmax(1), labels=["a", "b"]).outputs) == ["classes", "scores"]


def test_regression_value_must_be_floating():
    with pytest.raises(TypeError, match="`value` must be a floating-point Tensor"):
        RegressionOutput(torch.tensor([1, 2]))


def test_regression_output_is_named_outputs():
    assert list(RegressionOutput(SCORES[:, 0]).outputs) == ["outputs"]


def test_no_export_outputs_predict_the_predictions():
    resolved = resolve_export_outputs(None, {"p": SCORES})
    assert list(resolved) == ["serving_default"] and list(resolved["serving_default"].outputs) == ["p"]


def test_a_single_export_output_becomes_the_default_too():
    output = RegressionOutput(SCORES[:, 0])
    assert resolve_export_outputs({"regression": output}, SCORES) == {"regression": output, "serving_default": output}


def test_several_export_outputs_with_a_default_are_kept():
    outputs = {"serving_default": PredictOutput(SCORES), "regression": RegressionOutput(SCORES[:, 0])}
    assert resolve_export_outputs(outputs, SCORES) == outputs


def test_several_export_outputs_without_a_default_raise():
    with pytest.raises(ValueError, match=r"Multiple export_outputs were provided \(\['a', 'b'\]\), but none of them is the default"):
        resolve_export_outputs({"a": PredictOutput(SCORES), "b": PredictOutput(SCORES)}, SCORES)


def test_empty_export_outputs_raise():
    with pytest.raises(ValueError, match="`export_outputs` is empty"):
        resolve_export_outputs({}, SCORES)


def test_export_outputs_values_must_be_export_outputs():
    with pytest.raises(TypeError, match=r"`export_outputs\['a'\]` must be a PredictOutput.* received Tensor"):
        resolve_export_outputs({"a": SCORES}, SCORES)
