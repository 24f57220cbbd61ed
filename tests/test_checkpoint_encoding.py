"""Nested state as JSON plus tensors, without pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torch_estimator import checkpoint as ckpt


@pytest.mark.parametrize(
    "value",
    [
        {"a": (1, 2.5, None), "b": [True, "x"], 3: {"nested": float("inf")}},
        {"__tricky": 1},
        [np.arange(3), torch.ones(2, dtype=torch.bfloat16)],
    ],
)
def test_encode_decode_round_trip(value):
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.loads(json.dumps(ckpt.encode_state(value, "x", tensors)))
    decoded = ckpt.decode_state(encoded, tensors)
    if isinstance(value, list):
        assert np.array_equal(decoded[0], value[0]) and torch.equal(decoded[1], value[1])
    else:
        assert decoded == value


def test_unsupported_state_is_a_clear_error():
    with pytest.raises(TypeError, match="Cannot checkpoint 'x/f': values of type function"):
        ckpt.encode_state({"f": lambda: 0}, "x", {})


def test_sequences_of_plain_values_encode_as_they_are_and_others_item_by_item():
    tensors: dict[str, torch.Tensor] = {}
    value = {"plain": (1, 2.5, None, "s", True), "mixed": [1, np.int64(2), (3,), torch.zeros(1)]}
    assert json.dumps(ckpt.encode_state(value, "x", tensors)) == (
        '{"plain": {"__tuple__": [1, 2.5, null, "s", true]}, '
        '"mixed": [1, 2, {"__tuple__": [3]}, {"__tensor__": "x/mixed/3"}]}'
    )
    assert list(tensors) == ["x/mixed/3"]


def test_a_sequence_holding_an_unsupported_value_names_its_position():
    with pytest.raises(TypeError, match="Cannot checkpoint 'x/2': values of type object"):
        ckpt.encode_state((1, 2, object()), "x", {})
