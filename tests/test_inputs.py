"""Tests for torch_estimator.inputs: numpy_input_fn (TF's rules, reference 7.1), call_input_fn, iterate_batches,
to_device and batch_size_of."""

from __future__ import annotations

import functools
import itertools
import types

import numpy as np
import pytest
import torch

from torch_estimator.inputs import (
    InputContext,
    NumpyInput,
    batch_size_of,
    call_input_fn,
    iterate_batches,
    numpy_input_fn,
    to_device,
)

TEN = np.arange(10)


def feature_batches(input_fn, **kwargs):
    """The feature values of every batch, as lists (features-only input)."""
    return [np.asarray(batch).tolist() for batch in input_fn(**kwargs)]


def take(iterable, count):
    return list(itertools.islice(iter(iterable), count))


# ---------------------------------------------------------------------------
# numpy_input_fn: arguments
# ---------------------------------------------------------------------------


def test_shuffle_none_is_rejected():
    with pytest.raises(ValueError, match="`shuffle` must be given explicitly as True or False .*received None"):
        numpy_input_fn(TEN)


@pytest.mark.parametrize("shuffle", [1, 0, "yes"])
def test_shuffle_non_bool_is_rejected(shuffle):
    with pytest.raises(ValueError, match="`shuffle` must be given explicitly as True or False"):
        numpy_input_fn(TEN, shuffle=shuffle)


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0, None])
def test_bad_batch_size_is_rejected(batch_size):
    with pytest.raises(ValueError, match=r"`batch_size` must be an int > 0; received"):
        numpy_input_fn(TEN, batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("num_epochs", [0, -1, True, 1.0])
def test_bad_num_epochs_is_rejected(num_epochs):
    with pytest.raises(ValueError, match=r"`num_epochs` must be an int > 0 or None; received"):
        numpy_input_fn(TEN, num_epochs=num_epochs, shuffle=False)


@pytest.mark.parametrize("x", [[1, 2, 3], 3, "abc"])
def test_non_array_x_is_rejected(x):
    with pytest.raises(TypeError, match="`x` must be a numpy array or a dict of them; received"):
        numpy_input_fn(x, shuffle=False)


def test_non_array_in_x_dict_is_rejected():
    with pytest.raises(TypeError, match=r"`x\['a'\]` must be a numpy array; received list"):
        numpy_input_fn({"a": [1, 2]}, shuffle=False)


def test_non_array_y_is_rejected():
    with pytest.raises(TypeError, match="`y` must be a numpy array or a dict of them; received list"):
        numpy_input_fn(TEN, [0] * 10, shuffle=False)


def test_empty_dict_x_is_rejected():
    with pytest.raises(ValueError, match="`x` is an empty dict; give at least one array"):
        numpy_input_fn({}, shuffle=False)


def test_empty_dict_y_is_rejected():
    with pytest.raises(ValueError, match="`y` is an empty dict; give at least one array"):
        numpy_input_fn(TEN, {}, shuffle=False)


def test_empty_array_x_is_rejected():
    with pytest.raises(ValueError, match=r"`x` must have at least one example; received shape \(0, 3\)"):
        numpy_input_fn(np.zeros((0, 3)), shuffle=False)


def test_array_x_without_values_is_rejected():
    # TF's testNumpyInputFnWithXIsEmptyArray: two examples of no values (checked before the lengths).
    with pytest.raises(ValueError, match=r"x cannot be an empty array; received shape \(2, 0\)"):
        numpy_input_fn(np.array([[], []]), np.arange(4), shuffle=False)
    with pytest.raises(ValueError, match=r"x\['a'\] cannot be an empty array; received shape \(10, 0\)"):
        numpy_input_fn({"a": np.zeros((10, 0)), "b": TEN}, shuffle=False)
    with pytest.raises(ValueError, match=r"y cannot be an empty array"):
        numpy_input_fn(TEN, np.zeros((10, 0)), shuffle=False)


def test_scalar_array_x_is_rejected():
    with pytest.raises(ValueError, match=r"`x` must have at least one example; received shape \(\)"):
        numpy_input_fn(np.array(1.0), shuffle=False)


def test_mismatched_x_and_y_lengths_are_rejected():
    with pytest.raises(ValueError, match=r"x and y must have the same number of examples; received \{'x': 10, 'y': 9\}"):
        numpy_input_fn(TEN, np.arange(9), shuffle=False)


def test_mismatched_lengths_inside_x_dict_are_rejected():
    with pytest.raises(ValueError, match=r"same number of examples; received \{\"x\['a'\]\": 10, \"x\['b'\]\": 3\}"):
        numpy_input_fn({"a": TEN, "b": np.arange(3)}, shuffle=False)


def test_duplicate_keys_in_x_and_y_are_rejected():
    with pytest.raises(ValueError, match=r"x and y have duplicate keys \['a'\]"):
        numpy_input_fn({"a": TEN, "b": TEN}, {"a": TEN}, shuffle=False)


def test_nested_dict_in_x_is_rejected():
    with pytest.raises(TypeError, match=r"`x\['a'\]` must be a numpy array"):
        numpy_input_fn({"a": {"b": TEN}}, shuffle=False)


def test_torch_tensor_x_is_accepted():
    assert feature_batches(numpy_input_fn(torch.arange(5), batch_size=5, shuffle=False)) == [[0, 1, 2, 3, 4]]


# ---------------------------------------------------------------------------
# numpy_input_fn: batching (reference 7.1, [run] examples)
# ---------------------------------------------------------------------------


def test_one_epoch_batches_with_a_partial_last_batch():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=1, shuffle=False)
    assert feature_batches(input_fn) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_two_epochs_batches_span_the_epoch_boundary():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=2, shuffle=False)
    assert feature_batches(input_fn) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]


