"""Studies: one hypothesis, variants × seeds as MLflow child runs, and a report that judges its claims.

``fashion-cnn study configs/studies/dropout.yaml`` reads a study file (schema in ``docs/studies.md``),
runs every variant with every seed through :func:`fashion_cnn.cli.run_experiment` as children of one
MLflow parent run, and writes ``report.md`` with figures to ``studies/<name>``: each metric's mean
± 95 % t-interval per variant, learning curves, and every expected outcome marked **supported**,
**not supported** or **inconclusive** by a stated test. A rerun of the same command finds the parent
(by study name and a hash of what the runs depend on) and runs only what is missing.

Statistical decision rule, at ``alpha`` = 0.05 (see :func:`evaluate_claim`):

- ``A beats B on M [by at least d]``: Welch's t-test, one-sided. Supported if p < alpha for "A
  better than B by more than d" in M's direction; not supported if p < alpha for the opposite
  one-sided hypothesis (A better by less than d, or worse); inconclusive otherwise. ``B`` may be a
  number, then it is a one-sample t-test.
- ``A is within d of B on M``: two one-sided tests (TOST). Supported if both p < alpha (the 90 %
  CI of the difference lies inside (-d, d)); not supported if the difference is significantly
  beyond d or below -d (one-sided p < alpha); inconclusive otherwise.
- ``A is the best (worst) of all variants on M``: ``A beats X`` (``X beats A``) for every other
  variant X. Supported if every one-sided p < alpha (an intersection-union test, so no correction
  is needed); not supported if some X is significantly better (worse) at alpha / (k - 1)
  (Bonferroni over the k - 1 rivals); inconclusive otherwise.
- ``A is between L and U on M``: one-sample t-tests of the mean against both bounds. Supported if
  mean > L and mean < U are both significant; not supported if mean < L or mean > U is.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import difflib
import hashlib
import io
import json
import logging
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from fashion_cnn import _stats
from fashion_cnn.tracking import BEST_CHECKPOINT_TAG

log = logging.getLogger(__name__)

ALPHA = 0.05
DEFAULT_EXPERIMENT = "fashion-cnn-studies"
DEFAULT_METRICS = {"test/acc": "higher", "test/loss": "lower"}
DEFAULT_CURVES = ("val/acc", "val/loss")
DEFAULT_SEEDS = 3

# Tags on the parent ("study") and child ("trial") runs; plain keys keep MLflow filters simple.
TAG_STUDY, TAG_HASH, TAG_ROLE, TAG_VARIANT, TAG_SEED = "study", "study_hash", "study_role", "variant", "seed"
TAG_CONFIG, TAG_REUSED = "config_hash", "reused_from"  # per-variant config hash; the run a copy came from
PARENT_TAG = "mlflow.parentRunId"

# Settings a study controls for every run; the command line may not set them.
_RESERVED = {
    "seed_everything": "use --seeds (or seeds: in the study file)",
    "run_name": "the study names its runs <study>-<variant>-seed<N>",
    "config": "set base: (or a variant's config:) in the study file",
    "ckpt_path": "a study starts every run afresh and skips finished ones by itself",
    "trainer.logger.init_args.tags": "the study tags its runs itself",
    "trainer.logger.init_args.run_id": "the study creates its own runs",
    "trainer.logger.init_args.run_name": "the study names its runs",
    "trainer.logger.init_args.experiment_name": "use --experiment",
}
# Keys left out of the hash that identifies a study's runs: they name or place runs, or are set
# per run, but do not change what a run computes.
_NOT_HASHED = (
    "seed_everything",
    "run_name",
    "config",
    "output_dir",
    "predictions_file",
    "ckpt_path",
    "checkpoint.root",
    "checkpoint.dirpath",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)
_STUDY_KEYS = (
    "name",
    "title",
    "part",
    "hypothesis",
    "base",
    "overrides",
    "seeds",
    "metrics",
    "curves",
    "variants",
    "expected",
    "unchecked",
)
_VARIANT_KEYS = ("name", "config", "overrides", "journal", "description")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")

Verdict = Literal["supported", "not supported", "inconclusive"]


class StudyError(ValueError):
    """A study file, or a study's command line, that cannot work; the message says how to fix it."""


class StudyInterrupted(Exception):
    """Raised when a run of the study was interrupted; finished runs are kept for the rerun."""


# --------------------------------------------------------------------------------------------
# The study file


@dataclass(frozen=True)
class Metric:
    """A metric to compare and whether higher or lower values are better."""

    name: str
    direction: Literal["higher", "lower"]

    @property
    def sign(self) -> int:
        """+1 if higher is better, -1 if lower is better."""
        return 1 if self.direction == "higher" else -1


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a config (or the study's base) plus dotted-key overrides."""

    name: str
    config: Path | None
    overrides: dict[str, Any]
    journal: dict[str, float]
    description: str = ""


@dataclass(frozen=True)
class Claim:
    """An expected outcome in checkable form (see the module docstring for the grammar)."""

    text: str
    kind: Literal["beats", "best", "worst", "within", "between"]
    a: str
    metric: str
    b: str | float | None = None
    margin: float = 0.0
    low: float | None = None
    high: float | None = None
    journal: str = ""


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

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file.

    Raises:
        StudyError: Naming the file, the key and what would work.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            f"study file {path} does not exist; pass the path of a study YAML (e.g. "
            "configs/studies/dropout.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    where = str(path)
    if not isinstance(raw, Mapping):
        raise StudyError(
            f"{where}: a study file is a mapping with title, hypothesis, variants, ...; see docs/studies.md"
        )
    _unknown_keys(raw, _STUDY_KEYS, where)

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyError(
            f"{where}: name: {name!r} is not usable; use letters, digits, _ . + - "
            "(it names runs and the output folder)"
        )
    for key in ("title", "hypothesis"):
        if key in raw and not isinstance(raw[key], str):
            raise StudyError(
                f"{where}: {key}: write it as text (a YAML string), not {type(raw[key]).__name__}"
            )
    if not str(raw.get("hypothesis") or "").strip():
        raise StudyError(f"{where}: hypothesis: missing; state what the study tests, in words")

    base = _config_path(raw.get("base"), path, f"{where}: base")
    overrides = _overrides(raw.get("overrides", {}), f"{where}: overrides")
    seeds = parse_seeds(raw.get("seeds", DEFAULT_SEEDS), f"{where}: seeds")
    metrics = _metrics(raw.get("metrics", DEFAULT_METRICS), where)
    curves = raw.get("curves", list(DEFAULT_CURVES))
    if not isinstance(curves, list) or not all(isinstance(c, str) for c in curves):
        raise StudyError(
            f"{where}: curves: give a list of metric names logged per epoch, e.g. [val/acc, val/loss]"
        )

    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw:
        raise StudyError(
            f"{where}: variants: give a list of variants, each with a name and overrides, "
            "e.g. [{name: low, overrides: {model.dropout: 0.1}}]"
        )
    variants: list[Variant] = []
    metric_names = {m.name for m in metrics}
    for i, item in enumerate(variants_raw):
        vwhere = f"{where}: variants[{i}]"
        if not isinstance(item, Mapping):
            raise StudyError(f"{vwhere}: each variant is a mapping with name and overrides (or config)")
        _unknown_keys(item, _VARIANT_KEYS, vwhere)
        vname = item.get("name")
        if not isinstance(vname, str) or not _NAME.match(vname) or _is_number(vname):
            raise StudyError(
                f"{vwhere}: name: {vname!r} is not usable; start with a letter and use "
                "letters, digits, _ . + -"
            )
        if any(v.name == vname for v in variants):
            raise StudyError(f"{vwhere}: name: {vname!r} is used twice; variant names must be unique")
        journal = item.get("journal", {}) or {}
        if not isinstance(journal, Mapping):
            raise StudyError(
                f"{vwhere}: journal: give the journal's figures as a mapping, e.g. {{test/loss: 0.3491}}"
            )
        for key, value in journal.items():
            if key not in metric_names and key != "params":
                raise StudyError(
                    f"{vwhere}: journal: {key!r} is not one of the study's metrics "
                    f"({', '.join(sorted(metric_names))}) or params; add it to metrics:"
                )
            if not _is_number(value):
                raise StudyError(f"{vwhere}: journal: {key}: {value!r} is not a number")
        variants.append(
            Variant(
                name=vname,
                config=_config_path(item.get("config"), path, f"{vwhere}: config"),
                overrides=_overrides(item.get("overrides", {}), f"{vwhere}: overrides"),
                journal={k: float(v) for k, v in journal.items()},
                description=str(item.get("description", "")),
            )
        )

    claims = []
    expected = raw.get("expected", []) or []
    if not isinstance(expected, list):
        raise StudyError(
            f"{where}: expected: give a list of claims, e.g. "
            "['a beats b on test/loss', {claim: 'a is best on test/acc', journal: '...'}]"
        )
    for i, item in enumerate(expected):
        cwhere = f"{where}: expected[{i}]"
        if isinstance(item, str):
            text, quote = item, ""
        elif isinstance(item, Mapping):
            _unknown_keys(item, ("claim", "journal"), cwhere)
            text, quote = item.get("claim"), str(item.get("journal", "") or "")
            if not isinstance(text, str):
                raise StudyError(
                    f"{cwhere}: claim: missing; write the checkable claim, e.g. 'a beats b on test/loss'"
                )
        else:
            raise StudyError(f"{cwhere}: write a claim as text or as {{claim: ..., journal: ...}}")
        claims.append(parse_claim(text, [v.name for v in variants], metrics, cwhere, quote))

    unchecked = raw.get("unchecked", []) or []
    if not isinstance(unchecked, list) or not all(isinstance(u, str) for u in unchecked):
        raise StudyError(f"{where}: unchecked: give a list of texts (expectations not tested here)")
    return Study(
        path=path,
        name=name,
        title=str(raw.get("title") or name),
        part=str(raw.get("part", "")),
        hypothesis=" ".join(str(raw["hypothesis"]).split()),
        base=base,
        overrides=overrides,
        seeds=seeds,
        metrics=metrics,
        curves=curves,
        variants=variants,
        claims=claims,
        unchecked=[" ".join(u.split()) for u in unchecked],
    )


def _unknown_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            raise StudyError(f"{where}: unknown key {key!r}; {hint}")


def _config_path(value: Any, study_path: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StudyError(f"{where}: give a config path relative to the study file, e.g. ../baseline.yaml")
    resolved = (study_path.parent / value).resolve()
    if not resolved.is_file():
        raise StudyError(
            f"{where}: {value} resolves to {resolved}, which does not exist; paths are "
            "relative to the study file"
        )
    return resolved


def _overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StudyError(
            f"{where}: give a mapping of dotted keys to values, e.g. {{model.dropout: 0.3}}, "
            f"not a {type(value).__name__}"
        )
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][\w.]*$", key):
            raise StudyError(f"{where}: key {key!r} is not a dotted config key like model.dropout")
        bare = key.removeprefix("--")
        if bare in _RESERVED:
            raise StudyError(f"{where}: {key} is set by the study itself; {_RESERVED[bare]}")
        out[key] = val
    return out


def _metrics(value: Any, where: str) -> list[Metric]:
    items: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, Mapping) and "name" in entry:
                items.append((entry["name"], entry.get("direction")))
            else:
                raise StudyError(
                    f"{where}: metrics: write each as a name or {{name: ..., direction: higher|lower}}}}"
                )
    else:
        raise StudyError(f"{where}: metrics: give a mapping like {{test/acc: higher, test/loss: lower}}")
    if not items:
        raise StudyError(f"{where}: metrics: name at least one metric, e.g. {{test/acc: higher}}")
    metrics = []
    for name, direction in items:
        if not isinstance(name, str):
            raise StudyError(f"{where}: metrics: {name!r} is not a metric name like test/acc")
        if direction is None:
            direction = "higher" if "acc" in name else "lower" if "loss" in name else None
            if direction is None:
                raise StudyError(
                    f"{where}: metrics: {name}: say whether higher or lower is better, "
                    f"e.g. {{{name}: higher}}"
                )
        if direction not in ("higher", "lower"):
            raise StudyError(f"{where}: metrics: {name}: direction {direction!r} must be higher or lower")
        metrics.append(Metric(name, direction))
    return metrics


