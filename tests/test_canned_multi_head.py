"""MultiHead: TF's merge of losses (head_weights), predictions, metrics and export outputs; errors; training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator.canned import BinaryClassHead, MultiClassHead, MultiHead, MultiLabelHead, RegressionHead
from torch_estimator.export import ClassificationOutput, PredictOutput, RegressionOutput
from torch_estimator.metrics import MetricAccumulator
from torch_estimator.serving import loader


def evaluate(updates: dict) -> dict:
    accumulator = MetricAccumulator()
    accumulator.update(updates)
    return {k: float(v) for k, v in accumulator.compute().items()}


def _tf_two_multi_label_heads():
    """TF's two-head fixture: multi-label heads of 2 and 3 classes, each with its own example weights."""
    head = MultiHead([MultiLabelHead(2, name="head1", weight_column="weights1"),
                      MultiLabelHead(3, name="head2", weight_column="weights2")], head_weights=[1.0, 2.0])
    logits = {"head1": torch.tensor([[-10.0, 10.0], [-15.0, 10.0]]),
              "head2": torch.tensor([[20.0, -20.0, 20.0], [-30.0, 20.0, -20.0]])}
    labels = {"head1": torch.tensor([[1, 0], [1, 1]]), "head2": torch.tensor([[0, 1, 0], [1, 1, 0]])}
    features = {"x": torch.tensor([[42.0]]), "weights1": torch.tensor([[1.0], [2.0]]),
                "weights2": torch.tensor([[2.0], [3.0]])}
    return head, logits, labels, features


def test_loss_is_the_head_weighted_sum_of_the_heads_losses():
    head, logits, labels, features = _tf_two_multi_label_heads()
    # head1: per example mean over classes [10, 7.5], weighted by [1, 2] -> 25 / 2 examples = 12.5
    # head2: [20, 10] weighted by [2, 3] -> 70 / 2 = 35; merged: 1 * 12.5 + 2 * 35 = 82.5
    assert float(head.loss(labels, logits, features)) == pytest.approx(82.5, rel=1e-4)
    regularized = head.loss(labels, logits, features, regularization_losses=[torch.tensor(1.5), torch.tensor(0.5)])
    assert float(regularized) == pytest.approx(84.5, rel=1e-4)


def test_logits_as_one_tensor_are_split_in_the_heads_order():
    head, logits, labels, features = _tf_two_multi_label_heads()
    joined = torch.cat([logits["head1"], logits["head2"]], dim=-1)
    assert head.logits_dimension == 5
    assert float(head.loss(labels, joined, features)) == pytest.approx(float(head.loss(labels, logits, features)))
    predictions = head.predictions(joined)
    assert torch.equal(predictions[("head2", "logits")], logits["head2"])
    assert sorted(predictions) == [("head1", "classes"), ("head1", "logits"), ("head1", "probabilities"),
                                   ("head2", "classes"), ("head2", "logits"), ("head2", "probabilities")]


def test_eval_metrics_are_each_heads_plus_a_loss_per_head():
    head, logits, labels, features = _tf_two_multi_label_heads()
    spec = head.create_estimator_spec(features, te.ModeKeys.EVAL, logits, labels,
                                      regularization_losses=[torch.tensor(2.0)])
    assert float(spec.loss) == pytest.approx(84.5, rel=1e-4)
    metrics = evaluate(spec.eval_metric_ops)
    assert metrics["loss/head1"] == pytest.approx(12.5, rel=1e-4)
    assert metrics["loss/head2"] == pytest.approx(35.0, rel=1e-4)
    assert metrics["regularization_loss/head1_head2"] == pytest.approx(2.0)
    # Each head's own metrics, suffixed by its name: the weighted mean loss per example.
    assert metrics["average_loss/head1"] == pytest.approx(25.0 / 3.0, rel=1e-4)
    assert metrics["average_loss/head2"] == pytest.approx(70.0 / 5.0, rel=1e-4)
    assert {"auc/head1", "auc_precision_recall/head2"} <= set(metrics)


def test_export_outputs_serve_the_first_head_by_default_and_every_head_by_name():
    head = MultiHead([MultiClassHead(3, name="kind"), RegressionHead(name="size")])
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.5], [0.0, 3.0, 0.0, -1.0]])
    spec = head.create_estimator_spec({}, te.ModeKeys.PREDICT, logits)
    outputs = spec.export_outputs
    assert sorted(outputs) == ["kind", "kind/classification", "kind/predict", "predict", "serving_default",
                               "size", "size/predict", "size/regression"]
    assert outputs["serving_default"] is outputs["kind"] and isinstance(outputs["kind"], ClassificationOutput)
    assert isinstance(outputs["size"], RegressionOutput)
    merged = outputs["predict"]
    assert isinstance(merged, PredictOutput)
    assert sorted(merged.outputs) == sorted(
        [f"kind/{k}" for k in ("all_class_ids", "all_classes", "class_ids", "classes", "logits", "probabilities")]
        + ["size/predictions"])
    assert torch.equal(merged.outputs["size/predictions"], logits[:, 3:])


