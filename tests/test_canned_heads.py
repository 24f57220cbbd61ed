"""Heads: losses, predictions, metrics (against numpy and scikit-learn), export outputs, specs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator.canned import (
    BinaryClassHead,
    LogisticRegressionHead,
    LossReduction,
    MultiClassHead,
    MultiLabelHead,
    PoissonRegressionHead,
    RegressionHead,
    decode_classes,
    encode_labels,
    numeric_column,
)
from torch_estimator.export import ClassificationOutput, PredictOutput, RegressionOutput
from torch_estimator.metrics import MetricAccumulator

RNG = np.random.default_rng(0)


def evaluate(updates: dict) -> dict:
    accumulator = MetricAccumulator()
    accumulator.update(updates)
    return {k: float(v) for k, v in accumulator.compute().items()}


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_sigmoid_xent(labels, logits):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def np_weighted_mean(values, weights):
    weights = np.broadcast_to(weights, values.shape)
    return float((values * weights).sum() / weights.sum())


# ----------------------------------------------------------------------------------------------------------
# BinaryClassHead


@pytest.fixture
def binary_batch():
    logits = RNG.normal(size=(64, 1)).astype("float32") * 2
    labels = (RNG.uniform(size=(64, 1)) < np_sigmoid(logits)).astype("float32")
    weights = RNG.uniform(0.5, 2.0, size=(64, 1)).astype("float32")
    return logits, labels, weights


def test_binary_predictions_keys_and_shapes(binary_batch):
    logits, _, _ = binary_batch
    predictions = BinaryClassHead().predictions(torch.from_numpy(logits))
    shapes = {k: list(v.shape) for k, v in predictions.items()}
    assert shapes == {"logits": [64, 1], "logistic": [64, 1], "probabilities": [64, 2], "class_ids": [64, 1],
                      "classes": [64, 1], "all_class_ids": [64, 2], "all_classes": [64, 2]}
    np.testing.assert_allclose(predictions["logistic"].numpy(), np_sigmoid(logits), rtol=1e-5)
    np.testing.assert_allclose(predictions["probabilities"][:, 1:].numpy(), np_sigmoid(logits), rtol=1e-5)
    assert predictions["class_ids"].numpy().tolist() == (logits > 0).astype(int).tolist()
    assert predictions["all_class_ids"][0].tolist() == [0, 1]


@pytest.mark.parametrize("reduction", [LossReduction.SUM_OVER_BATCH_SIZE, LossReduction.SUM])
def test_binary_loss_matches_numpy(binary_batch, reduction):
    logits, labels, weights = binary_batch
    head = BinaryClassHead(weight_column="w", loss_reduction=reduction)
    loss = head.loss(torch.from_numpy(labels[:, 0]), torch.from_numpy(logits), {"w": torch.from_numpy(weights[:, 0])})
    weighted = (np_sigmoid_xent(labels, logits) * weights).sum()
    expected = weighted if reduction == LossReduction.SUM else weighted / len(labels)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_binary_tf_docstring_example():
    """TF's BinaryClassHead docstring: logits (45, -41), labels (1, 1) -> loss 20.5 and its metric values."""
    head = BinaryClassHead()
    logits, labels = torch.tensor([[45.0], [-41.0]]), torch.tensor([[1], [1]])
    assert float(head.loss(labels, logits)) == pytest.approx(20.5)
    metrics = evaluate(head.metrics({}, logits, labels))
    expected = {"accuracy": 0.5, "accuracy_baseline": 1.0, "auc_precision_recall": 1.0,
                "average_loss": 20.5, "label/mean": 1.0, "precision": 1.0, "prediction/mean": 0.5, "recall": 0.5}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-3), key


