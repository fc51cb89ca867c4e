"""Verdicts on claims: the t statistics, the decision rule and the sentences that report them.

The decision rule is the one :func:`rule_lines` prints in every report; each claim is tested on its
own at ``alpha``. The p-values and intervals are those of ``scipy.stats`` (``ttest_ind(equal_var=
False)``, ``ttest_1samp``, ``t``), computed from the same Welch statistic with ``scipy.special.stdtr``
(the t CDF) so that the sequential simulations run thousands of them per second; the tests check
them against ``scipy.stats`` and published reference values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import special

from fashion_cnn.study.claims import Claim, Metric

ALPHA = 0.05
# The interval shown beside each difference, whatever level the test uses: a study's own alpha or
# an adaptive look's nominal level decides the verdict, but the reports label this interval 95 %.
CI_LEVEL = 0.95
# The test of a claim that could not be tested: a variant has fewer than 2 finished seeds.
NOT_TESTED = "none (fewer than 2 finished seeds)"

Verdict = Literal["supported", "not supported", "inconclusive"]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; nan for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t-based confidence interval over ``n`` seeds."""

    mean: float
    low: float
    high: float
    sd: float
    n: int

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean ± t_{(1+level)/2, n-1} · s/√n; the interval is nan for fewer than two values."""
    mean, sd = mean_sd(values)
    n = len(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, sd, n)
    half = float(special.stdtrit(n - 1, 0.5 + level / 2.0)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


@dataclass(frozen=True)
class Difference:
    """Mean of ``a`` minus the reference (the mean of ``b``, or a constant), with Welch's
    standard error and Welch–Satterthwaite degrees of freedom (n_a - 1 against a constant)."""

    diff: float
    se: float
    df: float
    mean_a: float
    mean_b: float
    cohen_d: float

    def _p(self, margin: float, greater: bool) -> float:
        if math.isnan(self.df):
            return math.nan
        gap = self.diff - margin
        if self.se == 0.0:  # no spread at all (scipy returns nan): the sign of the gap decides
            return 0.5 if gap == 0 else (0.0 if (gap > 0) == greater else 1.0)
        # The t statistic of ttest_ind(a - margin, b, equal_var=False) (ttest_1samp against a number).
        return float(special.stdtr(self.df, -gap / self.se if greater else gap / self.se))

    def p_greater(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: diff > margin (Welch's t-test against H0: diff <= margin)."""
        return self._p(margin, True)

    def p_less(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: diff < margin."""
        return self._p(margin, False)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        if math.isnan(self.df):
            return math.nan, math.nan
        half = float(special.stdtrit(self.df, 0.5 + level / 2.0)) * self.se if self.se > 0 else 0.0
        return self.diff - half, self.diff + half


def welch(a: Sequence[float], b: Sequence[float] | float) -> Difference:
    """Welch's two-sample comparison of ``a`` with ``b``, or a one-sample one if ``b`` is a number.

    Cohen's d uses the root mean square of the two standard deviations (or ``a``'s alone against a
    constant); it is ±inf when the spread is zero and the means differ.
    """
    mean_a, sd_a = mean_sd([float(x) for x in a])
    n_a = len(a)
    if isinstance(b, (int, float)):
        mean_b, diff = float(b), mean_a - float(b)
        if n_a < 2:
            return Difference(diff, math.nan, math.nan, mean_a, mean_b, math.nan)
        return Difference(diff, sd_a / math.sqrt(n_a), n_a - 1.0, mean_a, mean_b, _d(diff, sd_a))
    mean_b, sd_b = mean_sd([float(x) for x in b])
    n_b = len(b)
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        return Difference(diff, math.nan, math.nan, mean_a, mean_b, math.nan)
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    # Welch–Satterthwaite; with no spread at all the pooled count stands in (p is then exact anyway).
    df = float(n_a + n_b - 2) if se == 0.0 else (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return Difference(diff, se, df, mean_a, mean_b, _d(diff, math.sqrt((sd_a**2 + sd_b**2) / 2.0)))


def _d(diff: float, sd: float) -> float:
    if sd > 0:
        return diff / sd
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


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
    """Judge ``claim`` on per-variant samples (one value per seed) of ``metric`` by :func:`rule_lines`;
    p is the p-value of the claimed direction."""
    a = finite(samples.get(claim.a, []))
    if claim.kind == "between":
        return _between(claim, a, metric.name, alpha)
    if claim.kind in ("best", "worst"):
        return _extreme(claim, samples, metric, alpha)
    one_sample = isinstance(claim.b, float)
    b: Sequence[float] | float = (
        claim.b if isinstance(claim.b, float) else finite(samples.get(str(claim.b), []))
    )
    b_label = fmt(claim.b) if isinstance(claim.b, float) else str(claim.b)
    if isinstance(b, float) or len(a) == len(b):
        n_text = f"n = {len(a)} seeds" + ("" if isinstance(b, float) else " each")
    else:
        n_text = f"n = {len(a)} and {len(b)} seeds"
    if len(a) < 2 or (not isinstance(b, float) and len(b) < 2):
        return _too_few(claim, n_text)
    diff = welch(a, b)
    lo, hi = diff.ci(CI_LEVEL)
    ci_text = fmt_interval(lo, hi, sign=True)
    d, s = claim.margin, metric.sign
    if claim.kind == "within":
        verdict, p, p_out = _inside(diff, -d, d, alpha)
        kind = "one-sample t-tests" if one_sample else "Welch t-tests"
        test = f"TOST equivalence (two one-sided {kind}, margin ±{fmt(d)})"
        tail = {
            "supported": f"both one-sided tests put the difference inside ±{fmt(d)} (TOST {peq(p)}).",
            "not supported": f"the difference lies significantly outside ±{fmt(d)} ({peq(p_out)}).",
            "inconclusive": f"these seeds cannot tell if it lies within ±{fmt(d)} (TOST {peq(p)}).",
        }[verdict]
        sentence = (
            f"{claim.a}'s mean {metric.name} ({fmt(diff.mean_a)}) differs from {b_label}"
            f"{'' if one_sample else f' ({fmt(diff.mean_b)})'} by {fmt(diff.diff, sign=True)} "
            f"(95 % CI {ci_text}, {n_text}); {tail}"
        )
        return Evaluation(claim, verdict, test, p, diff.diff, (lo, hi), diff.cohen_d, sentence, b_label)

    # beats [by at least d]: "better by more than d" in the metric's direction.
    p, p_opp = (diff.p_greater(d), diff.p_less(d)) if s > 0 else (diff.p_less(-d), diff.p_greater(-d))
    verdict = _decide(p, p_opp, alpha)
    test = ("one-sample t-test" if one_sample else "Welch's t-test") + ", one-sided"
    test += f", margin {fmt(d)}" if d else ""
    better, worse = ("higher", "lower") if s > 0 else ("lower", "higher")
    if fmt(diff.diff, sign=True) in ("+0.0000", "−0.0000"):  # not "lower than" an equal-looking mean
        relation = "the same (to four decimals) as"
    else:
        relation = f"{better if s * diff.diff > 0 else worse} than"
    where_b = b_label if one_sample else f"{b_label}'s ({fmt(diff.mean_b)})"
    if verdict == "supported":
        tail = f"one-sided {peq(p)}" + (f" for a margin above {fmt(d)}" if d else "") + "."
    elif verdict == "not supported" and d and s * diff.diff > 0:
        tail = (
            f"the margin is significantly smaller than the claimed {fmt(d)} (one-sided "
            f"{peq(p_opp)}), so the claim fails."
        )
    elif verdict == "not supported":
        tail = f"the opposite direction is significant (one-sided {peq(p_opp)}), so the claim fails."
    else:
        target = f" by at least {fmt(d)}" if d else ""
        tail = f"one-sided {peq(p)}; these seeds cannot tell whether {claim.a} is {better}{target}."
    sentence = (
        f"{claim.a}'s mean {metric.name} ({fmt(diff.mean_a)}) is {relation} {where_b}: difference "
        f"{fmt(diff.diff, sign=True)}, 95 % CI {ci_text} ({n_text}); {tail}"
    )
    return Evaluation(claim, verdict, test, p, diff.diff, (lo, hi), diff.cohen_d, sentence, b_label)


def _extreme(
    claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, alpha: float
) -> Evaluation:
    best = claim.kind == "best"
    a = finite(samples.get(claim.a, []))
    rivals = {k: finite(vs) for k, vs in samples.items() if k != claim.a}
    counts = [len(a)] + [len(v) for v in rivals.values()]
    spread = "" if min(counts) == max(counts) else f"-{max(counts)}"
    n_text = f"n = {min(counts)}{spread} seeds per variant"
    if min(counts) < 2:
        return _too_few(claim, n_text)
    s = metric.sign if best else -metric.sign  # +1: A should have the larger values
    results = {}
    for rival, values in rivals.items():
        diff = welch(a, values)
        p, p_opp = (diff.p_greater(), diff.p_less()) if s > 0 else (diff.p_less(), diff.p_greater())
        results[rival] = (diff, p, p_opp)
    k = len(rivals)
    p_max = max(r[1] for r in results.values())
    # Intersection-union: every rival beaten at alpha; refuted by any rival at alpha / k (Bonferroni).
    verdict: Verdict = "supported" if p_max < alpha else "inconclusive"
    if verdict != "supported" and min(r[2] for r in results.values()) < alpha / k:
        verdict = "not supported"
    # Report against the closest rival: the one whose mean is nearest A's from the claimed side.
    closest = max(results, key=lambda r: s * results[r][0].mean_b)
    diff = results[closest][0]
    lo, hi = diff.ci(CI_LEVEL)
    word = "best" if best else "worst"
    rank = sorted(samples, key=lambda v: -metric.sign * mean_sd(samples[v])[0]).index(claim.a) + 1
    test = (
        f"Welch's t-test, one-sided, against each of the {k} other variants "
        f"(intersection-union; Bonferroni α/{k} for the opposite direction)"
    )
    if verdict == "supported":
        tail = f"every one-sided test has p < {alpha:.3g} (largest {peq(p_max)}), so it is the {word}."
    elif verdict == "not supported":
        loser = min(results, key=lambda r: results[r][2])
        tail = (
            f"{loser} is significantly {'better' if best else 'worse'} than {claim.a} "
            f"(one-sided {peq(results[loser][2])} < {alpha:.3g}/{k}), so the claim fails."
        )
    else:
        tail = f"the weakest comparison has {peq(p_max)}; these seeds cannot tell whether it is the {word}."
    sentence = (
        f"{claim.a} ranks {rank} of {k + 1} on mean {metric.name} ({fmt(diff.mean_a)}); against "
        f"{closest} ({fmt(diff.mean_b)}) the difference is {fmt(diff.diff, sign=True)}, 95 % CI "
        f"{fmt_interval(lo, hi, sign=True)} ({n_text}); {tail}"
    )
    return Evaluation(claim, verdict, test, p_max, diff.diff, (lo, hi), diff.cohen_d, sentence, closest)


def _between(claim: Claim, a: Sequence[float], name: str, alpha: float) -> Evaluation:
    assert claim.low is not None and claim.high is not None
    n_text = f"n = {len(a)} seeds"
    if len(a) < 2:
        return _too_few(claim, n_text)
    verdict, p, p_out = _inside(welch(a, 0.0), claim.low, claim.high, alpha)
    ci = mean_ci(a, CI_LEVEL)
    bounds = fmt_interval(claim.low, claim.high)
    tail = {
        "supported": f"both bounds are cleared significantly ({peq(p)}), so it lies in {bounds}.",
        "not supported": f"it lies significantly outside {bounds} ({peq(p_out)}).",
        "inconclusive": f"these seeds cannot tell whether it lies in {bounds} ({peq(p)}).",
    }[verdict]
    numbers = f"{fmt(ci.mean)} (95 % CI {fmt_interval(ci.low, ci.high)}, {n_text})"
    sentence = f"{claim.a}'s mean {name} is {numbers}; {tail}"
    test = "two one-sided one-sample t-tests against the bounds"
    return Evaluation(claim, verdict, test, p, ci.mean, (ci.low, ci.high), math.nan, sentence, bounds)


def finite(values: Sequence[float]) -> list[float]:
    """The values a test can use: NaN and ±inf (a diverged run) left out."""
    return [v for v in values if math.isfinite(v)]


def _inside(diff: Difference, low: float, high: float, alpha: float) -> tuple[Verdict, float, float]:
    """Two one-sided tests (TOST) that ``diff`` lies inside (low, high): the verdict, the p-value of
    "inside" (the larger one-sided p) and of "outside" (the smaller one beyond a bound)."""
    p_in = max(diff.p_greater(low), diff.p_less(high))
    p_out = min(diff.p_less(low), diff.p_greater(high))
    return _decide(p_in, p_out, alpha), p_in, p_out


def _decide(p_claim: float, p_against: float, alpha: float) -> Verdict:
    if p_claim < alpha:
        return "supported"
    return "not supported" if p_against < alpha else "inconclusive"


def _too_few(claim: Claim, n_text: str) -> Evaluation:
    sentence = f"Not tested: a t-test needs at least 2 seeds per variant ({n_text})."
    return Evaluation(
        claim, "inconclusive", NOT_TESTED, math.nan, math.nan, (math.nan, math.nan), math.nan, sentence
    )


def fmt(value: float | None, sign: bool = False) -> str:
    """Four decimals with a true minus sign; '–' for a missing value, '±∞' for an infinite one."""
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else ("+∞" if value > 0 else "−∞")
    return (f"{value:+.4f}" if sign else f"{value:.4f}").replace("-", "−")


def fmt_interval(low: float | None, high: float | None, sign: bool = False) -> str:
    """'[−0.0120, +0.0034]' (with ``sign``), as :func:`fmt` writes each end."""
    return f"[{fmt(low, sign)}, {fmt(high, sign)}]"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def peq(p: float) -> str:
    """'p = 0.0123' or 'p < 0.0001'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def rule_lines() -> list[str]:
    """The decision rule, as every report states it."""
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
        f"- The interval beside each difference is its two-sided {100 * (1 - ALPHA):.0f} % CI. A one-sided "
        f"test at α = {ALPHA} matches a two-sided {100 * (1 - 2 * ALPHA):.0f} % interval, so a supported "
        "claim's interval can still reach just past zero (or past its margin).",
    ]
