"""Adaptive seeds in the study runner: which variants get more seeds, and a rerun that goes on.

The statistics (boundaries, error rates) are tested in tests/test_sequential.py; here the runner's
use of them, on results written by hand (no training), and one tiny real adaptive study.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from fashion_cnn.lightning_cli import ConfigResolver
from fashion_cnn.runs.progress import Progress
from fashion_cnn.study import StudyError, load_study, plan_study
from fashion_cnn.study.runner import _grow, _schedules

STUDY = """
title: Adaptive
hypothesis: a learns, c does not; a and b are close.
variants:
  - {name: a, overrides: {model.filters: 4}}
  - {name: b, overrides: {model.filters: 5}}
  - {name: c, overrides: {model.filters: 6}}
expected:
  - a beats c on test/acc
  - a beats b on test/acc
"""


class Notes(Progress):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)


def _plan(tmp_path: Path, seeds: int = 3):
    path = tmp_path / "adaptive.yaml"
    path.write_text(STUDY)
    return plan_study(load_study(path), [], list(range(seeds)), "e", tmp_path, ConfigResolver())


def _finish(plan, values: dict[str, list[float]]) -> None:
    """Finished runs with these test/acc values, one per seed in order."""
    for variant, accs in values.items():
        for seed, acc in zip(plan.seeds_of(variant), accs, strict=False):
            plan.finished[(variant, seed)] = SimpleNamespace(data=SimpleNamespace(metrics={"test/acc": acc}))


def test_only_the_variants_of_undecided_claims_get_more_seeds(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    schedule = _schedules([plan], 12)[plan.study.name]
    assert schedule.looks == (3, 5, 8, 12)
    _finish(plan, {"a": [0.80, 0.82, 0.81], "b": [0.80, 0.81, 0.79], "c": [0.10, 0.11, 0.09]})
    progress = Notes()
    assert _grow(plan, schedule, progress)
    # a beats c is decided at the first look; a beats b is not: a and b go on to 5 seeds, c stays.
    assert plan.seeds_of("c") == [0, 1, 2]
    assert plan.seeds_of("a") == plan.seeds_of("b") == [0, 1, 2, 3, 4]
    assert {(v, s) for v, s in ((vp.variant.name, s) for vp, s in plan.todo)} == {
        ("a", 3),
        ("a", 4),
        ("b", 3),
        ("b", 4),
    }
    assert progress.lines[-1] == (
        "[adaptive] at 3 seeds, claims: 1 supported, 1 undecided; more seeds for a (to 5), b (to 5)"
    )
    assert not _grow(plan, schedule, progress)  # nothing new to judge until those seeds finish


def test_a_study_that_needs_no_more_seeds_says_so_once(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    schedule = _schedules([plan], 12)[plan.study.name]
    _finish(plan, {"a": [0.80, 0.82, 0.81], "b": [0.50, 0.51, 0.49], "c": [0.10, 0.11, 0.09]})
    progress = Notes()
    assert not _grow(plan, schedule, progress)
    assert not _grow(plan, schedule, progress)  # the next round: already said
    assert progress.lines == [
        "[adaptive] at 3 seeds, claims: 2 supported; no more seeds: each is decided or futile"
    ]
    assert plan.seeds_of("a") == [0, 1, 2] and not plan.todo
    # With the maximum reached, an undecided claim stops too, and the line says why.
    plan = _plan(tmp_path)
    schedule = _schedules([plan], 5)[plan.study.name]
    plan.grow("a", 5)
    plan.grow("b", 5)
    _finish(plan, {"a": [0.80, 0.83, 0.81, 0.80, 0.82], "b": [0.79, 0.82, 0.80, 0.80, 0.81], "c": [0.1] * 3})
    progress = Notes()
    assert not _grow(plan, schedule, progress)
    assert progress.lines == [
        "[adaptive] at 5 seeds, claims: 1 supported, 1 undecided; no more seeds: the undecided ones reached the "
        "maximum of 5 seeds"
    ]


def test_a_rerun_goes_on_from_the_block_where_it_stopped(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    schedule = _schedules([plan], 12)[plan.study.name]
    # Runs of an earlier invocation: the first block and the second, finished.
    done = {"a": [0.80, 0.82, 0.81, 0.83, 0.80], "b": [0.80, 0.81, 0.79, 0.81, 0.80], "c": [0.1, 0.11, 0.09]}
    plan.grow("a", 5)
    plan.grow("b", 5)
    _finish(plan, done)
    plan.added.clear()  # a fresh invocation knows only the study's seeds ...
    assert _grow(plan, schedule, Notes(), until_missing=True)
    # ... and judges its way to the first block with runs missing.
    assert len(plan.seeds_of("a")) == len(plan.seeds_of("b")) >= 8 and plan.seeds_of("c") == [0, 1, 2]
    assert plan.todo and all(vp.variant.name in ("a", "b") for vp, _ in plan.todo)


def test_max_seeds_below_the_seeds_asked_for_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path, seeds=5)
    with pytest.raises(StudyError, match="--max_seeds 3 is below the 5 seeds asked for"):
        _schedules([plan], 3)


REAL_STUDY = """
title: Adaptive, real
hypothesis: A net that learns beats one that cannot; two close widths stay close.
seeds: 3
variants:
  - {name: a, overrides: {model.filters: 8, model.lr: 3.0e-3}}
  - {name: b, overrides: {model.filters: 7, model.lr: 3.0e-3}}
  - {name: c, overrides: {model.filters: 8, model.lr: 1.0e-9}}
expected:
  - a beats c on test/acc
  - a beats b on test/acc
"""
TINY = [
    "--model.layers=2",
    "--model.hidden=16",
    "--model.pool_every=1",
    "--data.batch_size=64",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=60",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=4",
    "--trainer.enable_progress_bar=false",
]


@pytest.mark.integration
@pytest.mark.realdata
def test_a_real_adaptive_study_adds_seeds_only_where_claims_are_undecided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_data_dir: Path
) -> None:
    from fashion_cnn.study import run_studies

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(real_data_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "adaptive.yaml"
    path.write_text(REAL_STUDY)
    progress = Notes()
    (plan,) = run_studies([path], overrides=TINY, max_seeds=5, progress=progress)
    # a learns and c cannot: decided at the first look, so c never gets a fourth seed.
    assert plan.seeds_of("c") == [0, 1, 2]
    # a and b go on together, to the maximum at most (3 -> 5), and every run of them finished.
    assert len(plan.seeds_of("a")) == len(plan.seeds_of("b")) in (3, 5)
    assert len(plan.finished) == plan.total == 3 + 2 * len(plan.seeds_of("a"))
    data = __import__("json").loads((tmp_path / "studies" / "adaptive" / "results.json").read_text())
    states = {c["claim"]: c["state"] for c in data["adaptive"]["claims"]}
    assert states["a beats c on test/acc"] == "supported"
    assert data["adaptive"]["looks"] == [3, 5]
    # Each claim is described on the seeds of the look that settled it: "a beats c" at 3, even if
    # a went on to 5 for the other claim.
    for claim, state in zip(data["claims"], data["adaptive"]["claims"], strict=True):
        assert claim["seeds"] == state["seeds"]
    assert data["claims"][0]["seeds"] == 3
    report = (tmp_path / "studies" / "adaptive" / "report.md").read_text()
    assert "### Adaptive seeds" in report and f"Runs: {plan.total}, against 15" in report
    # Run again: everything is there, nothing trains, the same seeds are judged.
    (again,) = run_studies([path], overrides=TINY, max_seeds=5, progress=Notes())
    assert again.added == plan.added and not again.todo
