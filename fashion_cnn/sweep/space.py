"""The search space: its typed entries, the checks that need no config, and sampling one trial.

A sweep file's ``space:`` maps dotted ``fit`` config keys to how they are sampled::

    model.layers: {type: int, low: 2, high: 8}
    model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.norm: {type: categorical, choices: [none, batch, instance, layer, group]}
    model.norm_groups: {type: categorical, choices: [2, 4, 8], when: {model.norm: group}}

Each entry is typed by :class:`Param` (jsonargparse checks the types and names the entry); what
types cannot say (an empty or inverted range, a log scale over a bound <= 0, one choice, a condition
on a key the space does not have) is checked by :func:`parse_space`. Whether the keys are real config
keys is the sweep spec's job (:mod:`fashion_cnn.sweep.spec`), through the CLI's own parser.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fashion_cnn.errors import SweepError
from fashion_cnn.legacy import translate_key
from fashion_cnn.runs.settings import typed

Scalar = str | int | float | bool | None
_KEY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


@dataclass
class Param:
    """One entry of ``space:``: how one config key is sampled.

    Args:
        type: int, float or categorical.
        low: Smallest value (int and float).
        high: Largest value, included (int and float).
        step: Grid step (int: default 1; float: default none, i.e. continuous).
        log: Sample on a log scale (needs low > 0; no step).
        choices: The values to choose from (categorical; two or more).
        when: Sample this key only when earlier keys of the space have these values, e.g.
            ``{model.norm: group}`` (a list allows several); otherwise the base config's value stays.
    """

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None


@dataclass(frozen=True)
class SpaceParam:
    """A checked entry: ``key`` sampled as ``kind`` (conditions as key -> allowed values)."""

    key: str
    kind: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    def representatives(self) -> list[Scalar]:
        """Values that show whether the config accepts this key: both bounds, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this entry can propose (for enqueued trials)."""
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the conditions hold for the values chosen so far in this trial."""
        return all(key in chosen and any(_same(chosen[key], v) for v in vs) for key, vs in self.when)

    def describe(self) -> str:
        """``int 2 to 8``, ``float 0.0001 to 0.01 (log)``, ``one of none, batch`` (+ ``when ...``)."""
        if self.kind == "categorical":
            text = "one of " + ", ".join(_text(c) for c in self.choices)
        else:
            text = f"{self.kind} {_text(self.low)} to {_text(self.high)}"
            text += " (log)" if self.log else f" step {_text(self.step)}" if self.step else ""
        if self.when:
            text += " when " + ", ".join(f"{k} is {' or '.join(_text(v) for v in vs)}" for k, vs in self.when)
        return text