def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """A seed count (``3`` -> 0, 1, 2) or an explicit list (``[0, 1, 7]``, also ``"0,1,7"``)."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            value = int(text)
        elif re.fullmatch(r"\d+(\s*,\s*\d+)+", text):
            value = [int(s) for s in text.split(",")]
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"{where}: {value} seeds; use at least 2 (3 or more to judge claims)")
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        if len(set(value)) != len(value):
            raise StudyError(f"{where}: {value} repeats a seed; list each seed once")
        return list(value)
    raise StudyError(f"{where}: {value!r} is not a seed count (e.g. 3) or a list of seeds (e.g. [0, 1, 2])")


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ON = r"(?:\s+on\s+(?P<m>\S+))?"
_CLAIM_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "beats",
        re.compile(rf"^(?P<a>\S+)\s+beats\s+(?P<b>\S+){_ON}(?:\s+by\s+at\s+least\s+(?P<d>{_NUM}))?$", re.I),
    ),
    ("beats", re.compile(rf"^(?P<a>\S+)\s+beats\s+(?P<b>\S+)\s+by\s+at\s+least\s+(?P<d>{_NUM}){_ON}$", re.I)),
    ("best", re.compile(rf"^(?P<a>\S+)\s+is\s+(?:the\s+)?best(?:\s+of\s+all(?:\s+variants)?)?{_ON}$", re.I)),
    (
        "worst",
        re.compile(rf"^(?P<a>\S+)\s+is\s+(?:the\s+)?worst(?:\s+of\s+all(?:\s+variants)?)?{_ON}$", re.I),
    ),
    ("within", re.compile(rf"^(?P<a>\S+)\s+is\s+within\s+(?P<d>{_NUM})\s+of\s+(?P<b>\S+){_ON}$", re.I)),
    (
        "between",
        re.compile(rf"^(?P<a>\S+)\s+is\s+between\s+(?P<lo>{_NUM})\s+and\s+(?P<hi>{_NUM}){_ON}$", re.I),
    ),
]
CLAIM_FORMS = (
    "'A beats B on M', 'A beats B on M by at least d', 'A is the best of all variants on M', "
    "'A is the worst of all variants on M', 'A is within d of B on M', 'A is between L and U on M' "
    "(B may be a number; 'on M' defaults to the first metric)"
)


def parse_claim(
    text: str, variants: Sequence[str], metrics: Sequence[Metric], where: str = "claim", journal: str = ""
) -> Claim:
    """Parse one claim of the grammar in :data:`CLAIM_FORMS`, checking names against the study."""
    text = " ".join(text.split())
    for kind, pattern in _CLAIM_PATTERNS:  # noqa: B007 - kind is used after the loop
        match = pattern.match(text)
        if match:
            break
    else:
        raise StudyError(f"{where}: cannot read claim {text!r}; write one of {CLAIM_FORMS}")
    groups = match.groupdict()
    metric = groups.get("m") or metrics[0].name
    if metric not in {m.name for m in metrics}:
        raise StudyError(
            f"{where}: claim {text!r}: metric {metric!r} is not among the study's metrics "
            f"({', '.join(m.name for m in metrics)}); add it under metrics:"
        )
    a = groups["a"]
    if a not in variants:
        raise StudyError(f"{where}: claim {text!r}: {a!r} is not a variant ({', '.join(variants)})")
    b: str | float | None = groups.get("b")
    if isinstance(b, str):
        if _is_number(b):
            b = float(b)
        elif b not in variants:
            raise StudyError(
                f"{where}: claim {text!r}: {b!r} is neither a variant ({', '.join(variants)}) nor a number"
            )
        elif b == a:
            raise StudyError(f"{where}: claim {text!r} compares {a} with itself; name another variant")
    margin = float(groups["d"]) if groups.get("d") else 0.0
    if margin < 0:
        raise StudyError(f"{where}: claim {text!r}: the margin {margin} must be >= 0")
    if kind in ("best", "worst") and len(variants) < 2:
        raise StudyError(f"{where}: claim {text!r} needs at least two variants")
    low = high = None
    if kind == "between":
        low, high = float(groups["lo"]), float(groups["hi"])
        if not low < high:
            raise StudyError(f"{where}: claim {text!r}: the lower bound {low} must be below {high}")
    return Claim(
        text=text,
        kind=kind,
        a=a,
        metric=metric,
        b=b,
        margin=margin,
        low=low,
        high=high,
        journal=" ".join(journal.split()),
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Statistics on claims


@dataclass
class Evaluation:
    """The verdict on one claim and the numbers behind it."""

    claim: Claim
    verdict: Verdict
    test: str
    p_value: float
    difference: float  # A minus B (or minus the bound / rival), in the metric's units
    ci: tuple[float, float]  # 95 % CI of that difference (of A's mean for 'between')
    cohen_d: float
    sentence: str
    compared_with: str = ""  # the rival whose difference is reported (best/worst: the closest)


def evaluate_claim(
    claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, alpha: float = ALPHA
) -> Evaluation:
    """Judge ``claim`` on per-variant samples (one value per seed) of ``metric``.

    The decision rule is in the module docstring; p is the p-value of the claimed direction.
    """
    a = [v for v in samples.get(claim.a, []) if math.isfinite(v)]
    s = metric.sign
    name, fmt = metric.name, _fmt
    if claim.kind == "between":
        return _between(claim, a, name, alpha)
    if claim.kind in ("best", "worst"):
        return _extreme(claim, samples, metric, alpha)
    b: Sequence[float] | float
    if isinstance(claim.b, float):
        b, b_label = claim.b, fmt(claim.b)
    else:
        b = [v for v in samples.get(str(claim.b), []) if math.isfinite(v)]
        b_label = str(claim.b)
    n_text = _n_text(a, b)
    one_sample = isinstance(b, float)
    if len(a) < 2 or (not one_sample and len(b) < 2):
        return _too_few(claim, n_text)
    diff = _stats.welch(a, b)
    lo, hi = diff.ci(1 - alpha)
    mean_b = diff.mean_b
    if claim.kind == "within":
        d = claim.margin
        p = max(diff.p_greater(-d), diff.p_less(d))
        p_out = min(diff.p_greater(d), diff.p_less(-d))
        verdict = _decide(p, p_out, alpha)
        test = (
            "TOST equivalence (two one-sided "
            + ("one-sample t-tests" if one_sample else "Welch t-tests")
            + f", margin ±{fmt(d)})"
        )
        sentence = (
            f"{claim.a}'s mean {name} ({fmt(diff.mean_a)}) differs from {b_label}"
            f"{'' if one_sample else f' ({fmt(mean_b)})'} by {fmt(diff.diff, sign=True)} "
            f"(95 % CI [{fmt(lo, sign=True)}, {fmt(hi, sign=True)}], {n_text}); "
            + {
                "supported": f"both one-sided tests put the difference inside ±{fmt(d)} (TOST {_peq(p)}).",
                "not supported": f"the difference lies significantly outside ±{fmt(d)} ({_peq(p_out)}).",
                "inconclusive": f"these seeds cannot tell if it lies within ±{fmt(d)} (TOST {_peq(p)}).",
            }[verdict]
        )
        return Evaluation(claim, verdict, test, p, diff.diff, (lo, hi), diff.cohen_d, sentence, b_label)

    # beats [by at least d]: "better by more than d" in the metric's direction.
    d = claim.margin
    if s > 0:
        p, p_opp = diff.p_greater(d), diff.p_less(d)
    else:
        p, p_opp = diff.p_less(-d), diff.p_greater(-d)
    verdict = _decide(p, p_opp, alpha)
    kind = "one-sample t-test" if one_sample else "Welch's t-test"
    test = f"{kind}, one-sided" + (f", margin {fmt(d)}" if d else "")
    better = "higher" if s > 0 else "lower"
    worse = "lower" if s > 0 else "higher"
    where_b = b_label if one_sample else f"{b_label}'s ({fmt(mean_b)})"
    relation = f"{better} than" if s * diff.diff > 0 else f"{worse} than" if diff.diff else "the same as"
    numbers = (
        f"{claim.a}'s mean {name} ({fmt(diff.mean_a)}) is {relation} "
        f"{where_b}: difference {fmt(diff.diff, sign=True)}, 95 % CI "
        f"[{fmt(lo, sign=True)}, {fmt(hi, sign=True)}] ({n_text})"
    )
    target = f"by at least {fmt(d)}" if d else ""
    if verdict == "supported":
        tail = f"one-sided {_peq(p)}" + (f" for a margin above {fmt(d)}" if d else "") + "."
    elif verdict == "not supported":
        if d and s * diff.diff > 0:
            tail = (
                f"the margin is significantly smaller than the claimed {fmt(d)} (one-sided p = "
                f"{_p(p_opp)}), so the claim fails."
            )
        else:
            tail = f"the opposite direction is significant (one-sided {_peq(p_opp)}), so the claim fails."
    else:
        tail = (
            f"one-sided {_peq(p)}; these seeds cannot tell whether {claim.a} is {better} {target}".rstrip()
            + "."
        )
    return Evaluation(
        claim, verdict, test, p, diff.diff, (lo, hi), diff.cohen_d, f"{numbers}; {tail}", b_label
    )


def _extreme(
    claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, alpha: float
) -> Evaluation:
    best = claim.kind == "best"
    a = [v for v in samples.get(claim.a, []) if math.isfinite(v)]
    rivals = {k: [v for v in vs if math.isfinite(v)] for k, vs in samples.items() if k != claim.a}
    counts = [len(a)] + [len(v) for v in rivals.values()]
    n_text = (
        f"n = {min(counts)}"
        + ("" if min(counts) == max(counts) else f"-{max(counts)}")
        + " seeds per variant"
    )
    if min(counts) < 2:
        return _too_few(claim, n_text)
    s = metric.sign if best else -metric.sign  # +1: A should have the larger values
    results = {}
    for rival, values in rivals.items():
        diff = _stats.welch(a, values)
        p, p_opp = (diff.p_greater(), diff.p_less()) if s > 0 else (diff.p_less(), diff.p_greater())
        results[rival] = (diff, p, p_opp)
    k = len(rivals)
    p_max = max(r[1] for r in results.values())
    p_opp_min = min(r[2] for r in results.values())
    if p_max < alpha:
        verdict: Verdict = "supported"
    elif p_opp_min < alpha / k:
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    # Report against the closest rival: the one whose mean is nearest A's from the claimed side.
    closest = max(results, key=lambda r: s * results[r][0].mean_b)
    diff = results[closest][0]
    lo, hi = diff.ci(1 - alpha)
    word = "best" if best else "worst"
    order = sorted(samples, key=lambda v: -metric.sign * _stats.mean_sd(samples[v])[0])
    rank = order.index(claim.a) + 1
    test = (
        f"Welch's t-test, one-sided, against each of the {k} other variants "
        f"(intersection-union; Bonferroni α/{k} for the opposite direction)"
    )
    numbers = (
        f"{claim.a} ranks {rank} of {k + 1} on mean {metric.name} ({_fmt(diff.mean_a)}); against "
        f"{closest} ({_fmt(diff.mean_b)}) the difference is {_fmt(diff.diff, sign=True)}, 95 % CI "
        f"[{_fmt(lo, sign=True)}, {_fmt(hi, sign=True)}] ({n_text})"
    )
    if verdict == "supported":
        tail = f"every one-sided test has p < {alpha:g} (largest {_peq(p_max)}), so it is the {word}."
    elif verdict == "not supported":
        loser = min(results, key=lambda r: results[r][2])
        tail = (
            f"{loser} is significantly {'better' if best else 'worse'} than {claim.a} "
            f"(one-sided {_peq(results[loser][2])} < {alpha:g}/{k}), so the claim fails."
        )
    else:
        tail = f"the weakest comparison has {_peq(p_max)}; these seeds cannot tell whether it is the {word}."
    return Evaluation(
        claim, verdict, test, p_max, diff.diff, (lo, hi), diff.cohen_d, f"{numbers}; {tail}", closest
    )


def _between(claim: Claim, a: Sequence[float], name: str, alpha: float) -> Evaluation:
    assert claim.low is not None and claim.high is not None
    n_text = f"n = {len(a)} seeds"
    if len(a) < 2:
        return _too_few(claim, n_text)
    low, high = _stats.welch(a, claim.low), _stats.welch(a, claim.high)
    p = max(low.p_greater(), high.p_less())
    p_out = min(low.p_less(), high.p_greater())
    verdict = _decide(p, p_out, alpha)
    ci = _stats.mean_ci(a, 1 - alpha)
    test = "two one-sided one-sample t-tests against the bounds"
    numbers = (
        f"{claim.a}'s mean {name} is {_fmt(ci.mean)} (95 % CI [{_fmt(ci.low)}, {_fmt(ci.high)}], {n_text})"
    )
    tail = {
        "supported": f"both bounds are cleared significantly ({_peq(p)}), so it lies in "
        f"[{_fmt(claim.low)}, {_fmt(claim.high)}].",
        "not supported": f"it lies significantly outside [{_fmt(claim.low)}, {_fmt(claim.high)}] "
        f"({_peq(p_out)}).",
        "inconclusive": f"these seeds cannot tell whether it lies in [{_fmt(claim.low)}, {_fmt(claim.high)}] "
        f"({_peq(p)}).",
    }[verdict]
    return Evaluation(
        claim,
        verdict,
        test,
        p,
        ci.mean,
        (ci.low, ci.high),
        math.nan,
        f"{numbers}; {tail}",
        f"[{_fmt(claim.low)}, {_fmt(claim.high)}]",
    )


def _decide(p_claim: float, p_against: float, alpha: float) -> Verdict:
    if p_claim < alpha:
        return "supported"
    if p_against < alpha:
        return "not supported"
    return "inconclusive"


def _too_few(claim: Claim, n_text: str) -> Evaluation:
    return Evaluation(
        claim,
        "inconclusive",
        "none (fewer than 2 finished seeds)",
        math.nan,
        math.nan,
        (math.nan, math.nan),
        math.nan,
        f"Not tested: a t-test needs at least 2 seeds per variant ({n_text}).",
    )


def _n_text(a: Sequence[float], b: Sequence[float] | float) -> str:
    if isinstance(b, float) or len(a) == len(b):
        return f"n = {len(a)} seeds" + ("" if isinstance(b, float) else " each")
    return f"n = {len(a)} and {len(b)} seeds"


def _fmt(value: float, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else ("+∞" if value > 0 else "−∞")
    text = f"{value:+.4f}" if sign else f"{value:.4f}"
    return text.replace("-", "−")


def _peq(p: float) -> str:
    """'p = 0.0123' or 'p < 0.0001'."""
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


# --------------------------------------------------------------------------------------------
# Planning: resolved configs, the study hash, what is left to run


@dataclass
class VariantPlan:
    variant: Variant
    config: Path | None
    args: list[str]  # CLI arguments shared by all seeds (without seed, names and tags)
    resolved: dict[str, Any]  # the full config LightningCLI resolves from them
    as_configured: dict[str, Any] | None  # resolved without the command-line overrides
    num_params: int

    @property
    def config_hash(self) -> str:
        """Hash of what this variant's runs compute (its resolved config, less names and places)."""
        return _digest(_hashable(self.resolved))


