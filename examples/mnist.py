"""The TensorFlow Estimator CNN tutorial (``cnn_mnist.py``), ported to torch_estimator.

A small convolutional network classifies 28x28 grey-scale digits (MNIST) or clothes (Fashion-MNIST):
conv 5x5x32 -> max-pool 2x2 -> conv 5x5x64 -> max-pool 2x2 -> dense 1024 -> dropout 0.4 -> dense 10.
The script trains it, logs the softmax probabilities every 50 steps (as the tutorial's ``logging_hook``),
evaluates it, and predicts the first few evaluation images.

Run it from the repository root (``pip install -e .[examples]`` once, or just run it from a checkout)::

    python examples/mnist.py                                   # MNIST, downloaded by torchvision to ./data
    python examples/mnist.py --data-dir ~/datasets/mnist       # four IDX files (plain or .gz), no download
    python examples/mnist.py --dataset fashion-mnist           # Debian's dataset-fashion-mnist package, if
                                                               # installed, else downloaded by torchvision
    python examples/mnist.py --synthetic --steps 200           # no data at all: a seeded toy problem
    python examples/mnist.py --write-tfrecords tfrecords       # the chosen data as TFRecord files of tf.Example
    python examples/mnist.py --data 'tfrecord:tfrecords/{split}-*.tfrecord'   # read TFRecords ({split}: train/eval)

``--export-dir DIR`` exports the trained model for serving into ``DIR/<version>`` (as the tutorial's
``export_savedmodel``); ``torch-estimator serve --model_base_path DIR --model_name mnist`` serves it.

``--steps`` defaults to 20000, the tutorial's value (tens of minutes on a laptop CPU, about a minute on a
GPU); the tutorial's learning rate of 0.001 with plain SGD learns slowly, so for a quick look try
``--steps 500 --learning-rate 0.05``. Checkpoints and summaries go to ``--model-dir`` (default
``runs/<dataset>``); as with TF, running again *continues* from the latest checkpoint there for ``--steps``
more steps. Pass ``--model-dir`` a fresh directory to start over.

``--data-dir`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), either directly or in torchvision's layout
(``DIR/MNIST/raw/`` or ``DIR/FashionMNIST/raw/``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import torch_estimator as te
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch_estimator as te

__all__ = ["CNN", "model_fn", "read_idx", "find_idx_files", "load_idx_dataset", "synthetic_dataset",
           "load_dataset", "DataUnavailable", "main"]

logger = logging.getLogger("mnist")

IMAGE_SIZE = 28
NUM_CLASSES = 10
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "eval_images": "t10k-images-idx3-ubyte",
    "eval_labels": "t10k-labels-idx1-ubyte",
}
# torchvision's folder for each data set: ROOT/<name>/raw/<IDX files>.
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# Where Debian's `dataset-fashion-mnist` package puts the (gzipped) IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

Dataset = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train_x, train_y, eval_x, eval_y


# ----------------------------------------------------------------------------------------------------
# The model.


class CNN(nn.Module):
    """The tutorial's network; ``forward`` takes ``(N, 1, 28, 28)`` images and returns ``(N, 10)`` logits.

    Kernels are initialised Glorot-uniform and biases zero, as ``tf.layers.conv2d``/``dense`` did.
    Dropout (rate 0.4) is active only in ``train()`` mode, i.e. only when the Estimator trains.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding="same")
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding="same")
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.dense = nn.Linear(7 * 7 * 64, 1024)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Linear(1024, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform kernels and zero biases (TF's defaults for conv2d and dense)."""
        for layer in (self.conv1, self.conv2, self.dense, self.logits):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(images)))  # (N, 32, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (N, 64, 7, 7)
        x = self.dropout(F.relu(self.dense(x.flatten(1))))  # (N, 1024)
        return self.logits(x)  # (N, 10)


