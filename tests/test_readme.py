"""The README's quickstart really runs."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_a_quickstart():
    assert _python_blocks(), "README.md should contain a ```python quickstart block"


@pytest.mark.slow
def test_quickstart_runs_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = _python_blocks()[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    first = capsys.readouterr().out
    assert "'global_step': 300}" in first and "'accuracy'" in first
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert "'global_step': 600}" in capsys.readouterr().out
