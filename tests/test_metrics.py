"""Tests for torch_estimator.metrics against numpy reference implementations."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import torch_estimator.metrics as metrics
from torch_estimator.metrics import MetricAccumulator, MetricUpdate

# ---------------------------------------------------------------------------
# Numpy references (TF v1 semantics).
# ---------------------------------------------------------------------------


def np_weights(weights, shape):
    if weights is None:
        return np.ones(shape)
    return np.broadcast_to(np.asarray(weights, dtype=np.float64), shape)


def np_mean(values, weights=None):
    w = np_weights(weights, np.shape(values))
    count = w.sum()
    return (np.asarray(values, dtype=np.float64) * w).sum() / count if count > 0 else 0.0


def np_counts(labels, predictions, weights=None):
    lab, pred = np.asarray(labels) != 0, np.asarray(predictions) != 0
    w = np_weights(weights, lab.shape)
    return {
        "tp": (w * (lab & pred)).sum(),
        "fp": (w * (~lab & pred)).sum(),
        "tn": (w * (~lab & ~pred)).sum(),
        "fn": (w * (lab & ~pred)).sum(),
    }


def np_ratio(num, den):
    return num / den if den > 0 else 0.0


def np_precision(labels, predictions, weights=None):
    c = np_counts(labels, predictions, weights)
    return np_ratio(c["tp"], c["tp"] + c["fp"])


def np_recall(labels, predictions, weights=None):
    c = np_counts(labels, predictions, weights)
    return np_ratio(c["tp"], c["tp"] + c["fn"])


def np_auc(labels, predictions, weights=None, num_thresholds=200, curve="ROC",
           summation_method="trapezoidal"):
    """Direct transcription of tf.compat.v1.metrics.auc."""
    kepsilon, epsilon = 1e-7, 1e-6
    thresholds = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    thresholds = np.array([0.0 - kepsilon] + thresholds + [1.0 + kepsilon], dtype=np.float32)
    lab = np.asarray(labels).reshape(-1) != 0
    pred = np.asarray(predictions, dtype=np.float32).reshape(-1)
    w = np_weights(weights, np.shape(labels)).reshape(-1)
    pos = pred[None, :] > thresholds[:, None]
    tp = (w * (lab & pos)).sum(1)
    fp = (w * (~lab & pos)).sum(1)
    tn = (w * (~lab & ~pos)).sum(1)
    fn = (w * (lab & ~pos)).sum(1)
    if curve == "PR" and summation_method == "careful_interpolation":
        return np_interpolate_pr_auc(tp, fp, fn)
    rec = (tp + epsilon) / (tp + fn + epsilon)
    if curve == "ROC":
        x, y = fp / (fp + tn + epsilon), rec
    else:
        x, y = rec, (tp + epsilon) / (tp + fp + epsilon)
    heights = {
        "trapezoidal": (y[:-1] + y[1:]) / 2.0,
        "careful_interpolation": (y[:-1] + y[1:]) / 2.0,
        "minoring": np.minimum(y[:-1], y[1:]),
        "majoring": np.maximum(y[:-1], y[1:]),
    }[summation_method]
    return np.sum((x[:-1] - x[1:]) * heights)


def np_div_no_nan(a, b):
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def np_interpolate_pr_auc(tp, fp, fn):
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    slope = np_div_no_nan(dtp, np.maximum(p[:-1] - p[1:], 0))
    intercept = tp[1:] - slope * p[1:]
    ratio = np.where((p[:-1] > 0) & (p[1:] > 0), np_div_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
    return np.sum(np_div_no_nan(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)))


NP_REFERENCES = {
    "accuracy": lambda l, p, w=None: np_mean(np.asarray(l) == np.asarray(p), w),
    "precision": np_precision,
    "recall": np_recall,
    "true_positives": lambda l, p, w=None: np_counts(l, p, w)["tp"],
    "false_positives": lambda l, p, w=None: np_counts(l, p, w)["fp"],
    "true_negatives": lambda l, p, w=None: np_counts(l, p, w)["tn"],
    "false_negatives": lambda l, p, w=None: np_counts(l, p, w)["fn"],
    "auc": np_auc,
    "mean_squared_error": lambda l, p, w=None: np_mean((np.asarray(l) - np.asarray(p)) ** 2, w),
    "root_mean_squared_error": lambda l, p, w=None: np.sqrt(np_mean((np.asarray(l) - np.asarray(p)) ** 2, w)),
    "mean_absolute_error": lambda l, p, w=None: np_mean(np.abs(np.asarray(l) - np.asarray(p)), w),
}
CLASSIFICATION = {"accuracy", "precision", "recall", "true_positives", "false_positives",
                  "true_negatives", "false_negatives"}


def make_data(name, n, seed):
    """Labels/predictions suited to metric ``name``, plus positive weights."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.0, 2.0, size=n)
    if name in CLASSIFICATION:
        return rng.integers(0, 2, n), rng.integers(0, 2, n), weights
    if name == "auc":
        return rng.integers(0, 2, n), rng.uniform(0.0, 1.0, n).astype(np.float32), weights
    return rng.normal(size=n), rng.normal(size=n), weights


