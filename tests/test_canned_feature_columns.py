"""Feature columns: transformations against hand-computed values, host encoding, serving specs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import checkpoint as ckpt
from torch_estimator.canned import feature_columns as fc
from torch_estimator.canned.feature_columns import (
    DenseFeatures,
    LinearModel,
    bucketized_column,
    categorical_column_with_hash_bucket,
    categorical_column_with_identity,
    categorical_column_with_vocabulary_list,
    crossed_column,
    embedding_column,
    encode_features,
    fingerprint,
    indicator_column,
    make_feature_spec,
    numeric_column,
)


def tensors(raw):
    return {k: torch.as_tensor(v) for k, v in encode_features(raw).items()}


def ids(column, raw):
    layer = fc._ColumnStates([column])
    return column._ids(tensors(raw), layer.by_name()).tolist()


# ----------------------------------------------------------------------------------------------------------
# Fingerprints and host encoding.


def test_fingerprint_is_fnv1a_64_without_the_top_bit():
    assert fingerprint("") == 0xCBF29CE484222325 & (2**63 - 1)
    assert fingerprint("a") == 0xAF63DC4C8601EC8C & (2**63 - 1)  # the published FNV-1a 64 value of "a"
    assert fingerprint("é") == fingerprint("é") != fingerprint("e")


def test_encode_features_fingerprints_strings_and_marks_missing():
    encoded = encode_features({"s": np.array([["a", ""], ["b", "a"]]), "o": np.array(["a", None, float("nan")], dtype=object),
                               "x": np.array([1.5, 2.5]), "b": [b"a"]})
    assert encoded["s"].tolist() == [[fingerprint("a"), -1], [fingerprint("b"), fingerprint("a")]]
    assert encoded["o"].tolist() == [fingerprint("a"), -1, -1]
    assert encoded["x"].dtype == np.float64 and encoded["b"].tolist() == [fingerprint("a")]


def test_encode_features_accepts_a_dataframe():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"color": ["red", None], "n": [1, 2]})
    encoded = encode_features(frame, [numeric_column("n"), categorical_column_with_hash_bucket("color", 5)])
    assert encoded["color"].tolist() == [fingerprint("red"), -1] and encoded["n"].tolist() == [1, 2]


def test_encode_features_checks_columns():
    with pytest.raises(ValueError, match=r"Feature 'age' \(needed by column 'age'\) is not in the features; received keys \['x'\]"):
        encode_features({"x": [1.0]}, [numeric_column("age")])
    with pytest.raises(ValueError, match="Feature 'age' of numeric column 'age' must be numbers"):
        encode_features({"age": ["old"]}, [numeric_column("age")])
    with pytest.raises(ValueError, match="must be integers or strings; received floats"):
        encode_features({"day": [1.0]}, [categorical_column_with_identity("day", 7)])
    with pytest.raises(ValueError, match="mixes strings with int values"):
        encode_features({"s": np.array(["a", 3], dtype=object)})


# ----------------------------------------------------------------------------------------------------------
# Transformations.


def test_numeric_column_shape_default_and_normalizer():
    column = numeric_column("x", shape=(2,), default_value=-1.0, normalizer_fn=lambda t: t * 10)
    layer = DenseFeatures([column])
    out = layer({"x": torch.tensor([[1.0, float("nan")], [0.5, 2.0]], dtype=torch.float64)})
    assert out.dtype == torch.float32 and out.tolist() == [[10.0, -10.0], [5.0, 20.0]]


def test_numeric_column_wrong_size():
    with pytest.raises(ValueError, match=r"must have 2 value\(s\) per example; received shape \[3, 3\]"):
        DenseFeatures([numeric_column("x", shape=2)])({"x": torch.zeros(3, 3)})


def test_bucketized_column_follows_tf_boundaries():
    column = bucketized_column(numeric_column("age"), [18, 65])
    # TF's buckets: (-inf, 18), [18, 65), [65, inf)
    assert ids(column, {"age": np.array([10.0, 18.0, 64.9, 65.0, 99.0])}) == [[0], [1], [1], [2], [2]]
    two = bucketized_column(numeric_column("xy", shape=2), [0.0])
    assert two.num_buckets == 4 and ids(two, {"xy": np.array([[-1.0, 1.0]])}) == [[0, 3]]
    assert DenseFeatures([two])({"xy": torch.tensor([[-1.0, 1.0]])}).tolist() == [[1, 0, 0, 1]]


def test_vocabulary_list_strings_oov_and_missing():
    column = categorical_column_with_vocabulary_list("c", ["a", "b", "c"], num_oov_buckets=2)
    result = ids(column, {"c": np.array(["c", "a", "zz", ""])})
    assert result[:2] == [[2], [0]] and result[3] == [-1]
    assert result[2][0] == 3 + fingerprint("zz") % 2
    default = categorical_column_with_vocabulary_list("c", ["a", "b"], default_value=1)
    assert ids(default, {"c": np.array(["q", "a"])}) == [[1], [0]]


def test_vocabulary_list_of_ints_is_matched_inside_the_model():
    column = categorical_column_with_vocabulary_list("n", [10, 20, 30])
    assert column.dtype is int
    assert ids(column, {"n": np.array([30, 10, 11, -1])}) == [[2], [0], [-1], [-1]]


def test_identity_column_range_and_default():
    column = categorical_column_with_identity("d", 3)
    assert ids(column, {"d": np.array([[0, 2], [1, -1]])}) == [[0, 2], [1, -1]]
    assert ids(categorical_column_with_identity("d", 3, default_value=0), {"d": np.array([5, 2])}) == [[0], [2]]
    with pytest.raises(ValueError, match=r"Column 'd': ids must be in \[0, 3\) \(or -1 for no value\); received \[5\]"):
        ids(column, {"d": np.array([1, 5])})


def test_hash_bucket_is_fingerprint_mod_size():
    column = categorical_column_with_hash_bucket("s", 7)
    assert ids(column, {"s": np.array(["x", ""])}) == [[fingerprint("x") % 7], [-1]]
    assert ids(categorical_column_with_hash_bucket("i", 7, dtype=int), {"i": np.array([15])}) == [[1]]


def test_categorical_input_must_be_integers():
    with pytest.raises(TypeError, match="must hold integers.*received dtype torch.float32"):
        DenseFeatures([indicator_column(categorical_column_with_identity("d", 3))])({"d": torch.tensor([1.0])})


def test_crossed_column_hash_by_hand():
    bucket = bucketized_column(numeric_column("age"), [30])
    column = crossed_column([bucket, "color"], 50)
    raw = {"age": np.array([20.0, 40.0, 40.0]), "color": np.array(["red", "red", ""])}

    def expected(bucket_id, value):
        p, m = fc._CROSS_PRIME, fc._CROSS_MODULUS
        h = (fc._CROSS_SEED * p + bucket_id % m) % m
        return ((h * p + value % m) % m) % 50

    assert ids(column, raw) == [[expected(0, fingerprint("red"))], [expected(1, fingerprint("red"))], [-1]]
    assert column.name == "age_bucketized_X_color" and column.keys == ("age", "color")


def test_crossed_column_multivalent_crosses_every_combination():
    column = crossed_column(["a", "b"], 1000)
    result = ids(column, {"a": np.array([[1, 2]]), "b": np.array([[5, 6, 7]])})
    assert len(result[0]) == 6 and len(set(result[0])) == 6


def test_indicator_counts_repeated_ids():
    column = indicator_column(categorical_column_with_identity("d", 4))
    assert DenseFeatures([column])({"d": torch.tensor([[1, 1, 3], [-1, -1, -1]])}).tolist() == [[0, 2, 0, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize("combiner, expected", [("sum", [3.0, 30.0]), ("mean", [1.5, 15.0]),
                                               ("sqrtn", [3 / math.sqrt(2), 30 / math.sqrt(2)])])
def test_embedding_combiners(combiner, expected):
    column = embedding_column(categorical_column_with_identity("d", 3), 2, combiner=combiner)
    layer = DenseFeatures([column])
    with torch.no_grad():
        layer.column_states.states["d_embedding"].weight.copy_(torch.tensor([[1.0, 10.0], [2.0, 20.0], [0.0, 0.0]]))
    out = layer({"d": torch.tensor([[0, 1], [-1, -1]])})
    np.testing.assert_allclose(out[0].detach().numpy(), expected, rtol=1e-6)
    assert out[1].tolist() == [0.0, 0.0]  # no ids: zeros


def test_embedding_init_is_truncated_normal_with_tf_stddev():
    layer = DenseFeatures([embedding_column(categorical_column_with_identity("d", 5000), 4)])
    weight = layer.column_states.states["d_embedding"].weight
    assert weight.abs().max() <= 1.0 + 1e-6  # 2 stddevs of 1/sqrt(4)
    assert float(weight.detach().std()) == pytest.approx(0.5 * 0.88, rel=0.1)  # a normal cut at 2 stddevs


def test_dense_features_order_by_name_and_output_dim():
    layer = DenseFeatures([numeric_column("z"), numeric_column("a", shape=2)])
    assert layer.output_dim == 3
    assert layer({"z": torch.tensor([9.0]), "a": torch.tensor([[1.0, 2.0]])}).tolist() == [[1.0, 2.0, 9.0]]


def test_dense_features_reject_categorical_columns():
    with pytest.raises(ValueError, match="'d' is categorical. Wrap it: embedding_column"):
        DenseFeatures([categorical_column_with_identity("d", 3)])


def test_dense_features_missing_feature():
    with pytest.raises(ValueError, match=r"Feature 'age' \(needed by column 'age'\) is not in the input features; received keys \['x'\]"):
        DenseFeatures([numeric_column("age")])({"x": torch.zeros(2)})


def test_features_must_be_a_dict():
    with pytest.raises(TypeError, match="read a dict of feature tensors"):
        DenseFeatures([numeric_column("age")])(torch.zeros(2))


def test_linear_model_sums_weights_by_hand():
    model = LinearModel([categorical_column_with_identity("d", 3), numeric_column("x", shape=2)], units=1)
    with torch.no_grad():
        model.weights["d"].copy_(torch.tensor([[1.0], [2.0], [4.0]]))
        model.weights["x"].copy_(torch.tensor([[10.0], [100.0]]))
        model.bias.fill_(0.5)
    out = model({"d": torch.tensor([[0, 2], [-1, -1]]), "x": torch.tensor([[1.0, 1.0], [0.0, 2.0]])})
    assert out.tolist() == [[0.5 + 1 + 4 + 110], [0.5 + 200]]
    mean = LinearModel([categorical_column_with_identity("d", 3)], sparse_combiner="mean")
    with torch.no_grad():
        mean.weights["d"].copy_(torch.tensor([[1.0], [2.0], [4.0]]))
    assert mean({"d": torch.tensor([[0, 2]])}).tolist() == [[2.5]]


def test_vocabularies_are_not_checkpointed():
    model = LinearModel([categorical_column_with_vocabulary_list("c", ["a", "b"]),
                         bucketized_column(numeric_column("x"), [0.0])])
    assert sorted(model.state_dict()) == ["bias", "weights.c", "weights.x_bucketized"]
    with torch.no_grad():
        model.weights["c"].copy_(torch.tensor([[1.0], [2.0]]))
        model.weights["x_bucketized"].copy_(torch.tensor([[10.0], [20.0]]))
    out = model(tensors({"c": np.array(["b", "z"]), "x": np.array([1.0, -1.0])}))
    assert out.tolist() == [[22.0], [10.0]]


# ----------------------------------------------------------------------------------------------------------
# Serving specs and export.


def test_make_feature_spec_per_column_kind():
    columns = [numeric_column("age"), numeric_column("xy", shape=2), bucketized_column(numeric_column("age"), [1.0]),
               categorical_column_with_identity("day", 7), categorical_column_with_vocabulary_list("c", ["a", "b"]),
               crossed_column(["day", "city"], 10)]
    spec = make_feature_spec(columns)
    assert sorted(spec) == ["age", "c", "city", "day", "xy"]
    assert spec["age"].shape == [None] and spec["xy"].shape == [None, 2] and spec["age"].dtype == torch.float32
    assert (spec["day"].low, spec["day"].high) == (0, 7)  # the identity range wins over the cross's
    assert spec["day"].dtype == torch.int64 and not spec["day"].strings  # the identity column's ints win
    assert spec["city"].strings and spec["c"].strings  # a cross's raw key is a string, as TF parsed it
    assert spec["c"].example.tolist() == [fingerprint("a"), fingerprint("b")]


def test_columns_sharing_a_key_in_one_model():
    layer = DenseFeatures([numeric_column("age", normalizer_fn=lambda t: t / 10), bucketized_column(numeric_column("age"), [5.0])])
    assert layer({"age": torch.tensor([20.0])}).tolist() == [[2.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="both need tensors under the name 'age_bucketized'"):
        LinearModel([bucketized_column(numeric_column("age"), [5.0]),
                     crossed_column([bucketized_column(numeric_column("age"), [1.0]), "c"], 10)])


def test_make_feature_spec_conflicting_uses():
    with pytest.raises(ValueError, match="Feature 'x' is read both as numbers and as categories"):
        make_feature_spec([numeric_column("x"), categorical_column_with_identity("x", 3)])


def test_transformations_are_inside_the_exported_artifact(tmp_path):
    from torch_estimator.serving import loader

    columns = [numeric_column("age", normalizer_fn=lambda t: t / 100), bucketized_column(numeric_column("age"), [30.0]),
               indicator_column(categorical_column_with_vocabulary_list("color", ["red", "blue"])),
               embedding_column(categorical_column_with_hash_bucket("city", 5), 2)]
    layer = DenseFeatures(columns)

    def model_fn(features, mode, model):
        return te.EstimatorSpec(mode, predictions={"dense": model(features)})

    est = te.Estimator(model_fn, model=layer, model_dir=str(tmp_path / "m"), config=te.RunConfig(device="cpu"))
    ckpt.CheckpointManager(str(tmp_path / "m")).save(1, {"model": layer})  # export needs a checkpoint; nothing to train
    receiver_fn = te.export.build_raw_serving_input_receiver_fn(make_feature_spec(columns))
    path = est.export_saved_model(str(tmp_path / "e"), receiver_fn)
    raw = {"age": np.array([20.0, 40.0], dtype="float32"), "color": np.array(["blue", "green"]), "city": np.array(["x", "y"])}
    served = loader.load(path)
    out = served(encode_features(raw))["dense"]
    expected = layer(tensors(raw))
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[:, :3].numpy(), [[0.2, 1.0, 0.0], [0.4, 0.0, 1.0]], rtol=1e-6)  # age, its bucket


# ----------------------------------------------------------------------------------------------------------
# Constructor errors.


@pytest.mark.parametrize("build, match", [
    (lambda: numeric_column(""), "`key` must be a non-empty string"),
    (lambda: numeric_column("x", shape=0), r"`shape` entries must be an int >= 1"),
    (lambda: numeric_column("x", dtype=torch.int64), "`dtype` must be a floating torch.dtype"),
    (lambda: bucketized_column(numeric_column("x"), [3, 1]), "strictly increasing"),
    (lambda: bucketized_column(categorical_column_with_identity("x", 3), [1]), "must be a numeric_column"),
    (lambda: categorical_column_with_vocabulary_list("c", []), "must not be empty"),
    (lambda: categorical_column_with_vocabulary_list("c", ["a", "a"]), r"duplicate keys in `vocabulary_list`: \['a'\]"),
    (lambda: categorical_column_with_vocabulary_list("c", ["a", 1]), "all strings or all ints"),
    (lambda: categorical_column_with_vocabulary_list("c", ["a"], default_value=0, num_oov_buckets=1), "not both"),
    (lambda: categorical_column_with_identity("d", 0), "`num_buckets` must be an int >= 1"),
    (lambda: categorical_column_with_identity("d", 3, default_value=3), r"default_value` must be None or an id in \[0, 3\)"),
    (lambda: categorical_column_with_hash_bucket("h", 1), "`hash_bucket_size` must be an int >= 2"),
    (lambda: crossed_column(["a"], 10), "at least 2 keys"),
    (lambda: crossed_column([categorical_column_with_hash_bucket("h", 5), "a"], 10), "cross its raw key 'h' instead"),
    (lambda: indicator_column(numeric_column("x")), "needs a categorical column"),
    (lambda: embedding_column(categorical_column_with_identity("d", 3), 0), "`dimension` must be an int >= 1"),
    (lambda: embedding_column(categorical_column_with_identity("d", 3), 2, combiner="max"), "`combiner` must be one of"),
    (lambda: DenseFeatures([]), "must not be empty"),
    (lambda: DenseFeatures([numeric_column("x"), numeric_column("x")]), r"duplicate feature column names \['x'\]"),
    (lambda: DenseFeatures(["x"]), "must be feature columns"),
    (lambda: LinearModel([numeric_column("x")], sparse_combiner="max"), "`sparse_combiner` must be one of"),
])
def test_constructor_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
