"""Reading TensorFlow checkpoints, mapping them to torch models, warm start and convert-checkpoint, against
model_dirs that TensorFlow 2.15 wrote (tests/fixtures/tf/make_fixtures.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torch_estimator as te
from torch_estimator import cli
from torch_estimator.tf_checkpoint import TFCheckpoint, TFCheckpointError, is_tf_checkpoint
from torch_estimator.tf_convert import map_tf_variables

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist.py"


def _load_mnist():
    spec = importlib.util.spec_from_file_location("examples_mnist_tf", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mnist = _load_mnist()


def small_cnn() -> nn.Module:
    """The tutorial CNN with the fixture's smaller layers (8 and 16 filters, 32 dense units)."""
    model = mnist.CNN()
    model.conv1, model.conv2 = nn.Conv2d(1, 8, 5, padding="same"), nn.Conv2d(8, 16, 5, padding="same")
    model.dense, model.logits = nn.Linear(7 * 7 * 16, 32), nn.Linear(32, 10)
    return model


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def predictions(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(FIXTURES / f"{name}_predictions.npz", allow_pickle=False) as data:
        return data["x"], data["probabilities"]


def test_reader_lists_tensorflows_variables():
    reader = TFCheckpoint(FIXTURES / "cnn")
    assert os.path.basename(reader.prefix) == "model.ckpt-5"
    assert reader.shapes() == {
        "conv2d/bias": (8,), "conv2d/kernel": (5, 5, 1, 8), "conv2d_1/bias": (16,), "conv2d_1/kernel": (5, 5, 8, 16),
        "dense/bias": (32,), "dense/kernel": (784, 32), "dense_1/bias": (10,), "dense_1/kernel": (32, 10),
        "global_step": (),
    }
    assert reader.read("global_step") == 5 and reader.dtype_name("global_step") == "int64"
    assert TFCheckpoint(str(FIXTURES / "dnn" / "model.ckpt-5.index")).prefix == reader.prefix.replace("cnn", "dnn")


def test_estimator_warm_started_from_the_tf_cnn_predicts_what_tf_predicted(tmp_path):
    before = snapshot(FIXTURES)
    images, expected = predictions("cnn")
    estimator = te.Estimator(mnist.model_fn, model_dir=str(tmp_path / "model"), model=small_cnn(),
                             warm_start_from=str(FIXTURES / "cnn"))
    got = [p["probabilities"] for p in estimator.predict(te.inputs.numpy_input_fn({"x": images}, shuffle=False))]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)
    assert snapshot(FIXTURES) == before  # nothing written next to the TF files


@pytest.mark.parametrize("name", ["dnn", "linear"])
def test_canned_estimators_warm_start_from_tf_canned_model_dirs(tmp_path, name):
    inputs, expected = predictions(name)
    columns = [te.feature_column.numeric_column("x", shape=[4])]
    kwargs = {"feature_columns": columns, "n_classes": 3, "model_dir": str(tmp_path / "model"),
              "warm_start_from": str(FIXTURES / name)}
    estimator = te.DNNClassifier(hidden_units=[8, 6], **kwargs) if name == "dnn" else te.LinearClassifier(**kwargs)
    got = [p["probabilities"] for p in estimator.predict(te.inputs.numpy_input_fn({"x": inputs}, shuffle=False))]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)


def test_dnn_with_embedding_and_indicator_columns_warm_starts_from_tf(tmp_path):
    with np.load(FIXTURES / "dnn_embedding_predictions.npz", allow_pickle=False) as data:
        inputs, expected = {key: data[key] for key in ("x", "color", "day")}, data["probabilities"]
    colors = ["red", "blue", "green"]
    fc = te.feature_column
    columns = [fc.numeric_column("x", shape=[2]),
               fc.embedding_column(fc.categorical_column_with_vocabulary_list("color", colors), 3),
               fc.indicator_column(fc.categorical_column_with_identity("day", 7))]
    features = te.canned.encode_features({"x": inputs["x"], "color": [colors[i] for i in inputs["color"]],
                                          "day": inputs["day"]})
    estimator = te.DNNClassifier(hidden_units=[4], feature_columns=columns, n_classes=3, model_dir=str(tmp_path / "m"),
                                 warm_start_from=str(FIXTURES / "dnn_embedding"))
    got = [p["probabilities"] for p in estimator.predict(te.inputs.numpy_input_fn(features, shuffle=False))]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)