def test_binary_metrics_match_references(binary_batch):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    logits, labels, weights = binary_batch
    head = BinaryClassHead(weight_column="w", thresholds=[0.3, 0.7])
    metrics = evaluate(head.metrics({"w": torch.from_numpy(weights)}, torch.from_numpy(logits), torch.from_numpy(labels)))
    p, y, w = np_sigmoid(logits)[:, 0], labels[:, 0], weights[:, 0]
    classes = (logits[:, 0] > 0).astype("float32")
    assert sorted(metrics) == sorted([
        "accuracy", "accuracy_baseline", "auc", "auc_precision_recall", "average_loss", "label/mean",
        "prediction/mean", "precision", "recall",
        "accuracy/positive_threshold_0.3", "precision/positive_threshold_0.3", "recall/positive_threshold_0.3",
        "accuracy/positive_threshold_0.7", "precision/positive_threshold_0.7", "recall/positive_threshold_0.7",
    ])
    label_mean = np_weighted_mean(y, w)
    assert metrics["average_loss"] == pytest.approx(np_weighted_mean(np_sigmoid_xent(y, logits[:, 0]), w), rel=1e-5)
    assert metrics["label/mean"] == pytest.approx(label_mean, rel=1e-6)
    assert metrics["prediction/mean"] == pytest.approx(np_weighted_mean(p, w), rel=1e-5)
    assert metrics["accuracy_baseline"] == pytest.approx(max(label_mean, 1 - label_mean), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, classes, sample_weight=w), rel=1e-6)
    assert metrics["precision"] == pytest.approx(sklearn_metrics.precision_score(y, classes, sample_weight=w), rel=1e-6)
    assert metrics["recall"] == pytest.approx(sklearn_metrics.recall_score(y, classes, sample_weight=w), rel=1e-6)
    # 200 thresholds approximate the exact curves.
    assert metrics["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, p, sample_weight=w), abs=0.01)
    assert metrics["auc_precision_recall"] == pytest.approx(
        sklearn_metrics.average_precision_score(y, p, sample_weight=w), abs=0.05)
    for t in (0.3, 0.7):
        predicted = (p > t).astype("float32")
        assert metrics[f"accuracy/positive_threshold_{t:g}"] == pytest.approx(
            sklearn_metrics.accuracy_score(y, predicted, sample_weight=w), rel=1e-6)
        assert metrics[f"precision/positive_threshold_{t:g}"] == pytest.approx(
            sklearn_metrics.precision_score(y, predicted, sample_weight=w), rel=1e-6)
        assert metrics[f"recall/positive_threshold_{t:g}"] == pytest.approx(
            sklearn_metrics.recall_score(y, predicted, sample_weight=w), rel=1e-6)


def test_binary_export_outputs_follow_tf(binary_batch):
    head = BinaryClassHead(label_vocabulary=["no", "yes"])
    predictions = head.predictions(torch.from_numpy(binary_batch[0]))
    outputs = head.export_outputs(predictions)
    assert sorted(outputs) == ["classification", "predict", "regression", "serving_default"]
    assert outputs["serving_default"] is outputs["classification"]
    assert isinstance(outputs["classification"], ClassificationOutput)
    assert outputs["classification"].class_labels == ["no", "yes"]
    assert torch.equal(outputs["classification"].outputs["scores"], predictions["probabilities"])
    assert isinstance(outputs["regression"], RegressionOutput)
    assert torch.equal(outputs["regression"].outputs["outputs"], predictions["logistic"])
    assert isinstance(outputs["predict"], PredictOutput) and sorted(outputs["predict"].outputs) == sorted(predictions)


def test_head_name_suffixes_metric_keys(binary_batch):
    logits, labels, _ = binary_batch
    metrics = BinaryClassHead(name="click").metrics({}, torch.from_numpy(logits), torch.from_numpy(labels))
    assert "accuracy/click" in metrics and "auc/click" in metrics and "accuracy" not in metrics


def test_binary_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\].*\[2.0\]"):
        BinaryClassHead().loss(torch.tensor([0, 2]), torch.zeros(2, 1))


def test_binary_label_shape_mismatch():
    with pytest.raises(ValueError, match=r"labels shape must be \[batch_size, 1\].*received labels \[3\] for logits \[2, 1\]"):
        BinaryClassHead().loss(torch.tensor([0, 1, 1]), torch.zeros(2, 1))


def test_missing_labels_in_train():
    with pytest.raises(ValueError, match="You must provide a labels Tensor"):
        BinaryClassHead().create_estimator_spec({}, te.ModeKeys.TRAIN, torch.zeros(2, 1))


def test_missing_weight_column():
    with pytest.raises(ValueError, match=r"weight_column 'w' is not in the features; received \['x'\]"):
        BinaryClassHead(weight_column="w").loss(torch.tensor([0, 1]), torch.zeros(2, 1), {"x": torch.zeros(2)})