@dataclass
class StudyPlan:
    study: Study
    variants: list[VariantPlan]
    seeds: list[int]
    cli_overrides: list[str]
    study_hash: str
    tracking_uri: str
    experiment: str
    output: Path
    parent_id: str | None = None
    finished: dict[tuple[str, int], Any] = field(default_factory=dict)  # (variant, seed) -> Run

    @property
    def todo(self) -> list[tuple[VariantPlan, int]]:
        return [
            (vp, seed)
            for vp in self.variants
            for seed in self.seeds
            if (vp.variant.name, seed) not in self.finished
        ]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """Dotted-key overrides as ``--key=value`` CLI strings (JSON for non-strings, as the CLI reads)."""
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]


def split_overrides(tokens: Sequence[str]) -> list[str]:
    """``--key value`` and ``--key=value`` pairs as ``--key=value`` strings; refuses reserved keys."""
    out = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise StudyError(f"unexpected argument {token!r}; overrides look like --model.dropout 0.3")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise StudyError(f"--{key} needs a value, e.g. --{key} 1 or --{key}=1")
            value = tokens[i + 1]
            i += 2
        if key in _RESERVED:
            raise StudyError(f"--{key} cannot be set for a study: {_RESERVED[key]}")
        out.append(f"--{key}={value}")
    return out


