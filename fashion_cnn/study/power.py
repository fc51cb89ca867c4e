"""What a claim's seeds can and cannot tell (power, seeds needed, equivalence), and how reports show it.

Every claim is reduced to one *decisive quantity* ``g`` in the metric's units, signed so that
``g > 0`` favours the claim and ``g = 0`` is the threshold its test checks (``s`` = +1 if higher is
better, −1 if lower):

- ``A beats B on M by at least d``: ``g = s·(A − B) − d``; Welch's statistics (one-sample against a number).
- ``A is within d of B``: ``g = d − |A − B|``, the distance to the nearer edge of the margin.
- ``A is the best (worst) of all variants``: ``g`` of ``A beats R`` for the closest rival ``R``
  (the comparison that binds the intersection-union test).
- ``A is between L and U``: ``g = min(A − L, U − A)``, one-sample.

From it, with statsmodels' power analysis (one-sided at the study's α, power 0.8): the *detectable
difference* (smallest true ``|g|`` the current seeds find), the *seeds needed* per variant to
decide at the observed ``|g|``, and the *equivalence bound*: the largest ``|A − B|`` the two-sided
(1 − 2α) interval allows (the one TOST uses), stated when it is below the metric's practical margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

from fashion_cnn.figures import ClaimInterval
from fashion_cnn.study.claims import Claim, Metric
from fashion_cnn.study.spec import DEFAULT_MARGIN, Study
from fashion_cnn.study.verdicts import (
    ALPHA,
    CI_LEVEL,
    Evaluation,
    finite,
    fmt,
    fmt_interval,
    fmt_p,
    mean_sd,
    welch,
)

POWER = 0.8
DEFAULT_MAX_SEEDS = 20  # the largest seed count a report considers when no maximum is given


@dataclass(frozen=True)
class Decisive:
    """A claim's decisive quantity ``g`` (> 0 favours the claim) and what its uncertainty rests on:
    its standard error and degrees of freedom (those of ``difference`` = A − B, nan for between),
    the seeds' standard deviation (root mean square of the two), ``n`` seeds of A and
    ``ratio`` = seeds of B / seeds of A."""

    g: float
    se: float
    df: float
    sd: float
    n: int
    ratio: float
    one_sample: bool
    difference: float
    rival: str  # what A is compared with: a variant, a number or "[L, U]"

    def interval(self, level: float) -> tuple[float, float]:
        half = _t(level, self.df) * self.se
        return self.g - half, self.g + half


def decisive(claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric) -> Decisive | None:
    """``None`` when a variant has fewer than two finite values (no t statistic)."""

    a = finite(samples.get(claim.a, []))
    if len(a) < 2:
        return None
    if claim.kind == "between":
        assert claim.low is not None and claim.high is not None
        mean, sd = mean_sd(a)
        g = min(mean - claim.low, claim.high - mean)
        rival = fmt_interval(claim.low, claim.high)
        return Decisive(g, sd / math.sqrt(len(a)), len(a) - 1.0, sd, len(a), 1.0, True, math.nan, rival)
    b: list[float] | float
    if claim.kind in ("best", "worst"):
        sign, margin = (metric.sign if claim.kind == "best" else -metric.sign), 0.0
        rivals = {k: finite(samples[k]) for k in samples if k != claim.a}
        if not rivals or min(len(v) for v in rivals.values()) < 2:
            return None
        rival = max(rivals, key=lambda r: sign * mean_sd(rivals[r])[0])  # the closest from the claimed side
        b = rivals[rival]
    else:
        sign, margin = metric.sign, claim.margin
        b, rival = (
            (claim.b, fmt(claim.b))
            if isinstance(claim.b, float)
            else (finite(samples.get(str(claim.b), [])), str(claim.b))
        )
        if not isinstance(b, float) and len(b) < 2:
            return None
    diff = welch(a, b)
    if isinstance(b, float):
        sd, ratio = mean_sd(a)[1], 1.0
    else:
        sd, ratio = math.sqrt((mean_sd(a)[1] ** 2 + mean_sd(b)[1] ** 2) / 2.0), len(b) / len(a)
    g = claim.margin - abs(diff.diff) if claim.kind == "within" else sign * diff.diff - margin
    return Decisive(g, diff.se, diff.df, sd, len(a), ratio, isinstance(b, float), diff.diff, rival)


@lru_cache(maxsize=256)
def detectable_effect(
    n: int, alpha: float = ALPHA, power: float = POWER, one_sample: bool = False, ratio: float = 1.0
) -> float:
    """Smallest standardised effect (in standard deviations) that a one-sided t-test at ``alpha``
    finds with ``power``, with ``n`` seeds (per variant for two samples; ``ratio`` = n_B / n_A)."""
    if n < 2:
        return math.inf
    if one_sample:
        return float(TTestPower().solve_power(None, n, alpha, power, alternative="larger"))
    return float(TTestIndPower().solve_power(None, n, alpha, power, ratio, alternative="larger"))


def _power(effect: float, n: float, alpha: float, one_sample: bool) -> float:
    if one_sample:
        return float(TTestPower().power(effect, n, alpha, alternative="larger"))
    return float(TTestIndPower().power(effect, n, alpha, ratio=1.0, alternative="larger"))


@lru_cache(maxsize=1024)
def seeds_for_effect(
    effect: float,
    alpha: float = ALPHA,
    power: float = POWER,
    one_sample: bool = False,
    max_seeds: int = DEFAULT_MAX_SEEDS,
) -> int | None:
    """Seeds per variant at which a one-sided t-test at ``alpha`` finds a true standardised
    ``effect`` with ``power``; ``None`` if that is more than ``max_seeds`` (or the effect is 0)."""
    effect = abs(effect)
    if not effect > 0 or not math.isfinite(effect):
        return 2 if effect == math.inf else None
    if _power(effect, 2, alpha, one_sample) >= power:
        return 2
    if _power(effect, max_seeds, alpha, one_sample) < power:
        return None
    # power grows with n: bisect on the integers 2 < n <= max_seeds (no solver to fail to converge)
    low, high = 2, max_seeds
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _power(effect, mid, alpha, one_sample) >= power else (mid, high)
    return high


@dataclass(frozen=True)
class Outlook:
    """What a claim's seeds can tell: ``g`` with its (1 − α) interval, the ``detectable`` ``|g|``
    (metric units), seeds of A now and ``seeds_needed`` to decide at the observed ``|g|`` (``None``:
    more than ``max_seeds``), the ``equivalence`` bound (nan for between) with its ``statement``
    when below ``margin``, and where ``g`` lies when A equals its rival (``no_difference``, for the
    figure)."""

    claim: Claim
    g: float
    g_ci: tuple[float, float]
    detectable: float
    seeds: int
    seeds_needed: int | None
    max_seeds: int
    margin: float
    equivalence: float
    statement: str
    no_difference: float
    rival: str

    @property
    def needed_text(self) -> str:
        """'8', or 'more than 20'."""
        return str(self.seeds_needed) if self.seeds_needed is not None else f"more than {self.max_seeds}"


def outlook(
    claim: Claim,
    samples: Mapping[str, Sequence[float]],
    metric: Metric,
    margin: float = DEFAULT_MARGIN,
    alpha: float = ALPHA,
    max_seeds: int = DEFAULT_MAX_SEEDS,
    power: float = POWER,
) -> Outlook | None:
    """``None`` if the claim cannot be tested (a variant with fewer than two seeds)."""
    q = decisive(claim, samples, metric)
    if q is None:
        return None
    effect = detectable_effect(q.n, alpha, power, q.one_sample, round(q.ratio, 6))
    if q.sd > 0:
        needed = seeds_for_effect(round(q.g / q.sd, 9), alpha, power, q.one_sample, max_seeds)
    else:
        needed = q.n if q.g != 0 else None
    equivalence, statement = math.nan, ""
    if claim.kind != "between":
        equivalence = abs(q.difference) + _t(1 - 2 * alpha, q.df) * q.se
        if equivalence < margin:
            bound = _round_up(equivalence)
            closest = " (the closest rival)" if claim.kind in ("best", "worst") else ""
            statement = (
                f"{claim.a}'s mean {metric.name} is within {bound} of {q.rival}"
                if isinstance(claim.b, float)
                else f"{claim.a} and {q.rival}{closest} differ by less than {bound} {metric.name}"
            )
    no_difference = {"beats": -claim.margin, "within": claim.margin, "best": 0.0, "worst": 0.0}
    return Outlook(
        claim,
        q.g,
        _g_interval(claim, q, CI_LEVEL),
        effect * q.sd if q.sd > 0 else 0.0,
        q.n,
        needed,
        max_seeds,
        margin,
        equivalence,
        statement,
        no_difference.get(claim.kind, math.nan),
        q.rival,
    )


def _g_interval(claim: Claim, q: Decisive, level: float) -> tuple[float, float]:
    if claim.kind != "within":
        return q.interval(level)
    # g = d − |A − B|: bound |A − B| over the difference's interval.
    half = _t(level, q.df) * q.se
    lo, hi = q.difference - half, q.difference + half
    smallest = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    return claim.margin - max(abs(lo), abs(hi)), claim.margin - smallest


def _t(level: float, df: float) -> float:
    if not math.isfinite(df) or df <= 0:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2.0, df))


def _round_up(value: float) -> str:
    """A bound for a sentence, rounded up so it stays a bound: 0.01132 -> '0.012'."""
    if value <= 0:
        return "0"
    digits = max(3, 1 - math.floor(math.log10(value)))
    step = 10.0**-digits
    return f"{math.ceil(value / step - 1e-9) * step:.{digits}f}"


def fdr_adjusted(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (statsmodels ``multipletests``); nan stays nan."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    adjusted = [math.nan] * len(p_values)
    if tested:
        _, corrected, _, _ = multipletests([p_values[i] for i in tested], alpha=alpha, method="fdr_bh")
        for i, value in zip(tested, corrected, strict=True):
            adjusted[i] = float(value)
    return adjusted


def first_seeds(samples: Mapping[str, Sequence[float]], n: int) -> dict[str, list[float]]:
    """Each variant's first ``n`` values: what an adaptive look at ``n`` seeds judges."""
    return {v: list(values[:n]) for v, values in samples.items()}


