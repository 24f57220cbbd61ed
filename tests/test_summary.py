"""Tests for torch_estimator.summary: TensorBoard event files as TF's Estimator wrote them."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torch_estimator import summary


def _events(logdir: str) -> EventAccumulator:
    summary.flush_all()
    accumulator = EventAccumulator(logdir, size_guidance={"histograms": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_one_writer_and_one_event_file_per_directory(tmp_path):
    logdir = str(tmp_path / "train")
    first = summary.writer_for(logdir)
    assert summary.writer_for(logdir + os.sep) is first  # the same directory, spelled differently
    assert summary.writer_for(str(tmp_path / "eval")) is not first
    summary.write_summaries(logdir, {"loss": 1.0}, step=1)
    summary.write_summaries(logdir, {"loss": 0.5}, step=2)
    summary.flush_all()
    assert len(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))) == 1
    assert summary.read_scalars(logdir) == {1: {"loss": 1.0}, 2: {"loss": 0.5}}


def test_values_are_written_by_kind(tmp_path):
    logdir = str(tmp_path)
    summary.write_summaries(
        logdir,
        {
            "scalar/float": 0.25,
            "scalar/int": 3,
            "scalar/numpy": np.float32(2.5),
            "scalar/one_element": np.array([[7.0]]),
            "histogram": np.arange(10.0),
            "histogram/tensor": torch.ones(3, 2),
            "image": summary.Image(np.zeros((3, 4, 5), dtype=np.float32)),
            "text": summary.Text("hello"),
            "text/plain": "world",
            "skipped": None,
        },
        step=4,
    )
    events = _events(logdir)
    tags = events.Tags()
    assert sorted(tags["scalars"]) == ["scalar/float", "scalar/int", "scalar/numpy", "scalar/one_element"]
    assert [event.value for event in events.Scalars("scalar/one_element")] == [7.0]
    assert sorted(tags["histograms"]) == ["histogram", "histogram/tensor"]
    histogram = events.Histograms("histogram")[0]
    assert (histogram.step, histogram.histogram_value.num, histogram.histogram_value.max) == (4, 10.0, 9.0)
    assert tags["images"] == ["image"]
    image = events.Images("image")[0]
    assert (image.step, image.width, image.height) == (4, 5, 4)
    assert sorted(tag for tag in tags["tensors"] if tag.startswith("text")) == ["text/plain/text_summary", "text/text_summary"]
    assert "skipped" not in str(tags)


def test_an_unwritable_value_names_its_tag(tmp_path):
    with pytest.raises(TypeError, match=r"Summary 'bad': cannot write a dict; give a number, a tensor"):
        summary.write_summaries(str(tmp_path), {"bad": {"nested": 1}}, step=1)


def test_host_summaries_evaluates_callables_and_copies_tensors():
    calls = []

    def lazy() -> torch.Tensor:
        calls.append(1)
        return torch.tensor(2.0)

    copied = []

    def to_host(value: torch.Tensor) -> np.ndarray:
        copied.append(value)
        return value.detach().cpu().numpy()

    image = summary.Image(torch.zeros(1, 2, 2), "CHW")
    values = summary.host_summaries({"lazy": lazy, "tensor": torch.arange(3.0), "image": image, "n": 1.5}, to_host)
    assert calls == [1]
    assert len(copied) == 3
    assert float(values["lazy"]) == 2.0
    np.testing.assert_array_equal(values["tensor"], [0.0, 1.0, 2.0])
    assert isinstance(values["image"], summary.Image) and values["image"].dataformats == "CHW"
    assert isinstance(values["image"].tensor, np.ndarray)
    assert values["n"] == 1.5


def test_read_scalars_keeps_what_precedes_a_torn_write(tmp_path):
    logdir = str(tmp_path)
    for step in range(1, 4):
        summary.write_summaries(logdir, {"loss": float(step)}, step=step)
    summary.flush_all()
    (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    with open(path, "ab") as file:
        file.write(b"\x10\x00\x00\x00\x00\x00\x00\x00torn")  # a record header promising more than is there
    assert summary.read_scalars(logdir) == {1: {"loss": 1.0}, 2: {"loss": 2.0}, 3: {"loss": 3.0}}


def test_read_scalars_of_a_directory_without_events_is_empty(tmp_path):
    assert summary.read_scalars(str(tmp_path)) == {}
    assert summary.read_scalars(str(tmp_path / "missing")) == {}


def _record_writer(writer):
    return writer.file_writer.event_writer._async_writer._writer


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 3, b"\x00" * 17])
def test_records_checksummed_in_c_are_byte_identical_to_tensorboards(data, tmp_path):
    import io

    google_crc32c = pytest.importorskip("google_crc32c")
    from tensorboard.summary.writer.record_writer import RecordWriter

    theirs, ours = io.BytesIO(), tmp_path / "records"
    RecordWriter(theirs).write(data)
    ours.write_bytes(b"")
    summary._RecordSink(str(ours), google_crc32c.value).write(data)
    assert ours.read_bytes() == theirs.getvalue()


def test_event_files_checksummed_in_c_read_back_in_tensorboard(tmp_path):
    pytest.importorskip("google_crc32c")
    logdir = str(tmp_path)
    writer = summary.writer_for(logdir)
    assert _record_writer(writer).write.__self__ is summary._sinks[writer]  # the C checksum is in use
    summary.write_summaries(logdir, {"loss": 0.5, "weights": torch.arange(6.0), "note": summary.Text("hi")}, step=3)
    summary.write_summaries(logdir, {"loss": 0.25}, step=4)
    events = _events(logdir)  # tensorboard's reader checks every record's CRCs
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.5), (4, 0.25)]
    assert [e.step for e in events.Histograms("weights")] == [3]
    assert summary.read_scalars(logdir) == {3: {"loss": 0.5}, 4: {"loss": 0.25}}


def test_without_google_crc32c_tensorboards_own_checksum_is_kept(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "google_crc32c", None)  # an import of it fails
    logdir = str(tmp_path)
    writer = summary.writer_for(logdir)
    assert "write" not in vars(_record_writer(writer))
    summary.write_summaries(logdir, {"loss": 1.5}, step=1)
    summary.flush_all()
    assert summary.read_scalars(logdir) == {1: {"loss": 1.5}}


def test_scalars_are_written_in_the_callers_thread_as_one_event_per_step(tmp_path, monkeypatch):
    pytest.importorskip("google_crc32c")
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    logdir = str(tmp_path)
    writer = summary.writer_for(logdir)

    def queued(data):
        raise AssertionError("scalars are not queued for the writer thread")

    monkeypatch.setattr(writer.file_writer.event_writer._async_writer, "write", queued)
    summary.write_summaries(logdir, {"loss": np.float32(0.5), "lr": 0.125, "steps": 7, "big": 1e300, "bad": np.nan}, step=12)
    (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    events = [e for e in map(Event.FromString, RawEventFileLoader(path).Load()) if e.HasField("summary")]  # CRCs checked
    assert len(events) == 1 and events[0].step == 12 and events[0].wall_time > 0
    values = {v.tag: v.simple_value for v in events[0].summary.value}
    assert values["loss"] == 0.5 and values["lr"] == 0.125 and values["steps"] == 7 and values["big"] == float("inf")
    assert np.isnan(values["bad"])


def test_scalars_and_queued_events_of_one_file_stay_whole(tmp_path):
    pytest.importorskip("google_crc32c")
    import threading

    logdir = str(tmp_path)
    summary.writer_for(logdir)

    def histograms():
        for step in range(200):
            summary.write_summaries(logdir, {"weights": np.arange(50.0) * step}, step=step)

    thread = threading.Thread(target=histograms)
    thread.start()
    for step in range(200):
        summary.write_summaries(logdir, {"loss": step / 8}, step=step)
    thread.join()
    events = _events(logdir)  # tensorboard's reader checks every record's CRCs
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(step, step / 8) for step in range(200)]
    assert [e.step for e in events.Histograms("weights")] == list(range(200))



def test_an_event_file_removed_between_writes_is_written_again(tmp_path):
    logdir = str(tmp_path)
    summary.write_summaries(logdir, {"loss": 1.0}, step=1)
    summary.flush_all()
    (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    os.remove(path)  # as tensorboard's own writer, which appends to the path, the next write makes it again
    summary.write_summaries(logdir, {"loss": 2.0}, step=2)
    summary.flush_all()
    assert summary.read_scalars(logdir) == {2: {"loss": 2.0}}