def plan_study(
    study: Study,
    cli_overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    output: str | Path | None = None,
) -> StudyPlan:
    """Resolve every variant's config through the real CLI parser and hash what the runs depend on.

    Raises:
        StudyError: If a variant's settings do not parse or build a model, naming the variant.
    """
    from fashion_cnn.system import FashionCNN

    output = Path(output) if output is not None else Path("studies") / study.name
    variant_plans = []
    for variant in study.variants:
        config = variant.config or study.base
        defaults = [
            "--trainer.enable_progress_bar=false",  # the study shows its own progress
            "--trainer.enable_model_summary=false",
            f"--output_dir={output / 'runs'}",
        ]
        args = [*defaults, *override_args(study.overrides), *override_args(variant.overrides), *cli_overrides]
        where = f"study {study.name}, variant {variant.name}"
        resolved = _resolve(config, args, where)
        as_configured = (
            _resolve(config, args[: len(args) - len(cli_overrides)], where) if cli_overrides else None
        )
        model_args = {k: v for k, v in (resolved.get("model") or {}).items()}
        try:
            num_params = FashionCNN(**model_args).num_params
        except (TypeError, ValueError) as exc:
            raise StudyError(f"{where}: the model cannot be built: {exc}") from None
        logger = (resolved.get("trainer") or {}).get("logger") or {}
        if not (isinstance(logger, Mapping) and str(logger.get("class_path", "")).endswith("MLflowLogger")):
            raise StudyError(
                f"{where}: studies need the MLflow logger (trainer.logger: "
                "fashion_cnn.tracking.MLflowLogger); remove the other logger from the config"
            )
        variant_plans.append(VariantPlan(variant, config, args, resolved, as_configured, num_params))

    from fashion_cnn.tracking import resolve_tracking_uri

    uris = {
        (vp.resolved["trainer"]["logger"].get("init_args") or {}).get("tracking_uri") for vp in variant_plans
    }
    if len(uris) > 1:
        raise StudyError(
            f"study {study.name}: variants log to different tracking URIs {sorted(map(str, uris))}; "
            "set one for the whole study"
        )
    tracking_uri = resolve_tracking_uri(uris.pop())
    digest = _digest({vp.variant.name: _hashable(vp.resolved) for vp in variant_plans})
    return StudyPlan(
        study=study,
        variants=variant_plans,
        seeds=list(seeds) if seeds is not None else list(study.seeds),
        cli_overrides=list(cli_overrides),
        study_hash=digest,
        tracking_uri=tracking_uri,
        experiment=experiment,
        output=output,
    )


def _resolve(config: Path | None, args: Sequence[str], where: str) -> dict[str, Any]:
    """The config LightningCLI builds from ``--config config`` and ``args`` (``--print_config``)."""
    from fashion_cnn.cli import FashionCLI

    argv = [
        "fit",
        *(["--config", str(config)] if config else []),
        *args,
        "--seed_everything=0",
        "--print_config",
    ]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            FashionCLI(args=argv)
    except SystemExit as exc:
        if exc.code:
            message = err.getvalue().strip().splitlines()
            text = message[0].removeprefix("fashion-cnn: error: ") if message else f"exit status {exc.code}"
            raise StudyError(
                f"{where}: its settings do not parse: {text} (from the study file or the "
                "command-line overrides)"
            ) from None
    return yaml.safe_load(out.getvalue()) or {}


def _digest(tree: Any) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _hashable(resolved: Mapping[str, Any]) -> dict[str, Any]:
    flat = _flatten(resolved)
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in _NOT_HASHED)}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def find_runs(plan: StudyPlan, client: Any) -> None:
    """Fill ``plan.parent_id`` and ``plan.finished`` from the tracking store (no runs created)."""
    experiment = client.get_experiment_by_name(plan.experiment)
    plan.parent_id, plan.finished = None, {}
    if experiment is None:
        return
    base = f"tags.{TAG_STUDY} = '{plan.study.name}' AND tags.{TAG_HASH} = '{plan.study_hash}'"
    parents = _search(client, experiment.experiment_id, f"{base} AND tags.{TAG_ROLE} = 'parent'")
    if not parents:
        return
    parents.sort(key=lambda r: r.info.start_time)
    plan.parent_id = parents[0].info.run_id
    for run in _search(client, experiment.experiment_id, f"{base} AND tags.{TAG_ROLE} = 'trial'"):
        tags = run.data.tags
        if tags.get(PARENT_TAG) != plan.parent_id or run.info.status != "FINISHED":
            continue
        try:
            key = (tags[TAG_VARIANT], int(tags[TAG_SEED]))
        except (KeyError, ValueError):
            continue
        # Two finished runs of one variant and seed (e.g. concurrent launches): keep the newest.
        if key not in plan.finished or run.info.start_time > plan.finished[key].info.start_time:
            plan.finished[key] = run


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# --------------------------------------------------------------------------------------------
# Running


def run_studies(
    paths: Sequence[str | Path],
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    output: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    dry_run: bool = False,
    report_only: bool = False,
    reuse: bool = True,
    combined_report: str | Path | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[StudyPlan]:
    """Plan, run (what is missing) and report one or more studies.

    Every study file is loaded and every variant resolved before the first run starts, so a typo
    in the last study does not surface hours in.

    Args:
        paths: Study files.
        overrides: ``--key=value`` CLI strings applied to every run, after the study's own.
        seeds: Seeds to use instead of the study files' ``seeds``.
        output: Report folder for a single study; with several, each goes to ``output/<name>``.
            Default ``studies/<name>``.
        experiment: MLflow experiment of the parent and child runs.
        dry_run: Only report the plan through ``progress``.
        report_only: Write reports from the runs already finished; run nothing.
        reuse: Copy the results of a finished trial of another study in the same experiment that
            has the same resolved config and seed, instead of training again.
        combined_report: Also write one Markdown document over all studies here.
        command: The command line to quote in the combined report.
        progress: Receives one line per event (plan, run started, run finished with time estimate).

    Raises:
        StudyError: For unusable study files or overrides.
        StudyInterrupted: If a run was interrupted (Ctrl+C); finished runs are kept.
    """
    from mlflow.tracking import MlflowClient

    say = progress or (lambda line: log.info("%s", line))
    studies = [load_study(p) for p in paths]
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise StudyError(
            f"two study files share a name ({', '.join(sorted(names))}); set a different name: in one of them"
        )
    order = sorted(range(len(studies)), key=lambda i: (_part_key(studies[i].part), i))
    studies = [studies[i] for i in order]
    plans = []
    for study in studies:
        out = None if output is None else (Path(output) if len(studies) == 1 else Path(output) / study.name)
        plans.append(plan_study(study, overrides, seeds, experiment, out))
    clients = {}
    for plan in plans:
        if dry_run and not _store_exists(plan.tracking_uri):
            continue  # a dry run creates no database
        client = clients.setdefault(plan.tracking_uri, MlflowClient(plan.tracking_uri))
        find_runs(plan, client)
    total = sum(len(p.variants) * len(p.seeds) for p in plans)
    todo = sum(len(p.todo) for p in plans)
    say(
        f"{len(plans)} stud{'y' if len(plans) == 1 else 'ies'}, {total} runs planned, "
        f"{total - todo} already finished, {todo} to run" + (" (dry run)" if dry_run else "")
    )
    if dry_run:
        for plan in plans:
            for line in describe_plan(plan):
                say(line)
        return plans

    timer = _Timer(todo)
    for plan in plans:
        client = clients[plan.tracking_uri]
        if not report_only and plan.todo:
            _execute(plan, client, timer, say, reuse)
        if plan.parent_id is None:
            say(f"[{plan.study.name}] no runs yet; nothing to report")
            continue
        find_runs(plan, client)
        path = write_report(plan, client)
        say(f"[{plan.study.name}] report written to {path}")
    if combined_report is not None:
        path = write_combined_report(plans, clients, combined_report, command)
        say(f"combined report written to {path}")
    return plans


def _store_exists(uri: str) -> bool:
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri[len(prefix) :]).is_file()


def _part_key(part: str) -> tuple[int, str]:
    match = re.match(r"(\d+)(.*)", part)
    return (int(match.group(1)), match.group(2)) if match else (10**9, part)