def test_user_mapping_and_rename_rules():
    values, _ = TFCheckpoint(FIXTURES / "dnn").read_all()
    model = nn.Sequential()
    model.add_module("first", nn.Linear(4, 8))
    model.add_module("second", nn.Linear(8, 6))
    mapped = map_tf_variables(values, model, var_name_to_prev_var_name={"first.weight": "dnn/hiddenlayer_0/kernel"},
                              rename=[(r"dnn/hiddenlayer_0/bias", "first.bias"),
                                      (r"dnn/hiddenlayer_1/kernel", "second.weight"),
                                      (r"dnn/hiddenlayer_(\d)/bias", r"second.bias")])
    assert mapped.sources == {"first.weight": "dnn/hiddenlayer_0/kernel", "first.bias": "dnn/hiddenlayer_0/bias",
                              "second.weight": "dnn/hiddenlayer_1/kernel", "second.bias": "dnn/hiddenlayer_1/bias"}
    assert mapped.problems == [] and mapped.missing == []
    np.testing.assert_array_equal(mapped.tensors["first.weight"].numpy(), values["dnn/hiddenlayer_0/kernel"].T)
    assert mapped.unmatched == ["dnn/logits/bias", "dnn/logits/kernel"]
    assert "global_step" in mapped.ignored and "training/Adagrad/decay" in mapped.ignored


def test_warm_start_errors_name_what_is_missing_or_mismatched(tmp_path):
    too_wide = small_cnn()
    too_wide.dense = nn.Linear(7 * 7 * 16, 64)
    with pytest.raises(ValueError, match=r"shapes differ: .*dense.weight \(64, 784\) vs TF 'dense/kernel' \(784, 32\)"):
        te.checkpoint.warm_start(too_wide, te.WarmStartSettings(str(FIXTURES / "cnn")))
    extra = small_cnn()
    extra.extra = nn.Linear(2, 2)
    # Three nn.Linear for two TF dense layers: not matched by order; the message lists both sides.
    with pytest.raises(ValueError, match=r"model tensors \['dense.bias', .*'extra.weight', .*\] have no TF variable "
                                         r"\(TF variables left over: \['dense/bias', 'dense/kernel'"):
        te.checkpoint.warm_start(extra, te.WarmStartSettings(str(FIXTURES / "cnn")))
    with pytest.raises(ValueError, match="'nope' .* is not in the TF checkpoint"):
        te.checkpoint.warm_start(small_cnn(), te.WarmStartSettings(str(FIXTURES / "cnn"),
                                                                   var_name_to_prev_var_name={"dense.bias": "nope"}))
    only_conv = small_cnn()
    te.checkpoint.warm_start(only_conv, te.WarmStartSettings(str(FIXTURES / "cnn"), vars_to_warm_start="conv.*"))
    np.testing.assert_array_equal(only_conv.conv1.bias.detach().numpy(), TFCheckpoint(FIXTURES / "cnn").read("conv2d/bias"))


def test_damaged_or_missing_files_get_clear_errors(tmp_path):
    model_dir = tmp_path / "cnn"
    shutil.copytree(FIXTURES / "cnn", model_dir)
    data = model_dir / "model.ckpt-5.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    reader = TFCheckpoint(model_dir)
    with pytest.raises(TFCheckpointError, match="fails its checksum: the file is damaged"):
        reader.read_all()
    data.unlink()
    with pytest.raises(TFCheckpointError, match="data file .*data-00000-of-00001 is missing"):
        reader.read("dense/kernel")
    index = model_dir / "model.ckpt-5.index"
    raw = bytearray(index.read_bytes())
    raw[10] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match="fails its checksum"):
        TFCheckpoint(model_dir)
    index.write_bytes(bytes(raw[:20]))
    with pytest.raises(TFCheckpointError, match="not a TF checkpoint index"):
        TFCheckpoint(model_dir)
    (model_dir / "checkpoint").unlink()
    with pytest.raises(TFCheckpointError, match="has no TF 'checkpoint' file; give a prefix such as"):
        TFCheckpoint(model_dir)
    with pytest.raises(TFCheckpointError, match="has no index file"):
        TFCheckpoint(tmp_path / "nothing")


