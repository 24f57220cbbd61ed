"""Canned estimators on real tabular data: a wide & deep classifier and a DNN regressor, trained, evaluated,
exported and served.

The data sets ship with scikit-learn (no download): breast cancer diagnosis (569 tumours, 30 measurements,
malignant or benign) and diabetes progression (442 patients, 10 measurements, a disease score one year on).

What it shows, the TF way:

- one ``numeric_column`` per measurement, normalized *inside* the model (``normalizer_fn``), so the exported
  model takes the raw measurements;
- a string feature (the tumour's size class, made from its radius) through ``encode_features``, a
  vocabulary column and a cross with a bucketized column, in the linear part of a wide & deep model;
- string labels (``"malignant"``/``"benign"``) through ``label_vocabulary`` and ``encode_labels``;
- ``evaluate``'s TF metrics, ``predict``, ``export_saved_model`` with ``make_feature_spec``, and serving the
  artifact with ``torch_estimator.serving.loader`` (which needs only torch).

Run it from the repository root (``pip install scikit-learn`` once)::

    python examples/tabular.py                         # model directories and exports under runs/tabular
    python examples/tabular.py --steps 2000 --model-dir /tmp/tabular
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import torch_estimator as te
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch_estimator as te

from torch_estimator import canned
from torch_estimator.serving import loader

__all__ = ["load", "numeric_columns", "train_classifier", "train_regressor", "main"]

SIZE_CLASSES = ["small", "medium", "large"]


def load(name: str, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray, Any]:
    """A scikit-learn data set as feature dicts (one float32 array per measurement) split 80/20.

    Returns:
        ``(train_features, train_labels, test_features, test_labels, bunch)``.
    """
    from sklearn import datasets

    bunch = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}[name]()
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    cut = int(0.8 * len(order))
    features = {n: bunch.data[:, i].astype("float32") for i, n in enumerate(names)}
    take = lambda rows: {k: v[rows] for k, v in features.items()}  # noqa: E731
    return take(order[:cut]), bunch.target[order[:cut]], take(order[cut:]), bunch.target[order[cut:]], bunch


def numeric_columns(train: dict[str, np.ndarray]) -> list[canned.NumericColumn]:
    """One column per measurement, standardized with the training set's mean and deviation inside the model."""
    columns = []
    for key, values in sorted(train.items()):
        mean, std = float(values.mean()), float(values.std()) or 1.0
        columns.append(canned.numeric_column(key, normalizer_fn=lambda x, m=mean, s=std: (x - m) / s))
    return columns


def _size_class(radius: np.ndarray) -> np.ndarray:
    """A string feature for the example: the tumour's size class from its mean radius."""
    return np.array(SIZE_CLASSES, dtype=object)[np.digitize(radius, [12.0, 16.0])]


def _config(seed: int = 0) -> te.RunConfig:
    return te.RunConfig(device="cpu", random_seed=seed, save_checkpoints_steps=500, log_step_count_steps=None)


def train_classifier(model_dir: str | Path, export_dir: str | Path, steps: int = 500) -> dict[str, Any]:
    """Wide & deep on breast cancer: train, evaluate, predict, export and serve.

    Returns:
        ``{"metrics", "predictions", "served", "export_dir", "labels"}``.
    """
    train, train_y, test, test_y, bunch = load("breast_cancer")
    for split in (train, test):
        split["size"] = _size_class(split["mean_radius"])
    vocabulary = list(bunch.target_names)  # ["malignant", "benign"], label ids 0 and 1
    measurements = numeric_columns({k: v for k, v in train.items() if k != "size"})
    size = canned.categorical_column_with_vocabulary_list("size", SIZE_CLASSES)
    texture = canned.bucketized_column(canned.numeric_column("mean_texture"), [15.0, 20.0, 25.0])
    estimator = canned.DNNLinearCombinedClassifier(
        model_dir=str(model_dir),
        linear_feature_columns=[size, texture, canned.crossed_column([size, texture], hash_bucket_size=32)],
        dnn_feature_columns=measurements,
        dnn_hidden_units=[32, 16],
        dnn_optimizer=lambda parameters: torch.optim.Adam(parameters, lr=0.005),
        label_vocabulary=vocabulary,
        config=_config(),
    )
    columns = estimator.linear_feature_columns + estimator.dnn_feature_columns
    # Strings become fingerprints and string labels ids, on the host, before they become tensors.
    x, x_test = canned.encode_features(train, columns), canned.encode_features(test, columns)
    y, y_test = (canned.encode_labels(bunch.target_names[labels], vocabulary) for labels in (train_y, test_y))

    estimator.train(te.inputs.numpy_input_fn(x, y, batch_size=32, num_epochs=None, shuffle=True), steps=steps)
    metrics = estimator.evaluate(te.inputs.numpy_input_fn(x_test, y_test, batch_size=128, shuffle=False))
    first = {k: v[:5] for k, v in x_test.items()}
    predictions = next(estimator.predict(te.inputs.numpy_input_fn(first, shuffle=False), yield_single_examples=False))

    receiver_fn = te.export.build_raw_serving_input_receiver_fn(canned.make_feature_spec(columns))
    path = estimator.export_saved_model(str(export_dir), receiver_fn)
    model = loader.load(path)  # only torch needed from here on
    served = model(first)  # serving_default: the classify signature
    return {"metrics": metrics, "predictions": predictions, "served": served, "export_dir": path,
            "labels": model.signature_def()["class_labels"], "truth": y_test[:5]}


