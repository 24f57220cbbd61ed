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
