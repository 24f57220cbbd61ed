"""Canned estimators learn small real tasks (scikit-learn's bundled data sets), export, resume, and reject bad
arguments with clear messages.

Stated targets (held-out 20%): breast cancer accuracy > 0.93 (DNN, linear), > 0.9 (wide & deep); iris
accuracy > 0.9; wine accuracy > 0.85; diabetes (standardized labels, held-out variance ~0.8) average loss
< 0.6 (DNN, linear) and < 0.72 (wide & deep); baselines predict the label prior / mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import canned

datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy machine the thread pool's hand-offs make
    # each small op take milliseconds; one thread keeps these tests fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**overrides):
    return te.RunConfig(device="cpu", log_step_count_steps=None, random_seed=0, **overrides)


def split(x, y, seed=0):
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


class Data:
    """A bundled data set, standardized with the training split's statistics, as ``{"x": ...}`` features."""

    def __init__(self, loader, standardize_labels=False):
        bunch = loader()
        x, y, xt, yt = split(bunch.data, bunch.target)
        mean, std = x.mean(0), x.std(0) + 1e-8
        self.x, self.xt = ((x - mean) / std).astype("float32"), ((xt - mean) / std).astype("float32")
        if standardize_labels:
            y_mean, y_std = y.mean(), y.std()
            y, yt = ((y - y_mean) / y_std).astype("float32"), ((yt - y_mean) / y_std).astype("float32")
        self.y, self.yt = y, yt
        self.columns = [canned.numeric_column("x", shape=self.x.shape[1])]
        self.names = list(getattr(bunch, "target_names", []))

    def train_input(self, labels=None, batch_size=32):
        return te.inputs.numpy_input_fn({"x": self.x}, self.y if labels is None else labels, batch_size=batch_size,
                                        num_epochs=None, shuffle=True)

    def eval_input(self, labels=None):
        return te.inputs.numpy_input_fn({"x": self.xt}, self.yt if labels is None else labels, batch_size=256, shuffle=False)

    def fit(self, estimator, steps=300):
        estimator.train(self.train_input(), steps=steps)
        return estimator.evaluate(self.eval_input())


@pytest.fixture(scope="module")
def cancer():
    return Data(datasets.load_breast_cancer)


@pytest.fixture(scope="module")
def diabetes():
    return Data(datasets.load_diabetes, standardize_labels=True)


def adam(lr):
    return lambda parameters: torch.optim.Adam(parameters, lr=lr)


BINARY_METRICS = ["accuracy", "accuracy_baseline", "auc", "auc_precision_recall", "average_loss", "global_step",
                  "label/mean", "loss", "precision", "prediction/mean", "recall"]


# ----------------------------------------------------------------------------------------------------------
# Learning.


def test_dnn_classifier_breast_cancer(cancer, tmp_path):
    est = canned.DNNClassifier([16], cancer.columns, model_dir=tmp_path, optimizer=adam(0.01), config=config())
    metrics = cancer.fit(est)
    assert sorted(metrics) == BINARY_METRICS
    assert metrics["accuracy"] > 0.93 and metrics["auc"] > 0.97
    assert metrics["loss"] == pytest.approx(metrics["average_loss"], rel=1e-5)
    predictions = list(est.predict(te.inputs.numpy_input_fn({"x": cancer.xt[:5]}, shuffle=False)))
    assert sorted(predictions[0]) == ["all_class_ids", "all_classes", "class_ids", "classes", "logistic", "logits", "probabilities"]


def test_linear_classifier_breast_cancer_with_default_ftrl(cancer, tmp_path):
    est = canned.LinearClassifier(cancer.columns, model_dir=tmp_path, config=config())
    assert isinstance(est._optimizer, canned.Ftrl) and est._optimizer.param_groups[0]["lr"] == 0.2
    metrics = cancer.fit(est)
    assert metrics["accuracy"] > 0.93 and metrics["auc"] > 0.97