class _Timer:
    """Time estimate from the runs trained so far, per variant where one was seen."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.durations: dict[tuple[str, str], list[float]] = {}

    def record(self, key: tuple[str, str], seconds: float, trained: bool = True) -> None:
        self.done += 1
        if trained:
            self.durations.setdefault(key, []).append(seconds)

    def estimate(self, remaining: Iterable[tuple[str, str]], others: int = 0) -> float:
        """Seconds for ``remaining`` runs of this study plus ``others`` runs of later studies."""
        overall = [s for v in self.durations.values() for s in v]
        mean = sum(overall) / len(overall) if overall else 0.0
        return sum(_mean(self.durations.get(key, [])) or mean for key in remaining) + others * mean


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _execute(
    plan: StudyPlan, client: Any, timer: _Timer, say: Callable[[str], None], reuse: bool = True
) -> None:
    study = plan.study
    if plan.parent_id is None:
        plan.parent_id = _create_parent(plan, client)
    else:
        client.update_run(plan.parent_id, status="RUNNING")
    try:
        _execute_todo(plan, client, timer, say, reuse)
    except KeyboardInterrupt as exc:  # between runs, or while copying one
        client.set_terminated(plan.parent_id, "KILLED")
        raise StudyInterrupted(
            f"study {study.name} interrupted; rerun the same command to continue (finished runs are kept)"
        ) from exc
    client.set_terminated(plan.parent_id, "FINISHED")


def _execute_todo(
    plan: StudyPlan, client: Any, timer: _Timer, say: Callable[[str], None], reuse: bool
) -> None:
    study = plan.study
    todo = plan.todo
    for i, (vp, seed) in enumerate(todo):
        name = vp.variant.name
        tags = dict((vp.resolved["trainer"]["logger"].get("init_args") or {}).get("tags") or {})
        tags.update(
            {
                PARENT_TAG: plan.parent_id,
                TAG_STUDY: study.name,
                TAG_HASH: plan.study_hash,
                TAG_ROLE: "trial",
                TAG_VARIANT: name,
                TAG_SEED: str(seed),
                TAG_CONFIG: vp.config_hash,
            }
        )
        source = _reusable_run(client, plan, vp, seed) if reuse else None
        start = time.perf_counter()
        if source is not None:
            run = _copy_run(client, source, plan, tags, f"{study.name}-{name}-seed{seed}")
            origin = source.data.tags.get(TAG_REUSED, source.info.run_id)
            say(
                f"[{study.name}] {name} seed {seed}: same config and seed as finished run {origin} "
                f"({source.data.tags.get(TAG_STUDY)}/{source.data.tags.get(TAG_VARIANT)}); reused its results"
            )
        else:
            say(
                f"[{study.name}] run {i + 1}/{len(todo)}: {name} seed {seed} "
                f"({len(plan.finished)} of {len(plan.variants) * len(plan.seeds)} finished)"
            )
            run = _run_trial(client, plan, vp, seed, tags)
        seconds = time.perf_counter() - start
        plan.finished[(name, seed)] = run
        remaining = [(study.name, v.variant.name) for v, _ in todo[i + 1 :]]
        timer.record((study.name, name), seconds, trained=source is None)
        if source is None:
            metrics = "  ".join(
                f"{m.name} {run.data.metrics[m.name]:.4f}"
                for m in study.metrics
                if m.name in run.data.metrics
            )
            left = timer.total - timer.done
            eta = timer.estimate(remaining, left - len(remaining))
            say(
                f"[{study.name}] done {name} seed {seed} in {_duration(seconds)}  {metrics} | "
                f"{timer.done} done, {left} left | at most ~{_duration(eta)} to go (reused runs take no time)"
            )


def _run_trial(client: Any, plan: StudyPlan, vp: VariantPlan, seed: int, tags: dict[str, str]) -> Any:
    """Train one variant with one seed through the real CLI, as a child of the study's parent run."""
    from fashion_cnn import cli

    study, name = plan.study, vp.variant.name
    args = [
        *vp.args,
        f"--seed_everything={seed}",
        f"--run_name={study.name}-{name}",
        f"--trainer.logger.init_args.experiment_name={plan.experiment}",
        f"--trainer.logger.init_args.tracking_uri={plan.tracking_uri}",
        f"--trainer.logger.init_args.tags={json.dumps(tags)}",
    ]
    interrupted = (
        f"study {study.name} interrupted during {name} seed {seed}; rerun the same command to continue "
        "(finished runs are kept)"
    )
    try:
        result = cli.run_experiment(vp.config, args)
    except KeyboardInterrupt as exc:
        _abort(client, plan, "KILLED")
        raise StudyInterrupted(interrupted) from exc
    except SystemExit as exc:
        if exc.code in (0, 1, None):  # Lightning turns Ctrl+C during fit into sys.exit(1)
            _abort(client, plan, "KILLED")
            raise StudyInterrupted(interrupted) from exc
        _abort(client, plan, "FAILED")
        raise StudyError(
            f"study {study.name}: {name} seed {seed} stopped with exit status {exc.code} (see above)"
        ) from None
    except Exception:
        _abort(client, plan, "FAILED")
        raise
    finally:
        # run_experiment leaves its trainer in cli's list of open runs (main() clears it); a study
        # runs many, so drop them or every model and dataset would stay in memory.
        cli._ACTIVE.clear()
    return client.get_run(result.run_id)


def _abort(client: Any, plan: StudyPlan, status: str) -> None:
    from fashion_cnn import cli

    cli._end_open_runs(status)  # the child run that was in progress
    client.set_terminated(plan.parent_id, status)


def _reusable_run(client: Any, plan: StudyPlan, vp: VariantPlan, seed: int) -> Any | None:
    """A finished trial of any study in this experiment with the same resolved config and seed."""
    experiment = client.get_experiment_by_name(plan.experiment)
    if experiment is None:
        return None
    found = _search(
        client,
        experiment.experiment_id,
        f"tags.{TAG_CONFIG} = '{vp.config_hash}' AND tags.{TAG_SEED} = '{seed}' "
        f"AND tags.{TAG_ROLE} = 'trial' AND attributes.status = 'FINISHED'",
    )
    found = [r for r in found if r.info.end_time]
    return min(found, key=lambda r: r.info.start_time) if found else None


