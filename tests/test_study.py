"""Studies: the statistics, the claim verdicts, study-file validation and a tiny study end to end.

The end-to-end tests run the real CLI on the synthetic data (200 train / 50 test images) with a
2-layer, 4-filter network for a few batches, so a run takes seconds.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fashion_cnn import _stats, study
from fashion_cnn.cli import main
from fashion_cnn.study import (
    Metric,
    StudyError,
    evaluate_claim,
    load_study,
    parse_claim,
    split_overrides,
    study_main,
)

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "configs" / "studies").glob("*.yaml"))
LOSS, ACC = Metric("test/loss", "lower"), Metric("test/acc", "higher")
TINY = [
    "--model.layers=2",
    "--model.hidden=16",
    "--model.pool_every=1",
    "--data.val_size=40",
    "--data.batch_size=32",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
]


# --------------------------------------------------------------------------------------------
# Statistics against reference values


@pytest.mark.parametrize(
    ("t", "df", "sf"),
    [
        (2.0, 5, 0.050969739414929),  # textbook table: P(T_5 > 2.015) = 0.05
        (1.0, 1, 0.25),  # Cauchy: 1/2 - atan(1)/pi
        (0.0, 7.3, 0.5),
        (-2.0, 5, 1 - 0.050969739414929),
        (3.0, 2, 0.5 - 3 / (2 * math.sqrt(2 + 9))),  # closed form for df = 2
    ],
)
def test_t_survival_function(t: float, df: float, sf: float) -> None:
    assert _stats.t_sf(t, df) == pytest.approx(sf, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    ("q", "df", "quantile"),
    [
        (0.975, 2, 4.302652729749),
        (0.975, 10, 2.228138851986),
        (0.95, 1, 6.313751514675),
        (0.975, 1e6, 1.959966),
    ],
)
def test_t_quantiles_match_tables(q: float, df: float, quantile: float) -> None:
    assert _stats.t_ppf(q, df) == pytest.approx(quantile, rel=1e-6)


def test_welch_matches_the_textbook_example() -> None:
    # Wikipedia, "Welch's t-test", example 1: t = -2.46, df = 24.99, two-sided p = 0.021.
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    d = _stats.welch(a1, a2)
    assert d.diff / d.se == pytest.approx(-2.455356398286, rel=1e-9)
    assert d.df == pytest.approx(24.988529290231, rel=1e-9)
    assert 2 * d.p_less() == pytest.approx(0.021378001462867, rel=1e-8)
    assert d.p_greater() == pytest.approx(1 - d.p_less())


def test_mean_ci_by_hand() -> None:
    ci = _stats.mean_ci([1, 2, 3, 4, 5])  # s = sqrt(2.5), t_{.975,4} = 2.776445
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.low == pytest.approx(3 - half) and ci.high == pytest.approx(3 + half)
    assert math.isnan(_stats.mean_ci([1.0]).low)


def test_stats_agree_with_scipy_on_random_samples() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(20):
        a = [rng.gauss(0, 1) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(0.5, 2) for _ in range(rng.randint(2, 8))]
        ours = _stats.welch(a, b)
        ref = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater")
        assert ours.p_greater() == pytest.approx(ref.pvalue, rel=1e-8)
        one = scipy_stats.ttest_1samp(a, 0.2, alternative="less")
        assert _stats.welch(a, 0.2).p_less() == pytest.approx(one.pvalue, rel=1e-8)


# --------------------------------------------------------------------------------------------
# Claims: grammar and verdicts on planted samples

GOOD = [0.30, 0.31, 0.29, 0.305]  # clearly lower loss
BAD = [0.40, 0.41, 0.39, 0.405]
NOISY = [0.20, 0.45, 0.33, 0.52]  # overlaps both


def _claim(text: str, variants=("good", "bad", "noisy"), metrics=(LOSS, ACC)):
    return parse_claim(text, list(variants), list(metrics))


def _verdict(text: str, samples=None, metric=LOSS) -> study.Evaluation:
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
        (("seeds: 2", "seeds: two"), ["seeds", "seed count"]),
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
    assert split_overrides(
        ["--trainer.max_epochs", "1", "--trainer.limit_train_batches=20", "--model.lr", "-1"]
    ) == ["--trainer.max_epochs=1", "--trainer.limit_train_batches=20", "--model.lr=-1"]
    with pytest.raises(StudyError, match="needs a value"):
        split_overrides(["--trainer.max_epochs"])
    with pytest.raises(StudyError, match="use --seeds"):
        split_overrides(["--seed_everything", "3"])


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
# End to end on synthetic data


TINY_STUDY = """
# A tiny study for the tests.
title: Tiny study
part: "1"
hypothesis: Four filters beat two.
seeds: 2
curves: [val/acc, val/loss]
variants:
  - {name: two, overrides: {model.filters: 2}, journal: {test/loss: 2.3}}
  - {name: four, overrides: {model.filters: 4}, journal: {test/acc: 0.1}}