def test_wide_and_deep_classifier_breast_cancer(cancer, tmp_path):
    worst_radius = canned.numeric_column("worst", shape=1)
    linear = [canned.bucketized_column(worst_radius, [-1.0, -0.5, 0.0, 0.5, 1.0]), *cancer.columns]
    est = canned.DNNLinearCombinedClassifier(
        model_dir=tmp_path, linear_feature_columns=linear, dnn_feature_columns=cancer.columns, dnn_hidden_units=[16],
        dnn_optimizer=adam(0.01), config=config(),
    )
    features = lambda x: {"x": x, "worst": x[:, 20]}  # noqa: E731  (worst radius, standardized)
    est.train(te.inputs.numpy_input_fn(features(cancer.x), cancer.y, batch_size=32, num_epochs=None, shuffle=True), steps=300)
    metrics = est.evaluate(te.inputs.numpy_input_fn(features(cancer.xt), cancer.yt, batch_size=256, shuffle=False))
    assert metrics["accuracy"] > 0.9
    optimizer = est._optimizer
    assert isinstance(optimizer, canned.CombinedOptimizer) and sorted(optimizer.optimizers) == ["dnn", "linear"]
    assert isinstance(optimizer.optimizers["linear"], canned.Ftrl)
    assert optimizer.optimizers["linear"].param_groups[0]["lr"] == pytest.approx(min(0.005, 1 / np.sqrt(2)))


def test_dnn_classifier_iris_with_a_label_vocabulary(tmp_path):
    iris = Data(datasets.load_iris)
    est = canned.DNNClassifier([16], iris.columns, n_classes=3, label_vocabulary=iris.names, model_dir=tmp_path,
                               optimizer=adam(0.01), config=config())
    names, names_t = np.array(iris.names)[iris.y], np.array(iris.names)[iris.yt]
    ids = canned.encode_labels(names, iris.names)
    est.train(iris.train_input(labels=ids), steps=300)
    metrics = est.evaluate(iris.eval_input(labels=canned.encode_labels(names_t, iris.names)))
    assert sorted(metrics) == ["accuracy", "average_loss", "global_step", "loss"] and metrics["accuracy"] > 0.9
    batch = next(est.predict(te.inputs.numpy_input_fn({"x": iris.xt}, shuffle=False), yield_single_examples=False))
    decoded = canned.decode_classes(batch["classes"][:, 0], est.head.label_vocabulary)
    assert (decoded == names_t).mean() > 0.9


def test_linear_classifier_wine(tmp_path):
    wine = Data(datasets.load_wine)
    metrics = wine.fit(canned.LinearClassifier(wine.columns, n_classes=3, model_dir=tmp_path, config=config()))
    assert metrics["accuracy"] > 0.85


@pytest.mark.parametrize("build, target", [
    (lambda columns, d: canned.DNNRegressor([32], columns, model_dir=d, optimizer=adam(0.01), config=config()), 0.6),
    (lambda columns, d: canned.LinearRegressor(columns, model_dir=d, config=config()), 0.6),
    (lambda columns, d: canned.DNNLinearCombinedRegressor(model_dir=d, linear_feature_columns=columns,
                                                          dnn_feature_columns=columns, dnn_hidden_units=[16],
                                                          config=config()), 0.72),
], ids=["dnn", "linear", "wide_deep"])
def test_regressors_diabetes(diabetes, tmp_path, build, target):
    metrics = diabetes.fit(build(diabetes.columns, tmp_path))
    assert sorted(metrics) == ["average_loss", "global_step", "label/mean", "loss", "prediction/mean"]
    assert metrics["average_loss"] < target < diabetes.yt.var()


def test_baseline_classifier_learns_the_prior(cancer, tmp_path):
    est = canned.BaselineClassifier(model_dir=tmp_path, config=config())
    metrics = cancer.fit(est)
    assert metrics["accuracy"] == pytest.approx(metrics["accuracy_baseline"])
    prediction = next(est.predict(te.inputs.numpy_input_fn({"x": cancer.xt[:1]}, shuffle=False)))
    assert prediction["logistic"][0] == pytest.approx(cancer.y.mean(), abs=0.03)


def test_baseline_regressor_learns_the_mean(tmp_path):
    y = np.random.default_rng(0).normal(1.5, 0.5, size=400).astype("float32")
    est = canned.BaselineRegressor(model_dir=tmp_path, config=config())
    est.train(te.inputs.numpy_input_fn({"x": np.zeros(400, "float32")}, y, batch_size=50, num_epochs=None, shuffle=True), steps=300)
    prediction = next(est.predict(te.inputs.numpy_input_fn({"x": np.zeros(1, "float32")}, shuffle=False)))
    assert prediction["predictions"][0] == pytest.approx(y.mean(), abs=0.05)