def test_moved_model_dir_with_absolute_paths_is_found(tmp_path):
    model_dir = tmp_path / "dnn"
    shutil.copytree(FIXTURES / "dnn", model_dir)
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/old/model.ckpt-5"\n')
    assert TFCheckpoint(model_dir).prefix == str(model_dir / "model.ckpt-5")


def test_torch_estimator_model_dirs_are_not_taken_for_tf_ones(tmp_path):
    estimator = te.LinearRegressor(feature_columns=[te.feature_column.numeric_column("x")], model_dir=str(tmp_path))
    estimator.train(te.inputs.numpy_input_fn({"x": np.ones(4, np.float32)}, np.ones((4, 1), np.float32),
                                             batch_size=2, shuffle=False), steps=1)
    assert (tmp_path / "checkpoint").exists() and not is_tf_checkpoint(tmp_path)
    assert is_tf_checkpoint(FIXTURES / "dnn") and is_tf_checkpoint(FIXTURES / "dnn" / "model.ckpt-5")


# -- torch-estimator convert-checkpoint -------------------------------------------------------------------


def make_small_cnn() -> nn.Module:  # the --model callable of the tests below
    return small_cnn()


def test_convert_checkpoint_writes_a_checkpoint_that_warm_starts(tmp_path, capsys):
    before = snapshot(FIXTURES)
    output = tmp_path / "cnn.safetensors"
    status = cli.main(["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "cnn"), "--output", str(output),
                       "--model", f"{__file__}:make_small_cnn"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "conv1.weight [8, 1, 5, 5] <- conv2d/kernel [5, 5, 1, 8]" in printed
    assert "Unmatched TF variables (0): none" in printed and "without a TF variable (0): none" in printed
    assert te.checkpoint.read_checkpoint(str(output)).global_step == 5
    images, expected = predictions("cnn")
    estimator = te.Estimator(mnist.model_fn, model_dir=str(tmp_path / "model"), model=small_cnn(),
                             warm_start_from=str(output))
    got = [p["probabilities"] for p in estimator.predict(te.inputs.numpy_input_fn({"x": images}, shuffle=False))]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)
    assert snapshot(FIXTURES) == before


def make_cnn_with_extra() -> nn.Module:  # three nn.Linear for TF's two dense layers
    model = small_cnn()
    model.extra = nn.Linear(2, 2)
    return model


def test_convert_checkpoint_lists_unmatched_names_and_refuses_to_overwrite(tmp_path, capsys):
    output = tmp_path / "partial.safetensors"
    args = ["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "cnn"), "--output", str(output),
            "--model", f"{__file__}:make_cnn_with_extra", "--map", "logits.bias=dense_1/bias"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Unmatched TF variables (3): dense/bias, dense/kernel, dense_1/kernel" in printed
    assert "Model tensors without a TF variable (5): dense.bias, dense.weight, extra.bias, extra.weight, logits.weight" in printed
    assert sorted(te.checkpoint.read_checkpoint(str(output)).model) == [
        "conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "logits.bias"]
    assert cli.main(args) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["convert-checkpoint", "--tf_checkpoint", str(tmp_path), "--output", str(tmp_path / "x")]) == 1
    assert "has no TF 'checkpoint' file and no .index file" in capsys.readouterr().err
    assert cli.main([*args[:4], str(tmp_path / "y"), "--model", "no_such_module_here:f"]) == 1
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("entry, message", [
    ("logits.bias=dense_1/bia", r"--map 'logits.bias=dense_1/bia': 'dense_1/bia' is not in the TF checkpoint; it has "
                                r"\['conv2d/bias', .*\]\. Give --map MODEL_NAME=TF_NAME with one of those TF names\."),
    ("logit.bias=dense_1/bias", r"--map 'logit.bias=dense_1/bias': 'logit.bias' is not a model tensor; the model has "
                                r"\['conv1.bias', .*\]\. Give --map MODEL_NAME=TF_NAME with one of those model names\."),
], ids=["tf-name-missing", "model-name-missing"])
def test_convert_checkpoint_map_errors_name_the_flag_and_the_entry(tmp_path, capsys, entry, message):
    output = tmp_path / "out.safetensors"
    args = ["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "cnn"), "--output", str(output),
            "--model", f"{__file__}:make_cnn_with_extra", "--map", entry]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "var_name_to_prev_var_name" not in err  # the Python argument means nothing on the command line
    assert not output.exists()


def test_convert_checkpoint_an_invalid_rename_regex_names_the_flag(tmp_path, capsys):
    output = tmp_path / "out.safetensors"
    assert cli.main(["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "dnn"), "--output", str(output),
                     "--model", f"{__file__}:make_mlp", "--rename", "dnn/(hidden=head.bias"]) == 1
    assert re.search(r"error: --rename has an invalid regex 'dnn/\(hidden': missing \)", capsys.readouterr().err)
    assert not output.exists()


def test_the_python_api_names_its_own_argument():
    values, _ = TFCheckpoint(FIXTURES / "cnn").read_all()
    with pytest.raises(ValueError, match=r"^var_name_to_prev_var_name: 'nope' \(for 'dense.bias'\) is not in the TF "
                                         r"checkpoint; it has \['conv2d/bias', .*\]\. Map 'dense.bias' to one of those "
                                         r"TF names\.$"):
        map_tf_variables(values, small_cnn(), var_name_to_prev_var_name={"dense.bias": "nope"})
    with pytest.raises(ValueError, match=r"^var_name_to_prev_var_name: 'dense.bia' is not a model tensor; the model has "
                                         r"\['conv1.bias', .*\]\. Use one of those names as the key\.$"):
        map_tf_variables(values, small_cnn(), var_name_to_prev_var_name={"dense.bia": "dense/bias"})


def test_convert_checkpoint_without_a_model_keeps_tf_names(tmp_path, capsys):
    from safetensors.numpy import load_file

    output = tmp_path / "raw.safetensors"
    assert cli.main(["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "linear"), "--output", str(output)]) == 0
    assert sorted(load_file(str(output))) == ["linear/linear_model/bias_weights", "linear/linear_model/x/weights"]
    assert "optimizer state left out" in capsys.readouterr().out


# -- Regex renames: a model of one's own from a TF model_dir --------------------------------------------------


class MLP(nn.Module):
    """TF's DNNClassifier(hidden_units=[8, 6], n_classes=3) over 4 inputs, under names of one's own."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 6)])
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


DNN_RULES = [(r"dnn/hiddenlayer_(\d+)/kernel", r"hidden.\1.weight"), (r"dnn/hiddenlayer_(\d+)/bias", r"hidden.\1.bias"),
             (r"dnn/logits/kernel", "head.weight"), (r"dnn/logits/bias", "head.bias")]


def _probabilities(features, labels, mode, model):
    return te.EstimatorSpec(mode, predictions={"probabilities": torch.softmax(model(features["x"]), dim=1)})


def test_regex_renames_warm_start_a_model_of_ones_own_from_a_tf_dnn(tmp_path):
    before = snapshot(FIXTURES)
    with pytest.raises(ValueError, match=r"no TF variable matches a model tensor; TF has .*'dnn/hiddenlayer_0/bias'"):
        te.checkpoint.warm_start(MLP(), te.WarmStartSettings(str(FIXTURES / "dnn")))
    settings = te.WarmStartSettings(str(FIXTURES / "dnn"), rename=DNN_RULES)
    estimator = te.Estimator(_probabilities, model=MLP(), model_dir=str(tmp_path / "model"), warm_start_from=settings)
    inputs, expected = predictions("dnn")
    got = [p["probabilities"] for p in estimator.predict(te.inputs.numpy_input_fn({"x": inputs}, shuffle=False))]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)
    assert snapshot(FIXTURES) == before


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([(r"dnn/hidden_(\d+)/kernel", r"hidden.\1.weight")],
         r"warm_start_from TF checkpoint .*model.ckpt-5: rename pattern 'dnn/hidden_\(\\\\d\+\)/kernel' matches no name in "
         r"the checkpoint; it has \['dnn/hiddenlayer_0/bias', 'dnn/hiddenlayer_0/kernel', .*'dnn/logits/kernel'\]"),
        ([(r"dnn/logits/(kernel|bias)", r"logits.\1")],
         r"rename \('dnn/logits/\(kernel\|bias\)', 'logits.\\\\1'\) gives \['logits.bias', 'logits.kernel'\], none "
         r"of them a model tensor; the model has \['head.bias', 'head.weight', 'hidden.0.bias'"),
        ([(r"dnn/hiddenlayer_\d+/bias", "hidden.0.bias")],
         r"model tensor 'hidden.0.bias' is renamed from two checkpoint names, 'dnn/hiddenlayer_0/bias' and "
         r"'dnn/hiddenlayer_1/bias'"),
        ([(r"dnn/hiddenlayer_0/kernel", "hidden.1.weight"), (r"dnn/hiddenlayer_1/kernel", "hidden.0.weight")],
         r"shapes differ: hidden.1.weight \(6, 8\) vs TF 'dnn/hiddenlayer_0/kernel' \(4, 8\); hidden.0.weight \(8, 4\) "
         r"vs TF 'dnn/hiddenlayer_1/kernel' \(8, 6\)"),
    ],
    ids=["matches-nothing", "gives-no-model-name", "mapped-twice", "shape-mismatch"],
)
def test_bad_renames_of_tf_names_are_clear_errors(rules, message):
    with pytest.raises(ValueError, match=message):
        te.checkpoint.warm_start(MLP(), te.WarmStartSettings(str(FIXTURES / "dnn"), rename=rules))


def make_mlp() -> nn.Module:  # the --model callable of the test below
    return MLP()


def test_convert_checkpoint_renames_and_refuses_a_rename_that_matches_nothing(tmp_path, capsys):
    output = tmp_path / "mlp.safetensors"
    args = ["convert-checkpoint", "--tf_checkpoint", str(FIXTURES / "dnn"), "--output", str(output),
            "--model", f"{__file__}:make_mlp"]
    renames = [r"dnn/hiddenlayer_(\d+)/kernel=hidden.\1.weight", r"dnn/hiddenlayer_(\d+)/bias=hidden.\1.bias",
               "dnn/logits/kernel=head.weight", "dnn/logits/bias=head.bias"]
    assert cli.main([*args, *[f"--rename={rule}" for rule in renames]]) == 0
    assert "hidden.1.weight [6, 8] <- dnn/hiddenlayer_1/kernel [8, 6]" in capsys.readouterr().out
    assert sorted(te.checkpoint.read_checkpoint(str(output)).model) == sorted(MLP().state_dict())
    assert cli.main([*args[:4], str(tmp_path / "none.safetensors"), *args[5:], "--rename", "dnn/nothing=head.bias"]) == 1
    assert "--rename: rename pattern 'dnn/nothing' matches no name in the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "none.safetensors").exists()


def test_a_fifo_in_place_of_an_index_or_a_data_shard_is_refused_not_read_forever(tmp_path):
    model_dir = tmp_path / "cnn"
    shutil.copytree(FIXTURES / "cnn", model_dir)
    data = model_dir / "model.ckpt-5.data-00000-of-00001"
    reader = TFCheckpoint(model_dir)
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001 is not a regular file \(a FIFO, socket or device\); "
                                                r"a TF checkpoint data shard must be a regular file"):
        reader.read("dense/kernel")
    index = model_dir / "model.ckpt-5.index"
    index.unlink()
    os.mkfifo(index)
    with pytest.raises(TFCheckpointError, match=r"model.ckpt-5.index is not a regular file \(a FIFO, socket or device\); "
                                                r"a TF checkpoint index must be a regular file"):
        TFCheckpoint(model_dir)