def model_fn(
    features: dict[str, torch.Tensor],
    labels: torch.Tensor | None,
    mode: str,
    params: dict[str, Any],
    model: nn.Module,
) -> te.EstimatorSpec:
    """The tutorial's ``cnn_model_fn``: predictions, cross-entropy loss, accuracy."""
    logits = model(features["x"].view(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
    predictions = {"classes": logits.argmax(1), "probabilities": logits.softmax(1)}
    if mode == te.ModeKeys.PREDICT:
        return te.EstimatorSpec(mode, predictions=predictions)
    loss = F.cross_entropy(logits, labels)
    if mode == te.ModeKeys.TRAIN:
        # The Estimator's optimizer (SGD with params["learning_rate"]) takes the step on `loss`.
        return te.EstimatorSpec(mode, loss=loss, predictions=predictions)
    return te.EstimatorSpec(
        mode, loss=loss, eval_metric_ops={"accuracy": te.metrics.accuracy(labels, predictions["classes"])}
    )


# ----------------------------------------------------------------------------------------------------
# Data.

# IDX type codes (http://yann.lecun.com/exdb/mnist/): the third byte of the magic number.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain, or gzip-compressed when the name ends in ``.gz``) into a numpy array.

    Raises:
        ValueError: If the file is not a well-formed IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)}.")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def find_idx_files(data_dir: str | os.PathLike[str], dataset: str = "mnist") -> dict[str, Path]:
    """Locate the four IDX files in ``data_dir`` or in torchvision's ``data_dir/<MNIST|FashionMNIST>/raw``.

    Plain files are preferred to ``.gz`` ones. Returns a dict with keys ``train_images``, ``train_labels``,
    ``eval_images``, ``eval_labels``.

    Raises:
        FileNotFoundError: Naming the directories searched and the files expected.
    """
    data_dir = Path(data_dir).expanduser()
    candidates = [data_dir]
    if dataset in TORCHVISION_FOLDERS:
        candidates.append(data_dir / TORCHVISION_FOLDERS[dataset] / "raw")
    for directory in candidates:
        found: dict[str, Path] = {}
        for key, name in IDX_FILES.items():
            for filename in (name, name + ".gz"):
                if (directory / filename).is_file():
                    found[key] = directory / filename
                    break
        if len(found) == len(IDX_FILES):
            return found
    searched = " or ".join(str(d) for d in candidates)
    expected = ", ".join(IDX_FILES.values())
    raise FileNotFoundError(
        f"No complete {dataset} IDX data set in {searched}: expected the files {expected} "
        f"(each optionally gzipped, '.gz')."
    )


def _images_and_labels(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or labels.shape != (len(images),):
        raise ValueError(f"{where}: expected images (N, 28, 28) and labels (N,); got {images.shape} and {labels.shape}.")
    x = images.reshape(len(images), IMAGE_SIZE * IMAGE_SIZE).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def load_idx_dataset(data_dir: str | os.PathLike[str], dataset: str = "mnist") -> Dataset:
    """``(train_x, train_y, eval_x, eval_y)`` from IDX files: x float32 in [0, 1] of shape (N, 784), y int64."""
    files = find_idx_files(data_dir, dataset)
    train_x, train_y = _images_and_labels(read_idx(files["train_images"]), read_idx(files["train_labels"]),
                                          str(files["train_images"].parent))
    eval_x, eval_y = _images_and_labels(read_idx(files["eval_images"]), read_idx(files["eval_labels"]),
                                        str(files["eval_images"].parent))
    return train_x, train_y, eval_x, eval_y


def synthetic_dataset(num_train: int = 2000, num_eval: int = 500, seed: int = 0) -> Dataset:
    """A seeded stand-in with MNIST's shapes and a learnable signal: each class has its own random pattern,
    drawn faintly over uniform noise, so a model can learn it (and the loss goes down) in a few hundred steps.
    """
    rng = np.random.default_rng(seed)
    patterns = (rng.random((NUM_CLASSES, IMAGE_SIZE * IMAGE_SIZE)) < 0.2).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, NUM_CLASSES, size=n)
        x = 0.5 * rng.random((n, IMAGE_SIZE * IMAGE_SIZE), dtype=np.float32) + 0.5 * patterns[y]
        return x.astype(np.float32), y.astype(np.int64)

    return (*draw(num_train), *draw(num_eval))


class DataUnavailable(Exception):
    """No data for the flags given (no files, no network): ``main`` prints the message as one line, status 2."""


_OFFLINE_FIXES = ("use --dataset fashion-mnist (Debian's dataset-fashion-mnist package), --data-dir DIR "
                  "(a directory with the four IDX files) or --synthetic (no data at all)")


