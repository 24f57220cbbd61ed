"""Exporters: LatestExporter GC, FinalExporter, BestExporter's comparison and history across restarts."""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pytest
import torch

import torch_estimator as te
from torch_estimator import summary
from torch_estimator.exporters import metric_bigger, metric_smaller
from torch_estimator.inputs import numpy_input_fn
from torch_estimator.protocols import EstimatorLike


class FakeEstimator:
    """What an exporter uses of an Estimator: model_dir, eval_dir and export_saved_model (numbered dirs)."""

    def __init__(self, model_dir):
        self.model_dir = str(model_dir)
        self.exported = []
        self._stamp = 1_700_000_000

    def eval_dir(self, name=None):
        return os.path.join(self.model_dir, f"eval_{name}" if name else "eval")

    def export_saved_model(self, export_dir_base, serving_input_receiver_fn, assets_extra=None, checkpoint_path=None):
        self._stamp += 1
        path = os.path.join(export_dir_base, str(self._stamp))
        os.makedirs(path)
        self.exported.append((path, serving_input_receiver_fn, assets_extra, checkpoint_path))
        return path


def receiver():
    return None


def _export(exporter, est, step, final=False, **metrics):
    result = {"loss": np.float32(1.0), **metrics, "global_step": np.int64(step)}
    path = os.path.join(est.model_dir, "export", exporter.name)
    return exporter.export(est, path, f"{est.model_dir}/model.ckpt-{step}.safetensors", result, final)


def _write_evals(eval_dir, history):
    for step, metrics in history.items():
        summary.write_summaries(str(eval_dir), metrics, step)
    summary.flush_all()


def _listing(est, name):
    return sorted(os.listdir(os.path.join(est.model_dir, "export", name)))


# ---------------------------------------------------------------------------
# LatestExporter and FinalExporter
# ---------------------------------------------------------------------------


def test_latest_exporter_exports_every_time_and_keeps_the_newest(tmp_path):
    est = FakeEstimator(tmp_path)
    exporter = te.LatestExporter("latest", receiver, assets_extra={"vocab.txt": "/src/vocab.txt"}, exports_to_keep=2)
    paths = [_export(exporter, est, step) for step in (10, 20, 30)]
    assert _listing(est, "latest") == [os.path.basename(p) for p in paths[1:]]
    assert est.exported[0][1:] == (receiver, {"vocab.txt": "/src/vocab.txt"}, f"{tmp_path}/model.ckpt-10.safetensors")


def test_garbage_collection_ignores_temporary_and_other_directories(tmp_path):
    est = FakeEstimator(tmp_path)
    base = tmp_path / "export" / "latest"
    for name in ("temp-1600000000", "notes", "1500000000"):
        (base / name).mkdir(parents=True)
    (base / "README").write_text("not an export")
    exporter = te.LatestExporter("latest", receiver, exports_to_keep=1)
    path = _export(exporter, est, 10)
    assert _listing(est, "latest") == sorted(["README", "notes", "temp-1600000000", os.path.basename(path)])


def test_exports_to_keep_none_keeps_all(tmp_path):
    est = FakeEstimator(tmp_path)
    exporter = te.LatestExporter("latest", receiver, exports_to_keep=None)
    for step in range(7):
        _export(exporter, est, step)
    assert len(_listing(est, "latest")) == 7


@pytest.mark.parametrize("cls", [te.LatestExporter, te.BestExporter])
def test_exports_to_keep_must_be_positive(cls):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=rf"{cls.__name__} `exports_to_keep` must be an int > 0, or None to keep all; received {bad}"):
            cls("x", receiver, exports_to_keep=bad)


@pytest.mark.parametrize("cls", [te.LatestExporter, te.FinalExporter, te.BestExporter])
def test_names_and_receivers_are_checked(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__} `name` must be a non-empty string .* received ''"):
        cls("", receiver)
    with pytest.raises(ValueError, match=rf"{cls.__name__} `name` must be a single directory name.* received 'a/b'"):
        cls("a/b", receiver)
    with pytest.raises(ValueError, match=rf"{cls.__name__} `serving_input_receiver_fn` must be given.* received None"):
        cls("x", None)
    with pytest.raises(TypeError, match=rf"{cls.__name__} `assets_extra` must be a dict"):
        cls("x", receiver, assets_extra=["a"])


def test_final_exporter_exports_only_the_final_evaluation(tmp_path):
    est = FakeEstimator(tmp_path)
    exporter = te.FinalExporter("final", receiver)
    assert _export(exporter, est, 10) is None and est.exported == []
    path = _export(exporter, est, 20, final=True)
    assert _listing(est, "final") == [os.path.basename(path)]