def test_weight_column_as_numeric_column():
    head = BinaryClassHead(weight_column=numeric_column("w"))
    loss = head.loss(torch.tensor([1, 1]), torch.zeros(2, 1), {"w": torch.tensor([0.0, 2.0])}, )
    assert float(loss) == pytest.approx(np.log(2.0) * 2 / 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"thresholds": [0.5, 1.0]}, r"thresholds not in \(0, 1\)"),
    ({"label_vocabulary": ["a"]}, r"must have n_classes \(2\) entries"),
    ({"label_vocabulary": "ab"}, "must be a list or tuple of strings"),
    ({"loss_reduction": "mean"}, "invalid `loss_reduction` 'mean'"),
    ({"loss_fn": lambda y, z: y}, r"must take \(labels, logits\)"),
    ({"weight_column": 3}, "`weight_column` must be a feature key"),
])
def test_binary_head_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BinaryClassHead(**kwargs)


def test_custom_loss_fn_with_features():
    def loss_fn(labels, logits, features):
        return (logits - labels).abs() * features["scale"].unsqueeze(1)

    head = BinaryClassHead(loss_fn=loss_fn)
    loss = head.loss(torch.tensor([1, 0]), torch.tensor([[0.5], [0.25]]), {"scale": torch.tensor([2.0, 4.0])})
    assert float(loss) == pytest.approx((0.5 * 2 + 0.25 * 4) / 2)


def test_custom_loss_fn_wrong_shape():
    head = BinaryClassHead(loss_fn=lambda labels, logits: (labels - logits).sum())
    with pytest.raises(ValueError, match=r"loss_fn must return the unreduced loss of shape \[2, 1\]; received \[\]"):
        head.loss(torch.tensor([1, 0]), torch.zeros(2, 1))


def test_bad_logits_shape():
    with pytest.raises(ValueError, match=r"logits shape must be \[batch_size, 3\]; received \[4, 2\]"):
        MultiClassHead(3).predictions(torch.zeros(4, 2))


def test_unknown_prediction_key():
    with pytest.raises(ValueError, match=r"prediction keys \['probs'\] are not among"):
        MultiClassHead(3).predictions(torch.zeros(4, 3), keys=["probs"])


# ----------------------------------------------------------------------------------------------------------
# MultiClassHead


def test_multiclass_predictions_loss_and_metrics():
    logits = RNG.normal(size=(50, 4)).astype("float32")
    labels = RNG.integers(0, 4, size=50)
    weights = RNG.uniform(0.5, 2, size=50).astype("float32")
    head = MultiClassHead(4, weight_column="w")
    predictions = head.predictions(torch.from_numpy(logits))
    shapes = {k: list(v.shape) for k, v in predictions.items()}
    assert shapes == {"logits": [50, 4], "probabilities": [50, 4], "class_ids": [50, 1], "classes": [50, 1],
                      "all_class_ids": [50, 4], "all_classes": [50, 4]}
    features = {"w": torch.from_numpy(weights)}
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    xent = -log_softmax[np.arange(50), labels]
    loss = head.loss(torch.from_numpy(labels), torch.from_numpy(logits), features)
    assert float(loss) == pytest.approx((xent * weights).sum() / 50, rel=1e-5)
    metrics = evaluate(head.metrics(features, torch.from_numpy(logits), torch.from_numpy(labels)))
    assert sorted(metrics) == ["accuracy", "average_loss"]
    assert metrics["accuracy"] == pytest.approx(np_weighted_mean((logits.argmax(1) == labels).astype(float), weights))
    assert metrics["average_loss"] == pytest.approx(np_weighted_mean(xent, weights), rel=1e-5)


def test_multiclass_export_outputs():
    head = MultiClassHead(3, label_vocabulary=["a", "b", "c"])
    outputs = head.export_outputs(head.predictions(torch.zeros(2, 3)))
    assert sorted(outputs) == ["classification", "predict", "serving_default"]
    assert outputs["classification"].class_labels == ["a", "b", "c"]
    assert outputs["classification"].outputs["classes"].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_multiclass_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 3\); received \[3, 7\]"):
        MultiClassHead(3).loss(torch.tensor([0, 3, 7]), torch.zeros(3, 3))


