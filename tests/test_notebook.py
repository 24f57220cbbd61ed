"""examples/mnist.ipynb: stored without outputs, and (slow) executed top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "mnist.ipynb"


def test_notebook_is_stored_without_outputs():
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in document["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.get("outputs") or cell.get("execution_count") is not None]
    assert dirty == [], f"code cells {dirty} keep outputs: clear them (Jupyter: Edit > Clear All Outputs) before committing"


def test_notebook_walks_the_tutorial():
    source = "\n".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"])
    for step in ("numpy_input_fn", "def model_fn", "progress_bar=True", ".train(", ".evaluate(", ".predict(",
                 "imshow", "export_saved_model", "loader.load"):
        assert step in source, step


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display in CI; figures still render
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's model_dir and exports go to tempfile.mkdtemp()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []) if output.get("output_type") == "stream")
    assert "'accuracy'" in text and "served:" in text and "torch.jit:" in text
    accuracy = next(float(line.split("'accuracy': ")[1].split(",")[0]) for line in text.splitlines() if "'accuracy'" in line)
    assert accuracy > 0.8