def outlooks(
    study: Study,
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    evaluations: Sequence[Evaluation],
    max_seeds: int | None = None,
    alpha: float = ALPHA,
    seeds: Sequence[int | None] | None = None,
) -> tuple[list[Outlook | None], list[float]]:
    """Each claim's outlook (``None``: not testable) and its Benjamini–Hochberg adjusted p-value.

    ``seeds``: per claim, judge it on each variant's first n seeds (None: all), as an adaptive
    study's verdict was made at a look while later blocks added seeds for other claims.
    """
    margins = study.margins or {}
    looks = [
        outlook(
            ev.claim,
            first_seeds(samples[ev.claim.metric], n) if n is not None else samples[ev.claim.metric],
            study.metric(ev.claim.metric),
            margins.get(ev.claim.metric, DEFAULT_MARGIN),
            alpha,
            max_seeds or DEFAULT_MAX_SEEDS,
        )
        for ev, n in zip(evaluations, seeds or [None] * len(evaluations), strict=True)
    ]
    return looks, fdr_adjusted([ev.p_value for ev in evaluations], alpha)


def document_outlooks(
    data: Mapping[str, Any], max_seeds: int | None = None
) -> list[tuple[Study, list[Evaluation], list[Outlook | None], list[float]]]:
    """Judge a combined report's claims again from its ``.json`` (per variant per seed values) and
    the packaged study files (for the claims' metrics and margins), without a tracking store.

    Raises:
        StudyError: A study of the document is not a packaged study file.
    """
    from fashion_cnn.study.spec import load_study
    from fashion_cnn.study.verdicts import evaluate_claim

    out = []
    for entry in data["studies"]:
        study = load_study(f"studies/{entry['study']}")
        samples = entry["samples"]
        evaluations = [evaluate_claim(c, samples[c.metric], study.metric(c.metric)) for c in study.claims]
        out.append((study, evaluations, *outlooks(study, samples, evaluations, max_seeds)))
    return out


