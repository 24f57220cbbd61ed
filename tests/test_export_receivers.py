"""TensorSpec, the receivers and build_raw_serving_input_receiver_fn; sampling of verification inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_estimator.export import (
    ServingInputReceiver,
    TensorServingInputReceiver,
    TensorSpec,
    build_raw_serving_input_receiver_fn,
)
from torch_estimator.export.verify import TRACE_ROUND, VERIFY_ROUNDS, sample_inputs

# TensorSpec


def test_spec_shape_uses_minus_one_for_dynamic_dims():
    assert TensorSpec([None, 28, None], torch.uint8).signature_shape() == [-1, 28, -1]


def test_spec_accepts_a_dtype_name():
    assert TensorSpec([None], "int64").dtype == torch.int64


def test_spec_rejects_an_unknown_dtype():
    with pytest.raises(TypeError, match="`dtype` must be a torch.dtype or its name .* 'float33'"):
        TensorSpec([None], "float33")


def test_spec_rejects_negative_dims():
    with pytest.raises(ValueError, match="entries must be ints >= 0 or None"):
        TensorSpec([None, -3], torch.float32)


def test_spec_rejects_a_string_shape():
    with pytest.raises(ValueError, match="`shape` must be a list of ints or None"):
        TensorSpec("None, 3", torch.float32)


def test_spec_needs_low_below_high():
    with pytest.raises(ValueError, match="needs low < high; received low=5, high=5"):
        TensorSpec([None], torch.int64, low=5, high=5)


def test_spec_example_must_fit_the_shape():
    with pytest.raises(ValueError, match=r"`example` has shape \[2, 3\], which does not fit .*\[None, 4\]"):
        TensorSpec([None, 4], torch.float32, example=torch.zeros(2, 3))


def test_spec_example_must_be_a_tensor_or_array():
    with pytest.raises(TypeError, match="`example` must be a Tensor or numpy array; received list"):
        TensorSpec([None, 2], torch.float32, example=[[1.0, 2.0]])


def test_spec_from_tensor_replaces_the_batch_dimension():
    spec = TensorSpec.from_tensor(np.zeros((5, 3), dtype=np.int32), batch_size=None)
    assert (spec.shape, spec.dtype, spec.example.shape) == ([None, 3], torch.int32, (5, 3))


# Receivers


def test_a_single_receiver_tensor_is_named_input():
    receiver = ServingInputReceiver(None, TensorSpec([None, 2], torch.float32))
    assert list(receiver.receiver_tensors) == ["input"]


def test_identity_features_are_the_received_dict():
    receiver = ServingInputReceiver(None, {"x": TensorSpec([None, 2], torch.float32)})
    x = torch.ones(1, 2)
    assert receiver.to_features({"x": x})["x"] is x


def test_tensor_features_are_named_feature():
    receiver = ServingInputReceiver(lambda r: r["x"] * 2, {"x": TensorSpec([None, 2], torch.float32)})
    assert list(receiver.to_features({"x": torch.ones(1, 2)})) == ["feature"]


def test_features_must_return_tensors():
    receiver = ServingInputReceiver(lambda r: [r["x"]], {"x": TensorSpec([None, 2], torch.float32)})
    with pytest.raises(TypeError, match="must return a Tensor or a dict of Tensors; it returned list"):
        receiver.to_features({"x": torch.ones(1, 2)})


def test_features_must_be_callable():
    with pytest.raises(TypeError, match="`features` must be a function or nn.Module"):
        ServingInputReceiver({"x": torch.ones(1)}, {"x": TensorSpec([None], torch.float32)})


def test_receiver_tensors_must_be_specs():
    with pytest.raises(TypeError, match=r"`receiver_tensors`\['x'\] must be a TensorSpec"):
        ServingInputReceiver(None, {"x": torch.ones(1, 2)})


def test_receiver_tensors_must_not_be_empty():
    with pytest.raises(TypeError, match="non-empty dict of name to TensorSpec"):
        ServingInputReceiver(None, {})


def test_alternatives_must_be_a_dict():
    with pytest.raises(TypeError, match="`receiver_tensors_alternatives` must be a dict"):
        ServingInputReceiver(None, TensorSpec([None], torch.float32), receiver_tensors_alternatives=[1])


def test_tensor_receiver_passes_one_tensor():
    receiver = TensorServingInputReceiver(None, TensorSpec([None, 2], torch.float32))
    x = torch.ones(1, 2)
    assert receiver.to_features({"input": x}) is x


def test_tensor_receiver_without_features_needs_one_tensor():
    with pytest.raises(ValueError, match="needs exactly one receiver tensor; received \\['a', 'b'\\]"):
        TensorServingInputReceiver(None, {"a": TensorSpec([None], torch.float32), "b": TensorSpec([None], torch.float32)})


def test_tensor_receiver_features_must_return_one_tensor():
    receiver = TensorServingInputReceiver(lambda r: dict(r), TensorSpec([None, 2], torch.float32))
    with pytest.raises(TypeError, match="must return one Tensor; it returned dict"):
        receiver.to_features({"input": torch.ones(1, 2)})


# build_raw_serving_input_receiver_fn


def test_raw_receiver_fn_features_are_its_receiver_tensors():
    receiver = build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 3], torch.float32)})()
    assert (receiver.features, receiver.receiver_tensors) == (None, {"x": TensorSpec([None, 3], torch.float32)})


def test_raw_receiver_fn_applies_the_default_batch_size():
    receiver = build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 3], torch.float32)}, default_batch_size=8)()
    assert receiver.receiver_tensors["x"].shape == [8, 3]


def test_raw_receiver_fn_takes_example_tensors():
    receiver = build_raw_serving_input_receiver_fn({"ids": torch.tensor([[4, 5]])})()
    assert (receiver.receiver_tensors["ids"].shape, receiver.receiver_tensors["ids"].dtype) == ([None, 2], torch.int64)


def test_raw_receiver_fn_needs_a_dict():
    with pytest.raises(TypeError, match="`features` must be a non-empty dict"):
        build_raw_serving_input_receiver_fn(TensorSpec([None], torch.float32))


def test_raw_receiver_fn_rejects_a_bad_batch_size():
    with pytest.raises(ValueError, match="`default_batch_size` must be a positive int or None; received 0"):
        build_raw_serving_input_receiver_fn({"x": TensorSpec([None], torch.float32)}, default_batch_size=0)


# Sample inputs


def test_samples_use_the_round_batch_size():
    inputs = sample_inputs({"x": TensorSpec([None, 3], torch.float32)}, VERIFY_ROUNDS[1])
    assert inputs["x"].shape == (VERIFY_ROUNDS[1].batch_size, 3)


def test_samples_keep_a_fixed_batch_size():
    assert sample_inputs({"x": TensorSpec([4, 3], torch.float32)}, VERIFY_ROUNDS[0])["x"].shape == (4, 3)


def test_integer_samples_default_to_zero_or_one():
    values = sample_inputs({"ids": TensorSpec([None, 50], torch.int64)}, TRACE_ROUND)["ids"]
    assert set(values.unique().tolist()) <= {0, 1}


def test_integer_samples_respect_low_and_high():
    values = sample_inputs({"ids": TensorSpec([None, 50], torch.int32, low=3, high=6)}, TRACE_ROUND)["ids"]
    assert values.dtype == torch.int32 and set(values.unique().tolist()) <= {3, 4, 5}


def test_float_samples_respect_low_and_high():
    values = sample_inputs({"p": TensorSpec([None, 50], torch.float64, low=0.0, high=1.0)}, TRACE_ROUND)["p"]
    assert values.dtype == torch.float64 and values.min() >= 0.0 and values.max() < 1.0


def test_samples_repeat_the_example_rows():
    example = torch.tensor([[7, 8], [9, 6]])
    values = sample_inputs({"ids": TensorSpec([None, 2], torch.int64, example=example)}, VERIFY_ROUNDS[1])["ids"]
    assert values.tolist() == [[7, 8], [9, 6], [7, 8]]


def test_samples_are_reproducible():
    specs = {"x": TensorSpec([None, 3], torch.float32)}
    assert torch.equal(sample_inputs(specs, TRACE_ROUND)["x"], sample_inputs(specs, TRACE_ROUND)["x"])