def train_regressor(model_dir: str | Path, export_dir: str | Path, steps: int = 500) -> dict[str, Any]:
    """A DNN regressor on diabetes: train, evaluate, export and serve.

    Returns:
        ``{"metrics", "served", "export_dir", "variance"}`` (``variance``: of the test labels, the loss of
        always predicting their mean).
    """
    train, train_y, test, test_y, _ = load("diabetes")
    columns = numeric_columns(train)
    estimator = canned.DNNRegressor(
        [16], columns, model_dir=str(model_dir), dropout=0.1,
        optimizer=lambda parameters: torch.optim.Adam(parameters, lr=0.005), config=_config(),
    )
    # Standardized labels: the same learning rate fits any scale; predictions are mapped back when served.
    center, scale = float(train_y.mean()), float(train_y.std())
    y, y_test = ((train_y - center) / scale).astype("float32"), ((test_y - center) / scale).astype("float32")
    estimator.train(te.inputs.numpy_input_fn(train, y, batch_size=32, num_epochs=None, shuffle=True), steps=steps)
    metrics = estimator.evaluate(te.inputs.numpy_input_fn(test, y_test, batch_size=128, shuffle=False))
    receiver_fn = te.export.build_raw_serving_input_receiver_fn(canned.make_feature_spec(columns))
    path = estimator.export_saved_model(str(export_dir), receiver_fn)
    served = loader.load(path)({k: v[:5] for k, v in test.items()})  # serving_default: the regress signature
    return {"metrics": metrics, "served": {"outputs": served["outputs"] * scale + center}, "truth": test_y[:5],
            "export_dir": path, "variance": float(y_test.var())}


def _rounded(values: Any, digits: int = 1) -> list[float]:
    """Values as a flat list of Python floats rounded for printing (float32 prints 115.0999984741211 otherwise)."""
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return [round(float(v), digits) for v in array.reshape(-1)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-dir", default="runs/tabular", help="parent of the two model directories and exports")
    parser.add_argument("--steps", type=int, default=500, help="training steps per model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = Path(args.model_dir)

    classifier = train_classifier(base / "classifier", base / "classifier_export", args.steps)
    metrics = classifier["metrics"]
    print(f"classifier: accuracy {metrics['accuracy']:.3f} (baseline {metrics['accuracy_baseline']:.3f}), "
          f"auc {metrics['auc']:.3f}, average loss {metrics['average_loss']:.3f}")
    names = canned.decode_classes(classifier["served"]["scores"].argmax(1), classifier["labels"])
    truth = canned.decode_classes(classifier["truth"], classifier["labels"])
    print(f"  served from {classifier['export_dir']}: {names.tolist()} (true: {truth.tolist()})")

    regressor = train_regressor(base / "regressor", base / "regressor_export", args.steps)
    print(f"regressor: average loss {regressor['metrics']['average_loss']:.3f} in label deviations^2 "
          f"(predicting the mean: {regressor['variance']:.3f})")
    print(f"  served from {regressor['export_dir']}: {_rounded(regressor['served']['outputs'])} "
          f"(true: {_rounded(regressor['truth'])})")
    return {"classifier": classifier, "regressor": regressor}


if __name__ == "__main__":
    main()
