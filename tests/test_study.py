"""Studies: the statistics, the claim verdicts and study-file validation (no training here).

The runs themselves are tested in tests/test_study_run.py (serial) and tests/test_study_ray.py.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from fashion_cnn.runs.settings import as_args
from fashion_cnn.study import (
    Metric,
    StudyError,
    compare,
    evaluate_claim,
    load_study,
    parse_claim,
    run_overrides,
)
from fashion_cnn.study.verdicts import NOT_TESTED, Evaluation, mean_ci, welch

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "fashion_cnn" / "configs" / "studies").glob("*.yaml"))
LOSS, ACC = Metric("test/loss", "lower"), Metric("test/acc", "higher")


# --------------------------------------------------------------------------------------------
# Statistics against reference values


def test_welch_matches_the_textbook_example() -> None:
    # Wikipedia, "Welch's t-test", example 1: t = -2.46, df = 24.99, two-sided p = 0.021.
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    d = welch(a1, a2)
    assert d.diff / d.se == pytest.approx(-2.455356398286, rel=1e-9)
    assert d.df == pytest.approx(24.988529290231, rel=1e-9)
    assert 2 * d.p_less() == pytest.approx(0.021378001462867, rel=1e-8)
    assert d.p_greater() == pytest.approx(1 - d.p_less())


def test_mean_ci_by_hand() -> None:
    ci = mean_ci([1, 2, 3, 4, 5])  # s = sqrt(2.5), t_{.975,4} = 2.776445
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.low == pytest.approx(3 - half) and ci.high == pytest.approx(3 + half)
    assert math.isnan(mean_ci([1.0]).low)


def test_margins_shift_the_test_and_the_interval_matches_the_t_test() -> None:
    """ "A beats B by at least d" is Welch's test of (A - d) against B; the CI is scipy's."""
    from scipy import stats

    rng = random.Random(0)
    for _ in range(10):
        a = [rng.gauss(0, 1) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(0.5, 2) for _ in range(rng.randint(2, 8))]
        d = welch(a, b)
        shifted = stats.ttest_ind([x - 0.3 for x in a], b, equal_var=False, alternative="greater")
        assert d.p_greater(0.3) == pytest.approx(shifted.pvalue, rel=1e-12)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert d.ci(0.95) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # No spread at all: scipy gives nan; the sign of the gap decides.
    assert welch([1.0, 1.0], [0.0, 0.0]).p_greater() == 0.0 and welch([1.0, 1.0], [0.0, 0.0]).p_less() == 1.0


# --------------------------------------------------------------------------------------------
# Claims: grammar and verdicts on planted samples

GOOD = [0.30, 0.31, 0.29, 0.305]  # clearly lower loss
BAD = [0.40, 0.41, 0.39, 0.405]
NOISY = [0.20, 0.45, 0.33, 0.52]  # overlaps both


def _claim(text: str, variants=("good", "bad", "noisy"), metrics=(LOSS, ACC)):
    return parse_claim(text, list(variants), list(metrics))


def _verdict(text: str, samples=None, metric=LOSS) -> Evaluation:
    samples = samples or {"good": GOOD, "bad": BAD, "noisy": NOISY}
    return evaluate_claim(_claim(text), samples, metric)


def test_planted_true_claims_are_supported() -> None:
    ev = _verdict("good beats bad on test/loss")
    assert ev.verdict == "supported" and ev.p_value < 1e-4
    assert ev.difference == pytest.approx(-0.1) and ev.cohen_d < -5
    assert "Welch" in ev.test and "one-sided" in ev.test
    assert _verdict("good beats bad on test/loss by at least 0.05").verdict == "supported"
    assert _verdict("good is within 0.2 of bad on test/loss").verdict == "supported"
    assert _verdict("good beats 0.35 on test/loss").verdict == "supported"
    assert _verdict("good is between 0.25 and 0.35 on test/loss").verdict == "supported"
    two = {"good": GOOD, "bad": BAD}
    assert (
        evaluate_claim(_claim("good is the best of all variants on test/loss"), two, LOSS).verdict
        == "supported"
    )
    assert evaluate_claim(_claim("bad is the worst on test/loss"), two, LOSS).verdict == "supported"


def test_planted_false_claims_are_not_supported() -> None:
    ev = _verdict("bad beats good on test/loss")
    assert ev.verdict == "not supported"
    assert "opposite direction is significant" in ev.sentence
    margin = _verdict("good beats bad on test/loss by at least 0.2")
    assert margin.verdict == "not supported" and "smaller than the claimed" in margin.sentence
    assert _verdict("good is within 0.02 of bad on test/loss").verdict == "not supported"
    assert _verdict("good is between 0.5 and 0.9 on test/loss").verdict == "not supported"
    assert _verdict("bad is the best of all variants on test/loss").verdict == "not supported"
    # On accuracy higher is better: the same numbers mean the opposite.
    assert _verdict("good beats bad on test/acc", metric=ACC).verdict == "not supported"


def test_overlapping_samples_are_inconclusive() -> None:
    ev = _verdict("noisy beats bad on test/loss")
    assert ev.verdict == "inconclusive" and 0.05 < ev.p_value < 0.95
    assert "cannot tell" in ev.sentence
    assert _verdict("good is the best of all variants on test/loss").verdict == "inconclusive"
    one_seed = evaluate_claim(_claim("good beats bad on test/loss"), {"good": [0.3], "bad": BAD}, LOSS)
    assert one_seed.verdict == "inconclusive" and "at least 2 seeds" in one_seed.sentence


def test_sentences_say_only_what_the_numbers_say() -> None:
    ev = _verdict("good beats bad on test/loss")
    assert ev.sentence.startswith("good's mean test/loss (0.3013) is lower than bad's (0.4012)")
    assert "n = 4 seeds each" in ev.sentence and "95 % CI" in ev.sentence


def test_means_equal_to_four_decimals_are_not_called_lower() -> None:
    """The journal's Part 4 margin claim: combined 0.2299 against dropout_0.1 0.2299."""
    same = {"good": [0.22990, 0.21, 0.25], "bad": [0.22991, 0.21, 0.25]}
    ev = _verdict("good beats bad on test/loss by at least 0.2", samples=same)
    assert ev.verdict == "not supported"
    assert "(0.2300) is the same (to four decimals) as bad's (0.2300)" in ev.sentence
    assert "lower than" not in ev.sentence
    far = {"good": [0.20, 0.2001, 0.2002], "bad": [0.30, 0.3001, 0.3002]}
    ev = _verdict("good beats bad on test/loss by at least 0.5", samples=far)
    assert "smaller than the claimed 0.5000 (one-sided p < 0.0001)" in ev.sentence, ev.sentence


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("good outperforms bad", "cannot read claim"),
        ("good beats ugly on test/loss", "'ugly' is neither a variant"),
        ("good beats bad on val/f1", "metric 'val/f1' is not among"),
        ("great is best on test/loss", "'great' is not a variant"),
        ("good is between 0.9 and 0.1 on test/acc", "lower bound"),
        ("good beats good on test/loss", "with itself"),
    ],
)
def test_bad_claims_are_named(text: str, fragment: str) -> None:
    with pytest.raises(StudyError, match="claim") as info:
        _claim(text)
    assert fragment in str(info.value)


