r"""Checkpoint names -> model names by regex rules, for warm start and conversion; every rule checked.

A rule is ``(regex, replacement)``: a checkpoint name that the regex matches in full becomes ``re.sub``'s
replacement, a name in the model. The first rule that matches a name applies. A rule must match some name of
the checkpoint and give some name of the model, and no two checkpoint names may give the same model name: each
of these is a mistake in the rule, reported naming it. (``WarmStartSettings.var_name_to_prev_var_name``, the
explicit model name -> checkpoint name mapping, takes precedence over the rules.)

Example:
    >>> renamed(["enc/0/w", "enc/1/w", "head/w"], ["layers.0.weight", "layers.1.weight", "head.weight"],
    ...         [(r"enc/(\d+)/w", r"layers.\1.weight")], where="warm_start_from")
    {'layers.0.weight': 'enc/0/w', 'layers.1.weight': 'enc/1/w'}
    >>> renamed(["enc/0/w"], ["layers.0.weight"], [(r"encoder/(\d+)/w", r"layers.\1.weight")], where="warm_start_from")
    Traceback (most recent call last):
    ...
    ValueError: warm_start_from: rename pattern 'encoder/(\\d+)/w' matches no name in the checkpoint; it has ['enc/0/w'].
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from .._checks import describe

__all__ = ["Rule", "check_rules", "renamed"]

Rule = tuple[str, str]
"""``(regex over checkpoint names, replacement giving the model name)``."""


def _names(names: Collection[str], limit: int = 12) -> str:
    shown = sorted(names)
    return repr(shown) if len(shown) <= limit else f"{shown[:limit]!r} and {len(shown) - limit} more"


def check_rules(rules: Any, what: str) -> tuple[Rule, ...]:
    """Rename rules as a tuple of ``(regex, replacement)`` string pairs, each regex valid.

    Raises:
        TypeError: If ``rules`` is not a sequence of pairs of strings (a lone pair is refused too: wrap it in a list).
        ValueError: If a regex is invalid.
    """
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or (
            len(rules) == 2 and all(isinstance(part, str) for part in rules)):
        raise TypeError(f"{what} must be a list of (regex, replacement) pairs, e.g. [(r\"enc/(\\d+)/w\", "
                        f"r\"layers.\\1.weight\")]; received {describe(rules)}.")
    checked = []
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(part, str) for part in rule)):
            raise TypeError(f"{what} entries must be (regex, replacement) pairs of strings; received {describe(rule)}.")
        try:
            re.compile(rule[0])
        except re.error as error:
            raise ValueError(f"{what} has an invalid regex {rule[0]!r}: {error}.") from error
        checked.append((rule[0], rule[1]))
    return tuple(checked)


def renamed(sources: Collection[str], targets: Collection[str], rules: Sequence[Rule], *, where: str) -> dict[str, str]:
    """Model name -> checkpoint name for the checkpoint names the rules rename to a model name.

    Args:
        sources: The checkpoint's names.
        targets: The model's names.
        rules: ``(regex, replacement)`` pairs (see the module docstring).
        where: What the messages start with (``warm_start_from <path>``).

    Raises:
        ValueError: If a rule matches no checkpoint name, gives no model name, or has a replacement that
            refers to a group its regex lacks; or if two checkpoint names give the same model name.
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    hits: list[list[tuple[str, str]]] = [[] for _ in compiled]
    for source in sources:
        for rule, (regex, replacement) in enumerate(compiled):
            match = regex.fullmatch(source)
            if match is None:
                continue
            try:
                hits[rule].append((source, match.expand(replacement)))
            except (re.error, IndexError) as error:
                raise ValueError(f"{where}: rename replacement {replacement!r} (for {regex.pattern!r}) is invalid: "
                                 f"{error}.") from error
            break
    wanted: set[str] = set(targets)
    by_target: dict[str, str] = {}
    for (regex, replacement), found in zip(compiled, hits):
        if not found:
            raise ValueError(f"{where}: rename pattern {regex.pattern!r} matches no name in the checkpoint; it has "
                             f"{_names(sources)}.")
        if not any(target in wanted for _, target in found):
            raise ValueError(
                f"{where}: rename ({regex.pattern!r}, {replacement!r}) gives {_names({t for _, t in found})}, none of "
                f"them a model tensor; the model has {_names(wanted)}.")
        for source, target in found:
            if target not in wanted:
                continue
            if target in by_target:
                raise ValueError(f"{where}: model tensor {target!r} is renamed from two checkpoint names, "
                                 f"{by_target[target]!r} and {source!r}; make each rename give one name once.")
            by_target[target] = source
    return by_target
