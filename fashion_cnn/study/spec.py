"""The study file: its typed schema, how it is read, and the validated :class:`Study`.

jsonargparse types the file from the dataclasses below, so a wrong type or an unknown key is named
with its path in the file (``variants[1]: journal: ...``); what types cannot say (unique names,
claims that name real variants, configs that exist) is checked next, naming the key and the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fashion_cnn.configs import resolve_config
from fashion_cnn.errors import ConfigError, StudyError
from fashion_cnn.legacy import translate_key
from fashion_cnn.runs.settings import NAME, typed
from fashion_cnn.study.claims import Claim, Metric, is_number, parse_claim

DEFAULT_SEEDS = 3
DEFAULT_METRICS: dict[str, Literal["higher", "lower"] | None] = {"test/acc": "higher", "test/loss": "lower"}
DEFAULT_CURVES = ("val/acc", "val/loss")
DEFAULT_MARGIN = 0.01  # practical margin of a metric the study file gives none: 1 accuracy point, 0.01 loss

# Settings a study controls for every run; neither the study file nor the command line may set them.
RESERVED = {
    "seed_everything": "use --seeds (or seeds: in the study file)",
    "run_name": "the study names its runs <study>-<variant>-seed<N>",
    "config": "set base: (or a variant's config:) in the study file",
    "ckpt_path": "a study starts every run afresh and skips finished ones by itself",
    "trainer.logger.init_args.tags": "the study tags its runs itself",
    "trainer.logger.init_args.run_id": "the study creates its own runs",
    "trainer.logger.init_args.run_name": "the study names its runs",
    "trainer.logger.init_args.experiment_name": "use --experiment",
}
_KEY = re.compile(r"^[A-Za-z_][\w.]*$")


@dataclass
class VariantFile:
    """One entry of ``variants:``.

    Args:
        name: Names the variant in claims, runs and reports (letters, digits, ``_ . + -``).
        config: A config of its own instead of the study's ``base`` (relative to the study file,
            or a packaged config name).
        overrides: Dotted config keys and values, e.g. ``{model.dropout: 0.3}``.
        journal: The journal's single-run figures, per metric (and ``params``).
        description: Free text for the report.
    """

    name: str
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    journal: dict[str, float] = field(default_factory=dict)
    description: str = ""


@dataclass
class ClaimFile:
    """One entry of ``expected:`` written as a mapping: the checkable claim and the journal's words."""

    claim: str
    journal: str = ""


@dataclass
class StudyFile:
    """A study file.

    Args:
        hypothesis: What the study tests, in words (the journal's).
        variants: The arms of the study.
        name: Names the runs and the output folder (default: the file's name).
        title: The report's title (default: the name).
        part: The journal part, e.g. "1b"; orders studies in a combined report.
        base: The config every variant starts from (relative to the study file, or packaged).
        overrides: Dotted keys applied to every variant before its own.
        seeds: A seed count (3 -> 0, 1, 2) or a list of seeds.
        metrics: The metrics compared, each "higher" or "lower" (is better).
        curves: Metrics logged per epoch, drawn as learning curves.
        margins: Practical margin per metric, in its units: a difference below it does not matter
            (default 0.01 for every metric); the report states equivalence when the data rule out
            every larger difference.
        expected: Claims, as text or as {claim, journal}.
        unchecked: Expectations of the journal this study cannot test, with why.
    """

    hypothesis: str
    variants: list[dict[str, Any]]  # each a VariantFile, typed on its own
    name: str | None = None
    title: str | None = None
    part: str | int | float = ""
    base: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: int | list[int] = DEFAULT_SEEDS
    metrics: dict[str, Literal["higher", "lower"] | None] = field(
        default_factory=lambda: dict(DEFAULT_METRICS)
    )
    curves: list[str] = field(default_factory=lambda: list(DEFAULT_CURVES))
    margins: dict[str, float] = field(default_factory=dict)
    expected: list[str | dict[str, Any]] = field(default_factory=list)  # dicts: ClaimFile
    unchecked: list[str] = field(default_factory=list)