def test_num_epochs_none_repeats_forever_with_full_batches():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=None, shuffle=False)
    batches = [b.tolist() for b in take(input_fn(), 6)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9], [0, 1, 2, 3]]


def test_batch_larger_than_the_data_gives_one_batch_per_epoch_total():
    input_fn = numpy_input_fn(np.arange(3), batch_size=8, num_epochs=2, shuffle=False)
    assert feature_batches(input_fn) == [[0, 1, 2, 0, 1, 2]]


def test_default_is_one_epoch_of_128():
    input_fn = numpy_input_fn(np.arange(300), shuffle=False)
    assert [len(b) for b in input_fn()] == [128, 128, 44]


def test_len_counts_the_batches():
    assert len(numpy_input_fn(TEN, batch_size=4, num_epochs=2, shuffle=False)()) == 5


def test_len_counts_the_remaining_batches():
    inp = numpy_input_fn(TEN, batch_size=4, num_epochs=2, shuffle=False)()
    take(inp, 2)
    assert len(inp) == 3


def test_len_of_an_endless_input_is_an_error():
    with pytest.raises(TypeError, match="num_epochs=None repeats forever and has no length"):
        len(numpy_input_fn(TEN, num_epochs=None, shuffle=False)())


def test_each_call_starts_a_fresh_input():
    input_fn = numpy_input_fn(TEN, batch_size=4, shuffle=False)
    list(input_fn())
    assert feature_batches(input_fn)[0] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------
# numpy_input_fn: structure of what it yields
# ---------------------------------------------------------------------------


def test_y_none_yields_features_only():
    batch = next(iter(numpy_input_fn(TEN, batch_size=4, shuffle=False)()))
    assert isinstance(batch, np.ndarray)


def test_array_y_yields_features_and_labels():
    features, labels = next(iter(numpy_input_fn(TEN, TEN * 10, batch_size=4, shuffle=False)()))
    assert (features.tolist(), labels.tolist()) == ([0, 1, 2, 3], [0, 10, 20, 30])


def test_dict_x_yields_dict_features():
    features, _ = next(iter(numpy_input_fn({"a": TEN, "b": TEN + 100}, TEN, batch_size=2, shuffle=False)()))
    assert {k: v.tolist() for k, v in features.items()} == {"a": [0, 1], "b": [100, 101]}


def test_dict_y_yields_dict_labels():
    _, labels = next(iter(numpy_input_fn(TEN, {"l1": TEN, "l2": -TEN}, batch_size=2, shuffle=False)()))
    assert {k: v.tolist() for k, v in labels.items()} == {"l1": [0, 1], "l2": [0, -1]}


def test_array_x_becomes_tensor_features_through_iterate_batches():
    features, labels, _ = next(iterate_batches(numpy_input_fn(TEN.reshape(5, 2), np.arange(5), batch_size=2, shuffle=False)()))
    assert isinstance(features, torch.Tensor) and features.tolist() == [[0, 1], [2, 3]]


