"""Every ```python block in docs/*.md runs (each file's blocks in order, in one namespace)."""

from __future__ import annotations

import pathlib
import re

import pytest

DOCS = sorted((pathlib.Path(__file__).resolve().parents[1] / "docs").glob("*.md"))


def _blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_doc_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for index, block in enumerate(_blocks(path)):
        exec(compile(block, f"{path.name}[block {index}]", "exec"), namespace)