def test_multiclass_float_labels():
    with pytest.raises(TypeError, match="labels must be integer class ids.*encode_labels"):
        MultiClassHead(3).loss(torch.tensor([0.0, 1.0]), torch.zeros(2, 3))


@pytest.mark.parametrize("n_classes", [1, 0, 2.5, True])
def test_multiclass_bad_n_classes(n_classes):
    with pytest.raises(ValueError, match="`n_classes` must be an int >= 3"):
        MultiClassHead(n_classes)


def test_multiclass_two_classes_is_binary_class_heads_job():
    # As TF: two classes take a BinaryClassHead ("n_classes must be > 2").
    with pytest.raises(ValueError, match="n_classes must be > 2; received 2. Use BinaryClassHead"):
        MultiClassHead(n_classes=2)


def test_multiclass_vocabulary_mismatch():
    with pytest.raises(ValueError, match=r"must have n_classes \(3\) entries; received 2"):
        MultiClassHead(3, label_vocabulary=["a", "b"])


def test_vocabulary_duplicates():
    with pytest.raises(ValueError, match=r"duplicates \['a'\]"):
        MultiClassHead(3, label_vocabulary=["a", "b", "a"])


def test_encode_and_decode_labels():
    ids = encode_labels(np.array(["b", "c", "a"]), ["a", "b", "c"])
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 0]
    assert decode_classes(torch.tensor([[2], [0]]), ["a", "b", "c"]).tolist() == [["c"], ["a"]]
    assert decode_classes(np.array([1, 0])).tolist() == ["1", "0"]


def test_encode_labels_unknown_value():
    with pytest.raises(ValueError, match=r"Labels 'z' are not in label_vocabulary \['a', 'b'\]"):
        encode_labels(["a", "z"], ["a", "b"])


# ----------------------------------------------------------------------------------------------------------
# MultiLabelHead