expected:
  - {claim: four beats two on test/acc, journal: "more filters help"}
  - {claim: four is between -10 and 10 on test/loss, journal: "planted true"}
  - {claim: four is between 5 and 10 on test/loss, journal: "planted false"}
"""


class _Counting:
    """Wraps run_experiment: counts calls and can raise KeyboardInterrupt on a chosen call."""

    def __init__(self, real, interrupt_at: int | None = None) -> None:
        self.real, self.interrupt_at, self.calls = real, interrupt_at, []

    def __call__(self, config, overrides=(), subcommand="fit"):
        self.calls.append([a for a in overrides if a.startswith(("--seed_everything", "--run_name"))])
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(config, overrides, subcommand)


def _children(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_tiny_study_end_to_end_with_restart(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fashion_cnn import cli

    path = _write(workdir, TINY_STUDY, "tiny.yaml")
    combined = workdir / "docs" / "reproduced.md"
    argv = ["study", str(path), *TINY, "--combined-report", str(combined)]

    # First attempt: "Ctrl+C" as the third of four runs starts.
    first = _Counting(cli.run_experiment, interrupt_at=3)
    monkeypatch.setattr(cli, "run_experiment", first)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    (parent,) = client.search_runs([exp.experiment_id], "tags.study_role = 'parent'")
    assert parent.info.status == "KILLED"
    done_before = {r.info.run_id for r in _children(client, parent.info.run_id)}
    assert len(done_before) == 2

    # Second attempt: only the two missing runs train, under the same parent.
    second = _Counting(cli.run_experiment)
    monkeypatch.setattr(cli, "run_experiment", second)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert sorted(second.calls) == sorted(
        first.calls[2:3] + [["--seed_everything=1", "--run_name=tiny-four"]]
    )
    assert "left" in err and "done" in err  # progress with runs done / left and a time estimate
    (parent,) = client.search_runs([exp.experiment_id], "tags.study_role = 'parent'")
    assert parent.info.status == "FINISHED"
    children = _children(client, parent.info.run_id)
    assert len(children) == 4 and done_before <= {r.info.run_id for r in children}
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in children} == {
        ("two", "0"),
        ("two", "1"),
        ("four", "0"),
        ("four", "1"),
    }
    assert all(r.info.status == "FINISHED" and r.data.tags["study"] == "tiny" for r in children)
    assert all(r.data.params["filters"] in ("2", "4") and "test/acc" in r.data.metrics for r in children)

    # The report, its figures and data, in the output folder and on the parent run.
    out = workdir / "studies" / "tiny"
    report = (out / "report.md").read_text()
    for name in ("final_metrics.png", "learning_curves.png", "results.json"):
        assert (out / name).stat().st_size > 0
    assert report.startswith("# Tiny study")
    assert "> Four filters beat two." in report
    assert "| two |" in report and "(n = 2)" in report and "2.3000" in report  # journal beside ours
    assert "**supported** (four is between -10 and 10 on test/loss)" in report
    assert "**not supported** (four is between 5 and 10 on test/loss)" in report
    assert "Welch's t-test, one-sided" in report
    assert "four and two differ in: model.filters (4 vs 2)." in report
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/final_metrics.png", "report/learning_curves.png"} <= artifacts
    doc = combined.read_text()
    assert "## Tiny study" in doc and "trainer.max_epochs" in doc and "Training was shortened" in doc
    assert "## Where our data contradicts the journal" in doc and "planted false" in doc
    assert "4 runs: 4 trained" in doc and "0 reused" in doc

    # A crashed child (left KILLED) is run again; nothing else is.
    victim = next(r for r in children if r.data.tags["variant"] == "two" and r.data.tags["seed"] == "0")
    client.set_terminated(victim.info.run_id, "KILLED")
    third = _Counting(cli.run_experiment)
    monkeypatch.setattr(cli, "run_experiment", third)
    assert main(argv) == 0
    assert third.calls == [["--seed_everything=0", "--run_name=tiny-two"]]
    capsys.readouterr()

    # Another study with a variant of the same settings reuses its finished runs, under its own parent.
    other = _write(
        workdir,
        """