def test_the_estimator_and_the_fake_have_what_exporters_use(tmp_path):
    def model_fn(features, labels, mode, model):
        return te.EstimatorSpec(mode, predictions=model(features))

    est = te.Estimator(model_fn, model=torch.nn.Linear(1, 1), model_dir=tmp_path, config=te.RunConfig(device="cpu"))
    assert isinstance(est, EstimatorLike) and isinstance(FakeEstimator(tmp_path), EstimatorLike)
    assert not isinstance(object(), EstimatorLike)


def test_exporter_is_an_abstract_base():
    with pytest.raises(TypeError, match="abstract"):
        te.Exporter()


# ---------------------------------------------------------------------------
# BestExporter
# ---------------------------------------------------------------------------


def test_best_exporter_exports_first_then_only_improvements(tmp_path):
    est = FakeEstimator(tmp_path)
    exporter = te.BestExporter(serving_input_receiver_fn=receiver)
    results = [_export(exporter, est, step, loss=loss) for step, loss in [(10, 0.5), (20, 0.6), (30, 0.4), (40, 0.4)]]
    assert [r is not None for r in results] == [True, False, True, False]
    assert _listing(est, "best_exporter") == sorted(os.path.basename(r) for r in results if r)


def test_best_exporter_with_metric_bigger(tmp_path):
    est = FakeEstimator(tmp_path)
    exporter = te.BestExporter("best_acc", receiver, compare_fn=metric_bigger("accuracy"))
    exported = [_export(exporter, est, step, accuracy=acc) is not None for step, acc in [(10, 0.7), (20, 0.9), (30, 0.8)]]
    assert exported == [True, True, False]


def test_best_exporter_compares_against_the_history_before_the_current_step(tmp_path):
    est = FakeEstimator(tmp_path)
    _write_evals(est.eval_dir(), {10: {"loss": 0.3}, 20: {"loss": 0.5}, 30: {"loss": 0.9}})  # 30: the current one
    (tmp_path / "export" / "best_exporter" / "1600000000").mkdir(parents=True)  # the export of step 10
    exporter = te.BestExporter(serving_input_receiver_fn=receiver)
    assert _export(exporter, est, 30, loss=0.9) is None
    assert _export(exporter, est, 40, loss=0.2) is not None


def test_best_exporter_exports_when_nothing_was_exported_yet(tmp_path):
    est = FakeEstimator(tmp_path)
    _write_evals(est.eval_dir(), {10: {"loss": 0.3}})
    exporter = te.BestExporter(serving_input_receiver_fn=receiver)
    assert _export(exporter, est, 20, loss=0.9) is not None
    assert _export(exporter, est, 30, loss=0.5) is not None


def test_best_exporter_reads_the_bound_or_the_given_directory(tmp_path):
    est = FakeEstimator(tmp_path)
    _write_evals(est.eval_dir("validation"), {10: {"loss": 0.1}})
    (tmp_path / "export" / "best_exporter" / "1600000000").mkdir(parents=True)
    unbound = te.BestExporter(serving_input_receiver_fn=receiver)  # reads eval/, which is empty
    assert _export(unbound, est, 20, loss=0.5) is not None
    bound = te.BestExporter(serving_input_receiver_fn=receiver)
    bound._bind_eval_dir(est.eval_dir("validation"))
    assert _export(bound, est, 20, loss=0.5) is None
    pattern = te.BestExporter(serving_input_receiver_fn=receiver, event_file_pattern="eval_validation/*.tfevents.*")
    assert _export(pattern, est, 20, loss=0.5) is None


def test_best_exporter_history_uses_compare_fn(tmp_path, caplog):
    est = FakeEstimator(tmp_path)
    _write_evals(est.eval_dir(), {10: {"loss": 0.3, "accuracy": 0.6}, 20: {"loss": 0.5, "accuracy": 0.8}})
    (tmp_path / "export" / "best_exporter" / "1600000000").mkdir(parents=True)
    exporter = te.BestExporter(serving_input_receiver_fn=receiver, compare_fn=metric_bigger("accuracy"))
    with caplog.at_level(logging.INFO, logger="torch_estimator"):
        assert _export(exporter, est, 30, accuracy=0.7) is None
    assert "the best evaluation so far is at step 20" in caplog.text