@dataclass(frozen=True)
class SearchSpace:
    """The checked space, in the file's order (conditions refer to earlier keys)."""

    params: tuple[SpaceParam, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one trial's values from an Optuna trial (keys whose condition fails are left out)."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if not p.active(chosen):
                continue
            if p.kind == "categorical":
                chosen[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.kind == "int":
                low, high, step = int(p.low), int(p.high), int(p.step or 1)  # type: ignore[arg-type]
                chosen[p.key] = trial.suggest_int(p.key, low, high, step=step, log=p.log)
            else:
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        return chosen

    def canonical(self) -> str:
        """The space as one JSON string, stored with the Optuna study to notice a changed file;
        stable across runs (key order kept: it orders conditions)."""
        data = []
        for p in self.params:
            entry: dict[str, Any] = {"type": p.kind}
            if p.kind == "categorical":
                entry["choices"] = list(p.choices)
            else:
                entry.update(low=p.low, high=p.high, step=p.step, log=p.log)
            if p.when:
                entry["when"] = {k: list(v) for k, v in p.when}
            data.append((p.key, entry))
        return json.dumps(data, default=str)

    def check_values(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """``values`` (an enqueued trial) checked against the space: known keys, proposable values."""
        params = {p.key: p for p in self.params}
        out: dict[str, Any] = {}
        for key, value in values.items():
            key = translate_key(key)
            if key not in params:
                raise SweepError(f"{where}: {key} is not a key of the space ({', '.join(params)})")
            p = params[key]
            if not p.contains(value):
                raise SweepError(f"{where}: {key}: {value!r} is outside the space ({p.describe()})")
            out[key] = int(value) if p.kind == "int" else value
        for p in self.params:
            if p.key in out and not p.active(out):
                raise SweepError(
                    f"{where}: {p.key} is given but its condition does not hold ({p.describe()}); "
                    f"remove {p.key} or set the keys it depends on"
                )
        return out


def parse_space(raw: Any, where: str = "space") -> SearchSpace:
    """Check ``space:`` (a mapping of dotted keys to :class:`Param` entries, as mappings or objects).

    Raises:
        SweepError: Naming the key, what is wrong and what would work.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise SweepError(
            f"{where}: give at least one key to search, e.g. "
            "{model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"
        )
    params: list[SpaceParam] = []
    for key, entry in raw.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise SweepError(f"{where}: {key!r} is not a dotted config key like model.lr")
        key = translate_key(key)  # the old flat keys (model.layers) name the journal network's
        params.append(_check(key, _typed(entry, f"{where}: {key}"), params, f"{where}: {key}"))
    return SearchSpace(tuple(params))


def _typed(entry: Any, where: str) -> Param:
    """One entry as a :class:`Param`, type-checked by jsonargparse."""
    if isinstance(entry, Param):
        return entry
    if hasattr(entry, "as_dict"):  # a jsonargparse Namespace, as the console's parser leaves it
        entry = entry.as_dict()
    if not isinstance(entry, Mapping):
        raise SweepError(f"{where}: write a mapping like {{type: float, low: 0.0, high: 0.5}}")
    missing = {"type": "write int, float or categorical"}
    return typed(Param, dict(entry), where, SweepError, "field", missing, nullable=tuple(entry), shorten=True)


def _check(key: str, p: Param, before: Sequence[SpaceParam], where: str) -> SpaceParam:
    when = _conditions(p.when, before, where)
    if p.type == "categorical":
        for name in ("low", "high", "step"):
            if getattr(p, name) is not None:
                raise SweepError(f"{where}: {name} is for int and float; a categorical takes choices only")
        choices = list(p.choices or [])
        if len(choices) < 2:
            raise SweepError(
                f"{where}: a categorical needs two or more choices (got {choices}); to fix the value, set "
                f"it in the base config or the sweep's model/data/trainer settings and remove {key} from "
                "space"
            )
        for c in choices:
            if c is not None and not isinstance(c, (str, int, float, bool)):
                raise SweepError(
                    f"{where}: choice {c!r} is not a single value; choices are strings, numbers, "
                    "booleans or null"
                )
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise SweepError(f"{where}: choices {choices} repeat a value; list each once")
        return SpaceParam(key, "categorical", choices=tuple(choices), when=when)
    if p.choices is not None:
        raise SweepError(f"{where}: choices are for type categorical; an {p.type} takes low and high")
    if p.low is None or p.high is None:
        raise SweepError(f"{where}: give both low and high, e.g. {{type: {p.type}, low: 1, high: 8}}")
    low, high = p.low, p.high
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SweepError(f"{where}: low and high must be finite numbers (got {low}, {high})")
    if p.type == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SweepError(f"{where}: an int range needs whole bounds (got {low}, {high}); or use type: float")
    if low > high:
        raise SweepError(f"{where}: the range is inverted (low {_text(low)} > high {_text(high)}); swap them")
    if low == high:
        raise SweepError(
            f"{where}: the range is empty (low = high = {_text(low)}); widen it, or set the value in the "
            f"base config or the sweep's settings and remove {key} from space"
        )
    if p.log and low <= 0:
        raise SweepError(
            f"{where}: a log scale needs low > 0 (got low {_text(low)}); e.g. low: 1.0e-5, or drop log: true"
        )
    if p.step is not None:
        if not p.step > 0:
            raise SweepError(f"{where}: step must be > 0 (got {_text(p.step)})")
        if p.log:
            raise SweepError(
                f"{where}: step and log: true cannot be combined (Optuna samples one or the other)"
            )
        if p.type == "int" and not float(p.step).is_integer():
            raise SweepError(f"{where}: an int step must be whole (got {_text(p.step)})")
        if p.step > high - low:
            raise SweepError(
                f"{where}: step {_text(p.step)} is wider than the range {_text(low)} to {_text(high)}"
            )
    kind: Literal["int", "float"] = p.type
    if kind == "int":
        return SpaceParam(key, kind, int(low), int(high), int(p.step) if p.step else None, p.log, when=when)
    return SpaceParam(key, kind, float(low), float(high), p.step, p.log, when=when)


def _conditions(
    when: Mapping[str, Any] | None, before: Sequence[SpaceParam], where: str
) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    known = {p.key: p for p in before}
    out = []
    for key, allowed in (when or {}).items():
        key = translate_key(key)
        if key not in known:
            raise SweepError(
                f"{where}: when: {key} must be a key of the space listed before this one "
                f"(earlier keys: {', '.join(known) or 'none'})"
            )
        values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
        for value in values:
            if not known[key].contains(value):
                raise SweepError(
                    f"{where}: when: {key} {value!r} is never proposed ({known[key].describe()}), so this "
                    "key would never be sampled"
                )
        out.append((key, values))
    return tuple(out)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (1 == True in Python, but not as a choice)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


__all__ = ["Param", "SearchSpace", "SpaceParam", "SweepError", "parse_space"]
