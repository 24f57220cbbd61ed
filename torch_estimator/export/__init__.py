"""Export for serving: receivers, export outputs, and a self-verified TorchScript (and ``torch.export``)
artifact with a declared signature.

``Estimator.export_saved_model`` calls :func:`export_saved_model` here. The export directory holds:

- ``model.pt``: TorchScript, one method per signature (``forward`` = ``serving_default``), each
  ``Dict[str, Tensor] -> Dict[str, Tensor]`` with a dynamic batch dimension, ``signature.json`` embedded.
  It loads with plain ``torch.jit.load`` (no torch_estimator needed) and from C++ with libtorch.
- ``model.pt2`` with ``format="pt2"`` or ``"all"``: the same signatures through ``torch.export``.
- ``model.aoti.pt2`` with ``format="aoti"``: the same signatures compiled by AOTInductor (faster; runs only
  with the torch release and on the kind of device and CPU it was compiled for).
- ``signature.json``: inputs and outputs (dtype, shape with -1 for dynamic dimensions) per signature.
- ``assets.extra/``: the user's extra files.

Export traces ``model_fn`` (as TF built a graph) and proves the trace: it loads the saved file and compares
every signature with eager ``model_fn`` at two batch sizes before the directory gets its final name.

Example:
    >>> import os, tempfile, torch
    >>> import torch_estimator as te
    >>> def model_fn(features, labels, mode, model):
    ...     logits = model(features["x"])
    ...     if mode == te.ModeKeys.PREDICT:
    ...         return te.EstimatorSpec(mode, predictions={"classes": logits.argmax(1), "logits": logits})
    ...     return te.EstimatorSpec(mode, loss=torch.nn.functional.cross_entropy(logits, labels))
    >>> est = te.Estimator(model_fn, model=torch.nn.Linear(4, 3), model_dir=tempfile.mkdtemp(),
    ...                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    ...                    config=te.RunConfig(device="cpu", log_step_count_steps=None))
    >>> _ = est.train(lambda: [({"x": torch.randn(8, 4)}, torch.randint(0, 3, (8,)))], steps=1)
    >>> receiver_fn = build_raw_serving_input_receiver_fn({"x": TensorSpec([None, 4], torch.float32)})
    >>> path = est.export_saved_model(tempfile.mkdtemp(), receiver_fn)
    >>> sorted(os.listdir(path))
    ['model.pt', 'signature.json']
"""

from __future__ import annotations

from .builder import ASSETS_EXTRA, FORMATS, export_saved_model
from .outputs import (
    CLASSIFY_METHOD_NAME,
    DEFAULT_SERVING_SIGNATURE_DEF_KEY,
    PREDICT_METHOD_NAME,
    REGRESS_METHOD_NAME,
    ClassificationOutput,
    ExportOutput,
    PredictOutput,
    RegressionOutput,
)
from .receivers import (
    ServingInputReceiver,
    TensorServingInputReceiver,
    TensorSpec,
    build_raw_serving_input_receiver_fn,
)
from .signature import FORMAT, SIGNATURE_FILE
from .verify import ExportVerificationError

__all__ = [
    "ASSETS_EXTRA",
    "CLASSIFY_METHOD_NAME",
    "DEFAULT_SERVING_SIGNATURE_DEF_KEY",
    "FORMAT",
    "FORMATS",
    "PREDICT_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "SIGNATURE_FILE",
    "ClassificationOutput",
    "ExportOutput",
    "ExportVerificationError",
    "PredictOutput",
    "RegressionOutput",
    "ServingInputReceiver",
    "TensorServingInputReceiver",
    "TensorSpec",
    "build_raw_serving_input_receiver_fn",
    "export_saved_model",
]
