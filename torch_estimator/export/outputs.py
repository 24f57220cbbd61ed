"""Export outputs: what each serving signature returns, and TF's rules for choosing ``serving_default``.

``model_fn`` puts them in ``EstimatorSpec(export_outputs={signature key: output})`` in PREDICT mode. Each
becomes one signature; its kind sets the signature's ``method_name`` as TF Serving expects.

Example:
    >>> import torch
    >>> scores = torch.tensor([[0.1, 0.9]])
    >>> classification = ClassificationOutput(scores, labels=["cat", "dog"])
    >>> outputs = resolve_export_outputs({"classification": classification}, scores)
    >>> sorted(outputs), outputs["serving_default"] is outputs["classification"]
    (['classification', 'serving_default'], True)
    >>> sorted(PredictOutput(scores).outputs)
    ['output']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._checks import check_named
from .._checks import describe as _describe
from ..spec import ExportOutput  # the base class lives with the spec that checks it

__all__ = [
    "DEFAULT_SERVING_SIGNATURE_DEF_KEY",
    "PREDICT_METHOD_NAME",
    "CLASSIFY_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "ExportOutput",
    "PredictOutput",
    "ClassificationOutput",
    "RegressionOutput",
    "resolve_export_outputs",
]

DEFAULT_SERVING_SIGNATURE_DEF_KEY = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"


class PredictOutput(ExportOutput):
    """Any named tensors (``tensorflow/serving/predict``).

    Args:
        outputs: A Tensor (named ``"output"``) or a dict of name to Tensor; tuple keys are joined with ``/``.

    Raises:
        TypeError: If ``outputs`` is not a Tensor or a dict of Tensors.
        ValueError: If the dict is empty or a name is empty.
    """

    def __init__(self, outputs: torch.Tensor | Mapping[Any, torch.Tensor]) -> None:
        if isinstance(outputs, torch.Tensor):
            outputs = {"output": outputs}
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"PredictOutput `outputs` must be a Tensor or a dict of Tensors; received {_describe(outputs)}."
            )
        if not outputs:
            raise ValueError("PredictOutput `outputs` must not be empty.")
        joined = {"/".join(key) if isinstance(key, tuple) and all(isinstance(k, str) for k in key) else key: value
                  for key, value in outputs.items()}  # MultiHead's (head name, key) pairs
        self._outputs = check_named(joined, torch.Tensor, what="PredictOutput output", expected="a Tensor",
                                    entry="{what} {name!r}")

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return dict(self._outputs)


class ClassificationOutput(ExportOutput):
    """Scores and/or class ids (``tensorflow/serving/classify``).

    TF's classes were strings; a TorchScript method returns only tensors, so ``classes`` are integer ids
    (int64 in the artifact) and the strings go to ``labels``, which the signature keeps so that a server
    can map ids (or score columns) to names.

    Args:
        scores: A floating Tensor, ``[batch, num_classes]`` (a score per class, in class-id order) or
            ``[batch, k]`` alongside ``classes`` (top-k).
        classes: An integer Tensor of class ids.
        labels: The name of each class id, a list of strings.

    Raises:
        ValueError: If neither ``scores`` nor ``classes`` is given, or ``labels`` does not match ``scores``.
        TypeError: For a non-floating ``scores``, non-integer ``classes`` or non-string labels.
    """

    method_name = CLASSIFY_METHOD_NAME

    def __init__(
        self,
        scores: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        if scores is None and classes is None:
            raise ValueError("ClassificationOutput needs `scores`, `classes` or both.")
        if scores is not None and not (isinstance(scores, torch.Tensor) and scores.is_floating_point()):
            raise TypeError(
                f"ClassificationOutput `scores` must be a floating-point Tensor; received {_describe(scores)}."
            )
        if classes is not None and not (
            isinstance(classes, torch.Tensor) and not classes.is_floating_point() and not classes.is_complex()
            and classes.dtype != torch.bool
        ):
            hint = " Pass class ids and give the names as labels=[...]." if isinstance(classes, (list, tuple)) else ""
            raise TypeError(
                f"ClassificationOutput `classes` must be an integer Tensor of class ids; "
                f"received {_describe(classes)}.{hint}"
            )
        if labels is not None:
            strings = isinstance(labels, Sequence) and all(isinstance(x, str) for x in labels)
            if isinstance(labels, str) or not strings:
                raise TypeError(f"ClassificationOutput `labels` must be a list of strings; received {labels!r}.")
            labels = list(labels)
            if not labels:
                raise ValueError("ClassificationOutput `labels` must not be empty.")
            tracing = torch.jit.is_tracing()  # the eager run checked; a traced comparison would warn
            per_class = scores is not None and classes is None and not tracing and scores.dim() >= 1
            if per_class and scores is not None and scores.shape[-1] != len(labels):
                raise ValueError(
                    f"ClassificationOutput has {len(labels)} labels but `scores` has {scores.shape[-1]} columns "
                    f"(one score per class is expected when `classes` is not given)."
                )
        self.scores, self.classes, self.class_labels = scores, classes, labels

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        outputs = {}
        if self.classes is not None:
            outputs["classes"] = self.classes.to(torch.int64)
        if self.scores is not None:
            outputs["scores"] = self.scores
        return outputs


class RegressionOutput(ExportOutput):
    """One floating value per example (``tensorflow/serving/regress``), output ``"outputs"``.

    Raises:
        TypeError: If ``value`` is not a floating-point Tensor.
    """

    method_name = REGRESS_METHOD_NAME

    def __init__(self, value: torch.Tensor) -> None:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            raise TypeError(f"RegressionOutput `value` must be a floating-point Tensor; received {_describe(value)}.")
        self.value = value

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return {"outputs": self.value}


def resolve_export_outputs(
    export_outputs: Mapping[str, Any] | None, predictions: torch.Tensor | Mapping[str, torch.Tensor]
) -> dict[str, ExportOutput]:
    """TF's rules: None -> ``serving_default`` predicts ``predictions``; one entry is also the default;
    several need a ``serving_default`` entry.

    Raises:
        TypeError: If ``export_outputs`` is not a dict of str to ``ExportOutput``.
        ValueError: If it is empty, or has several entries and none is ``serving_default``.
    """
    if export_outputs is None:
        return {DEFAULT_SERVING_SIGNATURE_DEF_KEY: PredictOutput(predictions)}
    if not isinstance(export_outputs, Mapping):
        raise TypeError(
            f"EstimatorSpec `export_outputs` must be a dict of signature key to export output; "
            f"received {_describe(export_outputs)}."
        )
    if not export_outputs:
        raise ValueError("EstimatorSpec `export_outputs` is empty; leave it None to export the predictions.")
    resolved: dict[str, ExportOutput] = check_named(
        export_outputs, ExportOutput, what="EstimatorSpec `export_outputs`", entry="EstimatorSpec `export_outputs[{name!r}]`",
        expected="a PredictOutput, ClassificationOutput or RegressionOutput", name_error=TypeError,
    )
    if DEFAULT_SERVING_SIGNATURE_DEF_KEY not in resolved:
        if len(resolved) > 1:
            raise ValueError(
                f"Multiple export_outputs were provided ({sorted(resolved)}), but none of them is the default; "
                f"add one under the key {DEFAULT_SERVING_SIGNATURE_DEF_KEY!r}."
            )
        resolved[DEFAULT_SERVING_SIGNATURE_DEF_KEY] = next(iter(resolved.values()))
    return resolved