def _copy_run(client: Any, source: Any, plan: StudyPlan, tags: dict[str, str], run_name: str) -> Any:
    """A child run under this study's parent holding ``source``'s params, metrics and histories."""
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import Param

    origin = source.data.tags.get(TAG_REUSED, source.info.run_id)
    copied = {k: v for k, v in source.data.tags.items() if k == BEST_CHECKPOINT_TAG}
    run = client.create_run(
        source.info.experiment_id,
        start_time=source.info.start_time,
        tags={**copied, **tags, TAG_REUSED: origin},
        run_name=run_name,
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in source.data.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    metrics = []
    for key in source.data.metrics:
        metrics += [
            MlflowMetric(key, m.value, m.timestamp, m.step)
            for m in client.get_metric_history(source.info.run_id, key)
        ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run_id, "FINISHED", end_time=source.info.end_time)
    return client.get_run(run_id)


def _create_parent(plan: StudyPlan, client: Any) -> str:
    study = plan.study
    experiment = client.get_experiment_by_name(plan.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(plan.experiment)
    tags = {
        TAG_STUDY: study.name,
        TAG_HASH: plan.study_hash,
        TAG_ROLE: "parent",
        "study_file": str(study.path),
        "mlflow.note.content": f"**{study.title}**\n\n{study.hypothesis}",
    }
    run = client.create_run(experiment_id, run_name=f"study-{study.name}", tags=tags)
    for key, value in {
        "study.base": str(study.base) if study.base else "defaults",
        "study.variants": ", ".join(v.variant.name for v in plan.variants),
        "study.overrides": " ".join(plan.cli_overrides)[:6000] or "none",
    }.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def describe_plan(plan: StudyPlan) -> list[str]:
    """Lines for ``--dry-run``: each variant, its settings and which seeds are left."""
    lines = [
        f"[{plan.study.name}] {plan.study.title}: hash {plan.study_hash}, parent run "
        f"{plan.parent_id or '(new)'}, output {plan.output}"
    ]
    for vp in plan.variants:
        left = [s for s in plan.seeds if (vp.variant.name, s) not in plan.finished]
        config = vp.config.name if vp.config else "defaults"
        extra = " ".join(override_args(vp.variant.overrides))
        lines.append(
            f"  {vp.variant.name}: {config} {extra} ({vp.num_params:,} params); seeds to run: "
            f"{left or 'none'}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Reports


@dataclass
class StudyResults:
    """What the report needs, read back from the finished child runs."""

    samples: dict[str, dict[str, list[float]]]  # metric -> variant -> one value per seed
    curves: dict[str, dict[str, list[list[float]]]]  # metric -> variant -> per seed, per epoch
    num_params: dict[str, int | None]
    wall: dict[str, float | None]  # mean seconds per run
    runs: list[tuple[str, int, Any]]  # (variant, seed, Run)
    evaluations: list[Evaluation]


def collect_results(plan: StudyPlan, client: Any) -> StudyResults:
    """Gather final metrics, learning curves, parameter counts and wall times, and judge the claims."""
    study = plan.study
    names = [vp.variant.name for vp in plan.variants]
    samples: dict[str, dict[str, list[float]]] = {m.name: {v: [] for v in names} for m in study.metrics}
    curves: dict[str, dict[str, list[list[float]]]] = {c: {v: [] for v in names} for c in study.curves}
    params: dict[str, int | None] = {}
    wall: dict[str, list[float]] = {v: [] for v in names}
    runs = []
    for vp in plan.variants:
        name = vp.variant.name
        params[name] = vp.num_params
        for seed in plan.seeds:
            run = plan.finished.get((name, seed))
            if run is None:
                continue
            runs.append((name, seed, run))
            for m in study.metrics:
                if m.name in run.data.metrics:
                    samples[m.name][name].append(float(run.data.metrics[m.name]))
            for c in study.curves:
                history = sorted(
                    client.get_metric_history(run.info.run_id, c), key=lambda h: (h.step, h.timestamp)
                )
                if history:
                    curves[c][name].append([h.value for h in history])
            logged = run.data.params.get("num_params")
            if logged and logged.isdigit():
                params[name] = int(logged)
            if run.info.end_time and run.info.start_time:
                wall[name].append((run.info.end_time - run.info.start_time) / 1000.0)
    evaluations = [evaluate_claim(c, samples[c.metric], study.metric(c.metric)) for c in study.claims]
    return StudyResults(samples, curves, params, {k: _mean(v) for k, v in wall.items()}, runs, evaluations)


def write_report(plan: StudyPlan, client: Any) -> Path:
    """Write ``report.md``, the figures and ``results.json`` to the plan's output folder, and log
    them as artifacts of the parent run. Returns the report's path."""
    results = collect_results(plan, client)
    out = plan.output
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(plan, results, out)
    report = out / "report.md"
    report.write_text(_report_markdown(plan, results, figures))
    data = out / "results.json"
    data.write_text(json.dumps(_results_json(plan, results), indent=2, default=str))
    if plan.parent_id:
        for path in [report, data, *(out / f for f in figures.values())]:
            client.log_artifact(plan.parent_id, str(path), "report")
    return report


def _identical_variants(plan: StudyPlan) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for vp in plan.variants:
        key = json.dumps(_hashable(vp.resolved), sort_keys=True, default=str)
        groups.setdefault(key, []).append(vp.variant.name)
    return [g for g in groups.values() if len(g) > 1]


def _report_markdown(plan: StudyPlan, results: StudyResults, figures: Mapping[str, str]) -> str:
    study = plan.study
    expected_runs = len(plan.variants) * len(plan.seeds)
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` from `{_rel(study.path)}`: {len(plan.variants)} "
        f"variant{'' if len(plan.variants) == 1 else 's'} × "
        f"{len(plan.seeds)} seeds "
        f"({', '.join(map(str, plan.seeds))}); {len(results.runs)} of {expected_runs} runs finished. "
        f"MLflow parent run `{plan.parent_id}` in experiment `{plan.experiment}` ({plan.tracking_uri}), "
        f"study hash `{plan.study_hash}`. Generated {_now()}.",
        "",
        "## Hypothesis",
        "",
        f"> {study.hypothesis}",
        "",
        "## Setup",
        "",
        *_setup_lines(plan),
        "",
        "## Results",
        "",
        "Mean ± half-width of the 95 % t-interval over seeds (n per variant in brackets). The journal's "
        "figures are single runs at its own budget.",
        "",
    ]
    lines += _results_table(plan, results)
    lines += [
        "",
        "| variant | parameters (ours) | parameters (journal) | mean wall time per run |",
        "|---|---:|---:|---:|",
    ]
    for vp in plan.variants:
        name = vp.variant.name
        journal = vp.variant.journal.get("params")
        wall = results.wall.get(name)
        lines.append(
            f"| {name} | {_int(results.num_params.get(name))} | {_int(journal)} | "
            f"{_duration(wall) if wall is not None else '–'} |"
        )
    for key, caption in (
        (
            "final",
            "Final metrics: mean and 95 % CI per variant; dots are seeds, crosses the journal's single runs.",
        ),
        (
            "curves",
            "Learning curves: mean over seeds per epoch with its 95 % CI (band, or bars for one epoch).",
        ),
    ):
        if key in figures:
            lines += ["", f"![{caption}]({figures[key]})", "", f"*{caption}*"]
    lines += ["", "## Expected outcomes", ""]
    lines += _claims_table(plan, results.evaluations)
    lines += ["", *_claim_sentences(plan, results.evaluations)]
    if study.unchecked:
        lines += ["", "Not tested here (the study has no measurement for them):", ""]
        lines += [f"- {u}" for u in study.unchecked]
    lines += [
        "",
        "## Decision rule",
        "",
        *_rule_lines(),
        "",
        "## Runs",
        "",
        "| variant | seed | run id | " + " | ".join(m.name for m in study.metrics) + " | wall time |",
        "|---|---:|---|" + "---:|" * len(study.metrics) + "---:|",
    ]
    for name, seed, run in results.runs:
        values = " | ".join(_fmt(run.data.metrics.get(m.name, math.nan)) for m in study.metrics)
        wall = _duration((run.info.end_time - run.info.start_time) / 1000.0) if run.info.end_time else "–"
        lines.append(f"| {name} | {seed} | `{run.info.run_id}` | {values} | {wall} |")
    return "\n".join(lines) + "\n"


def _setup_lines(plan: StudyPlan) -> list[str]:
    study = plan.study
    lines = [f"- Base config: `{_rel(study.base)}`" if study.base else "- Base config: the CLI defaults"]
    if study.overrides:
        lines.append(f"- Study overrides: `{' '.join(override_args(study.overrides))}`")
    lines.append(
        "- Command-line overrides for every run: "
        + (f"`{' '.join(plan.cli_overrides)}`" if plan.cli_overrides else "none")
    )
    for change in _budget_changes(plan):
        lines.append(f"  - {change}")
    lines += [
        "",
        "| variant | config | overrides | epochs | train batches per epoch |",
        "|---|---|---|---:|---:|",
    ]
    for vp in plan.variants:
        trainer = vp.resolved.get("trainer") or {}
        lines.append(
            f"| {vp.variant.name} | `{_rel(vp.config) if vp.config else 'defaults'}` | "
            f"{' '.join(f'`{a}`' for a in override_args(vp.variant.overrides)) or '–'} | "
            f"{trainer.get('max_epochs')} | {_show(str(trainer.get('limit_train_batches') or 'all'))} |"
        )
    for group in _identical_variants(plan):
        lines += [
            "",
            f"**Note:** {', '.join(group)} resolve to the same configuration in this study "
            "(only the seeds make their results differ); a claim between them tests nothing.",
        ]
    return lines


def _budget_changes(plan: StudyPlan, per_variant: bool = True) -> list[str]:
    """What the command-line overrides changed, per setting: 'trainer.max_epochs: 3 → 1 (a, b)'."""
    changes: dict[tuple[str, str, str], list[str]] = {}
    for vp in plan.variants:
        if vp.as_configured is None:
            continue
        before, after = _hashable(vp.as_configured), _hashable(vp.resolved)
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.setdefault((key, str(before.get(key)), str(after.get(key))), []).append(
                    vp.variant.name
                )
    everyone = len(plan.variants)
    return [
        f"`{k}`: {_show(b)} → {_show(a)}"
        + ("" if len(v) == everyone or not per_variant else f" ({', '.join(v)})")
        for (k, b, a), v in changes.items()
    ]


def _show(text: str) -> str:
    """'30.0' -> '30' (the CLI reads integer batch limits as floats)."""
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


def _results_table(plan: StudyPlan, results: StudyResults) -> list[str]:
    study = plan.study
    header = (
        "| variant | "
        + " | ".join(f"{m.name} ({m.direction} is better) | journal" for m in study.metrics)
        + " |"
    )
    lines = [header, "|---|" + "---:|---:|" * len(study.metrics)]
    for vp in plan.variants:
        name = vp.variant.name
        cells = []
        for m in study.metrics:
            values = results.samples[m.name][name]
            cells.append(_mean_cell(values))
            cells.append(_fmt(vp.variant.journal[m.name]) if m.name in vp.variant.journal else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _mean_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    ci = _stats.mean_ci(values)
    if ci.n < 2:
        return f"{_fmt(ci.mean)} (n = 1)"
    return f"{_fmt(ci.mean)} ± {ci.half_width:.4f} (n = {ci.n})"


def _claims_table(plan: StudyPlan, evaluations: Sequence[Evaluation]) -> list[str]:
    lines = [
        "| # | the journal expected | checked as | verdict | test | p (claim) | difference (95 % CI) | "
        "Cohen's d | journal's figures |",
        "|---|---|---|---|---|---:|---|---:|---|",
    ]
    for i, ev in enumerate(evaluations, 1):
        c = ev.claim
        diff = (
            f"{_fmt(ev.difference, sign=c.kind != 'between')} [{_fmt(ev.ci[0], sign=c.kind != 'between')}, "
            f"{_fmt(ev.ci[1], sign=c.kind != 'between')}]"
        )
        if c.kind == "between":
            diff = f"mean {diff}"
        elif ev.compared_with and c.kind in ("best", "worst"):
            diff += f" vs {ev.compared_with}"
        lines.append(
            f"| {i} | {c.journal or '–'} | {c.text} | **{ev.verdict}** | {ev.test} | {_p(ev.p_value)} | "
            f"{diff} | {_d_text(ev.cohen_d)} | {_journal_figures(plan.study, c)} |"
        )
    return lines


def _claim_sentences(plan: StudyPlan, evaluations: Sequence[Evaluation]) -> list[str]:
    lines = []
    for i, ev in enumerate(evaluations, 1):
        line = f"{i}. **{ev.verdict}** ({ev.claim.text}): {ev.sentence}"
        if isinstance(ev.claim.b, str):
            line += f" *{_differences(plan, ev.claim.a, ev.claim.b)}*"
        lines.append(line)
    return lines


def _differences(plan: StudyPlan, a: str, b: str) -> str:
    """'a and b differ in: model.norm (instance vs batch).', from their resolved configs, and how
    they differ as the study files configure them if the command line changed that."""
    plans = {vp.variant.name: vp for vp in plan.variants}

    def diff(attr: str) -> list[str] | None:
        ra, rb = getattr(plans[a], attr), getattr(plans[b], attr)
        if ra is None or rb is None:
            return None
        ra, rb = _hashable(ra), _hashable(rb)
        return [
            f"{k} ({ra.get(k)} vs {rb.get(k)})" for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)
        ]

    here = diff("resolved") or []
    text = (
        (f"{a} and {b} differ in: " + "; ".join(here) + ".")
        if here
        else (f"{a} and {b} have the same settings here: only the seeds differ.")
    )
    configured = diff("as_configured")
    if configured is not None and configured != here:
        text += " As the study files configure them (the journal's budget): " + (
            "; ".join(configured) + "." if configured else "the same settings."
        )
    return text


def _journal_figures(study: Study, claim: Claim) -> str:
    names = [claim.a] + ([claim.b] if isinstance(claim.b, str) else [])
    if claim.kind in ("best", "worst"):
        names = [v.name for v in study.variants]
    parts = [
        f"{n} {_fmt(study.variant(n).journal[claim.metric])}"
        for n in names
        if claim.metric in study.variant(n).journal
    ]
    return ", ".join(parts) or "–"


def _d_text(d: float) -> str:
    if math.isnan(d):
        return "–"
    return f"{d:+.2f}".replace("-", "−") if math.isfinite(d) else _fmt(d)


def _rule_lines() -> list[str]:
    return [
        f"Each claim is tested on its own at α = {ALPHA} (no correction across claims). p (claim) is the "
        "one-sided p-value of the claimed direction (the larger of the two one-sided p-values for "
        "within/between, the largest over the rivals for best/worst); a claim is supported when it is "
        "below α.",
        "",
        "- *A beats B on M (by at least d)*: Welch's t-test, one-sided. **supported** if p < α for "
        '"A better than B by more than d"; **not supported** if the opposite one-sided test is '
        "significant (A better by less than d, or worse); **inconclusive** otherwise. Against a number: "
        "one-sample t-test.",
        "- *A is within d of B*: two one-sided tests (TOST). **supported** if the difference is "
        "significantly above −d and below +d; **not supported** if it is significantly beyond ±d.",
        "- *A is the best (worst) of all variants*: A beats (loses to) every other variant, each "
        "one-sided p < α; **not supported** if some variant is significantly better (worse) at "
        "α/(k−1).",
        "- *A is between L and U*: one-sample t-tests of A's mean against L and U.",
        "- Cohen's d: difference of means over the root mean square of the two standard deviations.",
    ]


def _figures(plan: StudyPlan, results: StudyResults, out: Path) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed; the report has no figures (pip install matplotlib)")
        return {}
    study = plan.study
    names = [vp.variant.name for vp in plan.variants]
    written = {}
    fig, axes = plt.subplots(
        1, len(study.metrics), figsize=(max(4.5, 1.1 * len(names) + 2) * len(study.metrics), 4), squeeze=False
    )
    for ax, m in zip(axes[0], study.metrics, strict=True):
        for x, name in enumerate(names):
            values = results.samples[m.name][name]
            if values:
                ci = _stats.mean_ci(values)
                err = [[ci.mean - ci.low], [ci.high - ci.mean]] if ci.n > 1 else None
                ax.errorbar(
                    [x],
                    [ci.mean],
                    yerr=err,
                    fmt="o",
                    color="C0",
                    capsize=5,
                    label="ours: mean, 95 % CI" if x == 0 else None,
                )
                ax.scatter([x + 0.12] * len(values), values, s=10, color="C0", alpha=0.4)
            journal = plan.study.variant(name).journal.get(m.name)
            if journal is not None:
                ax.scatter(
                    [x],
                    [journal],
                    marker="x",
                    color="C3",
                    s=50,
                    label="journal (1 run)"
                    if not any(t.get_label() == "journal (1 run)" for t in ax.collections)
                    else None,
                )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_title(f"{m.name} ({m.direction} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(study.title)
    fig.tight_layout()
    fig.savefig(out / "final_metrics.png", dpi=110)
    plt.close(fig)
    written["final"] = "final_metrics.png"

    curves = [c for c in study.curves if any(results.curves[c][n] for n in names)]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
        for ax, c in zip(axes[0], curves, strict=True):
            for i, name in enumerate(names):
                per_seed = results.curves[c][name]
                if not per_seed:
                    continue
                epochs = min(len(h) for h in per_seed)
                stats = [_stats.mean_ci([h[e] for h in per_seed]) for e in range(epochs)]
                # One epoch has no band to draw: offset the variants a little and show error bars.
                shift = 0.0 if epochs > 1 else 0.06 * (i - (len(names) - 1) / 2)
                x = [e + 1 + shift for e in range(epochs)]
                ax.plot(x, [s.mean for s in stats], marker="o", color=f"C{i}", label=name)
                if all(s.n > 1 for s in stats):
                    low, high = [s.low for s in stats], [s.high for s in stats]
                    if epochs > 1:
                        ax.fill_between(x, low, high, color=f"C{i}", alpha=0.2)
                    else:
                        err = [[stats[0].mean - low[0]], [high[0] - stats[0].mean]]
                        ax.errorbar(x, [stats[0].mean], yerr=err, color=f"C{i}", capsize=4)
            most = max(
                (min(len(h) for h in results.curves[c][n]) for n in names if results.curves[c][n]), default=1
            )
            if most <= 20:
                ax.set_xticks(range(1, most + 1))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_title(c)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{study.title}: learning curves (mean over seeds, 95 % CI)")
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=110)
        plt.close(fig)
        written["curves"] = "learning_curves.png"
    return written


def _results_json(plan: StudyPlan, results: StudyResults) -> dict[str, Any]:
    return {
        "study": plan.study.name,
        "title": plan.study.title,
        "hash": plan.study_hash,
        "parent_run_id": plan.parent_id,
        "seeds": plan.seeds,
        "overrides": plan.cli_overrides,
        "samples": results.samples,
        "num_params": results.num_params,
        "mean_wall_s": results.wall,
        "claims": [
            {
                "claim": e.claim.text,
                "journal": e.claim.journal,
                "verdict": e.verdict,
                "test": e.test,
                "p": e.p_value,
                "difference": e.difference,
                "ci": list(e.ci),
                "cohen_d": e.cohen_d,
                "sentence": e.sentence,
            }
            for e in results.evaluations
        ],
        "runs": [{"variant": v, "seed": s, "run_id": r.info.run_id} for v, s, r in results.runs],
    }


def write_combined_report(
    plans: Sequence[StudyPlan], clients: Mapping[str, Any], path: str | Path, command: str | None = None
) -> Path:
    """One Markdown document over several studies: per part, the journal's figures beside ours and
    the verdict on each claim."""
    path = Path(path)
    all_results = [(plan, collect_results(plan, clients[plan.tracking_uri])) for plan in plans]
    seeds = sorted({len(p.seeds) for p in plans})
    lines = [
        "# The journal, reproduced",
        "",
        f"Generated by `fashion-cnn study` on {_now()} from {len(plans)} study "
        f"file{'' if len(plans) == 1 else 's'} ({', '.join(f'`{p.study.path.name}`' for p in plans)}; "
        f"{' or '.join(map(str, seeds))} seeds per variant). Every number of ours is "
        "the mean over seeds with the half-width of its 95 % t-interval; the journal's are single runs.",
        "",
    ]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [_training_time(all_results), ""]
    changes = sorted({c for plan in plans for c in _budget_changes(plan, per_variant=False)})
    if changes:
        lines += [
            "## What differs from the journal's runs",
            "",
            "The command-line overrides changed these settings against the study configs (which follow "
            "the journal):",
            "",
        ]
        lines += [f"- {c}" for c in changes]
        lines += ["", "Training budget per run, as the study files configure it → as run:", ""]
        lines += _budget_table(plans)
        budget = [
            c for c in changes if any(k in c for k in ("max_epochs", "limit_train_batches", "max_steps"))
        ]
        if budget:
            lines += [
                "",
                "**Training was shortened.** The verdicts below are about this short-training "
                "regime; they say what holds after this much training, not what the journal's longer "
                "runs would show.",
                "",
            ]
    summary = [(plan, ev) for plan, res in all_results for ev in res.evaluations]
    counts = {
        v: sum(ev.verdict == v for _, ev in summary) for v in ("supported", "not supported", "inconclusive")
    }
    lines += [
        "## Verdicts at a glance",
        "",
        f"{len(summary)} claims: {counts['supported']} supported, {counts['not supported']} not "
        f"supported, {counts['inconclusive']} inconclusive.",
        "",
        "| part | claim | verdict | p (claim) |",
        "|---|---|---|---:|",
    ]
    lines += [
        f"| {plan.study.part or plan.study.name} | {ev.claim.text} | **{ev.verdict}** | {_p(ev.p_value)} |"
        for plan, ev in summary
    ]
    refuted = [(plan, ev) for plan, ev in summary if ev.verdict == "not supported"]
    lines += ["", "## Where our data contradicts the journal", ""]
    if refuted:
        lines += [
            f"- **{plan.study.title}**: the journal expected “{ev.claim.journal or ev.claim.text}”, "
            f"checked as *{ev.claim.text}*. {ev.sentence}"
            for plan, ev in refuted
        ]
    else:
        lines.append("No claim was refuted at this budget (see the inconclusive ones above).")
    for plan, results in all_results:
        study = plan.study
        lines += [
            "",
            f"## {study.title}",
            "",
            f"Study `{study.name}` (`{_rel(study.path)}`), parent run `{plan.parent_id}`, "
            f"{len(results.runs)} of {len(plan.variants) * len(plan.seeds)} runs finished.",
            "",
            f"> {study.hypothesis}",
            "",
        ]
        for group in _identical_variants(plan):
            lines += [
                f"**Note:** {', '.join(group)} resolve to the same configuration at this budget, so "
                "claims between them compare seeds only.",
                "",
            ]
        lines += _results_table(plan, results)
        lines += ["", "| variant | parameters (ours) | parameters (journal) |", "|---|---:|---:|"]
        lines += [
            f"| {vp.variant.name} | {_int(results.num_params.get(vp.variant.name))} | "
            f"{_int(vp.variant.journal.get('params'))} |"
            for vp in plan.variants
        ]
        lines += [""]
        lines += _claims_table(plan, results.evaluations)
        lines += ["", *_claim_sentences(plan, results.evaluations)]
        if study.unchecked:
            lines += ["", "Not tested here:", "", *[f"- {u}" for u in study.unchecked]]
    lines += ["", "## Decision rule", "", *_rule_lines(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _training_time(all_results: Sequence[tuple[StudyPlan, StudyResults]]) -> str:
    """'66 runs: 33 trained (12 min 10 s of run time), 33 copies of identical runs.'"""
    durations: dict[str, float] = {}
    copies = 0
    for _, results in all_results:
        for _, _, run in results.runs:
            origin = run.data.tags.get(TAG_REUSED)
            copies += origin is not None
            if run.info.end_time:
                durations[origin or run.info.run_id] = (run.info.end_time - run.info.start_time) / 1000.0
    total = sum(len(r.runs) for _, r in all_results)
    return (
        f"{total} runs: {total - copies} trained ({_duration(sum(durations.values()))} of run time, "
        f"MLflow start to end), {copies} reused from an identical run of another study (same resolved "
        "config and seed)."
    )


# Fashion-MNIST's training split; the datamodule holds out data.val_size of it for validation.
_TRAIN_IMAGES = 60_000


def _images_per_run(resolved: Mapping[str, Any]) -> tuple[Any, int, int, int]:
    """(epochs, training images seen, validation images per epoch, test images) of one run."""
    trainer, data = resolved.get("trainer") or {}, resolved.get("data") or {}
    batch, val = int(data.get("batch_size") or 64), int(data.get("val_size") or 0)
    eval_batch = int(data.get("eval_batch_size") or max(batch, 256))

    def count(limit: Any, total: int, size: int) -> int:
        batches = math.ceil(total / size)
        if limit is None:
            return total
        if isinstance(limit, float) and limit <= 1.0:
            return min(total, int(batches * limit) * size)
        return min(total, int(limit) * size)

    epochs = trainer.get("max_epochs")
    per_epoch = count(trainer.get("limit_train_batches"), _TRAIN_IMAGES - val, batch)
    return (
        epochs,
        per_epoch * int(epochs or 1),
        count(trainer.get("limit_val_batches"), val, eval_batch),
        count(trainer.get("limit_test_batches"), 10_000, eval_batch),
    )


def _budget_table(plans: Sequence[StudyPlan]) -> list[str]:
    """Per study and budget: epochs and images as the study files configure them and as run."""
    lines = [
        "| study | variants | epochs (configured → run) | training images seen per run | "
        "validation images per epoch | test images |",
        "|---|---|---|---|---|---|",
    ]
    for plan in plans:
        groups: dict[tuple[Any, ...], list[str]] = {}
        for vp in plan.variants:
            before = _images_per_run(vp.as_configured or vp.resolved)
            after = _images_per_run(vp.resolved)
            groups.setdefault((before, after), []).append(vp.variant.name)
        for (before, after), names in groups.items():
            cells = [f"{b:,} → {a:,}" for b, a in zip(before[1:], after[1:], strict=True)]
            lines.append(
                f"| {plan.study.name} | {', '.join(names)} | {before[0]} → {after[0]} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        f"(Images counted from Fashion-MNIST's {_TRAIN_IMAGES:,} training images less data.val_size, "
        "the 10,000 test images and the batch limits; each limited loader takes its first batches.)",
    ]
    return lines


def _int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _rel(path: Path | None) -> str:
    """A path relative to the working directory, else from its ``configs`` folder on."""
    if path is None:
        return "–"
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        parts = path.parts
        return str(Path(*parts[parts.index("configs") :])) if "configs" in parts else str(path)


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------------------------
# Command line

_OPTIONS_WITH_VALUE = ("--seeds", "--output", "--experiment", "--combined-report")
_FLAGS = ("--dry-run", "--report-only", "--no-reuse", "-h", "--help")


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line, like the rest of the CLI, instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise StudyError(f"{message}; see `fashion-cnn study --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fashion-cnn study",
        allow_abbrev=False,
        description="Run every variant × seed of one or more studies as MLflow child runs (skipping "
        "finished ones) and write a report judging the study's expected outcomes. Further "
        "--key value / --key=value overrides (e.g. --trainer.max_epochs 1) apply to every run.",
    )
    parser.add_argument("studies", nargs="+", help="Study YAML files (schema: docs/studies.md).")
    parser.add_argument("--seeds", help="Seed count (5 -> 0..4) or list (0,1,7); default: the study's.")
    parser.add_argument(
        "--output",
        help="Report folder (default studies/<name>; with several studies, each goes to OUTPUT/<name>).",
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})."
    )
    parser.add_argument("--combined-report", help="Also write one Markdown document over all studies.")
    parser.add_argument("--dry-run", action="store_true", help="Show the plan; run nothing.")
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="Train every run even if another study finished one with the same config and seed.",
    )
    parser.add_argument("--report-only", action="store_true", help="Report from finished runs; run nothing.")
    return parser


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate the study's own options and files from per-run overrides."""
    own, rest = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if name in _OPTIONS_WITH_VALUE:
            own.append(token)
            if "=" not in token and i + 1 < len(argv):
                own.append(argv[i + 1])
                i += 1
        elif name in _FLAGS or not token.startswith("-"):
            own.append(token)
        else:
            rest.append(token)
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                rest.append(argv[i + 1])
                i += 1
        i += 1
    return own, rest