def value(update: MetricUpdate) -> float:
    return float(update.compute(update.stats))


# ---------------------------------------------------------------------------
# Single-batch comparisons with numpy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["none", "scalar", "tensor"])
@pytest.mark.parametrize("name", sorted(NP_REFERENCES))
def test_metric_matches_numpy(name, weighting):
    labels, predictions, w = make_data(name, 37, seed=0)
    weights = {"none": None, "scalar": 0.5, "tensor": w}[weighting]
    torch_weights = torch.as_tensor(weights) if weighting == "tensor" else weights
    update = getattr(metrics, name)(torch.as_tensor(labels), torch.as_tensor(predictions), torch_weights)
    expected = NP_REFERENCES[name](labels, predictions, weights)
    np.testing.assert_allclose(value(update), expected, rtol=1e-10, atol=1e-12)


def test_mean_matches_numpy_with_weights():
    rng = np.random.default_rng(1)
    values, weights = rng.normal(size=(4, 5)), rng.uniform(size=(4, 5))
    update = metrics.mean(torch.as_tensor(values), torch.as_tensor(weights))
    np.testing.assert_allclose(value(update), np_mean(values, weights), rtol=1e-12)


@pytest.mark.parametrize("curve", ["ROC", "PR"])
@pytest.mark.parametrize("summation_method", ["trapezoidal", "minoring", "majoring", "careful_interpolation"])
def test_auc_matches_tf_algorithm(curve, summation_method):
    labels, predictions, weights = make_data("auc", 500, seed=2)
    update = metrics.auc(torch.as_tensor(labels), torch.as_tensor(predictions), torch.as_tensor(weights),
                         num_thresholds=50, curve=curve, summation_method=summation_method)
    expected = np_auc(labels, predictions, weights, 50, curve, summation_method)
    np.testing.assert_allclose(value(update), expected, rtol=1e-9)