def _download_with_torchvision(dataset: str, root: str) -> Dataset:
    """Download ``dataset`` into ``root/<MNIST|FashionMNIST>/raw`` with torchvision, then read its IDX files.

    The download goes to a temporary directory inside ``root`` that is moved into place only once complete:
    a failed download (no network) leaves nothing behind, not even ``root`` when this call created it.

    Raises:
        DataUnavailable: torchvision is missing or the download failed; the message names the offline options.
    """
    folder = TORCHVISION_FOLDERS[dataset]
    try:
        return load_idx_dataset(root, dataset)  # downloaded by an earlier run
    except FileNotFoundError:
        pass
    try:
        import torchvision
    except ImportError as error:
        raise DataUnavailable(f"downloading {dataset} needs torchvision (pip install torchvision); or "
                              f"{_OFFLINE_FIXES}.") from error
    cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
    root_path = Path(root)
    created = [p for p in (root_path, *root_path.parents) if not p.exists()]
    root_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-download-", dir=root_path))
    try:
        # torchvision prints each URL it tries and each failure on stdout; its tqdm bar (stderr) stays.
        with contextlib.redirect_stdout(io.StringIO()):
            cls(root=staging, train=True, download=True)
            cls(root=staging, train=False, download=True)
        target = root_path / folder / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for file in (staging / folder / "raw").iterdir():
            os.replace(file, target / file.name)
    except (RuntimeError, OSError) as error:  # URLError is an OSError; torchvision wraps its retries in one
        reason = " ".join(str(error).split())
        first = re.search(r"<urlopen error [^>]*>", reason)  # the first mirror's failure says enough
        reason = first.group(0) if first else reason if len(reason) <= 160 else reason[:157] + "..."
        raise DataUnavailable(f"cannot download {dataset} into {root_path / folder} ({reason}); to work "
                              f"offline, {_OFFLINE_FIXES}.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first: only the directories this call made, if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
    return load_idx_dataset(root, dataset)


def load_dataset(dataset: str, data_dir: str | None, synthetic: bool = False, seed: int = 0) -> Dataset:
    """The data the flags ask for: synthetic, IDX files in ``data_dir``, Debian's Fashion-MNIST, or a download
    into ``./data`` (kept for the next run).

    Raises:
        DataUnavailable: Nothing on disk and the download failed.
    """
    if synthetic:
        return synthetic_dataset(seed=seed)
    if data_dir is not None:
        return load_idx_dataset(data_dir, dataset)
    if dataset == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return load_idx_dataset(DEBIAN_FASHION_MNIST, dataset)
    return _download_with_torchvision(dataset, root="data")


# ----------------------------------------------------------------------------------------------------
# TFRecord files of tf.Example, as a TF input pipeline would read them.

TFRECORD_FEATURES = {"x": te.inputs.FixedLenFeature([IMAGE_SIZE * IMAGE_SIZE], torch.float32),
                     "label": te.inputs.FixedLenFeature([], torch.int64)}


def write_tfrecords(directory: str, train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
                    eval_y: np.ndarray) -> None:
    """Write ``train-00000.tfrecord`` and ``eval-00000.tfrecord`` (tf.Example: ``x`` 784 floats, ``label``)."""
    from torch_estimator.tf_example import make_example
    from torch_estimator.tfrecord import write_records

    os.makedirs(directory, exist_ok=True)
    for split, images, labels in (("train", train_x, train_y), ("eval", eval_x, eval_y)):
        path = os.path.join(directory, f"{split}-00000.tfrecord")
        count = write_records(path, (make_example({"x": image.reshape(-1), "label": int(label)}).SerializeToString()
                                     for image, label in zip(images, labels)))
        print(f"wrote {count} examples to {path}")


def tfrecord_inputs(data: str, batch_size: int, predict: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """``--data tfrecord:PATTERN``: the training and evaluation input_fns, and the first ``predict`` evaluation
    examples (images, labels) for the predictions printed at the end."""
    kind, _, pattern = data.partition(":")
    if kind != "tfrecord" or "{split}" not in pattern:
        print(f"mnist.py: error: --data must be 'tfrecord:PATTERN' with {{split}} in the pattern (it becomes 'train' "
              f"and 'eval'), e.g. 'tfrecord:tfrecords/{{split}}-*.tfrecord'; received {data!r}.", file=sys.stderr)
        raise SystemExit(2)
    try:
        def make(split: str, **kwargs: Any) -> Any:
            return te.inputs.tfrecord_input_fn(pattern.replace("{split}", split), TFRECORD_FEATURES, label_key="label",
                                               **kwargs)

        # cache=True: the examples stay in memory after the first read (the numpy path holds them too), so the
        # next train() and every evaluation of train_and_evaluate read memory, not the files.
        train_input_fn = make("train", batch_size=batch_size, num_epochs=None, shuffle=True, cache=True)
        eval_input_fn = make("eval", batch_size=batch_size, num_epochs=1, shuffle=False, cache=True)
        first = next(iter(make("eval", batch_size=max(predict, 1), num_epochs=1, shuffle=False)()))
    except (ValueError, OSError) as error:
        print(f"mnist.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return train_input_fn, eval_input_fn, first[0]["x"].numpy(), first[1].numpy()


# ----------------------------------------------------------------------------------------------------
# The script.


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with each option's default (where it has one) and the docstring's examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:  # no value to show: "(default: None)" says nothing
            return action.help
        return super()._get_help_string(action)


def _plain(text: str) -> str:
    """The docstring's reST as plain text for --help: ``code`` -> code, a trailing :: -> :."""
    return re.sub(r"``(.+?)``", r"\1", text).replace("::\n", ":\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=_plain("\n\n".join(paragraphs[:2])),
                                     epilog=_plain("\n\n".join(paragraphs[2:4])), formatter_class=_HelpFormatter)
    parser.add_argument("--dataset", choices=sorted(TORCHVISION_FOLDERS), default="mnist", help="the images to learn")
    parser.add_argument("--data-dir", help="directory with the four IDX files (plain or .gz), or torchvision's root")
    parser.add_argument("--synthetic", action="store_true", help="use seeded random data (no files, no download)")
    parser.add_argument("--data", metavar="tfrecord:PATTERN",
                        help="read TFRecord files of tf.Example ('x': 784 floats, 'label': int64); {split} in "
                             "the pattern is 'train' or 'eval'")
    parser.add_argument("--write-tfrecords", metavar="DIR",
                        help="write the chosen data to DIR/train-00000.tfrecord and DIR/eval-00000.tfrecord, then stop")
    parser.add_argument("--steps", type=int, default=20000, help="training steps, as the tutorial's")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="SGD learning rate")
    parser.add_argument("--batch-size", type=int, default=100, help="examples per training batch, as the tutorial's")
    parser.add_argument("--model-dir", help="checkpoints and summaries; runs/<dataset> when omitted")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model's initialisation and the shuffle")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps', ...")
    parser.add_argument("--predict", type=int, default=5, metavar="N", help="predict the first N eval images")
    parser.add_argument("--export-dir", "--export_dir", metavar="DIR",
                        help="after training, export for serving into DIR/<version> "
                             "(torch-estimator serve --model_base_path DIR serves it)")
    parser.add_argument("--log-full-tensors", action="store_true",
                        help="log the whole probabilities batch every 50 steps (TF's dump: 100 rows of 10) "
                             "instead of its first row")
    parser.add_argument("--train-and-evaluate", action="store_true",
                        help="train_and_evaluate: evaluate every --eval-every steps, export the most accurate model, "
                             "stop early when accuracy stops improving")
    parser.add_argument("--eval-every", type=int, default=500, help="with --train-and-evaluate: steps between evaluations")
    parser.add_argument("--patience", type=int, default=2000,
                        help="with --train-and-evaluate: stop after this many steps without a better accuracy")
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.batch_size <= 0 or args.learning_rate <= 0:
        parser.error("--steps, --batch-size and --learning-rate must be positive")
    return args


def serving_input_receiver_fn() -> te.export.ServingInputReceiver:
    """Clients send flat 784-pixel images in [0, 1] as "x"."""
    return te.build_raw_serving_input_receiver_fn({"x": te.TensorSpec([None, 784], torch.float32)})()


def first_row_formatter(values: dict[str, Any]) -> str:
    """``LoggingTensorHook(formatter=...)``: each batch as its first row and the shape it came from, e.g.
    ``probabilities[0] = [0.09 0.11 ... 0.1] (argmax 2; batch of shape (100, 10))``, one short line."""
    parts = []
    for tag, value in values.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.ndim < 2:
            parts.append(f"{tag} = {np.array2string(array, precision=3, threshold=10)}")
            continue
        row = array[0]
        text = np.array2string(row, threshold=10, max_line_width=1000,
                               formatter={"float_kind": lambda v: f"{v:.3f}"})
        parts.append(f"{tag}[0] = {text} "
                     f"(argmax {int(row.argmax())}; batch of shape {tuple(array.shape)})")
    return ", ".join(parts)


def train_and_evaluate(
    estimator: te.Estimator, train_input_fn: Any, eval_input_fn: Any, logging_hook: te.Hook, args: argparse.Namespace
) -> dict[str, Any]:
    """Evaluate every ``--eval-every`` steps, keep exporting the most accurate model, stop when accuracy has
    not improved for ``--patience`` steps."""
    early_stopping = te.stop_if_no_increase_hook(
        estimator, "accuracy", max_steps_without_increase=args.patience, run_every_steps=args.eval_every
    )
    best = te.BestExporter(
        serving_input_receiver_fn=serving_input_receiver_fn,
        compare_fn=te.exporters.metric_bigger("accuracy"),
        exports_to_keep=2,
    )
    train_spec = te.TrainSpec(train_input_fn, max_steps=args.steps, hooks=[logging_hook, early_stopping])
    eval_spec = te.EvalSpec(eval_input_fn, steps=None, every_n_steps=args.eval_every, exporters=[best])
    eval_results, exports = te.train_and_evaluate(estimator, train_spec, eval_spec)
    if estimator.config.is_chief:
        export_base = os.path.join(estimator.model_dir, "export", best.name)
        print(f"exports of the most accurate model so far in {export_base}: {sorted(os.listdir(export_base))}")
    return eval_results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and predict as the tutorial's ``main``; returns the evaluation dict."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    logging.getLogger("torch_estimator").setLevel(logging.INFO)

    if args.data is not None:
        train_input_fn, eval_input_fn, eval_x, eval_y = tfrecord_inputs(args.data, args.batch_size, args.predict)
    else:
        try:
            train_x, train_y, eval_x, eval_y = load_dataset(args.dataset, args.data_dir, args.synthetic, args.seed)
        except (DataUnavailable, FileNotFoundError) as error:
            print(f"mnist.py: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        logger.info("%s: %d training and %d evaluation images", "synthetic" if args.synthetic else args.dataset,
                    len(train_x), len(eval_x))
        if args.write_tfrecords is not None:
            write_tfrecords(args.write_tfrecords, train_x, train_y, eval_x, eval_y)
            return {}
        train_input_fn = te.inputs.numpy_input_fn(
            {"x": train_x}, train_y, batch_size=args.batch_size, num_epochs=None, shuffle=True
        )
        eval_input_fn = te.inputs.numpy_input_fn(
            {"x": eval_x}, eval_y, batch_size=args.batch_size, num_epochs=1, shuffle=False
        )

    model_dir = args.model_dir or os.path.join("runs", "tfrecord" if args.data else "synthetic" if args.synthetic else args.dataset)
    mnist_classifier = te.Estimator(
        model_fn,
        model_dir=model_dir,
        params={"learning_rate": args.learning_rate},
        # train_and_evaluate evaluates the checkpoints it saves: save one every --eval-every steps.
        config=te.RunConfig(random_seed=args.seed, device=args.device,
                            **({"save_checkpoints_steps": args.eval_every} if args.train_and_evaluate else {})),
        # A factory, so that the model is built after RunConfig.random_seed has seeded torch.
        model=lambda params: CNN(),
        optimizer=lambda parameters: torch.optim.SGD(parameters, lr=args.learning_rate),
    )

    # Log the softmax probabilities every 50 steps, as the tutorial's logging_hook on "softmax_tensor": its
    # first row by default (the tutorial's dump of the whole 100x10 batch with --log-full-tensors).
    logging_hook = te.LoggingTensorHook(tensors={"probabilities": "probabilities"}, every_n_iter=50,
                                        formatter=None if args.log_full_tensors else first_row_formatter)
    if args.train_and_evaluate:
        eval_results = train_and_evaluate(mnist_classifier, train_input_fn, eval_input_fn, logging_hook, args)
    else:
        mnist_classifier.train(train_input_fn, steps=args.steps, hooks=[logging_hook])
        eval_results = mnist_classifier.evaluate(eval_input_fn)
    print(eval_results)

    if args.predict > 0:
        n = min(args.predict, len(eval_x))
        predict_input_fn = te.inputs.numpy_input_fn({"x": eval_x[:n]}, num_epochs=1, shuffle=False)
        for i, prediction in enumerate(mnist_classifier.predict(predict_input_fn)):
            print(f"image {i}: predicted {int(prediction['classes'])} "
                  f"(p={float(prediction['probabilities'].max()):.3f}), label {int(eval_y[i])}")

    if args.export_dir is not None and mnist_classifier.config.is_chief:
        # As the tutorial's export_savedmodel(FLAGS.export_dir, serving_input_receiver_fn).
        export_path = mnist_classifier.export_saved_model(args.export_dir, serving_input_receiver_fn)
        print(f"exported to {export_path}; serve it with: torch-estimator serve --model_base_path "
              f"{args.export_dir} --model_name mnist")
    return eval_results


if __name__ == "__main__":
    main()
