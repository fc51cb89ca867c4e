"""What a claim's seeds can tell (fashion_cnn.study.power): reference values, every claim
kind, equivalence statements, margins in study files, Benjamini-Hochberg, the claims figure, and the
committed journal results rebuilt from their JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from fashion_cnn import figures
from fashion_cnn.errors import StudyError
from fashion_cnn.study.claims import Metric, parse_claim
from fashion_cnn.study.power import (
    claim_rows,
    detectable_effect,
    document_outlooks,
    fdr_adjusted,
    fdr_line,
    outlook,
    outlook_table,
    outlooks,
    seeds_for_effect,
)
from fashion_cnn.study.spec import DEFAULT_MARGIN, load_study
from fashion_cnn.study.verdicts import evaluate_claim

ROOT = Path(__file__).resolve().parents[1]
LOSS = Metric("test/loss", "lower")
ACC = Metric("test/acc", "higher")


@pytest.mark.parametrize(
    ("n", "expected"), [(3, 2.48), (5, 1.72), (8, 1.31), (10, 1.16), (15, 0.93), (20, 0.80), (30, 0.65)]
)
def test_detectable_effect_matches_the_measured_table(n, expected) -> None:
    # NOTES.md (2026-12-05): one-sided two-sample t-test, alpha 0.05, power 0.8.
    assert detectable_effect(n) == pytest.approx(expected, abs=0.006)


@pytest.mark.parametrize("effect", [0.3, 0.8, 1.2, 2.5, 4.0])
def test_seeds_for_effect_is_the_first_count_with_enough_power(effect) -> None:
    power = TTestIndPower()
    n = seeds_for_effect(effect, max_seeds=200)
    assert n is not None and power.power(effect, n, 0.05, alternative="larger") >= 0.8
    if n > 2:
        assert power.power(effect, n - 1, 0.05, alternative="larger") < 0.8
    assert seeds_for_effect(0.3, max_seeds=20) is None  # needs ~139: more than the maximum
    assert seeds_for_effect(0.0) is None


def _claim(text: str, variants=("a", "b", "c")):
    return parse_claim(text, list(variants), [LOSS, ACC])


A = [0.300, 0.302, 0.298, 0.301, 0.299]  # sd ~0.0016
B = [0.400, 0.402, 0.398, 0.401, 0.399]
C = [0.3005, 0.3015, 0.2995, 0.3, 0.301]  # like A


@pytest.mark.parametrize(
    ("text", "g", "statement"),
    [
        ("a beats b on test/loss", 0.1, ""),  # lower loss is better: +0.1 in a's favour
        ("b beats a on test/loss", -0.1, ""),
        ("a beats b on test/loss by at least 0.03", 0.07, ""),
        ("a beats c on test/loss", 0.0005, "a and c differ by less than 0.0021 test/loss"),
        ("a is within 0.01 of c on test/loss", 0.0095, "a and c differ by less than 0.0021 test/loss"),
        ("a beats 0.35 on test/loss", 0.05, ""),
        ("a beats 0.3005 on test/loss", 0.0005, "a's mean test/loss is within 0.0021 of 0.3005"),
        ("a is the best of all variants on test/loss", 0.0005, "a and c (the closest rival) differ by less"),
        ("b is the worst of all variants on test/loss", 0.0995, ""),
        ("a is between 0.29 and 0.305 on test/loss", 0.005, ""),
    ],
)
def test_every_claim_kind_gets_its_decisive_difference(text, g, statement) -> None:
    claim = _claim(text)
    o = outlook(claim, {"a": A, "b": B, "c": C}, LOSS, margin=0.01, max_seeds=12)
    assert o is not None
    assert o.g == pytest.approx(g, abs=1e-9)
    assert o.g_ci[0] < o.g < o.g_ci[1]
    assert o.statement.startswith(statement) and bool(o.statement) == bool(statement)
    assert 0 < o.detectable < 0.01 and o.seeds == 5
    ev = evaluate_claim(claim, {"a": A, "b": B, "c": C}, LOSS)
    if ev.verdict == "supported":  # a decided claim's observed effect needs no more seeds than it has
        assert o.seeds_needed is not None and o.seeds_needed <= 5


def test_equivalence_needs_the_interval_inside_the_margin() -> None:
    claim = _claim("a beats c on test/loss")
    samples = {"a": A, "c": C}
    assert outlook(claim, samples, LOSS, margin=0.01).statement
    assert outlook(claim, samples, LOSS, margin=0.002).statement == ""  # the bound is 0.00204
    wide = {"a": [0.30, 0.32, 0.28], "c": [0.30, 0.31, 0.29]}
    o = outlook(claim, wide, LOSS, margin=0.01)
    assert o.statement == "" and o.equivalence > 0.01 and o.seeds_needed is None
    assert outlook(claim, {"a": [0.3], "c": C}, LOSS) is None  # not testable with one seed


def test_the_seeds_needed_grow_as_the_observed_difference_shrinks() -> None:
    claim = _claim("a beats b on test/loss")
    needed = []
    for gap in (0.004, 0.002, 0.001):
        b = [x + gap for x in A]
        needed.append(outlook(claim, {"a": A, "b": b}, LOSS, max_seeds=50).seeds_needed)
    assert needed[0] is not None and needed[1] is not None
    assert needed[0] < needed[1] and (needed[2] is None or needed[1] < needed[2])


def test_an_adaptive_claim_is_described_on_the_seeds_of_its_look(tmp_path: Path) -> None:
    # Decided at 3 seeds; later blocks gave both variants 5 for another claim. The outlook (and so
    # "decided at", the interval and the figure) uses the first 3, as the verdict did.
    study = load_study(_study_file(tmp_path, "expected: [a beats b on test/loss]\n"))
    samples = {"test/loss": {"a": A, "b": B}, "test/acc": {"a": A, "b": B}}
    (ev,) = [evaluate_claim(c, {v: x[:3] for v, x in samples[c.metric].items()}, LOSS) for c in study.claims]
    (at_look,), _ = outlooks(study, samples, [ev], seeds=[3])
    (on_all,), _ = outlooks(study, samples, [ev])
    assert (at_look.seeds, on_all.seeds) == (3, 5)
    assert at_look.detectable > on_all.detectable  # fewer seeds detect less
    assert outlook_table([ev], [at_look], [ev.p_value])[2].split(" | ")[6] == "decided at 3"


def test_with_no_supported_verdict_the_false_discovery_line_says_there_is_none_to_withdraw() -> None:
    ev = evaluate_claim(_claim("b beats a on test/loss"), {"a": A, "b": B}, LOSS)
    assert ev.verdict == "not supported"
    line = fdr_line([ev], fdr_adjusted([ev.p_value]))
    assert line.startswith("None of the 1 tested claims is supported") and "no verdict to withdraw" in line


def _study_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "hypothesis: x\nvariants: [{name: a}, {name: b}]\nmetrics: {test/loss: lower, test/acc: higher}\n"
        + extra
    )
    return path


def test_a_study_file_sets_margins_per_metric(tmp_path: Path) -> None:
    study = load_study(_study_file(tmp_path, "margins: {test/loss: 0.02}\n"))
    assert study.margins == {"test/loss": 0.02, "test/acc": DEFAULT_MARGIN}
    assert load_study(_study_file(tmp_path, "")).margins == {
        "test/loss": DEFAULT_MARGIN,
        "test/acc": DEFAULT_MARGIN,
    }


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("margins: {test/loss: 0}\n", "margins: test/loss: 0.0 is not a positive number; give the smallest"),
        ("margins: {test/loss: -0.1}\n", "is not a positive number"),
        (
            "margins: {val/acc: 0.1}\n",
            "margins: 'val/acc' is not one of the study's metrics (test/loss, test/acc)",
        ),
        ("margins: {test/loss: big}\n", "margins: "),
    ],
)
def test_bad_margins_are_one_line_naming_the_fix(tmp_path: Path, extra, fragment) -> None:
    with pytest.raises(StudyError) as info:
        load_study(_study_file(tmp_path, extra))
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_benjamini_hochberg_matches_statsmodels_and_counts_survivors() -> None:
    p = [0.001, 0.04, 0.03, 0.2, math.nan, 0.049]
    adjusted = fdr_adjusted(p)
    reference = multipletests([0.001, 0.04, 0.03, 0.2, 0.049], method="fdr_bh")[1]
    assert [a for a in adjusted if math.isfinite(a)] == pytest.approx(list(reference))
    assert math.isnan(adjusted[4])
    claims = [_claim("a beats b on test/loss")] * 6
    evs = [evaluate_claim(c, {"a": A, "b": B}, LOSS) for c in claims]  # all supported
    line = fdr_line(evs, adjusted)
    assert line.startswith("Of the 6 supported verdicts, 1 survives a Benjamini–Hochberg correction")
    assert "across the 5 tested claims" in line


def test_the_claims_figure_draws_every_testable_claim(tmp_path: Path) -> None:
    samples = {"a": A, "b": B, "c": C}
    claims = [
        _claim(t) for t in ("a beats b on test/loss", "a beats c on test/loss", "a is between 0.29 and 0.305")
    ]
    evs = [evaluate_claim(c, samples, LOSS) for c in claims]
    looks = [outlook(c, samples, LOSS) for c in claims] + [None]
    rows = claim_rows([*evs, evs[0]], looks)
    assert [r.verdict for r in rows] == ["supported", "inconclusive", "supported"]
    assert math.isnan(rows[2].margin_low)  # 'between' has no "no difference" point
    fig = figures.plot_claim_intervals("t", rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [r.label for r in rows]
    assert ax.get_xscale() == "symlog"
    path = figures.save_figure(fig, tmp_path / "claims.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_journal_results_rebuild_with_the_same_verdicts() -> None:
    """docs/journal_reproduced.json judged again from its seeds: every verdict and p as committed,
    plus the new columns."""
    data = json.loads((ROOT / "docs" / "journal_reproduced.json").read_text())
    rebuilt = document_outlooks(data, max_seeds=12)
    committed = [c for s in data["studies"] for c in s["claims"]]
    evaluations = [ev for _, evs, _, _ in rebuilt for ev in evs]
    assert len(evaluations) == len(committed) == 27
    for ev, old in zip(evaluations, committed, strict=True):
        assert ev.claim.text == old["claim"] and ev.verdict == old["verdict"]
        assert ev.p_value == pytest.approx(old["p"], rel=1e-9, abs=1e-15)
    looks = [o for _, _, os, _ in rebuilt for o in os]
    assert all(o is not None and o.seeds == 3 for o in looks)
    # 3 seeds detect 2.48 sd (one-sample claims 2.30): with sd ~0.002-0.013, about 0.005-0.025.
    assert all(0.004 < o.detectable < 0.03 for o in looks)
    table = "\n".join(outlook_table(*rebuilt[3][1:]))  # Part 3: normalisation
    assert "norm_none and norm_instance (the closest rival) differ by less than 0.0084 test/acc" in table
    assert "more than 12" in table