def test_multilabel_loss_predictions_and_metrics():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    logits = RNG.normal(size=(80, 3)).astype("float32") * 2
    labels = (RNG.uniform(size=(80, 3)) < np_sigmoid(logits)).astype("float32")
    head = MultiLabelHead(3, thresholds=[0.5], classes_for_class_based_metrics=[1],
                          loss_reduction=LossReduction.SUM)
    predictions = head.predictions(torch.from_numpy(logits))
    assert {k: list(v.shape) for k, v in predictions.items()} == {"logits": [80, 3], "probabilities": [80, 3], "classes": [80, 3]}
    per_example = np_sigmoid_xent(labels, logits).mean(1)
    assert float(head.loss(torch.from_numpy(labels), torch.from_numpy(logits))) == pytest.approx(per_example.sum(), rel=1e-5)
    metrics = evaluate(head.metrics({}, torch.from_numpy(logits), torch.from_numpy(labels)))
    assert sorted(metrics) == sorted(["average_loss", "auc", "auc_precision_recall", "accuracy/positive_threshold_0.5",
                                      "precision/positive_threshold_0.5", "recall/positive_threshold_0.5",
                                      "probability_mean/class1", "auc/class1", "auc_precision_recall/class1"])
    p = np_sigmoid(logits)
    assert metrics["average_loss"] == pytest.approx(per_example.mean(), rel=1e-5)
    assert metrics["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels.ravel(), p.ravel()), abs=0.01)
    assert metrics["auc/class1"] == pytest.approx(sklearn_metrics.roc_auc_score(labels[:, 1], p[:, 1]), abs=0.01)
    assert metrics["probability_mean/class1"] == pytest.approx(p[:, 1].mean(), rel=1e-5)
    assert metrics["accuracy/positive_threshold_0.5"] == pytest.approx(((p > 0.5) == labels).mean())


def test_multilabel_named_class_metrics_and_multi_hot():
    head = MultiLabelHead(3, label_vocabulary=["x", "y", "z"], classes_for_class_based_metrics=["z"])
    labels = head.multi_hot([["x", "z"], ["y"]])
    assert labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    metrics = head.metrics({}, torch.zeros(2, 3), torch.from_numpy(labels))
    assert "auc/z" in metrics and "probability_mean/z" in metrics


def test_multilabel_bad_labels():
    with pytest.raises(ValueError, match="multi-hot tensor of 0s and 1s"):
        MultiLabelHead(2).loss(torch.tensor([[0, 2]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"label id 5 is not in \[0, 2\)"):
        MultiLabelHead(2).multi_hot([[5]])
    with pytest.raises(ValueError, match="classes_for_class_based_metrics must hold ids"):
        MultiLabelHead(2, classes_for_class_based_metrics=[4])


# ----------------------------------------------------------------------------------------------------------
# RegressionHead


def test_regression_loss_metrics_and_export():
    logits = RNG.normal(size=(30, 2)).astype("float32")
    labels = RNG.normal(size=(30, 2)).astype("float32")
    weights = RNG.uniform(0.5, 2, size=(30, 1)).astype("float32")
    head = RegressionHead(label_dimension=2, weight_column="w")
    features = {"w": torch.from_numpy(weights)}
    squared = (logits - labels) ** 2
    loss = head.loss(torch.from_numpy(labels), torch.from_numpy(logits), features)
    assert float(loss) == pytest.approx((squared * weights).sum() / squared.size, rel=1e-5)
    metrics = evaluate(head.metrics(features, torch.from_numpy(logits), torch.from_numpy(labels)))
    assert sorted(metrics) == ["average_loss", "label/mean", "prediction/mean"]
    assert metrics["average_loss"] == pytest.approx(np_weighted_mean(squared, weights), rel=1e-5)
    assert metrics["label/mean"] == pytest.approx(np_weighted_mean(labels, weights), rel=1e-5)
    assert metrics["prediction/mean"] == pytest.approx(np_weighted_mean(logits, weights), rel=1e-5)
    outputs = head.export_outputs(head.predictions(torch.from_numpy(logits)))
    assert sorted(outputs) == ["predict", "regression", "serving_default"]
    assert isinstance(outputs["serving_default"], RegressionOutput)


def _tf_multi_value_fixture():
    """TF's test_weighted_multi_value_eval: 3d label, 1 example, one weight per value."""
    logits = torch.tensor([[45.0, 41.0, 44.0]])
    labels = torch.tensor([[35.0, 42.0, 45.0]])
    features = {"x": torch.tensor([[42.0, 43.0, 44.0]]), "label_weights": torch.tensor([[1.0, 0.1, 1.5]])}
    return RegressionHead(weight_column="label_weights", label_dimension=3), logits, labels, features


def test_regression_per_value_weights_match_tf():
    head, logits, labels, features = _tf_multi_value_fixture()
    # weighted loss = 1*100 + .1*1 + 1.5*1 = 101.6; loss = 101.6 / 3 values; average_loss = 101.6 / 2.6
    assert float(head.loss(labels, logits, features)) == pytest.approx(33.8666667, rel=1e-6)
    spec = head.create_estimator_spec(features, te.ModeKeys.EVAL, logits, labels)
    assert float(spec.loss) == pytest.approx(33.8666667, rel=1e-6)
    metrics = evaluate(spec.eval_metric_ops)
    assert sorted(metrics) == ["average_loss", "label/mean", "prediction/mean"]
    assert metrics["average_loss"] == pytest.approx(39.0769231, rel=1e-6)
    assert metrics["prediction/mean"] == pytest.approx((45 + 41 * 0.1 + 44 * 1.5) / 2.6, rel=1e-6)
    assert metrics["label/mean"] == pytest.approx((35 + 42 * 0.1 + 45 * 1.5) / 2.6, rel=1e-6)


def test_regression_per_value_weights_as_a_numeric_column():
    _, logits, labels, features = _tf_multi_value_fixture()
    head = RegressionHead(label_dimension=3, weight_column=numeric_column("label_weights", shape=(3,)))
    assert float(head.loss(labels, logits, features)) == pytest.approx(33.8666667, rel=1e-6)
    with pytest.raises(ValueError, match=r"`weight_column` must have shape \(1,\) or \(3,\); received \(2,\)"):
        RegressionHead(label_dimension=3, weight_column=numeric_column("w", shape=(2,)))
    with pytest.raises(ValueError, match=r"`weight_column` must have shape \(1,\); received \(3,\)"):
        BinaryClassHead(weight_column=numeric_column("w", shape=(3,)))


@pytest.mark.parametrize("weights", [torch.ones(2, 2), torch.ones(2, 2, 3), torch.ones(3, 3)])
def test_regression_weights_of_another_shape_are_rejected(weights):
    # TF's test_multi_dim_train_weights_wrong_inner_dim / _outer_dim: "weights shape".
    head = RegressionHead(weight_column="w", label_dimension=3)
    with pytest.raises(ValueError, match=r"weights shape \(feature 'w'\) must be \[batch_size\] or \[batch_size, 1\] or "
                                         r"\[batch_size, 3\]; received"):
        head.loss(torch.zeros(2, 3), torch.zeros(2, 3), {"w": weights})


def test_classifier_weights_stay_one_per_example():
    with pytest.raises(ValueError, match=r"weights shape \(feature 'w'\) must be \[batch_size\] or \[batch_size, 1\]; received \[2, 3\]"):
        MultiClassHead(3, weight_column="w").loss(torch.tensor([0, 1]), torch.zeros(2, 3), {"w": torch.ones(2, 3)})


def test_regression_inverse_link_fn():
    head = RegressionHead(inverse_link_fn=torch.exp)
    predictions = head.predictions(torch.tensor([[0.0], [1.0]]))
    assert sorted(predictions) == ["logits", "predictions"]
    assert predictions["predictions"][1, 0].item() == pytest.approx(np.e)


def test_regression_accepts_flat_labels_and_rejects_bad_dimension():
    assert float(RegressionHead().loss(torch.tensor([1.0, 3.0]), torch.tensor([[0.0], [0.0]]))) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="invalid `label_dimension` 0"):
        RegressionHead(label_dimension=0)


# ----------------------------------------------------------------------------------------------------------
# PoissonRegressionHead, LogisticRegressionHead (TF's test values)


def test_poisson_loss_and_predictions_match_tf():
    head = PoissonRegressionHead()
    logits = torch.tensor([[0.0], [-1.0], [1.0]])
    labels = torch.tensor([[1], [2], [3]], dtype=torch.int32)
    # exp(logits) - labels * logits + Stirling's log(labels!) for labels > 1: [1.0, 3.020, 1.482]
    assert float(head.loss(labels, logits, {"x": torch.tensor([[42.0]])})) == pytest.approx(1.834, abs=1e-3)
    predictions = head.predictions(logits)
    assert sorted(predictions) == ["logits", "predictions"]
    assert torch.allclose(predictions["predictions"], torch.exp(logits)) and torch.equal(predictions["logits"], logits)
    partial = PoissonRegressionHead(compute_full_loss=False).loss(labels, logits)
    assert float(partial) == pytest.approx(float((torch.exp(logits) - labels * logits).mean()), rel=1e-6)


def test_poisson_metrics_and_export_are_a_regressions():
    head = PoissonRegressionHead(name="count")
    logits, labels = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [4.0]])
    metrics = evaluate(head.metrics({}, logits, labels))
    assert sorted(metrics) == ["average_loss/count", "label/mean/count", "prediction/mean/count"]
    assert metrics["prediction/mean/count"] == pytest.approx((1 + np.e) / 2, rel=1e-6)
    outputs = head.export_outputs(head.predictions(logits))
    assert isinstance(outputs["serving_default"], RegressionOutput)