def test_dict_x_becomes_dict_of_tensors_through_iterate_batches():
    features, _, _ = next(iterate_batches(numpy_input_fn({"a": TEN}, TEN, batch_size=2, shuffle=False)()))
    assert isinstance(features["a"], torch.Tensor)


def test_multidimensional_rows_are_batched_along_the_first_axis():
    x = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    batch = next(iter(numpy_input_fn(x, batch_size=4, shuffle=False)()))
    assert batch.shape == (4, 2, 2)


# ---------------------------------------------------------------------------
# numpy_input_fn: shuffling
# ---------------------------------------------------------------------------


def shuffled_epoch_orders(seed, epochs=2, config=None):
    input_fn = numpy_input_fn(TEN, batch_size=10, num_epochs=epochs, shuffle=True, seed=seed)
    return [b.tolist() for b in input_fn(config=config)]


def test_seeded_shuffle_is_reproducible():
    assert shuffled_epoch_orders(3) == shuffled_epoch_orders(3)


def test_shuffle_is_a_permutation_per_epoch():
    assert all(sorted(order) == list(range(10)) for order in shuffled_epoch_orders(3, epochs=3))


def test_shuffle_changes_the_order_between_epochs():
    first, second = shuffled_epoch_orders(3)
    assert first != second


def test_shuffle_changes_the_order():
    assert shuffled_epoch_orders(3, epochs=1)[0] != list(range(10))


def test_different_seeds_give_different_orders():
    assert shuffled_epoch_orders(1) != shuffled_epoch_orders(2)


def test_shuffle_keeps_features_and_labels_aligned():
    input_fn = numpy_input_fn({"x": TEN}, TEN * 10, batch_size=3, shuffle=True, seed=0)
    assert all((labels == features["x"] * 10).all() for features, labels in input_fn())


def test_config_random_seed_is_used_when_no_seed_is_given():
    config = types.SimpleNamespace(random_seed=7)
    input_fn = numpy_input_fn(TEN, batch_size=10, num_epochs=2, shuffle=True)
    assert [b.tolist() for b in input_fn(config=config)] == shuffled_epoch_orders(7)


def test_seed_argument_wins_over_config_random_seed():
    config = types.SimpleNamespace(random_seed=7)
    assert shuffled_epoch_orders(3, config=config) == shuffled_epoch_orders(3)


def test_input_fn_accepts_config_through_call_input_fn():
    input_fn = numpy_input_fn(TEN, batch_size=10, num_epochs=2, shuffle=True)
    inp = call_input_fn(input_fn, mode="train", config=types.SimpleNamespace(random_seed=7))
    assert [b.tolist() for b in inp] == shuffled_epoch_orders(7)


def test_unshuffled_input_ignores_the_seed():
    a = feature_batches(numpy_input_fn(TEN, batch_size=4, shuffle=False, seed=1))
    b = feature_batches(numpy_input_fn(TEN, batch_size=4, shuffle=False, seed=2))
    assert a == b


# ---------------------------------------------------------------------------
# NumpyInput: exact resume
# ---------------------------------------------------------------------------


def resumed_batches(input_fn, consumed, **kwargs):
    """(the batches after `consumed` ones, the batches a fresh input resumed from that state yields)."""
    first = input_fn(**kwargs)
    iterator = iter(first)
    take(iterator, consumed)
    state = first.state_dict()
    expected = [b.tolist() for b in iterator]
    second = input_fn(**kwargs)
    second.load_state_dict(state)
    return expected, [b.tolist() for b in second]


def test_numpy_input_fn_returns_a_numpy_input():
    assert isinstance(numpy_input_fn(TEN, shuffle=False)(), NumpyInput)


def test_state_dict_records_the_examples_consumed():
    inp = numpy_input_fn(TEN, batch_size=4, shuffle=False, seed=0)()
    take(inp, 2)
    assert inp.state_dict()["position"] == 8


def test_state_dict_carries_the_fingerprint():
    inp = numpy_input_fn(TEN, batch_size=4, shuffle=False, seed=0)()
    assert inp.state_dict()["fingerprint"] == inp.fingerprint


def test_fingerprint_names_sizes_batching_and_seed():
    inp = numpy_input_fn(TEN, batch_size=4, num_epochs=3, shuffle=True, seed=5)()
    assert inp.fingerprint == "numpy:n=10,batch_size=4,num_epochs=3,shuffle=True,seed=5,shard=0/1"


def test_shuffled_resume_is_exact():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=3, shuffle=True, seed=11)
    expected, resumed = resumed_batches(input_fn, consumed=3)
    assert resumed == expected


