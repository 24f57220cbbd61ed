"""pandas_input_fn: TF's rules over a DataFrame, string columns fingerprinted for feature columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator.canned import fingerprint

pd = pytest.importorskip("pandas")


def frame():
    return pd.DataFrame({"age": [20.0, 30.0, 40.0, 50.0], "color": ["red", None, "blue", "red"]}, index=[10, 11, 12, 13])


def test_batches_features_and_labels_in_order():
    input_fn = te.pandas_input_fn(frame(), pd.Series([0, 1, 0, 1], index=[10, 11, 12, 13]), batch_size=3, shuffle=False)
    batches = list(input_fn())
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 0], [1]]
    features = batches[0][0]
    assert sorted(features) == ["age", "color"]  # the index is not a feature
    assert features["color"].tolist() == [fingerprint("red"), -1, fingerprint("blue")]


def test_dataframe_labels_become_a_dict_and_no_labels_gives_features_only():
    labels = pd.DataFrame({"a": [1, 2, 3, 4], "b": [0.5, 0.5, 0.5, 0.5]}, index=[10, 11, 12, 13])
    features, batch_labels = next(iter(te.pandas_input_fn(frame(), labels, batch_size=4, shuffle=False)()))
    assert sorted(batch_labels) == ["a", "b"] and batch_labels["a"].tolist() == [1, 2, 3, 4]
    only = next(iter(te.pandas_input_fn(frame(), batch_size=4, shuffle=False)()))
    assert sorted(only) == ["age", "color"]  # features alone


def _frames_with_dataframe_labels():
    index = np.arange(100, 104)
    x = pd.DataFrame({"a": np.arange(4), "b": np.arange(32, 36)}, index=index)
    y = pd.DataFrame({"a_target": np.arange(10, 14), "b_target": np.arange(50, 54)}, index=index)
    return x, y


@pytest.mark.parametrize("renamed", [{"a_target": "a", "b_target": "b"}, {"a_target": "a", "b_target": "a_n"}])
def test_label_columns_may_share_names_with_feature_columns(renamed):
    # TF's testPandasInputFnYIsDataFrame_HandlesOverlappingColumns(InTargets).
    x, y = _frames_with_dataframe_labels()
    y = y.rename(columns=renamed)
    batches = list(te.pandas_input_fn(x, y, batch_size=2, shuffle=False, num_epochs=1)())
    features, targets = batches[0]
    assert features["a"].tolist() == [0, 1] and features["b"].tolist() == [32, 33]
    first, second = renamed["a_target"], renamed["b_target"]
    assert targets[first].tolist() == [10, 11] and targets[second].tolist() == [50, 51]
    assert [t[first].tolist() for _, t in batches] == [[10, 11], [12, 13]]


def test_trains_a_canned_estimator_on_a_dataframe(tmp_path):
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": rng.normal(size=200).astype("float32"), "c": rng.choice(["a", "b"], 200)})
    y = pd.Series(((data["x"] > 0) ^ (data["c"] == "a")).astype("int64"))
    columns = [te.feature_column.numeric_column("x"),
               te.feature_column.categorical_column_with_vocabulary_list("c", ["a", "b"])]
    est = te.DNNClassifier([8], [columns[0], te.feature_column.indicator_column(columns[1])], model_dir=tmp_path,
                           optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                           config=te.RunConfig(device="cpu", log_step_count_steps=None, random_seed=0))
    est.train(te.pandas_input_fn(data, y, batch_size=40, num_epochs=None, shuffle=True), steps=150)
    metrics = est.evaluate(te.pandas_input_fn(data, y, batch_size=200, shuffle=False))
    assert metrics["accuracy"] > 0.9


@pytest.mark.parametrize("call, error, match", [
    (lambda: te.pandas_input_fn(frame()), ValueError, "shuffle must be provided and explicitly set as boolean"),
    (lambda: te.pandas_input_fn(frame(), pd.Series([0, 1, 0, 1]), shuffle=False), ValueError,
     "Index for x and y are mismatched"),
    (lambda: te.pandas_input_fn(frame().assign(target=1), pd.Series([0] * 4, index=[10, 11, 12, 13]), shuffle=False),
     ValueError, "Cannot use name target for target column"),
    (lambda: te.pandas_input_fn(frame(), pd.Series(["y", "n", "y", "n"], index=[10, 11, 12, 13]), shuffle=False),
     ValueError, "are strings; map them to class ids first with torch_estimator.canned.encode_labels"),
    (lambda: te.pandas_input_fn({"age": [1.0]}, shuffle=False), TypeError, "must be a pandas DataFrame"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