def test_auc_predictions_on_thresholds_and_bounds():
    labels = np.array([0, 1, 0, 1, 1, 0])
    predictions = np.array([0.0, 1.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    update = metrics.auc(torch.as_tensor(labels), torch.as_tensor(predictions), num_thresholds=5)
    np.testing.assert_allclose(value(update), np_auc(labels, predictions, num_thresholds=5), rtol=1e-12)


def test_auc_perfect_classifier_is_one():
    labels = torch.tensor([0, 0, 1, 1, 1])
    predictions = torch.tensor([0.05, 0.2, 0.7, 0.8, 0.99])
    assert value(metrics.auc(labels, predictions)) == pytest.approx(1.0, abs=1e-5)


def test_auc_random_classifier_is_half():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (100_000,), generator=generator)
    predictions = torch.rand(100_000, generator=generator)
    assert value(metrics.auc(labels, predictions)) == pytest.approx(0.5, abs=0.01)


def test_auc_stats_have_one_entry_per_threshold():
    update = metrics.auc(torch.tensor([0, 1]), torch.tensor([0.3, 0.6]), num_thresholds=7)
    assert {key: tuple(t.shape) for key, t in update.stats.items()} == {
        "tp": (7,), "fp": (7,), "tn": (7,), "fn": (7,)}


def test_precision_and_recall_zero_denominator_give_zero():
    labels, predictions = torch.zeros(3), torch.zeros(3)
    assert value(metrics.precision(labels, predictions)) == 0.0
    assert value(metrics.recall(labels, predictions)) == 0.0


def test_mean_zero_total_weight_gives_zero():
    assert value(metrics.mean(torch.tensor([1.0, 2.0]), torch.zeros(2))) == 0.0


def test_predictions_and_labels_cast_to_bool():
    labels = torch.tensor([0.0, 0.5, 2.0, -1.0])
    predictions = torch.tensor([3, 0, 1, 0])
    assert value(metrics.true_positives(labels, predictions)) == 1.0
    assert value(metrics.false_negatives(labels, predictions)) == 2.0


def test_accuracy_casts_predictions_to_label_dtype():
    labels = torch.tensor([1, 2, 3])
    predictions = torch.tensor([1.2, 2.0, 2.9])  # truncated to [1, 2, 2]
    assert value(metrics.accuracy(labels, predictions)) == pytest.approx(2 / 3)


def test_numpy_inputs_are_accepted():
    labels, predictions, weights = make_data("mean_absolute_error", 10, seed=3)
    update = metrics.mean_absolute_error(labels, predictions, weights)
    np.testing.assert_allclose(value(update), NP_REFERENCES["mean_absolute_error"](labels, predictions, weights))


def test_trailing_unit_dimension_is_squeezed():
    labels = torch.tensor([[1], [0], [1]])
    predictions = torch.tensor([1, 1, 1])
    assert value(metrics.accuracy(labels, predictions)) == pytest.approx(2 / 3)


def test_lower_rank_weights_broadcast_per_row():
    rng = np.random.default_rng(4)
    labels, predictions = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    weights = rng.uniform(size=6)
    update = metrics.mean_squared_error(torch.as_tensor(labels), torch.as_tensor(predictions), torch.as_tensor(weights))
    np.testing.assert_allclose(value(update), np_mean((labels - predictions) ** 2, weights[:, None]))


def test_empty_batch_gives_zero_stats():
    for name in ("precision", "auc", "mean_squared_error"):
        update = getattr(metrics, name)(torch.zeros(0), torch.zeros(0))
        assert all(torch.all(t == 0) for t in update.stats.values())


def test_stats_are_float64_on_cpu():
    update = metrics.accuracy(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert all(t.dtype == torch.float64 for t in update.stats.values())


# ---------------------------------------------------------------------------
# Argument errors.
# ---------------------------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"labels \(2, 3\) and predictions \(3,\)"):
        metrics.accuracy(torch.zeros(2, 3), torch.zeros(3))


def test_unbroadcastable_weights_raise():
    with pytest.raises(ValueError, match=r"weights shape \(4,\) cannot be broadcast to values shape \(3,\)"):
        metrics.precision(torch.zeros(3), torch.zeros(3), torch.ones(4))


def test_auc_bad_curve_raises():
    with pytest.raises(ValueError, match="curve must be either ROC or PR, 'XY' unknown"):
        metrics.auc(torch.zeros(3), torch.zeros(3), curve="XY")


def test_auc_bad_summation_method_raises():
    with pytest.raises(ValueError, match="Invalid summation_method: 'simpson'"):
        metrics.auc(torch.zeros(3), torch.zeros(3), summation_method="simpson")


@pytest.mark.parametrize("num_thresholds", [1, 0, -3, 2.5])
def test_auc_bad_num_thresholds_raises(num_thresholds):
    with pytest.raises(ValueError, match="num_thresholds must be an integer >= 2"):
        metrics.auc(torch.zeros(3), torch.zeros(3), num_thresholds=num_thresholds)


def test_auc_two_thresholds_is_allowed():
    update = metrics.auc(torch.tensor([0, 1]), torch.tensor([0.2, 0.9]), num_thresholds=2)
    assert value(update) == pytest.approx(np_auc([0, 1], [0.2, 0.9], num_thresholds=2))


# ---------------------------------------------------------------------------
# MetricAccumulator.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NP_REFERENCES))
def test_accumulation_over_batches_matches_numpy_on_concatenation(name):
    sizes = [5, 17, 1, 40]
    batches = [make_data(name, n, seed=10 + i) for i, n in enumerate(sizes)]
    accumulator = MetricAccumulator()
    for labels, predictions, weights in batches:
        accumulator.update({name: getattr(metrics, name)(
            torch.as_tensor(labels), torch.as_tensor(predictions), torch.as_tensor(weights))})
    labels, predictions, weights = (np.concatenate(parts) for parts in zip(*batches))
    expected = NP_REFERENCES[name](labels, predictions, weights)
    np.testing.assert_allclose(accumulator.compute()[name], expected, rtol=1e-10, atol=1e-12)


def test_mean_accumulation_over_batches():
    accumulator = MetricAccumulator()
    chunks = [np.arange(3.0), np.arange(10.0, 17.0)]
    for chunk in chunks:
        accumulator.update({"m": metrics.mean(torch.as_tensor(chunk))})
    assert accumulator.compute()["m"] == pytest.approx(np.concatenate(chunks).mean())


def test_compute_returns_numpy_scalar():
    accumulator = MetricAccumulator()
    accumulator.update({"acc": metrics.accuracy(torch.tensor([1]), torch.tensor([1]))})
    result = accumulator.compute()["acc"]
    assert isinstance(result, np.float64) and result == 1.0


def test_first_batch_stats_are_cloned():
    update = metrics.true_positives(torch.tensor([1, 1]), torch.tensor([1, 1]))
    accumulator = MetricAccumulator()
    accumulator.update({"tp": update})
    update.stats["tp"].add_(100.0)
    assert accumulator.compute()["tp"] == 2.0


def test_stats_returns_summed_stats():
    accumulator = MetricAccumulator()
    for _ in range(3):
        accumulator.update({"fp": metrics.false_positives(torch.tensor([0, 1]), torch.tensor([1, 1]))})
    stats = accumulator.stats()
    assert list(stats) == ["fp"] and list(stats["fp"]) == ["fp"]
    assert torch.equal(stats["fp"]["fp"], torch.tensor(3.0, dtype=torch.float64))


def test_reduce_is_applied_to_each_stat():
    accumulator = MetricAccumulator()
    accumulator.update({"tp": metrics.true_positives(torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1]))})
    seen = []

    def double(tensor):
        seen.append(tensor)
        return tensor * 2

    assert accumulator.compute(reduce=double)["tp"] == 4.0
    assert len(seen) == 1
    assert accumulator.compute()["tp"] == 2.0  # buffers are not modified by reduce