def study_main(argv: Sequence[str]) -> int:
    """``fashion-cnn study ...``: returns the exit status (0 done, 2 user error, 130 interrupted)."""
    argv = list(argv)
    own, rest = _split_argv(argv)
    parser = _parser()
    try:
        args = parser.parse_args(own)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except StudyError as exc:
        sys.stderr.write(f"fashion-cnn: error: {exc}\n")
        return 2
    from mlflow.exceptions import MlflowException

    from fashion_cnn.cli import UserError
    from fashion_cnn.data import DataError

    def progress(line: str) -> None:
        sys.stderr.write(f"study: {line}\n")
        sys.stderr.flush()

    try:
        overrides = split_overrides(rest)
        seeds = parse_seeds(args.seeds, "--seeds") if args.seeds is not None else None
        run_studies(
            args.studies,
            overrides=overrides,
            seeds=seeds,
            output=args.output,
            experiment=args.experiment,
            dry_run=args.dry_run,
            reuse=not args.no_reuse,
            report_only=args.report_only,
            combined_report=args.combined_report,
            command=shlex.join(["fashion-cnn", "study", *argv]),
            progress=progress,
        )
    except StudyInterrupted as exc:
        sys.stderr.write(f"fashion-cnn: {exc}\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("fashion-cnn: study interrupted; rerun the same command to continue\n")
        return 130
    except (StudyError, UserError, DataError, FileNotFoundError, PermissionError) as exc:
        sys.stderr.write(f"fashion-cnn: error: {exc}\n")
        return 2
    except MlflowException as exc:
        sys.stderr.write(f"fashion-cnn: error: MLflow tracking failed: {exc.message.splitlines()[0]}\n")
        return 2
    except ValueError as exc:  # bad values the model or data code rejected at run time
        sys.stderr.write(f"fashion-cnn: error: {exc}\n")
        return 2
    return 0
