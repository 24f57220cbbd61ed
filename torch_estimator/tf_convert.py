"""TF variables -> a torch model's tensors: name mapping and layout conversion, for warm start and conversion.

Names are matched, in order of precedence, by:

1. ``var_name_to_prev_var_name`` (model name -> TF name), as TF's ``WarmStartSettings``;
2. ``rename`` rules: ``(regex, replacement)`` pairs; a TF name that matches a regex in full becomes
   ``re.sub``'s replacement, a model name (e.g. ``(r"net/fc(\\d+)/kernel", r"layers.\\1.weight")``); a rule that
   matches no TF variable, gives no model name or gives one twice is an error (:mod:`.checkpoint.renames`);
3. the canned estimators' names (``dnn/hiddenlayer_0/kernel`` -> ``hidden_layers.0.weight``, ``dnn/logits/...``,
   batch norm, embedding columns' ``embedding_weights``, ``linear/linear_model/<column>/weights``, ``baseline/bias``), matched against model names
   that equal the target or end with ``.<target>`` (so wide & deep's ``dnn.``/``linear.`` prefixes work);
4. ``tf.layers``/Keras layer names (``conv2d``, ``conv2d_1``, ..., ``dense``, ``dense_1``, ...): the i-th TF
   layer of a kind goes to the i-th ``nn.Conv2d`` / ``nn.Linear`` still unfilled, in definition order — the
   tutorial CNN's ``conv2d, conv2d_1, dense, dense_1`` become ``conv1, conv2, dense, logits``.

Layouts: a dense kernel ``[in, out]`` is the transpose of ``nn.Linear.weight`` ``[out, in]``; a conv kernel
``[H, W, in, out]`` (HWIO) becomes ``[out, in, H, W]`` (OIHW); and the first ``nn.Linear`` after a conv, whose
TF kernel rows are in NHWC-flatten order, has them reordered to PyTorch's NCHW-flatten order (when the
spatial size is square; ``nhwc_flatten=False`` turns this off). Optimizer slots and ``global_step`` are
ignored.

Example:
    >>> import numpy as np, torch
    >>> model = torch.nn.Sequential()
    >>> model.add_module("fc", torch.nn.Linear(3, 2))
    >>> kernel = np.arange(6, dtype=np.float32).reshape(3, 2)  # TF's [in, out]
    >>> mapped = map_tf_variables({"dense/kernel": kernel, "dense/bias": np.zeros(2, np.float32)}, model)
    >>> mapped.sources, mapped.tensors["fc.weight"].tolist()
    ({'fc.weight': 'dense/kernel', 'fc.bias': 'dense/bias'}, [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint.renames import check_rules, renamed
from .tf_checkpoint import TFCheckpoint

__all__ = ["TFMapping", "map_tf_variables", "is_optimizer_variable", "warm_start_from_tf", "CANNED_RULES"]

logger = logging.getLogger(__name__)

# TF canned estimators' variable names -> the canned models' parameter names.
CANNED_RULES: tuple[tuple[str, str], ...] = (
    (r"dnn/hiddenlayer_(\d+)/kernel", r"hidden_layers.\1.weight"),
    (r"dnn/hiddenlayer_(\d+)/bias", r"hidden_layers.\1.bias"),
    (r"dnn/hiddenlayer_(\d+)/batchnorm_\d+/gamma", r"batch_norms.\1.weight"),
    (r"dnn/hiddenlayer_(\d+)/batchnorm_\d+/beta", r"batch_norms.\1.bias"),
    (r"dnn/hiddenlayer_(\d+)/batchnorm_\d+/moving_mean", r"batch_norms.\1.running_mean"),
    (r"dnn/hiddenlayer_(\d+)/batchnorm_\d+/moving_variance", r"batch_norms.\1.running_var"),
    (r"dnn/input_from_feature_columns/input_layer/([^/]+)/embedding_weights", r"input_layer.column_states.states.\1.weight"),
    (r"dnn/logits/kernel", r"logits.weight"),
    (r"dnn/logits/bias", r"logits.bias"),
    (r"linear/linear_model/bias_weights", r"linear_model.bias"),
    (r"linear/linear_model/([^/]+)/weights", r"linear_model.weights.\1"),
    (r"baseline/bias", r"bias"),
)
_LAYER_RE = re.compile(r"(?:.*/)?(conv1d|conv2d|conv3d|dense)(?:_(\d+))?/(kernel|bias)")
_MODULE_KINDS = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "dense": nn.Linear}
_OPTIMIZER_RE = re.compile(
    r"(global_step|beta[12]_power|training/.*|.*/(Adam|Adam_1|Adagrad|Momentum|RMSProp|RMSProp_1|Ftrl|Ftrl_1|"
    r"Adadelta|Adadelta_1|accumulator)|.*/part_\d+/(Adam|Adam_1|Adagrad|Ftrl|Ftrl_1))"
)


def is_optimizer_variable(name: str) -> bool:
    """True for ``global_step`` and optimizer state (slots such as ``.../Adam``, ``training/Adagrad/...``).

    Example:
        >>> is_optimizer_variable("training/Adagrad/dnn/logits/bias/accumulator"), is_optimizer_variable("dnn/logits/bias")
        (True, False)
    """
    return _OPTIMIZER_RE.fullmatch(name) is not None


@dataclasses.dataclass
class TFMapping:
    """The result of :func:`map_tf_variables`.

    Attributes:
        tensors: Model name -> tensor in the model's layout and dtype.
        sources: Model name -> the TF name it came from.
        unmatched: TF variables (not optimizer state) that went nowhere.
        ignored: Optimizer state and ``global_step``.
        missing: Model tensors that no TF variable filled.
        problems: Matches whose shapes disagree (each a sentence).
    """

    tensors: dict[str, torch.Tensor]
    sources: dict[str, str]
    unmatched: list[str]
    ignored: list[str]
    missing: list[str]
    problems: list[str]


def _canned_target(tf_name: str, own: Mapping[str, Any]) -> str | None:
    for pattern, replacement in CANNED_RULES:
        match = re.fullmatch(pattern, tf_name)
        if match is None:
            continue
        target = match.expand(replacement)
        found = [name for name in own if name == target or name.endswith("." + target)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            scope = tf_name.split("/", 1)[0]  # dnn/linear: the wide & deep model's submodule of that name
            scoped = [name for name in found if name.startswith(scope + ".")]
            return scoped[0] if len(scoped) == 1 else None
    return None


def _layer_targets(tf_names: Sequence[str], model: nn.Module, taken: set[str]) -> dict[str, str]:
    """tf.layers/Keras names by creation order -> the model's layers of the same kind by definition order."""
    layers: dict[str, dict[int, dict[str, str]]] = {}
    for tf_name in tf_names:
        match = _LAYER_RE.fullmatch(tf_name)
        if match:
            kind, number, part = match.group(1), int(match.group(2) or 0), match.group(3)
            layers.setdefault(kind, {}).setdefault(number, {})[part] = tf_name
    targets: dict[str, str] = {}
    for kind, by_number in layers.items():
        modules = [name for name, module in model.named_modules()
                   if type(module) is _MODULE_KINDS[kind] and f"{name}.weight" not in taken]
        numbers = sorted(by_number)
        if len(modules) != len(numbers):
            logger.info("TF has %d %s layers and the model %d unfilled %s modules: not matched by order.",
                        len(numbers), kind, len(modules), _MODULE_KINDS[kind].__name__)
            continue
        for module_name, number in zip(modules, numbers):
            for part, tf_name in by_number[number].items():
                targets[tf_name] = f"{module_name}.{'weight' if part == 'kernel' else 'bias'}"
    return targets


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{name}.{param}" if name else param: module
            for name, module in model.named_modules() for param, _ in module.named_parameters(recurse=False)}


