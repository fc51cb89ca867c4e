"""Adaptive seeds (fashion_cnn.study.sequential): boundaries, the runner's API, and error rates by
simulation (no training: seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fashion_cnn.errors import StudyError
from fashion_cnn.study.claims import Metric, parse_claim
from fashion_cnn.study.sequential import Schedule, nominal_levels, sequential_step, simulate, spent

LOSS = Metric("test/loss", "lower")
ALPHA = 0.05


def test_schedule_grows_in_blocks_to_the_maximum() -> None:
    assert Schedule.blocks(3, 12).looks == (3, 5, 8, 12)
    assert Schedule.blocks(3, 10).looks == (3, 5, 8, 10)
    assert Schedule.blocks(5, 5).looks == (5,)
    with pytest.raises(StudyError, match="--max_seeds 2 is below the 3 seeds asked for; give at least 3"):
        Schedule.blocks(3, 2)
    with pytest.raises(StudyError, match="increasing"):
        Schedule((3, 3, 5))


def test_spending_functions_spend_alpha_by_the_last_look() -> None:
    for kind in ("obrien-fleming", "pocock"):
        assert spent(1.0, ALPHA, kind) == ALPHA
        assert 0 < spent(0.25, ALPHA, kind) < spent(0.5, ALPHA, kind) < ALPHA
    assert spent(0.25, ALPHA, "obrien-fleming") < spent(0.25, ALPHA, "pocock")  # OBF: strict early


def _crossing_probability(levels: tuple[float, ...], looks: tuple[int, ...]) -> float:
    """P(some Z_k >= c_k) under H0 by scipy's multivariate normal integration (an independent check)."""
    t = np.array(looks) / looks[-1]
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    bounds = stats.norm.isf(levels)
    stay = stats.multivariate_normal.cdf(bounds, np.zeros(len(t)), corr, rng=np.random.default_rng(0))
    return 1.0 - float(stay)


@pytest.mark.parametrize("kind", ["obrien-fleming", "pocock"])
def test_the_boundaries_spend_exactly_alpha(kind) -> None:
    looks = (3, 5, 8, 12)
    levels = nominal_levels(looks, ALPHA, kind)
    assert _crossing_probability(levels, looks) == pytest.approx(ALPHA, abs=2e-4)
    first = spent(looks[0] / looks[-1], ALPHA, kind)
    assert levels[0] == pytest.approx(first, rel=1e-9)  # the first look spends its share alone
    if kind == "obrien-fleming":  # published shape: tiny first level, close to alpha at the end
        assert levels[0] < 1e-4 and 0.04 < levels[-1] < ALPHA
    assert nominal_levels(looks, ALPHA, "none") == (ALPHA,) * 4


def _claims(*texts: str, variants=("a", "b", "c")):
    return [parse_claim(t, list(variants), [LOSS]) for t in texts]


def test_the_step_adds_seeds_only_where_a_claim_is_undecided() -> None:
    rng = np.random.default_rng(3)
    # a is far better than b (decided at once, even at O'Brien-Fleming's first level, 9e-5);
    # c and b are alike (needs more seeds).
    a = [0.200, 0.201, 0.202]
    b = [0.400, 0.401, 0.402]
    c = [0.4025, 0.4005, 0.4015]
    schedule = Schedule.blocks(3, 12)
    claims = _claims("a beats b on test/loss", "c beats b on test/loss")
    step = sequential_step(claims, {"test/loss": {"a": a, "b": b, "c": c}}, [LOSS], schedule)
    first, second = step.states
    assert first.state == "supported" and first.look == 0 and first.final
    assert second.state == "undecided" and not second.final and second.look == 0
    assert step.next_seeds == {"c": 5, "b": 5}  # a's claim is decided: a gets none
    # Two more seeds of b and c: the next look happens; b and c stay identical in law, so the claim
    # is undecided or futile, never supported.
    b += list(rng.normal(0.40, 0.01, 2))
    c += list(rng.normal(0.40, 0.01, 2))
    step = sequential_step(claims, {"test/loss": {"a": a, "b": b, "c": c}}, [LOSS], schedule)
    assert step.states[0].state == "supported" and step.states[0].seeds == 3  # decided states stay
    assert step.states[1].look == 1 and step.states[1].seeds == 5
    assert step.states[1].state in ("undecided", "futile", "not supported")
    assert step.done == (step.states[1].state != "undecided")
    assert step.counts()["supported"] == 1