# What to write instead, appended to the parser's message for a value of the wrong type.
_HINTS = {
    "seeds": "a seed count (e.g. 3) or a list of seeds (e.g. [0, 1, 2])",
    "metrics": "a mapping like {test/acc: higher, test/loss: lower}",
    "overrides": "a mapping of dotted keys to values, e.g. {model.dropout: 0.3}",
    "journal": "the journal's figures as a mapping, e.g. {test/loss: 0.3491}",
    "variants": "a list of variants, each with a name and overrides",
    "expected": "a list of claims, e.g. ['a beats b on test/loss', {claim: ..., journal: ...}]",
    "curves": "a list of metric names logged per epoch, e.g. [val/acc, val/loss]",
    "margins": "a practical margin per metric, e.g. {test/loss: 0.01, test/acc: 0.005}",
    "unchecked": "a list of texts",
}


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a config (or the study's base) plus dotted-key overrides."""

    name: str
    config: Path | None
    overrides: dict[str, Any]
    journal: dict[str, float]
    description: str = ""


@dataclass
class Study:
    """A parsed and validated study file."""

    path: Path
    name: str
    title: str
    part: str
    hypothesis: str
    base: Path | None
    overrides: dict[str, Any]
    seeds: list[int]
    metrics: list[Metric]
    curves: list[str]
    variants: list[Variant]
    claims: list[Claim]
    unchecked: list[str] = field(default_factory=list)
    margins: dict[str, float] = field(default_factory=dict)  # metric -> practical margin, every metric

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (a path, or a packaged one such as ``studies/dropout``).

    Raises:
        StudyError: Naming the file, the key and what would work.
    """
    try:
        path = resolve_config(path, "study")
    except ConfigError as exc:
        raise StudyError(str(exc)) from None
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StudyError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, Mapping):
        raise StudyError(
            f"{where}: a study file is a mapping with title, hypothesis, variants, ...; see docs/studies.md"
        )
    spec = _typed(StudyFile, raw, where)
    if not spec.hypothesis.strip():
        raise StudyError(f"{where}: hypothesis: empty; state what the study tests, in words")
    name = spec.name or path.stem
    if not NAME.match(name):
        raise StudyError(
            f"{where}: name: {name!r} is not usable; use letters, digits, _ . + - "
            "(it names runs and the output folder)"
        )
    metrics = _metrics(spec.metrics, where)
    if not spec.variants:
        raise StudyError(
            f"{where}: variants: give at least one variant, "
            "e.g. [{name: low, overrides: {model.dropout: 0.1}}]"
        )
    variants: list[Variant] = []
    # Items are typed one by one, from the file's own values, so an error names its index (the
    # top-level pass above only checked that these are lists).
    for i, item in enumerate(raw["variants"]):
        variants.append(_variant(item, i, path, {m.name for m in metrics}, variants))
    claims = []
    for i, item in enumerate(raw.get("expected") or []):
        cwhere = f"{where}: expected[{i}]"
        if isinstance(item, str):
            text, quote = item, ""
        else:
            entry = _typed(ClaimFile, item, cwhere)
            text, quote = entry.claim, entry.journal
        claims.append(parse_claim(text, [v.name for v in variants], metrics, cwhere, quote))
    return Study(
        path=path,
        name=name,
        title=spec.title or name,
        part=str(spec.part),
        hypothesis=" ".join(spec.hypothesis.split()),
        base=_config_path(spec.base, path, f"{where}: base"),
        overrides=_overrides(spec.overrides, f"{where}: overrides"),
        seeds=parse_seeds(spec.seeds, f"{where}: seeds"),
        metrics=metrics,
        curves=list(spec.curves),
        variants=variants,
        claims=claims,
        unchecked=[" ".join(u.split()) for u in spec.unchecked],
        margins=_margins(spec.margins, metrics, where),
    )


def _typed(schema: type, raw: Mapping[str, Any], where: str) -> Any:
    """``raw`` as an instance of the dataclass ``schema``, type-checked by jsonargparse."""
    fixes = _HINTS if schema is not ClaimFile else None
    return typed(schema, raw, where, StudyError, "key", _MISSING, fixes, ("name", "title", "base", "config"))


_MISSING = {
    "hypothesis": "state what the study tests, in words",
    "variants": "give a list of variants, each with a name and overrides",
    "name": "give each variant a name",
    "claim": "write the checkable claim, e.g. 'a beats b on test/loss'",
}


def _variant(item: Any, i: int, path: Path, metric_names: set[str], before: Sequence[Variant]) -> Variant:
    vwhere = f"{path}: variants[{i}]"
    if not isinstance(item, Mapping):
        raise StudyError(f"{vwhere}: each variant is a mapping with name and overrides (or config)")
    spec = _typed(VariantFile, item, vwhere)
    if not NAME.match(spec.name) or is_number(spec.name):
        raise StudyError(
            f"{vwhere}: name: {spec.name!r} is not usable; start with a letter and use "
            "letters, digits, _ . + -"
        )
    if any(v.name == spec.name for v in before):
        raise StudyError(f"{vwhere}: name: {spec.name!r} is used twice; variant names must be unique")
    for key in spec.journal:
        if key not in metric_names and key != "params":
            raise StudyError(
                f"{vwhere}: journal: {key!r} is not one of the study's metrics "
                f"({', '.join(sorted(metric_names))}) or params; add it to metrics:"
            )
    return Variant(
        name=spec.name,
        config=_config_path(spec.config, path, f"{vwhere}: config"),
        overrides=_overrides(spec.overrides, f"{vwhere}: overrides"),
        journal={k: float(v) for k, v in spec.journal.items()},
        description=spec.description,
    )


def _config_path(value: str | None, study_path: Path, where: str) -> Path | None:
    """A config named in a study file: relative to the file, else a packaged config."""
    if value is None:
        return None
    beside = (study_path.parent / value).resolve()
    if beside.is_file():
        return beside
    try:
        return resolve_config(value, where).resolve()
    except ConfigError:
        raise StudyError(
            f"{where}: {value} resolves to {beside}, which does not exist (nor is it a packaged config); "
            "paths are relative to the study file"
        ) from None


def _overrides(value: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _KEY.match(key.removeprefix("--")):
            raise StudyError(f"{where}: key {key!r} is not a dotted config key like model.dropout")
        bare = key.removeprefix("--")
        if bare in RESERVED:
            raise StudyError(f"{where}: {key} is set by the study itself; {RESERVED[bare]}")
        # The old flat keys (model.dropout) still work: they name the journal network's arguments.
        # A class-path value ({model.net: {class_path: ..., init_args: ...}}) comes back from the
        # schema's parser as a Namespace: plain data again.
        out[translate_key(bare)] = val.as_dict() if hasattr(val, "as_dict") else val
    return out


def _metrics(value: Mapping[str, str | None], where: str) -> list[Metric]:
    if not value:
        raise StudyError(f"{where}: metrics: name at least one metric, e.g. {{test/acc: higher}}")
    metrics = []
    for name, direction in value.items():
        direction = direction or ("higher" if "acc" in name else "lower" if "loss" in name else None)
        if direction is None:
            raise StudyError(
                f"{where}: metrics: {name}: say whether higher or lower is better, e.g. {{{name}: higher}}"
            )
        metrics.append(Metric(name, direction))  # type: ignore[arg-type]
    return metrics


def _margins(value: Mapping[str, float], metrics: Sequence[Metric], where: str) -> dict[str, float]:
    """Every metric's practical margin: the file's, else :data:`DEFAULT_MARGIN`."""
    names = [m.name for m in metrics]
    for name, margin in value.items():
        if name not in names:
            raise StudyError(
                f"{where}: margins: {name!r} is not one of the study's metrics ({', '.join(names)}); "
                "name one of those or add it under metrics:"
            )
        if not (math.isfinite(margin) and margin > 0):
            raise StudyError(
                f"{where}: margins: {name}: {margin} is not a positive number; give the smallest "
                f"difference that matters in {name}'s units, e.g. {{{name}: {DEFAULT_MARGIN}}}"
            )
    return {name: float(value.get(name, DEFAULT_MARGIN)) for name in names}


def parse_seeds(value: int | Sequence[int], where: str = "seeds") -> list[int]:
    """A seed count (``3`` -> 0, 1, 2) or an explicit list of distinct seeds (``[0, 1, 7]``)."""
    unusable = f"{where}: {value!r} is not a seed count (e.g. 3) or a list of seeds (e.g. [0, 1, 2])"
    if isinstance(value, bool):
        raise StudyError(unusable)
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"{where}: {value} seeds; use at least 1 (3 or more to judge claims)")
        return list(range(value))
    seeds = list(value)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise StudyError(unusable)
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: {seeds} repeats a seed; list each seed once")
    return seeds