def test_resume_mid_epoch_with_repeat_forever_is_exact():
    input_fn = numpy_input_fn(TEN, batch_size=3, num_epochs=None, shuffle=True, seed=11)
    first = input_fn()
    take(first, 5)
    expected = [b.tolist() for b in take(first, 6)]
    second = input_fn()
    second.load_state_dict({"position": 15, "fingerprint": first.fingerprint})
    assert [b.tolist() for b in take(second, 6)] == expected


def test_resume_with_seed_from_config_is_exact():
    config = types.SimpleNamespace(random_seed=4)
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=2, shuffle=True)
    expected, resumed = resumed_batches(input_fn, consumed=2, config=config)
    assert resumed == expected


def test_resume_from_a_finished_input_starts_a_new_pass():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=1, shuffle=True, seed=1)
    _, resumed = resumed_batches(input_fn, consumed=3)
    assert resumed == [b.tolist() for b in input_fn()]


def test_resume_from_a_finished_input_resets_the_position():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=1, shuffle=False, seed=1)
    inp = input_fn()
    inp.load_state_dict({"position": 10, "fingerprint": inp.fingerprint})
    assert inp.state_dict()["position"] == 0


def test_padded_shards_resume_every_process_from_any_ones_state():
    x = np.arange(11)
    input_fn = numpy_input_fn(x, batch_size=2, num_epochs=2, shuffle=True, seed=3)
    ranks = [input_fn(mode="train", input_context=InputContext(2, rank, 2)) for rank in range(2)]
    uninterrupted = [np.concatenate(list(rank)).tolist() for rank in ranks]
    assert len(uninterrupted[0]) == len(uninterrupted[1]) == 12  # 11 examples: one shard padded, per epoch
    first = input_fn(mode="train", input_context=InputContext(2, 0, 2))
    iterator = iter(first)
    head = np.concatenate([next(iterator) for _ in range(4)]).tolist()  # into the second epoch
    state = first.state_dict()  # what the chief's checkpoint holds
    for rank in range(2):
        resumed = input_fn(mode="train", input_context=InputContext(2, rank, 2))
        resumed.load_state_dict(state)
        assert uninterrupted[rank][:len(head)] + np.concatenate(list(resumed)).tolist() == uninterrupted[rank]
    evaluation = [input_fn(mode="eval", input_context=InputContext(2, rank, 2)) for rank in range(2)]
    assert evaluation[0].fingerprint != evaluation[1].fingerprint  # unpadded: each its own position


def test_load_state_with_other_fingerprint_is_rejected():
    state = numpy_input_fn(TEN, batch_size=4, shuffle=True, seed=1)().state_dict()
    other = numpy_input_fn(TEN, batch_size=5, shuffle=True, seed=1)()
    with pytest.raises(ValueError, match=r"numpy input state is for 'numpy:n=10,batch_size=4,.*', not 'numpy:n=10,batch_size=5"):
        other.load_state_dict(state)


def test_load_state_with_other_seed_is_rejected():
    state = numpy_input_fn(TEN, shuffle=True, seed=1)().state_dict()
    with pytest.raises(ValueError, match="numpy input state is for .*seed=1,.*seed=2,"):
        numpy_input_fn(TEN, shuffle=True, seed=2)().load_state_dict(state)


def test_load_state_without_fingerprint_is_rejected():
    with pytest.raises(ValueError, match="numpy input state is for None"):
        numpy_input_fn(TEN, shuffle=False, seed=0)().load_state_dict({"position": 4})


def test_unshuffled_input_without_seed_resumes():
    input_fn = numpy_input_fn(TEN, batch_size=4, num_epochs=2, shuffle=False)
    expected, resumed = resumed_batches(input_fn, consumed=2)
    assert resumed == expected


# ---------------------------------------------------------------------------
# call_input_fn
# ---------------------------------------------------------------------------


def test_call_input_fn_passes_no_arguments_when_none_declared():
    assert call_input_fn(lambda: "ok", mode="train", params={}, config=None) == "ok"


def test_call_input_fn_passes_only_declared_arguments():
    def input_fn(params, mode):
        return (mode, params)

    assert call_input_fn(input_fn, mode="eval", params={"a": 1}, config="cfg", input_context="ctx") == ("eval", {"a": 1})