def test_the_interval_beside_a_look_is_the_95_percent_one_its_label_says() -> None:
    """The look's nominal level (here 0.0055) decides the verdict; the interval the reports print
    as "95 % CI" is Welch's 95 % interval all the same (the journal's dropout claims at 5 seeds)."""
    a = [0.2411, 0.2304, 0.2333, 0.2269, 0.2195]
    b = [0.2506, 0.2454, 0.2416, 0.2528, 0.2427]
    schedule = Schedule.blocks(3, 10)
    state = sequential_step(
        _claims("a beats b on test/loss"), {"test/loss": {"a": a, "b": b}}, [LOSS], schedule
    )
    ev = state.states[0].evaluation
    assert state.states[0].state == "supported" and state.states[0].nominal_alpha < 0.01
    welch = stats.ttest_ind(a, b, equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert ev.ci == pytest.approx((low, high), rel=1e-9)
    assert f"95 % CI [{low:+.4f}, {high:+.4f}]".replace("-", "−") in ev.sentence


def test_a_claim_is_judged_on_the_first_seeds_of_each_look_only() -> None:
    """A variant with more seeds (wanted by another claim) does not change an earlier look."""
    rng = np.random.default_rng(0)
    a, b = list(rng.normal(0, 1, 12)), list(rng.normal(0, 1, 12))
    schedule = Schedule.blocks(3, 12)
    claims = _claims("a beats b on test/loss")
    full = sequential_step(claims, {"test/loss": {"a": a, "b": b}}, [LOSS], schedule).states[0]
    for look in range(len(schedule.looks)):
        n = schedule.looks[look]
        part = sequential_step(claims, {"test/loss": {"a": a[:n], "b": b[:n]}}, [LOSS], schedule).states[0]
        if full.look <= look:
            assert (part.state, part.look) == (full.state, full.look)
    capped = sequential_step(claims, {"test/loss": {"a": a, "b": b}}, [LOSS], schedule, look=0).states[0]
    assert capped.look == 0 and capped.seeds == 3


def test_a_claim_without_two_seeds_waits_for_the_first_look() -> None:
    claims = _claims("a is the best of all variants on test/loss")
    step = sequential_step(
        claims, {"test/loss": {"a": [0.1], "b": [], "c": [0.2, 0.3]}}, [LOSS], Schedule((3, 6))
    )
    assert step.states[0].state == "undecided" and step.states[0].look == -1
    assert step.next_seeds == {"a": 3, "b": 3, "c": 3}  # best-of-all uses every variant


def test_a_hopeless_claim_is_declared_futile() -> None:
    """Two variants alike to 0.1 sd, 8 seeds: no plausible difference could be decided at 12."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 8)
    a, b = list(base), list(base[::-1] + 0.0001)
    state = sequential_step(
        _claims("a beats b on test/loss"), {"test/loss": {"a": a, "b": b}}, [LOSS], Schedule.blocks(3, 12)
    ).states[0]
    assert state.state == "futile" and state.final and state.seeds_needed is None


# --------------------------------------------------------------------------------------------
# Error rates by simulation


def _bound(rate: float, n: int) -> float:
    return ALPHA + 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / n)  # one-sided, 2.5 Monte Carlo errors


@pytest.mark.parametrize("kind", ["obrien-fleming", "pocock"])
def test_false_supported_rate_stays_at_alpha_under_repeated_looks(kind) -> None:
    n = 3000
    sim = simulate(Schedule.blocks(3, 12, ALPHA, kind), effect=0.0, studies=n, seed=11)
    assert sim.supported <= _bound(ALPHA, n), sim
    assert sim.fixed_supported <= _bound(ALPHA, n)  # the fixed design on the same data, as a check


@pytest.mark.parametrize(
    ("claim", "means"),
    [
        # TOST at the edge of its margin: the least favourable truth for "within".
        ("a is within 0.5 of b on test/loss", {"a": 0.5, "b": 0.0}),
        # Three equal variants: "best of all" must beat both (an intersection-union test).
        ("a is the best of all variants on test/loss", {"a": 0.0, "b": 0.0, "c": 0.0}),
        # A mean exactly at a bound of "between".
        ("a is between 0 and 3 on test/loss", {"a": 0.0}),
    ],
)
def test_other_claim_kinds_keep_alpha_at_their_least_favourable_truth(claim, means) -> None:
    n = 1500
    sim = simulate(Schedule.blocks(3, 12), effect=0.0, studies=n, seed=4, claim=claim, means=means)
    assert sim.supported <= _bound(ALPHA, n), sim


def test_the_naive_repeated_test_exceeds_alpha() -> None:
    """Testing at alpha at every look, without spending, inflates false positives: the simulation
    can tell a procedure that does not keep alpha."""
    n = 2000
    sim = simulate(Schedule.blocks(3, 12, ALPHA, "none"), effect=0.0, studies=n, seed=11)
    assert sim.supported > _bound(ALPHA, n), sim


def test_with_a_true_difference_power_is_near_the_fixed_design_for_fewer_seeds() -> None:
    sim = simulate(Schedule.blocks(3, 12), effect=1.5, studies=800, seed=5)
    assert sim.supported > 0.9 and sim.supported >= sim.fixed_supported - 0.05
    assert sim.mean_seeds < 10  # the fixed design spends 12 per variant


def test_the_committed_adaptive_journal_rebuilds_with_the_same_states() -> None:
    """docs/journal_parts_2_4.json (Parts 2-4, 3 -> 5 -> 8 -> 10 seeds): judged again from its own
    per-seed values, every claim reaches the state and look the document reports, and no claim
    asks for more seeds."""
    import json
    from pathlib import Path

    from fashion_cnn.study.spec import load_study

    data = json.loads((Path(__file__).resolve().parents[1] / "docs" / "journal_parts_2_4.json").read_text())
    assert [s["study"] for s in data["studies"]] == ["dropout", "normalisation", "combined"]
    for entry in data["studies"]:
        study = load_study(f"studies/{entry['study']}")
        schedule = Schedule(tuple(entry["adaptive"]["looks"]))
        assert schedule.looks == (3, 5, 8, 10)
        step = sequential_step(study.claims, entry["samples"], study.metrics, schedule)
        reported = [(c["claim"], c["state"], c["seeds"]) for c in entry["adaptive"]["claims"]]
        assert [(s.claim.text, s.state, s.seeds) for s in step.states] == reported
        assert step.done
