"""Adaptive seeds: planned looks with an alpha-spending boundary, futility, and the next block.

A study with ``--max_seeds`` looks at its claims after planned blocks of seeds per variant (e.g.
3 → 5 → 8 → 12). At look ``k`` every claim's tests (those of :func:`~fashion_cnn.study.verdicts.
evaluate_claim`, unchanged) are made at a *nominal* level ``α_k`` instead of ``α``; the levels come
from a Lan–DeMets alpha-spending function of the information fraction ``t_k = n_k / n_max``:

- O'Brien–Fleming type (default): ``α(t) = 2 − 2Φ(z_{1−α/2} / √t)``: tiny levels early, nearly
  ``α`` at the last look, so a claim decided early must be clear and the last look loses little;
- Pocock type: ``α(t) = α · ln(1 + (e − 1) t)``: equal-ish levels, earlier stops, a stricter end.

The boundary ``c_k`` of look ``k`` solves ``P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = α(t_k) −
α(t_{k−1})`` for the canonical joint distribution of the z statistics (``corr(Z_j, Z_k) =
√(t_j / t_k)``), and ``α_k = 1 − Φ(c_k)``. Using these levels on the t-tests' p-values is the
"significance level approach" (Jennison & Turnbull, *Group Sequential Methods*, 2000, §3.8) for an
unknown variance; the tests in ``tests/test_sequential.py`` check by simulation that the rate of
false "supported" verdicts stays at or below α.

A claim that is still inconclusive is *futile* at look ``k`` when even the optimistic end of its
decisive quantity's 80 % interval (:mod:`fashion_cnn.study.power`) is smaller than what ``n_max``
seeds could detect, in both directions: more seeds up to the maximum would almost surely leave it
undecided. Stopping for futility only removes chances to reject, so it cannot raise the error rate.

Everything here is pure: values in, states out, no MLflow and no training. A claim's state is a
function of the data alone (each look uses the first ``n_k`` values of each variant, in seed
order), so the runner needs no memory between looks: call :func:`sequential_step` after each block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import special, stats

from fashion_cnn.errors import StudyError
from fashion_cnn.study.claims import Claim, Metric, parse_claim
from fashion_cnn.study.power import POWER, decisive, detectable_effect, first_seeds, seeds_for_effect
from fashion_cnn.study.verdicts import ALPHA, Evaluation, evaluate_claim

Spending = Literal["obrien-fleming", "pocock", "none"]
State = Literal["supported", "not supported", "undecided", "futile"]
_GRID = 1201
FUTILITY_LEVEL = 0.8  # two-sided level of the interval whose optimistic end decides futility


@dataclass(frozen=True)
class Schedule:
    """Planned looks: increasing seeds per variant, e.g. ``(3, 5, 8, 12)``, the last the maximum.
    ``spending="none"`` tests every look at ``alpha``: the naive repeated test, for comparison (it does
    not keep ``alpha``). ``power`` is that of the futility rule's detectable difference."""

    looks: tuple[int, ...]
    alpha: float = ALPHA
    spending: Spending = "obrien-fleming"
    power: float = POWER

    def __post_init__(self) -> None:
        if not self.looks or any(b <= a for a, b in zip(self.looks, self.looks[1:], strict=False)):
            raise StudyError(f"looks {list(self.looks)}: give increasing seed counts, e.g. [3, 5, 8, 12]")
        if self.looks[0] < 2:
            raise StudyError(f"looks {list(self.looks)}: the first look needs at least 2 seeds per variant")
        if not 0 < self.alpha < 0.5:
            raise StudyError(f"alpha {self.alpha}: use a level between 0 and 0.5, e.g. 0.05")

    @classmethod
    def blocks(
        cls, start: int, max_seeds: int, alpha: float = ALPHA, spending: Spending = "obrien-fleming"
    ) -> Schedule:
        """Looks growing by about half each time from ``start`` to ``max_seeds``: 3 → 5 → 8 → 12."""
        if max_seeds < start:
            raise StudyError(
                f"--max_seeds {max_seeds} is below the {start} seeds asked for; give at least {start}"
            )
        looks = [start]
        while looks[-1] < max_seeds:
            looks.append(min(max_seeds, max(looks[-1] + 1, math.ceil(1.5 * looks[-1]))))
        return cls(tuple(looks), alpha, spending)

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    @property
    def nominal(self) -> tuple[float, ...]:
        """The nominal one-sided level of each look (the p-value a test must beat there)."""
        return nominal_levels(self.looks, self.alpha, self.spending)