def test_reset_clears_state():
    accumulator = MetricAccumulator()
    accumulator.update({"tp": metrics.true_positives(torch.tensor([1]), torch.tensor([1]))})
    accumulator.reset()
    assert accumulator.compute() == {}
    accumulator.update({"other": metrics.mean(torch.tensor([2.0]))})  # new names are fine after reset
    assert accumulator.compute() == {"other": 2.0}


def test_unknown_metric_type_raises_type_error():
    accumulator = MetricAccumulator()
    with pytest.raises(TypeError, match=r"eval_metric_ops\['bad'\] must be a MetricUpdate .*received <class 'float'>"):
        accumulator.update({"bad": 0.5})


def test_metric_names_change_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"a": metrics.mean(torch.tensor([1.0]))})
    with pytest.raises(ValueError, match=r"same names in every batch: expected \['a'\], received \['a', 'b'\]"):
        accumulator.update({"a": metrics.mean(torch.tensor([1.0])), "b": metrics.mean(torch.tensor([1.0]))})


def test_stat_keys_change_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"m": metrics.precision(torch.tensor([1]), torch.tensor([1]))})
    with pytest.raises(ValueError, match=r"\['m'\] stat keys changed between batches: expected \['fp', 'tp'\], received \['fn', 'tp'\]"):
        accumulator.update({"m": metrics.recall(torch.tensor([1]), torch.tensor([1]))})


def test_stat_shape_change_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"auc": metrics.auc(torch.tensor([1]), torch.tensor([0.5]), num_thresholds=10)})
    with pytest.raises(ValueError, match=r"\['auc'\] stat '.*' shape changed between batches: expected \(10,\), received \(20,\)"):
        accumulator.update({"auc": metrics.auc(torch.tensor([1]), torch.tensor([0.5]), num_thresholds=20)})


