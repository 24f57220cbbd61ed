"""torch_estimator.cli_inputs: the whitelist evaluator of --input_exprs, the file reader of --inputs, examples."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from torch_estimator import cli_inputs
from torch_estimator.cli_inputs import (
    InputError,
    evaluate_expression,
    examples_to_inputs,
    parse_examples,
    read_input_file,
)

# --input_exprs


@pytest.mark.parametrize(("text", "expected"), [
    ("np.ones((2, 3))", np.ones((2, 3))),
    ("numpy.zeros([1, 4], dtype=numpy.int64)", np.zeros((1, 4), dtype=np.int64)),
    ("np.full((2, 2), 7.5)", np.full((2, 2), 7.5)),
    ("np.arange(6).reshape(2, 3).astype(np.float32)", np.arange(6, dtype=np.float32).reshape(2, 3)),
    ("np.linspace(0, 1, 5)", np.linspace(0, 1, 5)),
    ("np.eye(3)", np.eye(3)),
    ("[[1, 2], [3, -4]]", np.array([[1, 2], [3, -4]])),
    ("[[0.5] * 3] * 2", np.full((2, 3), 0.5)),
    ("np.ones((1, 2)) * 2 + 1", np.full((1, 2), 3.0)),
    ("2 ** 3", np.array(8)),
    ("[np.pi, -np.inf]", np.array([np.pi, -np.inf])),
    ("['small', 'medium']", np.array(["small", "medium"])),
    ("np.arange(4).T", np.arange(4)),
])
def test_expressions_build_arrays(text, expected):
    result = evaluate_expression(text, "x")
    assert result.dtype == expected.dtype and result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)


def test_random_constructors_have_the_requested_shape():
    assert evaluate_expression("np.random.rand(2, 784)", "x").shape == (2, 784)
    assert evaluate_expression("np.random.randint(0, 5, size=(3,))", "x").shape == (3,)
    assert evaluate_expression("np.random.uniform(0, 1, (2, 2))", "x").shape == (2, 2)


@pytest.mark.parametrize(("text", "refused"), [
    ("__import__('os').system('true')", "calling __import__('os').system"),
    ("open('/etc/passwd')", "calling open"),
    ("os", "the name 'os'"),
    ("np.load('x.npy', allow_pickle=True)", "calling np.load"),
    ("np.ones.__globals__", "the attribute 'np.ones.__globals__'"),
    ("np.lib.npyio.os.system('true')", "calling np.lib.npyio.os.system"),
    ("np.random.seed(0)", "calling np.random.seed"),
    ("().__class__", "the attribute '().__class__'"),
    ("[1, 2][0]", "Subscript expressions"),
    ("(lambda: 1)()", "calling lambda: 1"),
    ("[x for x in [1]]", "ListComp expressions"),
    ("np.ones(2, **{'dtype': 'f'})", "* or ** arguments"),
    ("'abc'.upper()", "calling 'abc'.upper"),
    ("{'a': 1}", "Dict expressions"),
])
def test_anything_outside_the_whitelist_is_refused(text, refused):
    with pytest.raises(InputError, match=r"^Input 'x': --input_exprs does not allow " + __import__("re").escape(refused)):
        evaluate_expression(text, "x")


@pytest.mark.parametrize("text", ["np.ones((100000, 100000))", "np.zeros(10**9)", "[0] * 10**9",
                                  "np.random.rand(100000, 100000)", "np.arange(0, 1e12)", "np.eye(20000)"])
def test_huge_arrays_are_refused_before_allocation(text):
    with pytest.raises(InputError, match=r"more than the 100,000,000 --input_exprs allows; read large inputs"):
        evaluate_expression(text, "x")


def test_huge_integers_are_refused():
    with pytest.raises(InputError, match="too large a number"):
        evaluate_expression("9 ** 9 ** 9", "x")


def test_syntax_errors_and_ragged_lists_say_so():
    with pytest.raises(InputError, match=r"Input 'x': 'np.ones\(\(2,' is not a valid expression"):
        evaluate_expression("np.ones((2,", "x")
    with pytest.raises(InputError, match="is not a rectangular array"):
        evaluate_expression("[[1, 2], [3]]", "x")
    with pytest.raises(InputError, match=r"'np.ones\(\(2, -3\)\)' fails: negative dimensions"):
        evaluate_expression("np.ones((2, -3))", "x")


# --inputs


def test_npy_npz_and_json_files_are_read(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "one.npz", only=x)
    np.savez(tmp_path / "two.npz", a=x, b=x + 1)
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    (tmp_path / "obj.json").write_text(json.dumps({"a": x.tolist(), "b": [1]}))
    for spec in ("x.npy", "one.npz", "two.npz[a]", "x.json", "obj.json[a]"):
        np.testing.assert_array_equal(read_input_file(str(tmp_path / spec), "x"), x)
    np.testing.assert_array_equal(read_input_file(str(tmp_path / "two.npz") + "[b]", "x"), x + 1)


def test_the_format_comes_from_the_bytes_not_the_name(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(2))
    os.replace(tmp_path / "x.npy", tmp_path / "data.bin")
    np.testing.assert_array_equal(read_input_file(str(tmp_path / "data.bin"), "x"), np.ones(2))


@pytest.mark.parametrize(("spec", "message"), [
    ("missing.npy", r"Input 'x': file '.*missing.npy' not found"),
    ("two.npz", r"holds arrays \['a', 'b'\]; pick one with .*two.npz\[key\]"),
    ("two.npz[c]", r"has no array 'c'; it holds \['a', 'b'\]"),
    ("x.npy[a]", r"is a .npy file; \[key\] applies to .npz and JSON files"),
    ("text.npy", r"is not a .npy, .npz or JSON file \(it starts with b'hello wo'"),
    ("objects.npy", r"holds Python objects \(an object array\), which are never unpickled"),
    ("data.pkl", r"is a pickle file, which is never loaded"),
    ("pickled.npy", r"is a pickle file, which is never loaded"),
    ("list.json[a]", r"holds a JSON list; \[key\] picks a member of a JSON object"),
    ("", r"is a directory"),
])
def test_unreadable_files_are_named(tmp_path, spec, message):
    np.savez(tmp_path / "two.npz", a=np.ones(1), b=np.ones(1))
    np.save(tmp_path / "x.npy", np.ones(1))
    (tmp_path / "text.npy").write_text("hello world")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "data.pkl").write_bytes(pickle.dumps([1, 2]))
    (tmp_path / "pickled.npy").write_bytes(pickle.dumps(np.ones(2)))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=message) as error:
        read_input_file(str(tmp_path / spec), "x")
    assert "allow_pickle" not in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_named(tmp_path):
    path = tmp_path / "locked.npy"
    np.save(path, np.ones(1))
    path.chmod(0)
    with pytest.raises(InputError, match=r"cannot read .*locked.npy': Permission denied"):
        read_input_file(str(path), "x")


# --input_examples


def test_examples_become_one_input_per_feature():
    declared = {"x": {"dtype": "float32", "shape": [-1, 2, 2]}, "size": {"dtype": "string", "shape": [-1]}}
    examples = parse_examples('[{"x": [1, 2, 3, 4], "size": "small"}, {"x": [5, 6, 7, 8], "size": "large", "ok": true}]',
                              "e")
    assert examples[1]["ok"] is True and parse_examples("[{'x': [0.0] * 3}]", "e") == [{"x": [0.0, 0.0, 0.0]}]
    del examples[1]["ok"]
    inputs = examples_to_inputs(examples, declared, "e")
    assert inputs["x"].shape == (2, 2, 2) and inputs["size"].tolist() == ["small", "large"]


def test_bad_examples_are_named():
    with pytest.raises(InputError, match=r"Input 'e': --input_examples takes a non-empty list of dicts"):
        parse_examples("{'x': 1}", "e")
    with pytest.raises(InputError, match=r"--input_examples does not allow calling open"):
        parse_examples("[{'x': open('f')}]", "e")
    with pytest.raises(InputError, match=r"is not a valid expression"):
        parse_examples("[{'x': ", "e")
    declared = {"x": {"dtype": "float32", "shape": [-1, 2]}}
    with pytest.raises(InputError, match=r"example 1 has features \['y'\] .* missing 'x'"):
        examples_to_inputs([{"x": [1, 2]}, {"y": [1]}], declared, "e")
    with pytest.raises(InputError, match=r"example 0's 'x' has 3 value\(s\); the signature takes 2"):
        examples_to_inputs([{"x": [1, 2, 3]}], declared, "e")


def test_max_elements_is_the_documented_bound():
    assert cli_inputs.MAX_ELEMENTS == 100_000_000