def spent(t: float, alpha: float, spending: Spending) -> float:
    """Cumulative alpha spent at information fraction ``t`` (Lan–DeMets spending functions)."""
    if t >= 1.0:
        return alpha
    if spending == "obrien-fleming":
        return float(2.0 - 2.0 * stats.norm.cdf(stats.norm.isf(alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1.0 + (math.e - 1.0) * t))
    return alpha


@lru_cache(maxsize=64)
def nominal_levels(looks: tuple[int, ...], alpha: float, spending: Spending) -> tuple[float, ...]:
    """Nominal one-sided levels ``α_k`` of the looks (module docstring).

    The crossing probabilities are integrated numerically over the score process ``S_k = Z_k √t_k``
    (independent normal increments of variance ``t_k − t_{k−1}``), Armitage, McPherson & Rowe's
    recursion (1969), on a grid of ``_GRID`` points: exact to about 1e-6 and a few milliseconds.
    """
    if spending == "none":
        return tuple(alpha for _ in looks)
    t = np.array([n / looks[-1] for n in looks])
    levels: list[float] = []
    grid = density = None
    previous = 0.0
    for k in range(len(t)):
        increment = spent(float(t[k]), alpha, spending) - previous
        previous += increment
        if k == 0:
            c = float(stats.norm.isf(increment))
            bound = c * math.sqrt(t[0])
            grid = np.linspace(-8.0, bound, _GRID)
            density = stats.norm.pdf(grid, scale=math.sqrt(t[0]))
        else:
            assert grid is not None and density is not None
            step = math.sqrt(t[k] - t[k - 1])
            bound = _boundary(grid, density, step, increment)
            c = bound / math.sqrt(t[k])
            new_grid = np.linspace(-8.0, bound, _GRID)
            z = (new_grid[:, None] - grid[None, :]) / step
            kernel = np.exp(-0.5 * z * z) / (step * math.sqrt(2.0 * math.pi))
            density = np.trapezoid(kernel * density[None, :], grid, axis=1)
            grid = new_grid
        levels.append(float(stats.norm.sf(c)))
    return tuple(levels)


def _boundary(grid: np.ndarray, density: np.ndarray, step: float, target: float) -> float:
    """The score bound ``b`` whose crossing probability from ``density`` one increment on is ``target``,
    by bisection on [-8, 20] (the probability falls as ``b`` rises)."""
    low, high = -8.0, 20.0
    for _ in range(80):
        mid = 0.5 * (low + high)
        if float(np.trapezoid(density * special.ndtr((grid - mid) / step), grid)) > target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class ClaimState:
    """One claim after the looks made so far: ``supported`` / ``not supported`` (a boundary was
    crossed), ``futile`` (could not be decided at the maximum) or ``undecided`` (needs the next
    block, or the maximum is spent)."""

    claim: Claim
    state: State
    look: int  # index of the look that gave this state; -1: no look yet
    seeds: int  # per variant, at that look
    nominal_alpha: float  # the level the tests were made at there
    evaluation: Evaluation | None  # at that level on those seeds; None before a look
    variants: tuple[str, ...]  # whose seeds the claim uses
    seeds_needed: int | None  # to decide at the observed effect at the last look's level; None: > max
    final: bool  # no further look can change the state


@dataclass(frozen=True)
class Step:
    """Every claim's state, and the seeds per variant the next look needs (only variants of claims
    still undecided, and only where they have fewer)."""

    states: list[ClaimState]
    next_seeds: dict[str, int]

    @property
    def done(self) -> bool:
        return not self.next_seeds

    def counts(self) -> dict[str, int]:
        return _counts(s.state for s in self.states)


def claim_variants(claim: Claim, variants: Sequence[str]) -> tuple[str, ...]:
    """The variants whose seeds a claim's tests use (every variant for best/worst)."""
    if claim.kind in ("best", "worst"):
        return tuple(variants)
    return (claim.a,) + ((str(claim.b),) if isinstance(claim.b, str) else ())


def sequential_step(
    claims: Sequence[Claim],
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    metrics: Sequence[Metric],
    schedule: Schedule,
    look: int | None = None,
) -> Step:
    """Every claim's state after the looks the data allow (at most up to index ``look``), and the
    next block of seeds. ``samples``: metric -> variant -> values, one per finished seed *in seed order*.
    """
    last = len(schedule.looks) - 1 if look is None else min(look, len(schedule.looks) - 1)
    by_name = {m.name: m for m in metrics}
    states = [_claim_state(c, samples[c.metric], by_name[c.metric], schedule, last) for c in claims]
    next_seeds: dict[str, int] = {}
    for state in states:
        if state.final:
            continue
        target = schedule.looks[state.look + 1]
        for v in state.variants:
            if len(samples[state.claim.metric].get(v, ())) < target:
                next_seeds[v] = max(next_seeds.get(v, 0), target)
    return Step(states, next_seeds)


def _claim_state(
    claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, schedule: Schedule, last: int
) -> ClaimState:
    variants = claim_variants(claim, list(samples))
    have = min(len(samples.get(v, ())) for v in variants)
    levels = schedule.nominal
    state: State = "undecided"
    evaluation, index, head = None, -1, {}
    for k, n in enumerate(schedule.looks[: last + 1]):
        if have < n:
            break
        index = k
        head = first_seeds(samples, n)
        evaluation = evaluate_claim(claim, head, metric, levels[k])
        if evaluation.verdict != "inconclusive":
            state = evaluation.verdict
            break
        if k < len(schedule.looks) - 1 and _futile(claim, head, metric, schedule):
            state = "futile"
            break
    final = state != "undecided" or index == len(schedule.looks) - 1
    needed = _seeds_needed(claim, head, metric, schedule) if index >= 0 else None
    return ClaimState(
        claim=claim,
        state=state,
        look=index,
        seeds=schedule.looks[index] if index >= 0 else have,
        nominal_alpha=levels[index] if index >= 0 else math.nan,
        evaluation=evaluation,
        variants=variants,
        seeds_needed=needed,
        final=final,
    )


def _seeds_needed(
    claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, schedule: Schedule
) -> int | None:
    q = decisive(claim, samples, metric)
    if q is None or not q.sd > 0:
        return None
    return seeds_for_effect(
        round(q.g / q.sd, 9), schedule.nominal[-1], schedule.power, q.one_sample, schedule.max_seeds
    )


def _futile(claim: Claim, samples: Mapping[str, Sequence[float]], metric: Metric, schedule: Schedule) -> bool:
    """The whole 80 % interval of the decisive quantity lies inside ± the difference the maximum
    could detect (at the last look's level): no plausible effect could be decided."""
    q = decisive(claim, samples, metric)
    if q is None or not q.sd > 0:
        return False
    reach = q.sd * detectable_effect(schedule.max_seeds, schedule.nominal[-1], schedule.power, q.one_sample)
    low, high = q.interval(FUTILITY_LEVEL)
    return -reach < low and high < reach


@dataclass(frozen=True)
class Simulation:
    """Operating characteristics of a schedule for one claim, by simulation."""

    studies: int
    effect: float
    supported: float  # share "supported": the false-positive rate when the effect is 0, else the power
    se: float  # its Monte Carlo standard error
    mean_seeds: float  # per variant, on average (the fixed design spends the maximum)
    fixed_supported: float  # share supported by one test at the maximum at alpha, on the same data
    states: dict[str, float]  # share of studies ending in each state


def simulate(
    schedule: Schedule,
    effect: float,
    studies: int = 2000,
    seed: int = 0,
    claim: str = "a beats b on test/loss",
    means: Mapping[str, float] | None = None,
) -> Simulation:
    """Run the sequential procedure on ``studies`` simulated studies (normal seeds, sd 1, the
    metric ``test/loss``, lower is better), through :func:`sequential_step` exactly as a study
    would. By default ``a``'s true loss is lower than ``b``'s by ``effect`` sd; ``means`` gives the
    true mean loss of each variant the ``claim`` names instead.

    Each study draws ``max_seeds`` values per variant up front; a look uses the first ``n_k`` (the
    procedure never sees more than it asked for), so one call per study gives the state the
    block-by-block runner would reach.
    """
    rng = np.random.default_rng(seed)
    metric = Metric("test/loss", "lower")
    truth = dict(means) if means is not None else {"a": -effect, "b": 0.0}
    parsed = parse_claim(claim, list(truth), [metric])
    n = schedule.max_seeds
    seeds = fixed = 0
    draws = {v: rng.normal(mu, 1.0, (studies, n)) for v, mu in truth.items()}
    ended = []
    for i in range(studies):
        values = {metric.name: {v: draws[v][i].tolist() for v in truth}}
        state = sequential_step([parsed], values, [metric], schedule).states[0]
        ended.append(state.state)
        seeds += state.seeds
        fixed += evaluate_claim(parsed, values[metric.name], metric, schedule.alpha).verdict == "supported"
    states = _counts(ended)
    rate = states["supported"] / studies
    return Simulation(
        studies=studies,
        effect=effect,
        supported=rate,
        se=math.sqrt(max(rate * (1 - rate), 1e-12) / studies),
        mean_seeds=seeds / studies,
        fixed_supported=fixed / studies,
        states={k: v / studies for k, v in states.items()},
    )


def _counts(states: Iterable[State]) -> dict[str, int]:
    out = dict.fromkeys(("supported", "not supported", "undecided", "futile"), 0)
    for state in states:
        out[state] += 1
    return out
