"""Host encoding of strings and device-side value checks, without any feature column."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_estimator.canned.encoding import MISSING, as_array, check_values, encode_strings
from torch_estimator.export.receivers import fingerprint


def test_encode_strings_fingerprints_strings_and_keeps_numbers():
    encoded = encode_strings({"s": ["a", None, ""], "x": np.array([1.5, 2.5]), "t": torch.tensor([1, 2])})
    assert encoded["s"].tolist() == [fingerprint("a"), MISSING, MISSING]
    assert encoded["x"].dtype == np.float64 and encoded["t"].tolist() == [1, 2]


def test_encode_strings_rejects_what_is_not_a_dict():
    with pytest.raises(TypeError, match=r"`features` must be a dict of arrays or a pandas DataFrame; received list \[\['a'\]\]"):
        encode_strings([["a"]])


def test_as_array_needs_a_batch_dimension():
    with pytest.raises(ValueError, match=r"Feature 'age' needs a batch dimension; received a scalar 3"):
        as_array(3, "age")


def test_check_values_raises_the_message_on_the_cpu():
    check_values(torch.tensor([True, True]), lambda: "never built")
    with pytest.raises(ValueError, match="label 7 is out of range"):
        check_values(torch.tensor([True, False]), lambda: "label 7 is out of range")