def _flatten_after_conv(model: nn.Module) -> dict[str, int]:
    """The first ``nn.Linear`` after each conv stack -> the conv's output channels."""
    result, channels = {}, None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Conv1d)):
            channels = module.out_channels
        elif isinstance(module, nn.Linear) and channels is not None:
            result[f"{name}.weight" if name else "weight"] = channels
            channels = None
    return result


def _convert(value: np.ndarray, module: nn.Module | None, name: str, nhwc_channels: int | None) -> np.ndarray:
    if isinstance(module, nn.Linear) and name.endswith("weight") and value.ndim == 2:
        if nhwc_channels and value.shape[0] % nhwc_channels == 0:
            spatial = value.shape[0] // nhwc_channels
            side = math.isqrt(spatial)
            if side * side == spatial and spatial > 1:
                value = value.reshape(side, side, nhwc_channels, -1).transpose(2, 0, 1, 3).reshape(value.shape)
        return value.T
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and name.endswith("weight") and value.ndim >= 3:
        n = value.ndim
        return value.transpose(n - 1, n - 2, *range(n - 2))
    return value


def map_tf_variables(
    tf_values: Mapping[str, np.ndarray],
    model: nn.Module,
    *,
    var_name_to_prev_var_name: Mapping[str, str] | None = None,
    rename: Sequence[tuple[str, str]] = (),
    vars_to_warm_start: str | Sequence[str] = ".*",
    nhwc_flatten: bool = True,
    unreadable: Mapping[str, str] | None = None,
    where: str = "rename",
    map_flag: str | None = None,
) -> TFMapping:
    """Match TF variables to ``model``'s ``state_dict`` names and convert them to its layouts (module docstring).

    Args:
        tf_values: TF variable name -> array (:meth:`TFCheckpoint.read_all`).
        model: The model to fill.
        var_name_to_prev_var_name: Model name -> TF name, taking precedence over every rule.
        rename: ``(regex over TF names, replacement giving the model name)`` pairs.
        vars_to_warm_start: Regexes over model names: only those are filled.
        nhwc_flatten: Reorder the rows of the first dense kernel after a conv from NHWC to NCHW flatten order.
        unreadable: TF variables left out of ``tf_values`` -> why (:meth:`TFCheckpoint.read_all`), named when a
            ``var_name_to_prev_var_name`` entry asks for one.
        where: What messages about ``rename`` start with.
        map_flag: The command-line flag that gave ``var_name_to_prev_var_name`` (``--map``, entries
            ``MODEL_NAME=TF_NAME``): its messages then name the flag and the entry instead of the argument.

    Raises:
        TypeError: If ``rename`` is not a list of pairs of strings.
        ValueError: For an invalid regex, a ``var_name_to_prev_var_name`` entry naming a TF variable
            that does not exist or a model tensor that does not exist, or a ``rename`` rule that matches no
            TF variable, gives no model name, or gives one model name twice (see :mod:`.checkpoint.renames`).
    """
    own = model.state_dict()
    rename = check_rules(rename, "rename")
    explicit = dict(var_name_to_prev_var_name or {})
    for name, tf_name in explicit.items():
        # The messages name what the user typed: the Python argument, or the command line's flag and its entry.
        entry = f"{map_flag} {f'{name}={tf_name}'!r}" if map_flag else "var_name_to_prev_var_name"
        if name not in own:
            fix = (f"Give {map_flag} MODEL_NAME=TF_NAME with one of those model names" if map_flag
                   else "Use one of those names as the key")
            raise ValueError(f"{entry}: {name!r} is not a model tensor; the model has {sorted(own)}. {fix}.")
        if tf_name not in tf_values and unreadable and tf_name in unreadable:
            fix = f"drop {map_flag} {name}={tf_name}" if map_flag else f"leave {name!r} out of the mapping"
            raise ValueError(f"{entry}: {tf_name!r} (for {name!r}) is a {unreadable[tf_name]} variable, which is not "
                             f"read (only numeric and bool variables, unpartitioned, are); {fix}.")
        if tf_name not in tf_values:
            fix = (f"Give {map_flag} MODEL_NAME=TF_NAME with one of those TF names" if map_flag
                   else f"Map {name!r} to one of those TF names")
            raise ValueError(f"{entry}: {tf_name!r}{'' if map_flag else f' (for {name!r})'} is not in the TF "
                             f"checkpoint; it has {sorted(n for n in tf_values if not is_optimizer_variable(n))}. {fix}.")
    patterns = [vars_to_warm_start] if isinstance(vars_to_warm_start, str) else list(vars_to_warm_start)
    try:
        selected = {name for name in own if any(re.fullmatch(p, name) for p in patterns)}
    except re.error as error:
        raise ValueError(f"Invalid regex in vars_to_warm_start: {error}.") from error

    sources: dict[str, str] = {name: tf_name for name, tf_name in explicit.items()}
    used = set(sources.values())
    ignored = sorted(n for n in tf_values if is_optimizer_variable(n) and n not in used)
    pending = [n for n in tf_values if n not in used and n not in ignored]
    for target, tf_name in renamed(pending, own, rename, where=where).items():
        if target not in sources:  # var_name_to_prev_var_name wins
            sources[target] = tf_name
            pending.remove(tf_name)
    for tf_name in list(pending):
        canned = _canned_target(tf_name, own)
        if canned is not None and canned in own and canned not in sources:
            sources[canned] = tf_name
            pending.remove(tf_name)
    for tf_name, target in _layer_targets(pending, model, set(sources)).items():
        if target in own and target not in sources:
            sources[target] = tf_name
            pending.remove(tf_name)

    owners, flatten = _owners(model), _flatten_after_conv(model) if nhwc_flatten else {}
    tensors, problems = {}, []
    for name, tf_name in list(sources.items()):
        if name not in selected:
            del sources[name]
            continue
        value = _convert(np.asarray(tf_values[tf_name]), owners.get(name), name, flatten.get(name))
        if tuple(value.shape) != tuple(own[name].shape):
            problems.append(f"{name} {tuple(own[name].shape)} vs TF {tf_name!r} {tuple(tf_values[tf_name].shape)}")
            continue
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).to(own[name].dtype)
    missing = sorted(name for name in selected if name not in tensors and not name.endswith("num_batches_tracked"))
    return TFMapping(tensors, sources, sorted(pending), ignored, missing, problems)