def test_train_spec_carries_the_merged_loss_and_the_train_op():
    head, logits, labels, features = _tf_two_multi_label_heads()
    seen = []
    spec = head.create_estimator_spec(features, te.ModeKeys.TRAIN, logits, labels, train_op_fn=seen.append)
    assert float(spec.loss) == pytest.approx(82.5, rel=1e-4)
    spec.train_op(spec.loss)
    assert seen == [spec.loss]
    assert ("head1", "probabilities") in spec.predictions


@pytest.mark.parametrize("make, match", [
    (lambda: MultiHead([]), "`heads` must be a non-empty list of heads"),
    (lambda: MultiHead([BinaryClassHead()]), "every head must have a name .*BinaryClassHead without one"),
    (lambda: MultiHead([BinaryClassHead(name="a"), RegressionHead(name="a")]), r"head names must be distinct; \['a'\] repeat"),
    (lambda: MultiHead([BinaryClassHead(name="a"), RegressionHead(name="b")], head_weights=[1.0]),
     r"`head_weights` must have one weight per head \(2\); received \[1.0\]"),
    (lambda: MultiHead([BinaryClassHead(name="a")], head_weights=["1"]), r"`head_weights` must be numbers; received \['1'\]"),
    (lambda: MultiHead(["a"]), "must hold single heads"),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_missing_labels_or_logits_for_a_head_name_it():
    head, logits, labels, features = _tf_two_multi_label_heads()
    with pytest.raises(ValueError, match=r"labels has missing values for head\(s\) \['head2'\]"):
        head.loss({"head1": labels["head1"]}, logits, features)
    with pytest.raises(ValueError, match=r"logits has missing values for head\(s\) \['head1'\]"):
        head.loss(labels, {"head2": logits["head2"]}, features)
    with pytest.raises(ValueError, match=r"labels must be a dict keyed by head name \['head1', 'head2'\]; received Tensor"):
        head.loss(labels["head1"], logits, features)
    with pytest.raises(ValueError, match=r"logits shape must be \[batch_size, 5\] .*received \[2, 4\]"):
        head.loss(labels, torch.zeros(2, 4), features)
    with pytest.raises(ValueError, match="You must provide a labels dict keyed by head name in TRAIN and EVAL mode"):
        head.create_estimator_spec(features, te.ModeKeys.TRAIN, logits)


def test_a_dnn_estimator_trains_evaluates_predicts_and_exports_a_multi_head(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype("float32")
    kind = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    size = (2.0 * x[:, 2]).astype("float32")
    head = MultiHead([MultiClassHead(3, name="kind"), RegressionHead(name="size")], head_weights=[1.0, 0.5])
    est = te.DNNEstimator(head, [16], [te.feature_column.numeric_column("x", shape=(3,))], model_dir=tmp_path,
                          optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                          config=te.RunConfig(device="cpu", log_step_count_steps=None, random_seed=0))
    labels = {"kind": kind, "size": size}
    est.train(te.inputs.numpy_input_fn({"x": x}, labels, batch_size=50, num_epochs=None, shuffle=True, seed=0), steps=150)
    metrics = est.evaluate(te.inputs.numpy_input_fn({"x": x}, labels, batch_size=100, shuffle=False))
    assert metrics["accuracy/kind"] > 0.85 and metrics["average_loss/size"] < 0.3
    assert metrics["loss"] == pytest.approx(metrics["loss/kind"] + 0.5 * metrics["loss/size"], rel=1e-4)
    first = next(iter(est.predict(te.inputs.numpy_input_fn({"x": x[:2]}, shuffle=False))))
    assert first[("kind", "class_ids")].shape == (1,) and first[("size", "predictions")].shape == (1,)
    receiver = te.export.build_raw_serving_input_receiver_fn({"x": te.export.TensorSpec([None, 3], torch.float32)})
    loaded = loader.load(est.export_saved_model(tmp_path / "export", receiver))
    assert sorted(loaded.signatures) == ["kind", "kind/classification", "kind/predict", "predict", "serving_default",
                                         "size", "size/predict", "size/regression"]
    served = loaded({"x": x[:2]}, "predict")
    assert np.allclose(np.asarray(served["size/predictions"])[0], first[("size", "predictions")], atol=1e-5)
    assert np.asarray(loaded({"x": x[:2]})["scores"]).shape == (2, 3)  # serving_default: the first head's classification
