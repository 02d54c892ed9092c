"""The one check of experiment parameter overrides (``depthscope reproduce NAME --set KEY=VALUE``).

:meth:`depthscope.experiments.Experiment.params` (and so ``reproduce``, ``resolve`` and
every library caller) validates each override here and nowhere else. An override must

* hold no NaN or infinity anywhere;
* have the shape of the parameter in one of the experiment's presets (the chosen
  preset's first): an integer where a preset holds an integer, any number where it holds
  a float, ``true``/``false`` where a boolean, a non-empty string where a string (a
  ``"LO:HI:COUNT"`` range string also takes a number or a list of numbers), a non-empty
  list of distinct items each like one of the preset list's items (a list mixing kinds, or a tuple, is a
  record: the same number of items, each like the preset's item in its place), a table
  with the preset's keys (all of them, no others) or, where the preset's table maps names
  to values of one kind (``lrs``: optimizer -> range), any names; ``null`` only where a
  preset holds ``null``, and where a preset holds ``null`` any value;
* respect the range its name implies across the project: :data:`COUNTS` are integers
  >= 1, :data:`POSITIVE` numbers > 0, :data:`NONNEGATIVE` numbers >= 0 (also each element
  of a list or table, a table's field by its own name when it has a rule: ``row_a.width``);
* name a known activation (``activation``, ``activations``) or init (``init``, ``inits``).

Each failure is one :class:`~depthscope.errors.InputError` naming the key, the experiment,
what is allowed and the value given; nothing about the run has been touched when it is
raised. Sizes are checked against memory separately (:func:`depthscope.memory`).
"""
from __future__ import annotations

import json
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
_RULED = COUNTS | POSITIVE | NONNEGATIVE

_RANGE = re.compile(r"[0-9.eE+-]+:[0-9.eE+-]+:[0-9]+")


class _Misfit(Exception):
    """``value`` does not fit an example. ``shape``: its kind differs (reported with the examples' kinds);
    otherwise ``text`` says what is allowed (the kind was right, a detail is not)."""

    def __init__(self, text: str = "", shape: bool = False, name: str = ""):
        super().__init__(text)
        self.text, self.shape, self.name = text, shape, name


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
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings", "null": "nulls",
                  "a boolean": "booleans", "a list": "lists", "a table": "tables"}
        inner = sorted({plural.get(_kind(x), "lists" if _kind(x).startswith("a list") else _kind(x)) for x in v})
        return "a list" if not inner else f"a list of {' and '.join(inner)}"
    if isinstance(v, Mapping):
        return "a table"
    return type(v).__name__