def test_poisson_rejects_negative_counts():
    with pytest.raises(ValueError, match=r"PoissonRegressionHead: labels must be counts >= 0; received \[-2.0\]"):
        PoissonRegressionHead().loss(torch.tensor([[1.0], [-2.0]]), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="`compute_full_loss` must be True or False; received 'yes'"):
        PoissonRegressionHead(compute_full_loss="yes")


def test_logistic_regression_loss_and_predictions_match_tf():
    head = LogisticRegressionHead()
    logits = torch.tensor([[0.0], [-1.0], [1.0]])
    labels = torch.tensor([[0.4], [0.6], [0.8]])
    assert float(head.loss(labels, logits)) == pytest.approx(0.7066, abs=1e-3)  # (0.6931 + 0.9133 + 0.5133) / 3
    predictions = head.predictions(logits)
    assert sorted(predictions) == ["logits", "predictions"]
    assert torch.allclose(predictions["predictions"], torch.sigmoid(logits))
    spec = head.create_estimator_spec({}, te.ModeKeys.EVAL, logits, labels)
    assert sorted(evaluate(spec.eval_metric_ops)) == ["average_loss", "label/mean", "prediction/mean"]
    assert isinstance(head.export_outputs(predictions)["serving_default"], RegressionOutput)


@pytest.mark.parametrize("labels", [[[0.4], [1.2], [0.8]], [[0.4], [-0.2], [0.8]]])
def test_logistic_regression_labels_outside_0_1_are_rejected(labels):
    # TF's test_train_labels_too_large / _negative.
    with pytest.raises(ValueError, match=r"Labels must be in range \[0, 1\]"):
        LogisticRegressionHead().loss(torch.tensor(labels), torch.tensor([[0.0], [-1.0], [1.0]]))