def test_call_input_fn_passes_all_four_known_arguments():
    def input_fn(mode, params, config, input_context):
        return (mode, params, config, input_context)

    context = InputContext(2, 1)
    assert call_input_fn(input_fn, mode="train", params={}, config="c", input_context=context) == ("train", {}, "c", context)


def test_call_input_fn_passes_none_for_a_declared_but_unavailable_argument():
    assert call_input_fn(lambda params: params, mode="train") is None


def test_call_input_fn_rejects_an_unknown_required_argument():
    def input_fn(batch_size):
        return batch_size

    with pytest.raises(ValueError, match=r"`input_fn` has an argument 'batch_size' the Estimator cannot provide.*functools.partial"):
        call_input_fn(input_fn, mode="train")


def test_call_input_fn_leaves_an_unknown_optional_argument_at_its_default():
    def input_fn(mode, batch_size=32):
        return (mode, batch_size)

    assert call_input_fn(input_fn, mode="train") == ("train", 32)


def test_call_input_fn_accepts_a_partial():
    def input_fn(batch_size, mode):
        return (batch_size, mode)

    assert call_input_fn(functools.partial(input_fn, 16), mode="eval") == (16, "eval")


def test_call_input_fn_ignores_var_args():
    def input_fn(*args, **kwargs):
        return (args, kwargs)

    assert call_input_fn(input_fn, mode="train") == ((), {})


def test_call_input_fn_rejects_a_non_callable():
    with pytest.raises(TypeError, match="`input_fn` must be a callable returning batches; received list"):
        call_input_fn([1, 2], mode="train")


def test_input_context_defaults_to_one_pipeline():
    assert (InputContext().num_input_pipelines, InputContext().input_pipeline_id) == (1, 0)


# ---------------------------------------------------------------------------
# iterate_batches
# ---------------------------------------------------------------------------


def test_tuple_items_yield_features_and_labels():
    x, y = torch.zeros(2, 3), torch.ones(2)
    [(features, labels, size)] = list(iterate_batches([(x, y)]))
    assert size == len(x)
    assert features is x and labels is y


def test_two_item_list_is_a_features_labels_pair():
    x, y = torch.zeros(2, 3), torch.ones(2)
    [(features, labels, _)] = list(iterate_batches([[x, y]]))
    assert features is x and labels is y


def test_features_only_item_has_no_labels():
    x = torch.zeros(2, 3)
    [(features, labels, _)] = list(iterate_batches([x]))
    assert features is x and labels is None


def test_dict_item_is_features_only():
    [(features, labels, _)] = list(iterate_batches([{"a": torch.zeros(2)}]))
    assert list(features) == ["a"] and labels is None


def test_explicit_none_labels_stay_none():
    [(_, labels, _)] = list(iterate_batches([(torch.zeros(2), None)]))
    assert labels is None


def test_tuple_of_feature_tensors_is_kept_as_a_tuple():
    [(features, _, _)] = list(iterate_batches([((torch.zeros(2), torch.ones(2)), torch.ones(2))]))
    assert isinstance(features, tuple) and len(features) == 2


def test_numpy_arrays_are_converted_to_tensors():
    [(features, labels, _)] = list(iterate_batches([({"a": np.zeros((2, 3), np.float32)}, np.arange(2))]))
    assert isinstance(features["a"], torch.Tensor) and isinstance(labels, torch.Tensor)


def test_numpy_conversion_keeps_the_dtype():
    [(features, _, _)] = list(iterate_batches([np.zeros(2, np.float32)]))
    assert features.dtype == torch.float32


def test_non_contiguous_numpy_array_is_converted():
    array = np.arange(12).reshape(3, 4)[:, ::2]
    [(features, _, _)] = list(iterate_batches([array]))
    assert features.tolist() == array.tolist()


def test_a_generator_source_is_accepted():
    source = ((torch.zeros(1), torch.zeros(1)) for _ in range(3))
    assert len(list(iterate_batches(source))) == 3


def test_a_dataloader_source_is_accepted():
    dataset = torch.utils.data.TensorDataset(torch.arange(6.0).reshape(6, 1), torch.arange(6))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    assert [labels.tolist() for _, labels, _ in iterate_batches(loader)] == [[0, 1, 2, 3], [4, 5]]


@pytest.mark.parametrize("length", [1, 3])
def test_tuple_of_wrong_length_is_rejected(length):
    item = tuple(torch.zeros(2) for _ in range(length))
    with pytest.raises(ValueError, match=rf"input_fn yielded a tuple of {length} items; yield \(features, labels\)"):
        list(iterate_batches([item]))


