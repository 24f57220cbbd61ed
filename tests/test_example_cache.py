"""tfrecord_input_fn(cache=True): later passes read memory, and give exactly the batches reading the files gives."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_estimator import inputs_tfrecord
from torch_estimator.example_cache import ExampleCache
from torch_estimator.inputs import InputContext
from torch_estimator.inputs_tfrecord import tfrecord_input_fn
from torch_estimator.row_shuffle import Rows
from torch_estimator.tf_example import FixedLenFeature, FixedLenSequenceFeature, VarLenFeature, make_example
from torch_estimator.tfrecord import write_records

SPEC = {
    "i": FixedLenFeature([], torch.int64),
    "x": FixedLenFeature([2], torch.float32),
    "name": FixedLenFeature([], str, default_value=""),
    "ids": VarLenFeature(torch.int64),
    "seq": FixedLenSequenceFeature([2], torch.float32, allow_missing=True),
}


def example(k: int) -> bytes:
    features: dict = {"i": k, "x": [float(k), 0.5]}
    if k % 4:
        features["ids"] = list(range(k % 4))
    if k % 3:
        features["seq"] = [0.25 * k] * (2 * (k % 3))
    if k % 5:
        features["name"] = f"n{k % 7}"
    return make_example(features).SerializeToString()


def write(path: Path, start: int, n: int) -> Path:
    write_records(path, [example(start + k) for k in range(n)])
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [write(tmp_path / f"part-{j}.tfrecord", 100 * j, n) for j, n in enumerate([37, 0, 120, 5])]


def flat(batches) -> list[dict[str, list]]:
    out = []
    for features in batches:
        out.append({name: value.tolist() if isinstance(value, torch.Tensor) and not value.is_nested
                    else [v.tolist() for v in value.unbind()] for name, value in features.items()})
    return out


def passes(input_fn, n: int, **kwargs) -> list[list[dict[str, list]]]:
    return [flat(input_fn(**kwargs)) for _ in range(n)]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_epochs", [1, 3])
def test_cached_passes_give_the_batches_reading_the_files_gives(files, shuffle, num_epochs):
    options = dict(batch_size=16, num_epochs=num_epochs, shuffle=shuffle, seed=7, shuffle_buffer_size=50)
    read = tfrecord_input_fn([str(p) for p in files], SPEC, **options)
    cached = tfrecord_input_fn([str(p) for p in files], SPEC, cache=True, **options)
    expected = flat(read())
    assert passes(cached, 3) == [expected] * 3
    assert sum(len(batch["i"]) for batch in expected) == 162 * num_epochs


def test_nested_and_sharded_passes_match_without_the_cache(files):
    spec = {**SPEC, "ids": VarLenFeature(torch.int64, output="nested")}
    for count, uneven in [(2, "pad"), (2, "drop"), (5, "pad"), (5, "drop")]:  # by file, then by record
        for index in range(count):
            context = InputContext(count, index, 1)
            options = dict(batch_size=8, num_epochs=2, shuffle=True, seed=3, uneven_shards=uneven)
            read = tfrecord_input_fn([str(p) for p in files], spec, **options)
            cached = tfrecord_input_fn([str(p) for p in files], spec, cache=True, **options)
            expected = flat(read(mode="train", input_context=context))
            assert passes(cached, 3, mode="train", input_context=context) == [expected] * 3, (count, uneven, index)


def test_a_cached_pass_resumes_exactly_and_so_does_a_fresh_one(files):
    options = dict(batch_size=10, num_epochs=3, shuffle=True, seed=11, shuffle_buffer_size=30)
    cached = tfrecord_input_fn([str(p) for p in files], SPEC, cache=True, **options)
    whole = flat(cached())
    flat(cached())  # every file is in memory now
    first = cached()
    iterator = iter(first)
    for _ in range(23):  # into the second epoch
        next(iterator)
    state = first.state_dict()
    for again in (cached(), tfrecord_input_fn([str(p) for p in files], SPEC, cache=True, **options)()):
        again.load_state_dict(state)
        assert flat(again) == whole[23:]


def test_later_passes_read_no_file_and_a_half_read_file_is_not_cached(files, monkeypatch):
    opened: list[str] = []
    real = inputs_tfrecord.read_record_blocks

    def counting(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inputs_tfrecord, "read_record_blocks", counting)
    cached = tfrecord_input_fn([str(p) for p in files], SPEC, batch_size=4, num_epochs=1, shuffle=False, cache=True)
    iterator = iter(cached())
    next(iterator)  # the first file read in part only
    del iterator
    assert opened == ["part-0.tfrecord"]
    flat(cached())
    assert sorted(opened) == ["part-0.tfrecord", "part-0.tfrecord", "part-1.tfrecord", "part-2.tfrecord",
                              "part-3.tfrecord"]
    opened.clear()
    flat(cached())
    flat(cached())
    assert opened == []


def test_a_file_changed_on_disk_is_read_again(files):
    cached = tfrecord_input_fn([str(files[0])], SPEC, batch_size=100, num_epochs=1, shuffle=False, cache=True)
    assert flat(cached())[0]["i"] == list(range(37))
    flat(cached())
    time.sleep(0.01)
    write(files[0], 500, 3)  # replaced (a new inode), as writers do
    assert flat(cached())[0]["i"] == [500, 501, 502]
    with open(files[0], "ab") as handle:  # changed in place: size and modification time
        handle.write(Path(write(files[0].with_suffix(".more"), 900, 1)).read_bytes())
    assert flat(cached())[0]["i"] == [500, 501, 502, 900]


def test_batches_are_copies_a_model_may_change_in_place(files):
    cached = tfrecord_input_fn([str(files[2])], SPEC, batch_size=30, num_epochs=1, shuffle=False, cache=True)
    flat(cached())
    for shuffled in (False, True):
        made = tfrecord_input_fn([str(files[2])], SPEC, batch_size=30, num_epochs=1, shuffle=shuffled, seed=1,
                                 cache=True)
        flat(made())
        for batch in made():
            batch["x"].mul_(0)
            batch["i"].fill_(-1)
        assert [row["i"] for row in flat(made())] == [row["i"] for row in flat(
            tfrecord_input_fn([str(files[2])], SPEC, batch_size=30, num_epochs=1, shuffle=shuffled, seed=1)())]


def test_corrupt_records_skipped_when_read_are_not_met_again(tmp_path, caplog):
    path = write(tmp_path / "data.tfrecord", 0, 20)
    damaged = bytearray(path.read_bytes())
    damaged[40] ^= 0xFF  # inside the first record's data
    path.write_bytes(bytes(damaged))
    cached = tfrecord_input_fn(str(path), SPEC, batch_size=50, num_epochs=1, shuffle=False, on_corrupt="skip",
                               cache=True)
    first = cached()
    assert flat(first)[0]["i"] == list(range(1, 20)) and first.skipped_records == 1
    again = cached()
    assert flat(again)[0]["i"] == list(range(1, 20)) and again.skipped_records == 0


def test_cache_must_be_a_bool(files):
    with pytest.raises(ValueError, match=r"`cache` must be True or False; received 'memory'"):
        tfrecord_input_fn(str(files[0]), SPEC, shuffle=False, cache="memory")  # type: ignore[arg-type]


def test_joined_columns_are_read_only_views_held_once(tmp_path):
    cache = ExampleCache()
    paths = [str(tmp_path / name) for name in ("b", "a", "c")]
    for path in paths:
        Path(path).touch()
    cache.put(paths[0], cache.key(paths[0]), [Rows(2, {"x": np.array([1, 2])}, {})], {})
    cache.put(paths[1], cache.key(paths[1]), [Rows(1, {"x": np.array([0])}, {}), Rows(1, {"x": np.array([9])}, {})],
              {})
    assert cache.joined(paths) is None  # "c" is not cached yet
    cache.put(paths[2], cache.key(paths[2]), [], {})
    joined = cache.joined(paths)
    assert joined is not None
    rows, spans = joined
    assert rows.columns["x"].tolist() == [0, 9, 1, 2]  # in the order of the paths' names
    assert spans == {paths[1]: (0, 2), paths[0]: (2, 2), paths[2]: (4, 0)}
    assert not rows.columns["x"].flags.writeable
    cached = cache.get(paths[0])
    assert cached is not None and np.shares_memory(cached.columns["x"], rows.columns["x"])
    with pytest.raises(ValueError, match="read-only"):
        rows.columns["x"][0] = 5


def test_an_estimator_alternating_train_and_evaluate_reads_each_file_once_and_sees_the_same_batches(tmp_path,
                                                                                                    monkeypatch):
    import torch_estimator as te

    train_file, eval_file = write(tmp_path / "train.tfrecord", 0, 30), write(tmp_path / "eval.tfrecord", 100, 9)
    spec = {"i": FixedLenFeature([], torch.int64), "x": FixedLenFeature([2], torch.float32)}
    opened: list[str] = []
    real = inputs_tfrecord.read_record_blocks
    monkeypatch.setattr(inputs_tfrecord, "read_record_blocks",
                        lambda path, *a, **k: (opened.append(os.path.basename(path)), real(path, *a, **k))[1])

    def run(cache: bool, model_dir: Path) -> tuple[list[int], dict]:
        seen: list[int] = []

        def model_fn(features, labels, mode, model):
            if mode == "train":
                seen.extend(zip(labels.tolist(), features["x"].tolist()))
            loss = (model(features["x"]).squeeze(1) - labels.float()).pow(2).mean()
            return te.EstimatorSpec(mode, loss=loss)

        train = tfrecord_input_fn(str(train_file), spec, batch_size=4, num_epochs=None, shuffle=True, seed=2,
                                  label_key="i", shuffle_buffer_size=8, cache=cache)
        evaluate = tfrecord_input_fn(str(eval_file), spec, batch_size=4, num_epochs=1, shuffle=False, label_key="i",
                                     cache=cache)
        torch.manual_seed(0)  # the same initial weights in both runs
        estimator = te.Estimator(model_fn, model_dir=str(model_dir), model=torch.nn.Linear(2, 1),
                                 optimizer=lambda p: torch.optim.SGD(p, lr=1e-4), config=te.RunConfig(random_seed=0))
        metrics = {}
        for _ in range(4):  # 4 x 10 steps: past the end of the 30 records, then evaluation
            estimator.train(train, steps=10)
            metrics = estimator.evaluate(evaluate)
        return seen, metrics

    read_seen, read_metrics = run(False, tmp_path / "read")
    files_read = len(opened)
    opened.clear()
    cached_seen, cached_metrics = run(True, tmp_path / "cached")
    assert cached_seen == read_seen and len(read_seen) == 160
    assert cached_metrics == read_metrics
    assert sorted(opened) == ["eval.tfrecord", "train.tfrecord"] and files_read > 2
