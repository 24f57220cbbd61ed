"""The torch-estimator command: show and run, and one-line errors (no traceback) for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from torch_estimator import cli, export

from .export_support import LABELS, NUM_FEATURES, data, make_model_fn, predict, raw_receiver_fn, train_estimator


def _outputs(p, logits):
    return {
        "serving_default": export.PredictOutput(p),
        "classify": export.ClassificationOutput(p["probabilities"], labels=LABELS),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    est = train_estimator(tmp / "model", make_model_fn(_outputs))
    return est, est.export_saved_model(tmp / "exports", raw_receiver_fn())


def _main(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# show


def test_show_lists_the_signature_keys(capsys, exported):
    status, out, _ = _main(capsys, "show", "--dir", exported[1])
    assert status == 0
    assert out.splitlines() == [
        "The given export contains the following signatures (default 'serving_default'):",
        'SignatureDef key: "classify"',
        'SignatureDef key: "serving_default"',
    ]


def test_show_a_signature_prints_its_inputs_and_outputs(capsys, exported):
    status, out, _ = _main(capsys, "show", "--dir", exported[1], "--signature_def", "classify")
    assert status == 0
    assert out.splitlines() == [
        "The given export SignatureDef contains the following input(s):",
        "  inputs['x'] tensor_info:",
        "      dtype: float32",
        f"      shape: (-1, {NUM_FEATURES})",
        "The given export SignatureDef contains the following output(s):",
        "  outputs['scores'] tensor_info:",
        "      dtype: float32",
        "      shape: (-1, 3)",
        f"Class labels: {LABELS}",
        "Function: classify",
        "Method name is: tensorflow/serving/classify",
    ]


def test_show_all_prints_every_signature(capsys, exported):
    status, out, _ = _main(capsys, "show", "--dir", os.path.dirname(exported[1]), "--all")
    assert status == 0
    assert "signature_def['classify']:" in out and "signature_def['serving_default']:" in out
    assert out.splitlines()[0].startswith(f"Export {exported[1]} (version {os.path.basename(exported[1])}, global step 3")


def test_show_all_names_the_artifact_it_verified(capsys, exported):
    status, out, _ = _main(capsys, "show", "--dir", exported[1], "--all")
    assert status == 0 and out.splitlines()[0].endswith("artifacts: model.pt; model.pt verified against signature.json)")


def test_show_and_run_refuse_a_damaged_export_naming_the_file(capsys, exported, tmp_path):
    import shutil

    shutil.copytree(exported[1], tmp_path / "1")
    model = tmp_path / "1" / "model.pt"
    model.write_bytes(model.read_bytes()[:-1])
    for argv in (["show", "--dir", str(tmp_path)], ["run", "--dir", str(tmp_path), "--input_exprs", f"x=[{[0.5] * NUM_FEATURES}]"]):
        status, out, err = _main(capsys, *argv)
        assert status == 1 and out == ""
        assert err.startswith(f"torch-estimator: error: {model} is damaged or was altered after export: it is "), err


def test_serve_help_states_the_trust_model(capsys):
    status, out, _ = _main(capsys, "serve", "--help")
    text = " ".join(out.split())
    assert status == 0
    assert "an exported model is a program" in text and "Serve only directories that only people you trust can write to" in text
    assert "What the server reads:" in text and "signature.json and the one artifact it serves" in text
    assert "What it never does: use Python's pickle" in text and "write, move or delete anything under --model_base_path" in text


def test_show_all_and_signature_def_exclude_each_other(capsys, exported):
    status, _, err = _main(capsys, "show", "--dir", exported[1], "--all", "--signature_def", "classify")
    assert status == 2 and "not allowed with argument" in err


# run


def test_run_prints_each_output(capsys, exported):
    x, _ = data(2, seed=15)
    status, out, _ = _main(capsys, "run", "--dir", exported[1], "--input_exprs", f"x={x.tolist()}")
    assert status == 0
    expected = predict(exported[0], x)
    assert out.startswith(f"Result for output key classes:\n{expected['classes']}\nResult for output key probabilities:\n")


def test_run_reads_npy_and_saves_npy(capsys, exported, tmp_path):
    x, _ = data(3, seed=16)
    np.save(tmp_path / "x.npy", x)
    status, out, _ = _main(capsys, "run", "--dir", exported[1], "--inputs", f"x={tmp_path / 'x.npy'}",
                           "--signature_def", "classify", "--outdir", str(tmp_path / "out"))
    assert status == 0 and out == f"Output scores is saved to {tmp_path / 'out' / 'scores.npy'}\n"
    np.testing.assert_allclose(np.load(tmp_path / "out" / "scores.npy"), predict(exported[0], x)["probabilities"], atol=1e-6)


def test_run_reads_an_npz_key(capsys, exported, tmp_path):
    x, _ = data(2, seed=17)
    np.savez(tmp_path / "batch.npz", features=x, other=x)
    status, out, _ = _main(capsys, "run", "--dir", exported[1], "--inputs", f"x={tmp_path / 'batch.npz'}[features]")
    assert status == 0 and "Result for output key probabilities" in out


def test_run_refuses_to_overwrite_outputs(capsys, exported, tmp_path):
    (tmp_path / "classes.npy").write_bytes(b"")
    status, _, err = _main(capsys, "run", "--dir", exported[1], "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]", "--outdir", str(tmp_path))
    assert status == 1 and "already exists; pass --overwrite" in err


def test_run_overwrites_outputs_when_asked(capsys, exported, tmp_path):
    (tmp_path / "classes.npy").write_bytes(b"")
    status, _, _ = _main(capsys, "run", "--dir", exported[1], "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]",
                         "--outdir", str(tmp_path), "--overwrite")
    assert status == 0 and np.load(tmp_path / "classes.npy").shape == (1,)


# Errors: one line on stderr, non-zero exit, no traceback


def _one_line_error(capsys, *argv) -> str:
    status, out, err = _main(capsys, *argv)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("torch-estimator: error: ") and "Traceback" not in err
    return err


def test_a_bad_path_is_one_line(capsys, tmp_path):
    assert "No export at" in _one_line_error(capsys, "show", "--dir", str(tmp_path / "missing"))


def test_a_missing_signature_is_one_line(capsys, exported):
    assert "Signature 'nope' not found" in _one_line_error(capsys, "show", "--dir", exported[1], "--signature_def", "nope")


def test_running_a_missing_signature_is_one_line(capsys, exported):
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]", "--signature_def", "nope")
    assert "Serving signature name: 'nope' not found" in err


def test_a_malformed_inputs_entry_is_one_line(capsys, exported):
    assert "--inputs entry 'x' is malformed; expected name=value" in _one_line_error(capsys, "run", "--dir", exported[1], "--inputs", "x")


def test_a_missing_input_file_is_one_line(capsys, exported, tmp_path):
    assert "Input 'x': file" in _one_line_error(capsys, "run", "--dir", exported[1], "--inputs", f"x={tmp_path / 'no.npy'}")


def test_a_non_whitelisted_expression_is_one_line(capsys, exported):
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--input_exprs", "x=__import__('os').getcwd()")
    assert "Input 'x': --input_exprs does not allow calling __import__('os').getcwd; it takes numbers" in err


def test_a_tag_set_other_than_serve_is_one_line(capsys, exported):
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--tag_set", "train", "--input_exprs", "x=[[1,2,3,4]]")
    assert "--tag_set 'train' not found" in err and "--tag_set serve" in err


def test_input_examples_run_as_classify_reads_them(capsys, exported):
    x, _ = data(2, seed=18)
    examples = [{"x": row} for row in x.tolist()]
    status, out, _ = _main(capsys, "run", "--dir", exported[1], "--input_examples", f"examples={examples}")
    assert status == 0 and out.startswith(f"Result for output key classes:\n{predict(exported[0], x)['classes']}")


def test_input_examples_with_an_unknown_feature_is_one_line(capsys, exported):
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--input_examples", "e=[{'x': [1, 2, 3, 4], 'y': [1]}]")
    assert "features ['y'] that the signature does not take" in err


def test_saved_model_cli_input_flags(capsys, exported, tmp_path):
    x, _ = data(3, seed=19)
    np.savez(tmp_path / "batch.npz", features=x.astype(np.float32), other=x[:1])
    (tmp_path / "batch.json").write_text(json.dumps({"x": x.tolist()}))
    expected = predict(exported[0], x)["classes"]
    runs = {
        "npz": ("--inputs", f"x={tmp_path / 'batch.npz'}[features]"),
        "json": ("--inputs", f"x={tmp_path / 'batch.json'}[x]"),
        "expr": ("--input_exprs", f"x=np.array({x.tolist()}, dtype=np.float32)"),
    }
    for label, flags in runs.items():
        status, out, err = _main(capsys, "run", "--dir", exported[1], "--tag_set", "serve", "--signature_def",
                                 "serving_default", *flags)
        assert status == 0, (label, err)
        assert out.startswith(f"Result for output key classes:\n{expected}\n"), label
    status, out, err = _main(capsys, "run", "--dir", exported[1], "--tag_set", "serve", "--signature_def", "classify",
                             "--input_exprs", f"x=np.ones((2,{NUM_FEATURES}))")
    assert status == 0, err
    assert out.startswith("Result for output key scores:\n[[")


def test_an_attack_expression_is_refused_and_never_run(capsys, exported, tmp_path):
    marker = tmp_path / "pwned"
    attacks = [
        f"x=__import__('os').system('touch {marker}')",
        f"x=np.array(open('{marker}', 'w'))",
        "x=np.ones.__globals__['os'].system('true')",
        "x=[c for c in ().__class__.__base__.__subclasses__()]",
        "x=np.lib.npyio.os.system('true')",
        "x=(lambda: 1)()",
    ]
    for attack in attacks:  # in this process: an expression that ran would act here, where the test looks
        err = _one_line_error(capsys, "run", "--dir", exported[1], "--input_exprs", attack)
        assert err.startswith("torch-estimator: error: Input 'x': --input_exprs does not allow"), (attack, err)
    assert not marker.exists()


def test_an_unreadable_file_is_named_without_a_pickle_warning(capsys, exported, tmp_path):
    (tmp_path / "notes.npy").write_text("hello, this is not an array\n")
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--inputs", f"x={tmp_path / 'notes.npy'}")
    assert err.startswith(f"torch-estimator: error: Input 'x': '{tmp_path / 'notes.npy'}' is not a .npy, "
                          f".npz or JSON file (it starts with b'hello, t'")
    assert "pickle" not in err.lower()


# The real command in a subprocess, as saved_model_cli is used: each one starts Python and imports torch (seconds
# on a loaded machine), so the flags and errors above run in this process and only what needs a process of its
# own runs in one.


def _cli(*argv: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(environment or {}),
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))}
    return subprocess.run([sys.executable, "-m", "torch_estimator.cli", *argv], capture_output=True, text=True,
                          timeout=120, check=False, env=env)  # a hang guard


def test_a_run_in_a_real_process_prints_its_results_and_exits_zero(exported, tmp_path):
    x, _ = data(3, seed=19)
    np.savez(tmp_path / "batch.npz", features=x.astype(np.float32))
    result = _cli("run", "--dir", exported[1], "--tag_set", "serve", "--signature_def", "serving_default",
                  "--inputs", f"x={tmp_path / 'batch.npz'}[features]")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Result for output key classes:\n{predict(exported[0], x)['classes']}\n")


def test_an_error_in_a_real_process_is_one_line_and_exit_status_1(exported):
    result = _cli("run", "--dir", exported[1], "--input_exprs", "x=__import__('os').getcwd()")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("torch-estimator: error: Input 'x': --input_exprs does not allow")
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_shape_mismatch_is_one_line(capsys, exported):
    err = _one_line_error(capsys, "run", "--dir", exported[1], "--input_exprs", "x=[[1.0, 2.0]]")
    assert "Input 'x' expects shape [-1, 4]" in err


def test_no_inputs_is_one_line(capsys, exported):
    assert "No inputs" in _one_line_error(capsys, "run", "--dir", exported[1])


def test_an_input_given_twice_is_one_line(capsys, exported):
    assert "given more than once" in _one_line_error(capsys, "run", "--dir", exported[1], "--input_exprs", "x=[[1,2,3,4]];x=[[1,2,3,4]]")


def test_an_unknown_command_is_a_usage_error(capsys):
    status, _, err = _main(capsys, "serve-me")
    assert status == 2 and "invalid choice" in err


def test_the_console_script_is_installed(exported):
    script = os.path.join(os.path.dirname(sys.executable), "torch-estimator")
    if not os.path.isfile(script):
        pytest.skip(f"no console script at {script}: run pip install -e . to install it")
    result = subprocess.run([script, "show", "--dir", exported[1]], capture_output=True, text=True, timeout=120,
                            check=False)  # a hang guard
    assert result.returncode == 0 and 'SignatureDef key: "serving_default"' in result.stdout


def test_run_prints_no_deprecation_noise(exported):
    # PYTHONWARNINGS=always would show every warning torch raises, at import too: hence a fresh process.
    result = _cli("run", "--dir", exported[1], "--input_exprs", "x=[[1.0, 2.0, 3.0, 4.0]]",
                  environment={"PYTHONWARNINGS": "always"})
    assert result.returncode == 0, result.stderr
    assert "Result for output key probabilities" in result.stdout
    assert "deprecated" not in result.stderr.lower() and "WARNING" not in result.stderr, result.stderr