def test_claim_defaults_to_the_first_metric() -> None:
    claim = _claim("good beats bad")
    assert (claim.kind, claim.metric, claim.b, claim.margin) == ("beats", "test/loss", "bad", 0.0)
    assert _claim("good beats bad by at least 0.1 on test/acc").margin == 0.1


# --------------------------------------------------------------------------------------------
# Study files


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


VALID = """
title: tiny
hypothesis: wider is better
seeds: 2
variants:
  - {name: narrow, overrides: {model.filters: 2}}
  - {name: wide, overrides: {model.filters: 4}, journal: {test/acc: 0.5}}
expected:
  - wide beats narrow on test/acc
  - {claim: wide is between 0.0 and 1.0 on test/acc, journal: "accuracy is a fraction"}
"""


def test_a_valid_study_file_loads(tmp_path: Path) -> None:
    s = load_study(_write(tmp_path, VALID))
    assert s.name == "s" and s.seeds == [0, 1]
    assert [m.name for m in s.metrics] == ["test/acc", "test/loss"]
    assert [m.direction for m in s.metrics] == ["higher", "lower"]
    assert s.variant("wide").journal == {"test/acc": 0.5}
    assert s.claims[1].journal == "accuracy is a fraction"


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (("variants:", "varaints:"), ["unknown key 'varaints'", "did you mean 'variants'"]),
        (("hypothesis: wider is better\n", ""), ["hypothesis: missing"]),
        (("{model.filters: 2}", "[model.filters, 2]"), ["variants[0]: overrides", "mapping of dotted keys"]),
        (("seeds: 2", "seeds: two"), ["s.yaml: seeds:", "Given value: two", "seed count"]),
        (("{test/acc: 0.5}", "{test/acc: high}"), ["variants[1]: journal", "Got value: high"]),
        (('journal: "accuracy', 'jornal: "accuracy'), ["expected[1]: unknown key 'jornal'", "'journal'"]),
        (("name: narrow,", "nme: narrow,"), ["variants[0]: unknown key 'nme'", "did you mean 'name'"]),
        (("name: wide,", "name: narrow,"), ["variants[1]: name", "used twice"]),
        (("{test/acc: 0.5}", "{val/f1: 0.5}"), ["journal: 'val/f1'", "add it to metrics"]),
        (("{model.filters: 2}", "{seed_everything: 3}"), ["seed_everything", "--seeds"]),
        (("wide beats narrow on test/acc", "wide crushes narrow"), ["expected[0]", "cannot read claim"]),
        (("title: tiny", "title: tiny\nbase: ../nowhere.yaml"), ["base", "does not exist"]),
    ],
)
def test_invalid_study_files_name_the_key_and_the_fix(tmp_path: Path, change, fragments) -> None:
    text = VALID.replace(*change)
    assert text != VALID
    with pytest.raises(StudyError) as info:
        load_study(_write(tmp_path, text))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_overrides_from_the_command_line() -> None:
    groups = {"trainer": {"max_epochs": 1, "limit_train_batches": 20}, "model": {"lr": -1}, "data": None}
    assert run_overrides(groups) == {
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 20,
        "model.optimizer.init_args.lr": -1,  # the old flat key, as the optimiser's argument
    }
    assert as_args(run_overrides(groups)) == [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=20",
        "--model.optimizer.init_args.lr=-1",
    ]
    with pytest.raises(StudyError, match="the study tags its runs"):
        run_overrides({"trainer": {"logger.init_args.tags": {"a": "b"}}})