# ----------------------------------------------------------------------------------------------------------
# create_estimator_spec, in a custom model_fn, through the Estimator and export.


@pytest.mark.parametrize("mode", [te.ModeKeys.TRAIN, te.ModeKeys.EVAL, te.ModeKeys.PREDICT])
def test_create_estimator_spec_per_mode(mode):
    head = MultiClassHead(3)
    spec = head.create_estimator_spec({}, mode, torch.zeros(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0]))
    assert spec.mode == mode
    if mode == te.ModeKeys.PREDICT:
        assert spec.loss is None and sorted(spec.export_outputs) == ["classification", "predict", "serving_default"]
    else:
        assert spec.loss.item() == pytest.approx(np.log(3), rel=1e-6)
    assert (spec.eval_metric_ops is not None) == (mode == te.ModeKeys.EVAL)


def test_create_estimator_spec_regularization_and_train_op():
    head = RegressionHead()
    def train_op(loss):
        return None

    spec = head.create_estimator_spec({}, te.ModeKeys.TRAIN, torch.zeros(2, 1), torch.ones(2),
                                      train_op_fn=train_op, regularization_losses=[torch.tensor(0.5)])
    assert float(spec.loss) == pytest.approx(1.5)
    assert spec.train_op is train_op and "regularization_loss" in spec.summaries
    metrics = head.create_estimator_spec({}, te.ModeKeys.EVAL, torch.zeros(2, 1), torch.ones(2),
                                         regularization_losses=[torch.tensor(0.5)]).eval_metric_ops
    assert "regularization_loss" in metrics


def test_bad_mode():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        RegressionHead().create_estimator_spec({}, "serve", torch.zeros(2, 1))


def test_head_in_a_custom_model_fn_trains_evaluates_and_exports(tmp_path):
    from torch_estimator.serving import loader

    head = BinaryClassHead(label_vocabulary=["neg", "pos"])

    def model_fn(features, labels, mode, model):
        return head.create_estimator_spec(features, mode, model(features["x"]), labels)

    x = RNG.normal(size=(200, 3)).astype("float32")
    y = (x @ np.array([1.0, -1.0, 0.5]) > 0).astype("int64")
    est = te.Estimator(model_fn, model=torch.nn.Linear(3, 1), model_dir=str(tmp_path / "model"),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                       config=te.RunConfig(device="cpu", log_step_count_steps=None, random_seed=0))
    est.train(te.inputs.numpy_input_fn({"x": x}, y, batch_size=50, num_epochs=None, shuffle=True), steps=100)
    metrics = est.evaluate(te.inputs.numpy_input_fn({"x": x}, y, batch_size=200, shuffle=False))
    assert metrics["accuracy"] > 0.95 and metrics["auc"] > 0.98
    assert metrics["loss"] == pytest.approx(metrics["average_loss"], rel=1e-5)
    receiver = te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 3], torch.float32)})
    path = est.export_saved_model(str(tmp_path / "export"), receiver)
    served = loader.load(path)
    assert sorted(served.signatures) == ["classification", "predict", "regression", "serving_default"]
    document = served.signature_def("serving_default")
    assert document["method_name"] == "tensorflow/serving/classify"
    assert document["class_labels"] == ["neg", "pos"]
    assert sorted(document["outputs"]) == ["classes", "scores"]
    assert served.signature_def("regression")["method_name"] == "tensorflow/serving/regress"
    out = served({"x": x[:4]})
    expected = [p["probabilities"] for p in est.predict(te.inputs.numpy_input_fn({"x": x[:4]}, shuffle=False))]
    np.testing.assert_allclose(out["scores"].numpy(), np.stack(expected), rtol=1e-5)
    assert out["classes"].tolist() == [[0, 1]] * 4
