"""Checks for experiment parameter overrides (``depthscope reproduce NAME --set KEY=VALUE``).

An override must have the shape of the parameter in one of the experiment's
presets (an integer where the presets hold integers, a list of numbers where
they hold lists of numbers, null only where a preset holds null, ...), hold no
NaN or infinity, and respect the range its name implies across the project
(:data:`COUNTS` are integers >= 1, :data:`POSITIVE` finite numbers > 0,
:data:`NONNEGATIVE` numbers >= 0). Each failure is one
:class:`~depthscope.errors.InputError` naming the experiment, the key, the value
and what is allowed; nothing about the run has been touched when it is raised.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from .errors import InputError

__all__ = ["COUNTS", "POSITIVE", "NONNEGATIVE", "check_override", "check_overrides"]

#: Parameters that count something: integers >= 1 (also every element of a list or table).
COUNTS = frozenset({"seeds", "n", "n_iid", "n_mnist", "n_probe", "n_train", "batch", "batch_size", "epochs",
                    "steps", "group_size", "probe_size", "probe_per_corner", "pool", "nodes", "max_depth",
                    "width", "widths", "depth", "depths", "every", "log_every"})
#: Parameters that are finite numbers > 0.
POSITIVE = frozenset({"lr", "lrs", "input_variance", "variance", "threshold", "target_accuracy",
                      "residual_scale"})
#: Parameters that are numbers >= 0.
NONNEGATIVE = frozenset({"seed", "workers", "vni_dense_steps", "probe_noise"})


_RANGE = re.compile(r"[0-9.eE+-]+:[0-9.eE+-]+:[0-9]+")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        inner = sorted({_kind(x) for x in v})
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings", "null": "nulls",
                  "a boolean": "booleans", "a list": "lists", "a table": "tables"}
        return "a list" if not inner else f"a list of {' and '.join(plural.get(k, k) for k in inner)}"
    if isinstance(v, Mapping):
        return "a table"
    return type(v).__name__


def _fits(value: Any, example: Any) -> bool:
    """Does ``value`` have the shape of the preset value ``example``? (int fits float; lists element-wise)."""
    if example is None:
        return value is None
    if isinstance(example, bool):
        return isinstance(value, bool)
    if isinstance(example, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(example, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(example, str):
        if _RANGE.fullmatch(example):  # a "LO:HI:COUNT" range stands for numbers: a number or a list fits too
            return isinstance(value, str) or _fits(value, 1.0) or _fits(value, [1.0])
        return isinstance(value, str)
    if isinstance(example, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        if not example:
            return True
        return all(any(_fits(v, e) for e in example) for v in value)
    if isinstance(example, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(any(_fits(v, e) for e in ([example[k]] if k in example else list(example.values())))
                   for k, v in value.items())
    return isinstance(value, type(example))


def _numbers(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def check_override(experiment: str, key: str, value: Any, examples: list[Any]) -> Any:
    """``value`` if it may replace parameter ``key`` of ``experiment`` (whose presets hold ``examples``).

    Raises :class:`InputError` for NaN or infinity anywhere in ``value``, a shape no
    preset has (wrong type, null), and a number outside the range ``key`` implies.
    """
    where = f"--set {key}: experiment {experiment!r}"
    for x in _numbers(value):
        if isinstance(x, float) and not math.isfinite(x):
            raise InputError(f"{where} takes finite numbers, got {value!r}")
    if not any(_fits(value, e) for e in examples):
        kinds = sorted({_kind(e) for e in examples})
        shown = " or ".join(f"{k} like {next(repr(e) for e in examples if _kind(e) == k)}" for k in kinds)
        got = "null" if value is None else f"{_kind(value)} {value!r}"
        raise InputError(f"{where} takes {shown}; got {got}")
    if isinstance(value, str) and key in COUNTS | POSITIVE:
        return value  # a range such as "25:500:11": the experiment parses and checks it
    for x in _numbers(value):
        if key in COUNTS and (not isinstance(x, int) or x < 1):
            raise InputError(f"{where} counts something: integers >= 1, got {value!r}")
        if key in POSITIVE and not x > 0:
            raise InputError(f"{where} takes numbers > 0, got {value!r}")
        if key in NONNEGATIVE and not x >= 0:
            raise InputError(f"{where} takes numbers >= 0, got {value!r}")
    return value


def check_overrides(experiment: str, presets: Mapping[str, Mapping[str, Any]],
                    overrides: Mapping[str, Any] | None) -> None:
    """:func:`check_override` for every override; an unknown key lists the valid ones."""
    for key, value in (overrides or {}).items():
        examples = [p[key] for p in presets.values() if key in p]
        if not examples:
            valid = sorted({k for p in presets.values() for k in p})
            raise InputError(f"experiment {experiment!r} has no parameter {key!r}; valid: {', '.join(valid)}")
        check_override(experiment, key, value, examples)