def test_weight_column_zero_weights_ignore_examples(tmp_path):
    x = np.linspace(-1, 1, 200).astype("float32")
    y = (x > 0).astype("int64")
    flipped = 1 - y
    labels, weights = np.concatenate([y, flipped]), np.concatenate([np.ones(200), np.zeros(200)]).astype("float32")
    features = {"x": np.concatenate([x, x]), "w": weights}
    est = canned.LinearClassifier([canned.numeric_column("x")], weight_column="w", model_dir=tmp_path, config=config())
    est.train(te.inputs.numpy_input_fn(features, labels, batch_size=50, num_epochs=None, shuffle=True), steps=200)
    metrics = est.evaluate(te.inputs.numpy_input_fn(features, labels, batch_size=400, shuffle=False))
    assert metrics["accuracy"] > 0.95  # weighted: the flipped copies count for nothing


def test_multi_label_dnn_estimator(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype("float32")
    labels = (x[:, :2] > 0).astype("float32")
    head = canned.MultiLabelHead(2)
    est = canned.DNNEstimator(head, [8], [canned.numeric_column("x", shape=3)], model_dir=tmp_path,
                              optimizer=adam(0.02), config=config())
    est.train(te.inputs.numpy_input_fn({"x": x}, labels, batch_size=40, num_epochs=None, shuffle=True), steps=200)
    metrics = est.evaluate(te.inputs.numpy_input_fn({"x": x}, labels, batch_size=400, shuffle=False))
    assert metrics["auc"] > 0.97


def test_categorical_features_with_strings_train_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    raw = {"color": rng.choice(["red", "green", "blue", ""], 400), "city": rng.choice(list("abcdefgh"), 400)}
    y = np.isin(raw["color"], ["red", "blue"]).astype("int64")
    color = canned.categorical_column_with_vocabulary_list("color", ["red", "green", "blue"])
    city = canned.categorical_column_with_hash_bucket("city", 16)
    est = canned.DNNLinearCombinedClassifier(
        model_dir=tmp_path, linear_feature_columns=[color, canned.crossed_column(["color", "city"], 64)],
        dnn_feature_columns=[canned.embedding_column(color, 3), canned.indicator_column(city)], dnn_hidden_units=[8],
        dnn_optimizer=adam(0.05), config=config(),
    )
    features = canned.encode_features(raw, est.linear_feature_columns + est.dnn_feature_columns)
    est.train(te.inputs.numpy_input_fn(features, y, batch_size=40, num_epochs=None, shuffle=True), steps=200)
    metrics = est.evaluate(te.inputs.numpy_input_fn(features, y, batch_size=400, shuffle=False))
    assert metrics["accuracy"] > 0.97


# ----------------------------------------------------------------------------------------------------------
# Checkpoints, warm start, export.


def test_resume_restores_the_combined_optimizer(cancer, tmp_path):
    def build():
        return canned.DNNLinearCombinedClassifier(model_dir=tmp_path, linear_feature_columns=cancer.columns,
                                                  dnn_feature_columns=cancer.columns, dnn_hidden_units=[4], config=config())

    first = build()
    first.train(cancer.train_input(), steps=20)
    names = first.get_variable_names()
    assert any(n.startswith("optimizer/linear/") for n in names) and any(n.startswith("optimizer/dnn/") for n in names)
    second = build()
    second.train(cancer.train_input(), steps=5)
    assert second.get_variable_value("global_step") == 25
    accumulator = second._optimizer.optimizers["linear"].state_dict()["state"][0]["accumulator"]
    assert not torch.all(accumulator == 0.1)  # restored, not fresh


def test_warm_start_from_another_model_dir(cancer, tmp_path):
    source = canned.LinearClassifier(cancer.columns, model_dir=tmp_path / "a", config=config())
    source.train(cancer.train_input(), steps=50)
    # SGD: FTRL recomputes weights from its own accumulators, so a fresh FTRL would not keep warm weights.
    warm = canned.LinearClassifier(cancer.columns, model_dir=tmp_path / "b", optimizer="SGD", config=config(),
                                   warm_start_from=str(tmp_path / "a"))
    warm.train(cancer.train_input(), steps=1)
    before = source.get_variable_value("linear_model.weights.x")
    after = warm.get_variable_value("linear_model.weights.x")
    assert np.abs(after - before).max() < 0.05 and np.abs(before).max() > 0.1


def test_classifier_and_regressor_export_and_serve(cancer, diabetes, tmp_path):
    from torch_estimator.serving import loader

    classifier = canned.DNNClassifier([8], cancer.columns, model_dir=tmp_path / "c", optimizer=adam(0.01), config=config())
    classifier.train(cancer.train_input(), steps=50)
    spec = canned.make_feature_spec(cancer.columns)
    served = loader.load(classifier.export_saved_model(tmp_path / "ce", te.export.build_raw_serving_input_receiver_fn(spec)))
    assert sorted(served.signatures) == ["classification", "predict", "regression", "serving_default"]
    assert served.signature_def()["method_name"] == "tensorflow/serving/classify"
    assert served.signature_def()["inputs"] == {"x": {"dtype": "float32", "shape": [-1, 30]}}
    expected = next(classifier.predict(cancer.eval_input(), yield_single_examples=False))
    np.testing.assert_allclose(served({"x": cancer.xt})["scores"].numpy(), expected["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served({"x": cancer.xt}, "predict")["logits"].numpy(), expected["logits"], rtol=1e-5, atol=1e-6)

    regressor = canned.LinearRegressor(diabetes.columns, model_dir=tmp_path / "r", config=config())
    regressor.train(diabetes.train_input(), steps=50)
    served = loader.load(regressor.export_saved_model(tmp_path / "re", te.export.build_raw_serving_input_receiver_fn(
        canned.make_feature_spec(diabetes.columns))))
    assert sorted(served.signatures) == ["predict", "regression", "serving_default"]
    assert served.signature_def()["method_name"] == "tensorflow/serving/regress"
    expected = next(regressor.predict(diabetes.eval_input(), yield_single_examples=False))["predictions"]
    np.testing.assert_allclose(served({"x": diabetes.xt})["outputs"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_training_summaries(cancer, tmp_path):
    est = canned.DNNLinearCombinedClassifier(model_dir=tmp_path, linear_feature_columns=cancer.columns,
                                             dnn_feature_columns=cancer.columns, dnn_hidden_units=[4, 3],
                                             config=config(save_summary_steps=1))
    model_fn = canned.base._canned_model_fn(est.head)
    model_fn_spec = model_fn(features={"x": torch.from_numpy(cancer.x[:8])}, labels=torch.from_numpy(cancer.y[:8]),
                             mode=te.ModeKeys.TRAIN, model=est.model)
    assert sorted(model_fn_spec.summaries) == [
        "dnn/hiddenlayer_0/activation", "dnn/hiddenlayer_0/fraction_of_zero_values",
        "dnn/hiddenlayer_1/activation", "dnn/hiddenlayer_1/fraction_of_zero_values",
        "linear/bias", "linear/fraction_of_zero_weights",
    ]
    assert float(model_fn_spec.summaries["linear/fraction_of_zero_weights"]()) == 1.0  # TF starts linear weights at 0


def test_training_summaries_reach_tensorboard_as_tf_named_them(cancer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    est = canned.DNNLinearCombinedClassifier(model_dir=tmp_path, linear_feature_columns=cancer.columns,
                                             dnn_feature_columns=cancer.columns, dnn_hidden_units=[4, 3],
                                             config=config(save_summary_steps=5))
    est.train(cancer.train_input(), steps=6)
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {
        "loss", "learning_rate/linear", "learning_rate/dnn", "linear/bias", "linear/fraction_of_zero_weights",
        "dnn/hiddenlayer_0/fraction_of_zero_values", "dnn/hiddenlayer_1/fraction_of_zero_values"}
    assert set(tags["histograms"]) == {"dnn/hiddenlayer_0/activation", "dnn/hiddenlayer_1/activation"}
    assert [e.step for e in events.Histograms("dnn/hiddenlayer_1/activation")] == [1, 6]
    assert [e.value for e in events.Scalars("learning_rate/dnn")] == pytest.approx([0.001, 0.001])
    assert events.Scalars("learning_rate/linear")[0].value == pytest.approx(min(0.005, 1 / np.sqrt(len(cancer.columns))))
    assert 0.0 <= events.Scalars("dnn/hiddenlayer_0/fraction_of_zero_values")[0].value <= 1.0
    assert tags["graph"] is True  # the canned network traces on the features dict


# ----------------------------------------------------------------------------------------------------------
# Errors.


COLUMNS = [canned.numeric_column("x")]


@pytest.mark.parametrize("build, match", [
    (lambda: canned.DNNClassifier([4], COLUMNS, n_classes=1), "DNNClassifier: n_classes must be an int > 1; received 1"),
    (lambda: canned.LinearClassifier(COLUMNS, n_classes="3"), "n_classes must be an int > 1"),
    (lambda: canned.DNNClassifier([4], COLUMNS, optimizer="Adamax"), "Unsupported optimizer name: 'Adamax'"),
    (lambda: canned.DNNClassifier([], COLUMNS), r"`hidden_units` must be a non-empty list of layer sizes, e.g. \[64, 32\]"),
    (lambda: canned.DNNRegressor([4, 0], COLUMNS), r"`hidden_units` must hold ints >= 1; received \[4, 0\]"),
    (lambda: canned.DNNRegressor(4, COLUMNS), "`hidden_units` must be a non-empty list"),
    (lambda: canned.DNNClassifier([4], COLUMNS, dropout=1.0), r"`dropout` must be None or a probability in \[0, 1\)"),
    (lambda: canned.DNNClassifier([4], COLUMNS, activation_fn="relu"), "`activation_fn` must be a callable"),
    (lambda: canned.DNNClassifier([4], COLUMNS, n_classes=3, label_vocabulary=["a", "b"]),
     r"`label_vocabulary` must have n_classes \(3\) entries; received 2"),
    (lambda: canned.DNNClassifier([4], [canned.categorical_column_with_identity("d", 3)]), "'d' is categorical. Wrap it"),
    (lambda: canned.LinearRegressor([]), "`feature_columns` must not be empty"),
    (lambda: canned.LinearRegressor(COLUMNS, label_dimension=0), "invalid `label_dimension` 0"),
    (lambda: canned.LinearClassifier(COLUMNS, loss_reduction="mean"), "invalid `loss_reduction` 'mean'"),
    (lambda: canned.DNNLinearCombinedClassifier(), "either linear_feature_columns or dnn_feature_columns must be defined"),
    (lambda: canned.DNNLinearCombinedRegressor(dnn_feature_columns=COLUMNS),
     "dnn_hidden_units must be defined when dnn_feature_columns is specified"),
    (lambda: canned.DNNLinearCombinedClassifier(linear_feature_columns=COLUMNS, linear_optimizer="Adadelta"),
     "Unsupported optimizer name: 'Adadelta'.*linear_optimizer=lambda"),
    (lambda: canned.DNNEstimator("binary", [4], COLUMNS), r"`head` must be a Head \(e.g. BinaryClassHead\(\)\)"),
])
def test_bad_arguments(build, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        build()


def test_missing_feature_and_out_of_range_labels(tmp_path):
    est = canned.DNNClassifier([4], [canned.numeric_column("age")], n_classes=3, model_dir=tmp_path, config=config())
    with pytest.raises(ValueError, match=r"Feature 'age' \(needed by column 'age'\) is not in the input features; received keys \['x'\]"):
        est.train(te.inputs.numpy_input_fn({"x": np.zeros(4, "float32")}, np.zeros(4, "int64"), shuffle=False), steps=1)
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 3\); received \[5\]"):
        est.train(te.inputs.numpy_input_fn({"age": np.zeros(4, "float32")}, np.array([0, 1, 5, 2]), shuffle=False), steps=1)


def test_features_must_be_a_dict(tmp_path):
    est = canned.LinearRegressor([canned.numeric_column("x")], model_dir=tmp_path, config=config())
    with pytest.raises(TypeError, match="read a dict of feature tensors keyed by feature name"):
        est.train(te.inputs.numpy_input_fn(np.zeros(4, "float32"), np.zeros(4, "float32"), shuffle=False), steps=1)


def test_canned_estimators_are_estimators():
    assert issubclass(te.DNNClassifier, te.Estimator) and te.LinearRegressor is canned.LinearRegressor
    assert te.feature_column.numeric_column is canned.numeric_column