def test_list_of_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"input_fn yielded a list of 3 items"):
        list(iterate_batches([[torch.zeros(2)] * 3]))


def test_mismatched_batch_sizes_are_rejected_listing_the_sizes():
    item = ({"a": torch.zeros(4), "b": torch.zeros(3)}, torch.zeros(4))
    with pytest.raises(
        ValueError,
        match=r"different batch sizes \(first dimensions\): \{\"features\['a'\]\": 4, \"features\['b'\]\": 3, 'labels': 4\}",
    ):
        list(iterate_batches([item]))


def test_labels_batch_size_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\{'features': 4, 'labels': 5\}"):
        list(iterate_batches([(torch.zeros(4, 2), torch.zeros(5))]))


@pytest.mark.parametrize("source", [5, None, torch.zeros(3), np.zeros(3), {"x": torch.zeros(3)}])
def test_non_iterable_source_is_rejected(source):
    with pytest.raises(TypeError, match="`input_fn` must return an iterable of batches"):
        list(iterate_batches(source))


def test_string_numpy_features_are_rejected():
    with pytest.raises(TypeError, match=r"features\['name'\] must be numeric; received a numpy array of dtype <U1"):
        list(iterate_batches([{"name": np.array(["a", "b"])}]))


def test_object_numpy_labels_are_rejected():
    with pytest.raises(TypeError, match="labels must be numeric; received a numpy array of dtype object"):
        list(iterate_batches([(np.zeros(2), np.array([None, None]))]))


def test_non_tensor_feature_value_is_rejected():
    with pytest.raises(TypeError, match=r"features\['a'\] must be a Tensor or numpy array; received list"):
        list(iterate_batches([{"a": [1, 2]}]))


def test_scalar_feature_item_is_rejected():
    with pytest.raises(TypeError, match="features must be a Tensor, a list/tuple of Tensors or a dict of Tensors"):
        list(iterate_batches([3.0]))


def test_zero_dimensional_feature_is_rejected():
    with pytest.raises(ValueError, match=r"features is a 0-dimensional tensor; every input needs a batch dimension"):
        list(iterate_batches([torch.tensor(1.0)]))


# ---------------------------------------------------------------------------
# batch_size_of
# ---------------------------------------------------------------------------


def test_batch_size_of_a_tensor():
    assert batch_size_of(torch.zeros(7, 3)) == 7


def test_batch_size_of_features_and_labels():
    assert batch_size_of({"a": torch.zeros(5), "b": torch.zeros(5, 2)}, torch.zeros(5)) == 5


def test_batch_size_of_a_tuple_of_features():
    assert batch_size_of((torch.zeros(2), torch.zeros(2, 4))) == 2


def test_batch_size_of_is_an_int():
    assert type(batch_size_of(torch.zeros(3))) is int


def test_batch_size_of_empty_features_is_rejected():
    with pytest.raises(ValueError, match="features are empty; yield at least one tensor"):
        batch_size_of({})


def test_batch_size_of_scalar_label_is_rejected():
    with pytest.raises(ValueError, match="labels is a 0-dimensional tensor"):
        batch_size_of(torch.zeros(2), torch.tensor(1))


def test_batch_size_of_mismatch_lists_the_sizes():
    with pytest.raises(ValueError, match=r"\{'features\[0\]': 2, 'features\[1\]': 3\}"):
        batch_size_of([torch.zeros(2), torch.zeros(3)])


# ---------------------------------------------------------------------------
# to_device (CPU)
# ---------------------------------------------------------------------------

CPU = torch.device("cpu")


def test_to_device_moves_a_tensor():
    assert to_device(torch.zeros(2), CPU).device == CPU


def test_to_device_keeps_a_dict():
    moved = to_device({"a": torch.zeros(2), "b": torch.ones(1)}, CPU)
    assert isinstance(moved, dict) and sorted(moved) == ["a", "b"]


def test_to_device_keeps_a_list():
    assert isinstance(to_device([torch.zeros(2), torch.ones(2)], CPU), list)


def test_to_device_keeps_a_tuple():
    moved = to_device((torch.zeros(2), torch.ones(2)), CPU)
    assert isinstance(moved, tuple) and len(moved) == 2


def test_to_device_keeps_none():
    assert to_device(None, CPU) is None


def test_to_device_keeps_values():
    moved = to_device({"a": torch.arange(3)}, CPU)
    assert moved["a"].tolist() == [0, 1, 2]