title: Other
hypothesis: Six filters beat four.
variants:
  - {name: six, overrides: {model.filters: 6}}
  - {name: four, overrides: {model.filters: 4}}
expected: [six beats four on test/acc]
""",
        "other.yaml",
    )
    fourth = _Counting(cli.run_experiment)
    monkeypatch.setattr(cli, "run_experiment", fourth)
    assert main(["study", str(other), *TINY, "--seeds", "1"]) == 0
    assert fourth.calls == [["--seed_everything=0", "--run_name=other-six"]]
    assert "reused its results" in capsys.readouterr().err
    (other_parent,) = client.search_runs(
        [exp.experiment_id], "tags.study = 'other' AND tags.study_role = 'parent'"
    )
    copies = [r for r in _children(client, other_parent.info.run_id) if "reused_from" in r.data.tags]
    assert len(copies) == 1 and copies[0].data.tags["variant"] == "four"
    original = client.get_run(copies[0].data.tags["reused_from"])
    assert copies[0].data.metrics == original.data.metrics


def test_dry_run_plans_without_running(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code = study_main([*map(str, STUDIES), "--dry-run", "--seeds", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "(dry run)" in err and "[dropout]" in err and "seeds to run: [0, 1]" in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "studies").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["missing.yaml"], "missing.yaml does not exist"),
        ([], "required: studies"),
        ([str(REPO / "configs" / "studies" / "dropout.yaml"), "--model.colour", "3"], "model.colour"),
        ([str(REPO / "configs" / "studies" / "dropout.yaml"), "--model.dropout=1.5"], "dropout=1.5"),
        ([str(REPO / "configs" / "studies" / "dropout.yaml"), "--seeds", "0"], "--seeds"),
    ],
)
def test_user_errors_are_one_line(workdir: Path, capsys: pytest.CaptureFixture, argv, fragment) -> None:
    code = main(["study", *argv, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fashion-cnn: error:") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_training_budget_is_counted_in_images() -> None:
    resolved = {
        "trainer": {
            "max_epochs": 2,
            "limit_train_batches": 30.0,
            "limit_val_batches": 4.0,
            "limit_test_batches": None,
        },
        "data": {"batch_size": 64, "val_size": 5000},
    }
    assert study._images_per_run(resolved) == (2, 2 * 30 * 64, 4 * 256, 10_000)
    full = {"trainer": {"max_epochs": 3}, "data": {"batch_size": 64, "val_size": 5000}}
    assert study._images_per_run(full) == (3, 3 * 55_000, 5000, 10_000)
    half = {
        "trainer": {"max_epochs": 1, "limit_train_batches": 0.5},
        "data": {"batch_size": 100, "val_size": 0},
    }
    assert study._images_per_run(half)[1] == 300 * 100
