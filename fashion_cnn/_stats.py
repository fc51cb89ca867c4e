"""Small-sample statistics for studies: t-based intervals, Welch's t-test, TOST, Cohen's d.

Pure Python (``math`` only): the Student t distribution comes from the regularised incomplete
beta function, evaluated by its continued fraction (Numerical Recipes, 3rd ed., section 6.4), so
the package needs no SciPy. Accuracy is ~1e-12 relative, far below what 3-10 seeds can resolve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x={x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t > 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_sf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf: q={q} must lie in (0, 1)")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    tail = 1.0 - q
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


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
    half = t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


@dataclass(frozen=True)
class Difference:
    """Mean of ``a`` minus the reference (the mean of ``b``, or a constant), with Welch's standard
    error and Welch–Satterthwaite degrees of freedom (n_a - 1 against a constant)."""

    diff: float
    se: float
    df: float
    mean_a: float
    mean_b: float
    cohen_d: float

    def p_greater(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: diff > margin (Welch's t-test against H0: diff <= margin)."""
        if math.isnan(self.df):
            return math.nan
        gap = self.diff - margin
        if self.se == 0.0:  # no spread at all: the sign of the gap decides
            return 0.0 if gap > 0 else (1.0 if gap < 0 else 0.5)
        return t_sf(gap / self.se, self.df)

    def p_less(self, margin: float = 0.0) -> float:
        """One-sided p-value of H1: diff < margin."""
        if math.isnan(self.df):
            return math.nan
        gap = self.diff - margin
        if self.se == 0.0:
            return 0.0 if gap < 0 else (1.0 if gap > 0 else 0.5)
        return t_sf(-gap / self.se, self.df)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided confidence interval of the difference."""
        if math.isnan(self.df):
            return math.nan, math.nan
        half = t_ppf(0.5 + level / 2.0, self.df) * self.se if self.se > 0 else 0.0
        return self.diff - half, self.diff + half


def welch(a: Sequence[float], b: Sequence[float] | float) -> Difference:
    """Welch's two-sample comparison of ``a`` with ``b``, or a one-sample one if ``b`` is a number.

    Cohen's d uses the root mean square of the two standard deviations (or ``a``'s alone against a
    constant); it is ±inf when the spread is zero and the means differ.
    """
    mean_a, sd_a = mean_sd(a)
    n_a = len(a)
    if isinstance(b, (int, float)):
        mean_b = float(b)
        if n_a < 2:
            return Difference(mean_a - mean_b, math.nan, math.nan, mean_a, mean_b, math.nan)
        se = sd_a / math.sqrt(n_a)
        return Difference(mean_a - mean_b, se, n_a - 1.0, mean_a, mean_b, _d(mean_a - mean_b, sd_a))
    mean_b, sd_b = mean_sd(b)
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