def warm_start_from_tf(model: nn.Module, settings: Any) -> list[str]:
    """Warm-start ``model`` from the TF checkpoint that ``settings`` (a ``WarmStartSettings``) names.

    Every selected model tensor must be filled; TF variables left over are logged.

    Returns:
        The model names that were initialised.

    Raises:
        ValueError: If nothing matches, shapes disagree or a selected tensor has no TF variable.
    """
    reader = TFCheckpoint(settings.ckpt_to_initialize_from)
    values, unreadable = reader.read_all()
    where = f"warm_start_from TF checkpoint {reader.prefix}"
    mapped = map_tf_variables(values, model, var_name_to_prev_var_name=settings.var_name_to_prev_var_name,
                              rename=settings.rename, vars_to_warm_start=settings.vars_to_warm_start,
                              unreadable=unreadable, where=where)
    if mapped.problems:
        raise ValueError(f"{where}: shapes differ: " + "; ".join(mapped.problems) + ".")
    if not mapped.tensors:
        raise ValueError(f"{where}: no TF variable matches a model tensor; TF has {sorted(values)}, the model "
                         f"{sorted(model.state_dict())}. Give WarmStartSettings(var_name_to_prev_var_name=...).")
    if mapped.missing:
        raise ValueError(
            f"{where}: model tensors {mapped.missing} have no TF variable (TF variables left over: "
            f"{mapped.unmatched + sorted(unreadable)}). Map them with WarmStartSettings(var_name_to_prev_var_name="
            f"{{model_name: tf_name}}) or leave them out with vars_to_warm_start."
        )
    model.load_state_dict(mapped.tensors, strict=False)
    if mapped.unmatched:
        logger.info("TF variables not used by warm start: %s", mapped.unmatched)
    logger.info("Warm-started %d tensors from TF checkpoint %s.", len(mapped.tensors), reader.prefix)
    return sorted(mapped.tensors)