def test_shipped_studies_cover_the_journal() -> None:
    names = {p.stem for p in STUDIES}
    assert {"baseline", "depth_width", "dropout", "normalisation", "combined", "ultimate"} <= names
    for path in STUDIES:
        s = load_study(path)
        assert path.read_text().startswith("# "), f"{path.name} opens with its header comment"
        assert s.claims, f"{path.name} states checkable outcomes"
        assert all(c.journal for c in s.claims), f"{path.name}: every claim quotes the journal"
        assert any(v.journal for v in s.variants), f"{path.name} carries the journal's figures"


# --------------------------------------------------------------------------------------------
# Two combined reports side by side (--compare_with)


def _combined(budget_images: int, verdicts: dict[str, str]) -> dict:
    claims = [
        {
            "claim": text,
            "verdict": "inconclusive" if v == "untested" else v,
            "test": NOT_TESTED if v == "untested" else "Welch's t-test, one-sided",
            "p": 0.01,
            "difference": -0.05,
            "ci": [-0.08, -0.02],
        }
        for text, v in verdicts.items()
    ]
    return {
        "kind": compare.KIND,
        "command": "fashion-cnn study s.yaml",
        "studies": [
            {
                "study": "s",
                "part": "2",
                "budget": {"a": {"epochs": 1, "train_images": budget_images}},
                "claims": claims,
            }
        ],
    }


def test_verdict_changes_name_each_changed_claim_and_both_budgets() -> None:
    short = _combined(
        6_400,
        {"a beats b": "inconclusive", "a is best": "supported", "old": "supported", "b beats c": "supported"},
    )
    full = _combined(
        165_000,
        {"a beats b": "supported", "a is best": "supported", "new": "inconclusive", "b beats c": "untested"},
    )
    changes = compare.verdict_changes(full, short)
    assert [(a["claim"], a["verdict"], b["verdict"]) for a, b in changes.changed] == [
        ("a beats b", "supported", "inconclusive")
    ]
    # A claim one side could not test (too few finished seeds) has not changed its verdict.
    assert changes.kept == 1 and changes.untested == ["s: b beats c"]
    assert changes.only_here == ["s: new"] and changes.only_there == ["s: old"]
    lines = "\n".join(compare.comparison_lines(full, short, "`short.md`"))
    assert "This document: 1 epoch, 165,000 training images per run. `short.md`: 1 epoch, 6,400" in lines
    assert "Of the 2 claims judged in both, 1 keep their verdict and 1 change:" in lines
    assert "| 2 | a beats b | inconclusive | 0.0100 | −0.0500 [−0.0800, −0.0200] | **supported** |" in lines
    assert "too few finished seeds in one of the two (1):\n\n- s: b beats c" in lines
    assert "Only in this document (1):\n\n- s: new" in lines
    assert "Only in `short.md` (1):\n\n- s: old" in lines