def test_failed_update_leaves_state_unchanged():
    accumulator = MetricAccumulator()
    accumulator.update({"a": metrics.mean(torch.tensor([1.0])), "b": metrics.mean(torch.tensor([1.0]))})
    with pytest.raises(TypeError):
        accumulator.update({"a": metrics.mean(torch.tensor([5.0])), "b": "oops"})
    assert accumulator.compute() == {"a": 1.0, "b": 1.0}


# ---------------------------------------------------------------------------
# torchmetrics-protocol objects.
# ---------------------------------------------------------------------------


class RunningSum:
    """Minimal object following the torchmetrics update/compute/reset protocol."""

    def __init__(self, result_shape=()):
        self.total = torch.zeros(result_shape)
        self.resets = 0

    def update(self, values):
        self.total += values

    def compute(self):
        return self.total.clone()

    def reset(self):
        self.total = torch.zeros_like(self.total)
        self.resets += 1


def test_is_metric():
    assert metrics.is_metric(RunningSum())
    assert not metrics.is_metric(metrics.mean(torch.tensor([1.0])))
    assert not metrics.is_metric(object())


def test_protocol_object_is_computed_and_reset():
    running = RunningSum()
    accumulator = MetricAccumulator()
    for batch in (torch.tensor(2.0), torch.tensor(3.0)):
        running.update(batch)
        accumulator.update({"sum": running})
    result = accumulator.compute()["sum"]
    assert isinstance(result, np.float32) and result == 5.0
    assert running.resets == 1 and float(running.total) == 0.0


def test_protocol_object_array_result_becomes_ndarray():
    running = RunningSum(result_shape=(2,))
    running.update(torch.tensor([1.0, 2.0]))
    accumulator = MetricAccumulator()
    accumulator.update({"vec": running})
    result = accumulator.compute()["vec"]
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, [1.0, 2.0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_protocol_object_half_precision_result_becomes_float32(dtype):
    running = RunningSum()
    running.total = torch.tensor(0.5, dtype=dtype)
    accumulator = MetricAccumulator()
    accumulator.update({"half": running})
    result = accumulator.compute()["half"]
    assert isinstance(result, np.float32) and result == 0.5


def test_protocol_object_python_number_result_kept():
    class Constant(RunningSum):
        def compute(self):
            return 7

    accumulator = MetricAccumulator()
    accumulator.update({"c": Constant()})
    assert accumulator.compute() == {"c": 7}


def test_metric_update_then_object_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"m": metrics.mean(torch.tensor([1.0]))})
    with pytest.raises(ValueError, match=r"\['m'\] was a MetricUpdate in an earlier batch but received <class '.*RunningSum'>"):
        accumulator.update({"m": RunningSum()})


def test_object_then_metric_update_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"m": RunningSum()})
    with pytest.raises(ValueError, match=r"\['m'\] was a metric object in an earlier batch but received a MetricUpdate"):
        accumulator.update({"m": metrics.mean(torch.tensor([1.0]))})


def test_different_protocol_object_raises():
    accumulator = MetricAccumulator()
    accumulator.update({"m": RunningSum()})
    with pytest.raises(ValueError, match=r"\['m'\] received a different .* object than in an earlier batch"):
        accumulator.update({"m": RunningSum()})


# ---------------------------------------------------------------------------
# Doctests and devices.
# ---------------------------------------------------------------------------


def test_doctests_pass():
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(params=[False, True], ids=["default", "deterministic"])
def deterministic_mode(request):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(NP_REFERENCES))
def test_cuda_metrics_match_numpy_without_sync(name, deterministic_mode):
    sizes = [5, 17, 40]
    batches = [make_data(name, n, seed=20 + i) for i, n in enumerate(sizes)]
    accumulator = MetricAccumulator()
    cuda_batches = [tuple(torch.as_tensor(a).cuda() for a in batch) for batch in batches]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for labels, predictions, weights in cuda_batches:
            update = getattr(metrics, name)(labels, predictions, weights)
            assert all(t.device.type == "cuda" for t in update.stats.values())
            accumulator.update({name: update})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    labels, predictions, weights = (np.concatenate(parts) for parts in zip(*batches))
    expected = NP_REFERENCES[name](labels, predictions, weights)
    np.testing.assert_allclose(accumulator.compute()[name], expected, rtol=1e-9, atol=1e-12)
