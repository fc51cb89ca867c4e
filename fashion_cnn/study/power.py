"""What a claim's seeds can and cannot tell: detectable difference, seeds needed, equivalence bounds.

Every claim is reduced to one *decisive quantity* ``g`` in the metric's units, signed so that
``g > 0`` favours the claim and ``g = 0`` is the threshold its test checks (``g < 0`` points to
"not supported"):

- ``A beats B on M by at least d``: ``g = s·(A − B) − d`` (``s`` = +1 if higher is better, −1 if
  lower), Welch's two-sample statistics; ``B`` a number: one-sample.
- ``A is within d of B``: ``g = d − |A − B|``, the distance to the nearer edge of the margin.
- ``A is the best (worst) of all variants``: ``g`` of ``A beats R`` for the closest rival ``R``
  (the comparison that binds the intersection-union test).
- ``A is between L and U``: ``g = min(A − L, U − A)``, one-sample.

From it, with statsmodels' power analysis (``TTestIndPower`` two-sample, ``TTestPower`` one-sample,
one-sided at the study's α, power 0.8):

- the *detectable difference*: the smallest true ``|g|`` the current seeds find with power 0.8,
  in the metric's units (standardised effect × the seeds' standard deviation);
- the *seeds needed*: per variant, to decide the claim with power 0.8 if the true ``|g|`` is the
  observed one; ``None`` when that is more than the maximum;
- the *equivalence bound*: for claims about a difference, the largest ``|A − B|`` the two-sided
  (1 − 2α) interval allows (the interval TOST uses); when it is below the metric's practical
  margin the report states "A and B differ by less than <bound> <metric>".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

from fashion_cnn.study.claims import Claim, Metric
from fashion_cnn.study.spec import DEFAULT_MARGIN
from fashion_cnn.study.verdicts import ALPHA, fmt, mean_sd, welch

POWER = 0.8
DEFAULT_MAX_SEEDS = 20  # the largest seed count a report considers when no maximum is given


@dataclass(frozen=True)
class Decisive:
    """A claim's decisive quantity ``g`` (module docstring) and what its uncertainty rests on.

    Attributes:
        g: The estimate, in the metric's units (> 0 favours the claim).
        se: Its standard error (Welch's, or s/√n against a number).
        df: Degrees of freedom of its t statistic.
        sd: The seeds' standard deviation that standardises it (root mean square of the two).
        n: Seeds of ``A`` (the first sample); ``ratio`` = seeds of B / seeds of A.
        ratio: As above (1 for one-sample claims).
        one_sample: Tested against a number (``B`` a number, or ``between``).
        difference: ``A − B`` (or ``A − rival``), nan for ``between``.
        diff_se: Standard error of ``difference``, to bound it.
        rival: What ``A`` is compared with (a variant, a number or ``[L, U]``).
    """

    g: float
    se: float
    df: float
    sd: float
    n: int
    ratio: float
    one_sample: bool
    difference: float
    diff_se: float
    diff_df: float
    rival: str

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t interval of ``g`` at ``level`` (for ``within``, bounded through ``|A − B|``)."""
        half = _t(level, self.df) * self.se
        return self.g - half, self.g + half


def decisive(claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric) -> Decisive | None:
    """The decisive quantity of ``claim`` on per-variant samples of ``metric``, or ``None`` when a
    variant has fewer than two finite values (no t statistic)."""

    def values(name: str) -> list[float]:
        return [v for v in samples.get(name, []) if math.isfinite(v)]

    a = values(claim.a)
    if len(a) < 2:
        return None
    s = metric.sign
    if claim.kind == "between":
        assert claim.low is not None and claim.high is not None
        mean, sd = mean_sd(a)
        se = sd / math.sqrt(len(a))
        g = min(mean - claim.low, claim.high - mean)
        rival = f"[{fmt(claim.low)}, {fmt(claim.high)}]"
        return Decisive(g, se, len(a) - 1.0, sd, len(a), 1.0, True, math.nan, se, len(a) - 1.0, rival)
    if claim.kind in ("best", "worst"):
        sign = s if claim.kind == "best" else -s
        rivals = {k: values(k) for k in samples if k != claim.a}
        if not rivals or min(len(v) for v in rivals.values()) < 2:
            return None
        rival = max(rivals, key=lambda r: sign * mean_sd(rivals[r])[0])  # the closest from the claimed side
        b: list[float] | float = rivals[rival]
        margin = 0.0
    else:
        sign, margin = s, claim.margin
        if isinstance(claim.b, float):
            b, rival = claim.b, fmt(claim.b)
        else:
            b, rival = values(str(claim.b)), str(claim.b)
            if len(b) < 2:
                return None
    diff = welch(a, b)
    one_sample = isinstance(b, float)
    if one_sample:
        sd = mean_sd(a)[1]
        ratio = 1.0
    else:
        assert not isinstance(b, float)
        sd = math.sqrt((mean_sd(a)[1] ** 2 + mean_sd(b)[1] ** 2) / 2.0)
        ratio = len(b) / len(a)
    g = claim.margin - abs(diff.diff) if claim.kind == "within" else sign * diff.diff - margin
    return Decisive(g, diff.se, diff.df, sd, len(a), ratio, one_sample, diff.diff, diff.se, diff.df, rival)


@lru_cache(maxsize=256)
def detectable_effect(
    n: int, alpha: float = ALPHA, power: float = POWER, one_sample: bool = False, ratio: float = 1.0
) -> float:
    """Smallest standardised effect (in standard deviations) that a one-sided t-test at ``alpha``
    finds with ``power``, with ``n`` seeds (per variant for two samples; ``ratio`` = n_B / n_A)."""
    if n < 2:
        return math.inf
    if one_sample:
        value = TTestPower().solve_power(
            effect_size=None, nobs=n, alpha=alpha, power=power, alternative="larger"
        )
    else:
        value = TTestIndPower().solve_power(
            effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=ratio, alternative="larger"
        )
    return float(value)


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
        if _power(effect, mid, alpha, one_sample) >= power:
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class Outlook:
    """What a claim's seeds can and cannot tell (module docstring).

    Attributes:
        g: The decisive quantity (> 0 favours the claim), with its (1 − α) interval ``g_ci``.
        detectable: Smallest true ``|g|`` these seeds detect with power 0.8, metric units.
        seeds: Seeds per variant now (of ``A``).
        seeds_needed: Per variant, to decide at the observed ``|g|``; ``None``: more than
            ``max_seeds``.
        max_seeds: The maximum considered.
        margin: The metric's practical margin.
        equivalence: The largest ``|A − B|`` the (1 − 2α) interval allows (nan for ``between``).
        statement: The equivalence sentence when ``equivalence`` < ``margin``, else "".
        no_difference: Where ``g`` lies when A equals its rival (for the figure), nan for ``between``.
    """

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
    """The outlook of ``claim`` on per-variant samples of ``metric``; ``None`` if it cannot be
    tested (a variant with fewer than two seeds)."""
    q = decisive(claim, samples, metric)
    if q is None:
        return None
    effect = detectable_effect(q.n, alpha, power, q.one_sample, round(q.ratio, 6))
    detectable = effect * q.sd if q.sd > 0 else 0.0
    if q.sd > 0:
        needed = seeds_for_effect(round(q.g / q.sd, 9), alpha, power, q.one_sample, max_seeds)
    else:
        needed = q.n if q.g != 0 else None
    equivalence, statement = math.nan, ""
    if claim.kind != "between":
        half = _t(1 - 2 * alpha, q.diff_df) * q.diff_se
        equivalence = abs(q.difference) + half
        if equivalence < margin:
            bound = _round_up(equivalence)
            if claim.kind in ("best", "worst"):
                statement = (
                    f"{claim.a} and {q.rival} (the closest rival) differ by less than {bound} {metric.name}"
                )
            elif isinstance(claim.b, float):
                statement = f"{claim.a}'s mean {metric.name} is within {bound} of {q.rival}"
            else:
                statement = f"{claim.a} and {q.rival} differ by less than {bound} {metric.name}"
    no_difference = {
        "beats": -claim.margin,
        "within": claim.margin,
        "best": 0.0,
        "worst": 0.0,
    }.get(claim.kind, math.nan)
    return Outlook(
        claim=claim,
        g=q.g,
        g_ci=_g_interval(claim, q, 1 - alpha),
        detectable=detectable,
        seeds=q.n,
        seeds_needed=needed,
        max_seeds=max_seeds,
        margin=margin,
        equivalence=equivalence,
        statement=statement,
        no_difference=no_difference,
        rival=q.rival,
    )


def _g_interval(claim: Claim, q: Decisive, level: float) -> tuple[float, float]:
    if claim.kind != "within":
        return q.interval(level)
    # g = d − |A − B|: bound |A − B| over the difference's interval.
    half = _t(level, q.diff_df) * q.diff_se
    lo, hi = q.difference - half, q.difference + half
    largest = max(abs(lo), abs(hi))
    smallest = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
    return claim.margin - largest, claim.margin - smallest


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

    finite = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    adjusted = [math.nan] * len(p_values)
    if finite:
        _, corrected, _, _ = multipletests([p_values[i] for i in finite], alpha=alpha, method="fdr_bh")
        for i, value in zip(finite, corrected, strict=True):
            adjusted[i] = float(value)
    return adjusted