def _group(v: Any) -> str:
    """The coarse kind that decides whether a list is a record (mixed groups) or a list of like items."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, Mapping):
        return "table"
    return "null" if v is None else type(v).__name__


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_range(x: Any, name: str) -> None:
    if name in COUNTS and (not isinstance(x, int) or isinstance(x, bool) or x < 1):
        raise _Misfit("counts something: integers >= 1", name=name)
    if name in POSITIVE and not x > 0:
        raise _Misfit("takes numbers > 0", name=name)
    if name in NONNEGATIVE and not x >= 0:
        raise _Misfit("takes numbers >= 0", name=name)


def _check_known(text: str, name: str) -> None:
    if name in ("activation", "activations"):
        from .activations import activation_names

        if text not in activation_names():
            raise _Misfit(f"takes known activations ({', '.join(activation_names())}): {text!r} is not one")
    elif name in ("init", "inits"):
        from .inits import INITS

        if text not in INITS:
            raise _Misfit(f"takes known inits ({', '.join(INITS)}): {text!r} is not one")


def _first_fit(value: Any, examples: Iterable[Any], name: str) -> None:
    """``value`` like one of ``examples``; else the most telling misfit (a detail before a shape)."""
    misfits = []
    for e in examples:
        try:
            _like(value, e, name)
            return
        except _Misfit as m:
            misfits.append(m)
    if not misfits:
        return
    raise next((m for m in misfits if not m.shape), misfits[0])


def _like(value: Any, example: Any, name: str) -> None:
    """Raise :class:`_Misfit` unless ``value`` has the shape of ``example`` and its numbers the range of ``name``."""
    if example is None:  # the preset leaves the kind open (e.g. n_train: None = all): the value is like itself
        if value is not None:
            _like(value, value, name)
        return
    if isinstance(example, bool):
        if not isinstance(value, bool):
            raise _Misfit(shape=True)
        return
    if isinstance(example, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Misfit(shape=True)
        _check_range(value, name)
        return
    if isinstance(example, float):
        if not _number(value):
            raise _Misfit(shape=True)
        _check_range(value, name)
        return
    if isinstance(example, str):
        if _RANGE.fullmatch(example) and not isinstance(value, str):
            # a "LO:HI:COUNT" range stands for numbers: a number or a list of numbers fits too
            _first_fit(value, [1.0, [1.0]], name)
            return
        if not isinstance(value, str):
            raise _Misfit(shape=True)
        if not value:
            raise _Misfit("takes a non-empty string")
        # a range string such as "25:500:11" for a count or a rate: the experiment parses and checks it
        if not (_RANGE.fullmatch(example) or _RANGE.fullmatch(value)):
            _check_known(value, name)
        return
    if isinstance(example, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise _Misfit(shape=True)
        if not value:
            raise _Misfit("takes a non-empty list")
        if not example:
            for item in value:
                _like(item, item, name)
            return
        if isinstance(example, tuple) or len({_group(e) for e in example}) > 1:  # a record such as (depth, width, lr)
            if len(value) != len(example):
                raise _Misfit(f"takes records of {len(example)} items like {list(example)!r}")
            for item, e in zip(value, example):
                _like(item, e, name)
            return
        seen = set()
        for item in value:  # a list of like items (an axis): each like one of the preset's items, none twice
            _first_fit(item, example, name)
            text = repr(item)
            if text in seen:
                raise _Misfit(f"takes distinct values ({text} is repeated)")
            seen.add(text)
        return
    if isinstance(example, Mapping):
        if not isinstance(value, Mapping):
            raise _Misfit(shape=True)
        is_map = len({_group(e) for e in example.values()}) == 1 and not all(k in _RULED for k in example)
        for k, item in value.items():
            sub = k if k in _RULED else name
            if k in example:
                _like(item, example[k], sub)
            elif is_map:  # a map (e.g. optimizer -> lr range): new names are fine
                _first_fit(item, list(example.values()), sub)
            else:
                raise _Misfit(f"takes a table with keys {', '.join(sorted(example))}: {k!r} is not one")
        if not is_map:
            lacking = [k for k in example if k not in value]
            if lacking:
                raise _Misfit(f"takes a table with keys {', '.join(sorted(example))}: {', '.join(map(repr, lacking))} "
                              "missing")
        return
    if not isinstance(value, type(example)):
        raise _Misfit(shape=True)


def _numbers(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _numbers(v)
    elif _number(value):
        yield value


def parse_assignments(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` as a dict, each VALUE read as JSON where it parses (``5``, ``[1, 2]``,
    ``"x"``) and kept as the plain string otherwise; an item without ``=`` is a ValueError naming ``flag``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def check_override(experiment: str, key: str, value: Any, examples: list[Any]) -> Any:
    """``value`` if it may replace parameter ``key`` of ``experiment``, whose presets hold ``examples`` (the
    chosen preset's value first: its misfit is the one reported).

    Raises :class:`InputError` (one line) for NaN or infinity anywhere in ``value``, a shape no preset has
    (wrong type, null), and a detail out of bounds (range, empty, record length, keys, names).
    """
    where = f"--set {key}: experiment {experiment!r}"
    for x in _numbers(value):
        if isinstance(x, float) and not math.isfinite(x):
            raise InputError(f"{where} takes finite numbers, got {value!r}")
    try:
        _first_fit(value, examples, key)
    except _Misfit as m:
        if m.shape:
            kinds = list(dict.fromkeys(_kind(e) for e in examples))
            shown = " or ".join(f"{k} like {next(e for e in examples if _kind(e) == k)!r}" for k in kinds)
            got = "null" if value is None else f"{_kind(value)} {value!r}"
            raise InputError(f"{where} takes {shown}; got {got}") from None
        at = f" (its {m.name})" if m.name and m.name != key else ""  # a table's field: row_a's width
        raise InputError(f"{where} {m.text}{at}, got {value!r}") from None
    return value


def check_overrides(experiment: str, presets: Mapping[str, Mapping[str, Any]],
                    overrides: Mapping[str, Any] | None, preset: str | None = None) -> None:
    """:func:`check_override` for every override against the values of ``presets`` (``preset``'s first); an
    unknown key lists the valid ones."""
    order = ([preset] if preset in presets else []) + [p for p in presets if p != preset]
    for key, value in (overrides or {}).items():
        examples = [presets[p][key] for p in order if key in presets[p]]
        if not examples:
            valid = sorted({k for p in presets.values() for k in p})
            raise InputError(f"experiment {experiment!r} has no parameter {key!r}; valid: {', '.join(valid)}")
        check_override(experiment, key, value, examples)