def test_budget_text_spans_epochs_and_images() -> None:
    studies = [
        {"budget": {"a": {"epochs": 3, "train_images": 165_000}, "b": {"epochs": 7, "train_images": 385_000}}}
    ]
    assert compare.budget_text(studies) == "3–7 epochs, 165,000–385,000 training images per run"


def test_a_comparison_is_read_from_the_md_or_its_json_twin(tmp_path: Path) -> None:
    report = tmp_path / "short.md"
    report.write_text("# report")
    compare.write_twin(report, _combined(6_400, {"a beats b": "supported"}))
    for given in (report, tmp_path / "short.json"):
        data = compare.load_comparison(given)
        assert data["studies"][0]["claims"][0]["verdict"] == "supported"
        assert not list(tmp_path.glob(".*.part"))  # written atomically: no temporary left


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("{not json", "is not readable JSON"),
        ('{"kind": "something else", "studies": []}', "is not a combined report's results"),
        (f'{{"kind": "{compare.KIND}", "version": 99, "studies": []}}', "upgrade fashion-cnn"),
    ],
)
def test_an_unusable_comparison_is_named_with_the_fix(tmp_path: Path, content, fragment) -> None:
    report = tmp_path / "short.md"
    report.write_text("# report")
    if content is not None:
        (tmp_path / "short.json").write_text(content)
    with pytest.raises(StudyError, match=fragment) as info:
        compare.load_comparison(report)
    assert str(info.value).startswith(f"--compare_with {report}: ")


def test_the_time_estimate_scales_unseen_variants_by_their_budget() -> None:
    from fashion_cnn.runs.progress import Estimator

    short, long, other = ("s", "three_epochs"), ("s", "seven_epochs"), ("s", "no_budget")
    budgets = {short: 3 * 55_000, long: 7 * 55_000}
    estimate = Estimator(slots=2, budgets=budgets)
    assert estimate.left([(short, 0.0), (long, 0.0)]) is None  # nothing trained yet: no estimate
    estimate.record(short, 600.0)
    estimate.record(short, 660.0)
    # Seen: its own mean (630 s). Unseen: 630 s per 3 epochs, so 1,470 s for 7. Two at once.
    assert estimate.left([(short, 0.0), (long, 0.0)]) == pytest.approx((630.0 + 1470.0) / 2)
    assert estimate.left([(other, 0.0)]) == pytest.approx(630.0 / 2)  # no budget: the mean run
    # A run that continues from its checkpoint has only the rest to train; never less than nothing.
    assert estimate.left([(long, 1000.0), (short, 900.0)]) == pytest.approx((470.0 + 0.0) / 2)
    assert Estimator(1).left([(short, 0.0)]) is None


def test_a_continued_run_counts_with_its_earlier_part() -> None:
    """A run that went on from its checkpoint took its earlier part too: the estimate for the
    other seeds must not learn from the last part alone, nor count the continued run in full."""
    from fashion_cnn.runs.progress import Progress

    lines: list[str] = []

    class Recorded(Progress):
        def note(self, line: str) -> None:
            lines.append(line)

    key = ("ultimate", "ultimate")
    progress = Recorded()
    progress.begin([key, key, key], slots=1, budgets={key: 7 * 55_000}, kept=[0.0, 6000.0, 0.0])
    progress.finished(key, "[ultimate] ultimate seed 1", 1200.0, "test/acc 0.9295", kept=6000.0)
    assert "done in 20 min 00 s (2 h 00 min with its earlier part)" in lines[-1]
    assert progress.estimator.durations[key] == [7200.0]
    assert progress.status() == "1 done, 0 running, 0 failed, 2 left, ~4 h 00 min to go"
    progress.finished(key, "[ultimate] ultimate seed 0", 7200.0, "test/acc 0.9262")
    assert "done in 2 h 00 min " in lines[-1] and "earlier part" not in lines[-1]
    assert progress.status().endswith("1 left, ~2 h 00 min to go")