# --------------------------------------------------------------------------------------------
# As the reports show it: table, false-discovery line, results.json fields, rows of the claims figure


def outlook_table(
    evaluations: Sequence[Evaluation], looks: Sequence[Outlook | None], p_fdr: Sequence[float]
) -> list[str]:
    lines = [
        f"| # | claim | verdict | p (BH-adjusted) | difference in the claim's favour | detectable now "
        f"(power {POWER:g}) | seeds per variant to decide at the observed difference | bounded |",
        "|---|---|---|---:|---|---:|---|---|",
    ]
    for i, (ev, o) in enumerate(zip(evaluations, looks, strict=True), 1):
        start = f"| {i} | {ev.claim.text} | **{ev.verdict}** |"
        if o is None:
            lines.append(f"{start} – | – | – | needs 2 seeds per variant | – |")
            continue
        p_bh = p_fdr[i - 1] if i - 1 < len(p_fdr) else math.nan
        bounded = o.statement or (
            "–" if math.isnan(o.equivalence) else f"no (bound {fmt(o.equivalence)} > margin {fmt(o.margin)})"
        )
        needed = f"decided at {o.seeds}" if ev.verdict != "inconclusive" else o.needed_text
        lines.append(
            f"{start} {fmt_p(p_bh)} | {fmt(o.g, sign=True)} {fmt_interval(*o.g_ci, sign=True)} | "
            f"±{fmt(o.detectable)} (n = {o.seeds}) | {needed} | {bounded} |"
        )
    return lines


