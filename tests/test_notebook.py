"""examples/mnist.ipynb: stored without outputs, and (slow) executed top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "mnist.ipynb"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_notebook_is_stored_without_outputs():
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in document["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.get("outputs") or cell.get("execution_count") is not None]
    assert dirty == [], f"code cells {dirty} keep outputs: clear them (Jupyter: Edit > Clear All Outputs) before committing"


def test_notebook_walks_the_tutorial():
    source = "\n".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"])
    for step in ("numpy_input_fn", "def model_fn", "progress_bar=True", ".train(", ".evaluate(", ".predict(",
                 "imshow", "export_saved_model", "loader.load", "read_scalars", "%tensorboard --logdir",
                 'DATASET = "fashion-mnist"'):
        assert step in source, step
    assert "REAL_MNIST" not in source


def _stop_tensorboards(info_dir: Path) -> None:
    """Stop the TensorBoard servers the notebook's %tensorboard started: their pids are in TensorBoard's info
    files under the kernel's temporary directory (this test's own)."""
    for info in info_dir.glob("pid-*.info"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGTERM)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as PNG outputs, no display
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's model_dir, exports and TensorBoard's info files
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    finally:
        _stop_tensorboards(tmp_path / ".tensorboard-info")
    outputs = [(i, output) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
               for output in cell.get("outputs", [])]
    text = "\n".join(o.get("text", "") for _, o in outputs if o.get("output_type") == "stream")
    assert "'accuracy'" in text and "served:" in text and "torch.jit:" in text
    accuracy = next(float(line.split("'accuracy': ")[1].split(",")[0]) for line in text.splitlines() if "'accuracy'" in line)
    fashion = "data: fashion-mnist, 60000 training" in text
    assert fashion or not FASHION_MNIST.is_dir(), "Fashion-MNIST is installed but the notebook did not use it"
    assert accuracy > (0.6 if fashion else 0.8)
    assert "4 evaluations at steps [50, 100, 150, 200]" in text
    # No stray values of a cell's last expression (such as <torch._C.Generator at 0x...>), no widget fallback.
    results = [o["data"].get("text/plain", "") for _, o in outputs if o.get("output_type") == "execute_result"]
    assert results == [], results
    errors = "\n".join(o.get("text", "") for _, o in outputs if o.get("name") == "stderr")
    assert "IProgress not found" not in errors and "Warning" not in errors, errors
    images = [i for i, o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2  # the curves and the predicted images
    tensorboard = [o for _, o in outputs if o.get("output_type") == "display_data"
                   and ("text/html" in o.get("data", {}) or "application/javascript" in o.get("data", {}))]
    assert tensorboard, "the %tensorboard cell displayed nothing"