def test_compare_fn_must_have_tf_argument_names():
    for bad in (lambda best, current: True, lambda best_eval_result: True,
                lambda best_eval_result, current_eval_result, extra: True):
        with pytest.raises(ValueError, match=r"`compare_fn` must take exactly \(best_eval_result, current_eval_result\)"):
            te.BestExporter(serving_input_receiver_fn=receiver, compare_fn=bad)
    with pytest.raises(ValueError, match="`compare_fn` must be a callable; received 'loss'"):
        te.BestExporter(serving_input_receiver_fn=receiver, compare_fn="loss")
    te.BestExporter(serving_input_receiver_fn=receiver, compare_fn=lambda current_eval_result, best_eval_result: True)


def test_compare_helpers_name_the_missing_metric():
    with pytest.raises(ValueError, match=r"compare_fn needs 'accuracy' in current_eval_result, which has \['global_step', 'loss'\]"):
        metric_bigger("accuracy")(best_eval_result={"accuracy": 1.0}, current_eval_result={"loss": 1.0, "global_step": 3})
    assert metric_smaller("loss")(best_eval_result={"loss": 0.5}, current_eval_result={"loss": 0.4}) is True


# ---------------------------------------------------------------------------
# With the Estimator: across a restart
# ---------------------------------------------------------------------------


def _train_fn(data):
    return numpy_input_fn({"x": data[0]}, data[1], batch_size=10, num_epochs=None, shuffle=True, seed=1)


def _eval_fn(data, flip=False):
    return numpy_input_fn({"x": data[0]}, 1 - data[1] if flip else data[1], batch_size=50, shuffle=False)


@pytest.fixture
def fake_export(monkeypatch):
    made = []

    def export_saved_model(self, export_dir_base, serving_input_receiver_fn, assets_extra=None, checkpoint_path=None):
        path = os.path.join(export_dir_base, str(1_700_000_000 + len(made)))
        os.makedirs(path)
        made.append(path)
        return path

    monkeypatch.setattr(te.Estimator, "export_saved_model", export_saved_model)
    return made


def test_best_exporter_keeps_the_best_across_a_restart(make_estimator, data, tmp_path, fake_export):
    model_dir = tmp_path / "model"

    def run(max_steps, flip):
        est = make_estimator(model_dir, save_checkpoints_steps=10)
        spec = te.EvalSpec(_eval_fn(data, flip), steps=None, name="validation", throttle_secs=0,
                           exporters=te.BestExporter(serving_input_receiver_fn=receiver))
        return te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=max_steps), spec)

    _, exports = run(20, flip=False)
    assert exports[0] is not None and 1 <= len(fake_export) <= 2
    before = list(fake_export)
    metrics, exports = run(30, flip=True)  # a new Estimator and BestExporter; the flipped labels evaluate worse
    assert int(metrics["global_step"]) == 30 and exports == [None]
    assert fake_export == before


# ---------------------------------------------------------------------------
# End to end with the real export (when torch_estimator.export exists)
# ---------------------------------------------------------------------------

HAS_EXPORT = importlib.util.find_spec("torch_estimator.export") is not None


@pytest.mark.skipif(not HAS_EXPORT, reason="torch_estimator.export is not written yet")
def test_train_and_evaluate_exports_loadable_models(make_estimator, data, tmp_path):
    from torch_estimator import export

    est = make_estimator(save_checkpoints_steps=10)
    receiver_fn = export.build_raw_serving_input_receiver_fn({"x": export.TensorSpec([None, 4], torch.float32)})
    spec = te.EvalSpec(_eval_fn(data), steps=None, throttle_secs=0, exporters=[
        te.LatestExporter("latest", receiver_fn, exports_to_keep=1),
        te.BestExporter(serving_input_receiver_fn=receiver_fn, compare_fn=metric_bigger("accuracy")),
        te.FinalExporter("final", receiver_fn),
    ])
    _, exports = te.train_and_evaluate(est, te.TrainSpec(_train_fn(data), max_steps=20), spec)
    latest, final = exports[0], exports[2]
    assert final is not None and os.path.dirname(final) == os.path.join(est.model_dir, "export", "final")
    assert _listing(est, "latest") == [os.path.basename(latest)]
    from torch_estimator.serving.loader import load

    outputs = load(final)({"x": data[0][:5]})
    expected = [p["classes"] for p in est.predict(numpy_input_fn({"x": data[0][:5]}, batch_size=5, shuffle=False))]
    assert outputs["classes"].tolist() == [int(c) for c in expected]
    plain = make_estimator(model_dir=tmp_path / "plain", save_checkpoints_steps=10).train(_train_fn(data), max_steps=20)
    for name, value in plain.model.state_dict().items():  # exporting in the middle did not disturb training
        assert torch.equal(est.model.state_dict()[name], value), name