def fdr_line(evaluations: Sequence[Evaluation], p_fdr: Sequence[float], alpha: float = ALPHA) -> str:
    """'Of the 9 supported verdicts, 7 survive a Benjamini–Hochberg correction across the 27 claims ...'"""
    summary = fdr_summary(evaluations, p_fdr, alpha)
    if not summary["supported"]:
        return (
            f"None of the {summary['tested']} tested claims is supported, so a Benjamini–Hochberg "
            f"correction (false-discovery rate {alpha:g}) has no verdict to withdraw."
        )
    return (
        f"Of the {summary['supported']} supported verdict{'' if summary['supported'] == 1 else 's'}, "
        f"{summary['surviving']} survive{'s' if summary['surviving'] == 1 else ''} a Benjamini–Hochberg "
        f"correction across the {summary['tested']} tested claims (false-discovery rate {alpha:g}; "
        "p (BH-adjusted) in the table)."
    )


def fdr_summary(
    evaluations: Sequence[Evaluation], p_fdr: Sequence[float], alpha: float = ALPHA
) -> dict[str, Any]:
    supported = [i for i, ev in enumerate(evaluations) if ev.verdict == "supported"]
    surviving = [i for i in supported if i < len(p_fdr) and math.isfinite(p_fdr[i]) and p_fdr[i] < alpha]
    return {
        "method": "Benjamini-Hochberg",
        "alpha": alpha,
        "tested": sum(math.isfinite(p) for p in p_fdr),
        "supported": len(supported),
        "surviving": len(surviving),
    }


def outlook_json(o: Outlook | None, p_fdr: float) -> dict[str, Any]:
    """The fields a claim has in results.json beside its verdict."""
    if o is None:
        return {"p_fdr": p_fdr}
    return {
        "p_fdr": p_fdr,
        "decisive": o.g,
        "decisive_ci": list(o.g_ci),
        "detectable": o.detectable,
        "seeds": o.seeds,
        "seeds_needed": o.seeds_needed,
        "max_seeds": o.max_seeds,
        "margin": o.margin,
        "equivalence_bound": o.equivalence,
        "equivalence": o.statement,
    }


def claim_rows(
    evaluations: Sequence[Evaluation], looks: Sequence[Outlook | None], prefix: str = ""
) -> list[ClaimInterval]:
    """The rows of :func:`fashion_cnn.figures.plot_claim_intervals`, one per testable claim."""
    rows = []
    for i, (ev, o) in enumerate(zip(evaluations, looks, strict=False), 1):
        if o is None:
            continue
        label = ev.claim.text if len(ev.claim.text) <= 58 else ev.claim.text[:57] + "…"
        margin = (o.no_difference - o.margin, o.no_difference + o.margin)
        rows.append(ClaimInterval(f"{prefix}{i}. {label}", ev.verdict, o.g, *o.g_ci, o.detectable, *margin))
    return rows


def outlook_rule_lines(study: Study | None = None, max_seeds: int | None = None) -> list[str]:
    """How the table 'What these seeds can and cannot tell' is computed (for 'Decision rule')."""
    margins = (
        ", ".join(f"{k} {fmt(v)}" for k, v in study.margins.items())
        if study is not None and study.margins
        else f"{DEFAULT_MARGIN:g} for every metric"
    )
    return [
        "",
        "What the seeds can tell (statsmodels power analysis, one-sided t-tests at α, power "
        f"{POWER:g}; `fashion_cnn/study/power.py`):",
        "",
        "- *difference in the claim's favour*: A − B in the claimed direction less the claim's margin "
        "(within: the margin less |A − B|; between: the distance to the nearer bound; best/worst: "
        "against the closest rival), with its 95 % CI; positive favours the claim.",
        "- *detectable now*: the smallest true difference these seeds find with power "
        f"{POWER:g}; a claim whose true difference is smaller stays inconclusive most of the time.",
        "- *seeds to decide*: per variant, for power "
        f'{POWER:g} if the true difference is the observed one; "more than N" beyond the maximum '
        f"(`--max_seeds`, else {max_seeds or DEFAULT_MAX_SEEDS}).",
        "- *bounded*: where the (1 − 2α) interval of A − B (the one an equivalence test uses) lies "
        f"inside ± the practical margin ({margins}; `margins:` in the study file), the difference is "
        "stated as smaller than its bound.",
        "- *p (BH-adjusted)*: Benjamini–Hochberg over the study's claims (statsmodels "
        "`multipletests`); a supported verdict survives the false-discovery correction when it is "
        "below α.",
    ]
