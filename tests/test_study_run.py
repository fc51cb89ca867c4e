"""Running studies through the real CLI: a tiny study end to end with restart and reuse, the plan,
the one parser, the console, and the hashes that let a rerun find its runs.

The runs train a 2-layer network on the synthetic data (200 train / 50 test images) for a few
batches, so each takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fashion_cnn.cli import main
from fashion_cnn.runs import executors
from fashion_cnn.runs.launch import launch
from fashion_cnn.study import load_study, plan_study
from fashion_cnn.study.plan import images_per_run

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "fashion_cnn" / "configs" / "studies").glob("*.yaml"))
TINY = [
    "--model.layers=2",
    "--model.hidden=16",
    "--model.pool_every=1",
    "--data.val_size=40",
    "--data.batch_size=32",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
]
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


def _write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


class _Counting:
    """Wraps launch: records (variant, seed) per call and can raise KeyboardInterrupt on one."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.interrupt_at, self.calls = interrupt_at, []

    def __call__(self, trial):
        self.calls.append(trial.key[1:])
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return launch(trial)


def _children(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.mark.integration
def test_tiny_study_end_to_end_with_restart(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = _write(workdir, TINY_STUDY, "tiny.yaml")
    report_file = workdir / "docs" / "reproduced.md"
    argv = ["study", str(path), *TINY, "--combined_report", str(report_file)]

    # First attempt: "Ctrl+C" as the third of four runs starts.
    first = _Counting(interrupt_at=3)
    monkeypatch.setattr(executors, "launch", first)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    # The display counts runs, not variants: 4 to train, 2 variants.
    assert "1 done, 0 running, 0 failed, 3 left" in err and "2 done, 0 running, 0 failed, 2 left" in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the runs
    (parent,) = client.search_runs([exp.experiment_id], "tags.study_role = 'parent'")
    assert parent.info.status == "KILLED"
    done_before = {r.info.run_id for r in _children(client, parent.info.run_id)}
    assert len(done_before) == 2
    assert main([*argv, "--report_only"]) == 0  # a report of what has finished says it is partial
    assert "**Incomplete: 2 of 4 runs have finished.**" in report_file.read_text()
    capsys.readouterr()

    # Second attempt: only the two missing runs train, under the same parent.
    second = _Counting()
    monkeypatch.setattr(executors, "launch", second)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert sorted(second.calls) == sorted([first.calls[2], ("four", 1)])
    # The console: one progress display and a line per run; Lightning's output is in the run logs.
    assert "done, 0 running, 0 failed, 0 left" in err and "test/acc" in err
    # What runs where, where the report is, and the command that shows the runs (issue 23).
    assert "study: runs train on the serial executor (in this process, all cores each)" in err
    assert "[tiny] see its runs: fashion-cnn ui --run " in err
    for noise in ("GPU available", "Test metric", "LOCAL_RANK", "Tip:", "┏"):
        assert noise not in err, noise
    logs = sorted((workdir / "studies" / "tiny" / "logs").glob("*.log"))
    assert [p.name for p in logs] == [
        f"tiny-{v}-seed{s}.log" for v, s in [("four", 0), ("four", 1), ("two", 0), ("two", 1)]
    ]
    assert all(p.with_suffix(".yaml").is_file() for p in logs)
    assert "Test metric" in "".join(p.read_text() for p in logs)
    assert not (workdir / "runs").exists() and not (workdir / "evaluation").exists()  # nothing in the cwd
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
    assert all(r.data.tags["executor"] == "serial" and r.data.tags["machine.cpu"] for r in children)
    assert all(
        r.data.params["net/init_args/filters"] in ("2", "4") and "test/acc" in r.data.metrics
        for r in children
    )
    for run in children:  # checkpoints and the evaluation report beside them, under the study's folder
        name = f"tiny-{run.data.tags['variant']}-seed{run.data.tags['seed']}"
        folder = workdir / "studies" / "tiny" / "runs" / name / run.info.run_id
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (
            folder / "evaluation" / "per_class.csv"
        ).is_file()

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
    # What the seeds can tell (issue 21): the table, the FDR line, the claims figure.
    assert "### What these seeds can and cannot tell" in report and "Benjamini–Hochberg" in report
    assert (out / "claims.png").stat().st_size > 0 and "![Claims at a glance" in report
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/final_metrics.png", "report/learning_curves.png"} <= artifacts
    doc = report_file.read_text()
    assert "## Tiny study" in doc and "trainer.max_epochs" in doc and "Training was shortened" in doc
    assert "## Where our data contradicts the journal" in doc and "planted false" in doc
    assert "4 runs: 4 trained" in doc and "0 reused" in doc
    assert "Where they trained: 4 runs on the serial executor, " in doc and "torch threads" in doc
    assert "fashion-cnn study " + str(path) in doc and "--trainer.max_epochs 1" in doc

    twin = json.loads(report_file.with_suffix(".json").read_text())  # the results beside the document
    (tiny,) = twin["studies"]
    assert tiny["budget"]["four"] == {"epochs": 1, "train_images": 3 * 32}
    assert [c["verdict"] for c in tiny["claims"]][1:] == ["supported", "not supported"]
    assert {"p_fdr", "detectable", "seeds_needed", "equivalence"} <= set(tiny["claims"][1])
    assert (
        twin["fdr"]["method"] == "Benjamini-Hochberg"
        and (report_file.parent / "reproduced_claims.png").is_file()
    )

    # The same runs rebuilt into a second document set against the first: every claim keeps its
    # verdict. Judged on one seed, no claim can be tested, and the comparison says so.
    again = workdir / "docs" / "again.md"
    rebuild = [*argv[:-1], str(again), "--report_only", "--compare_with", str(report_file)]
    assert main(rebuild) == 0
    doc = again.read_text()
    assert "## Verdicts that change against `reproduced.md`" in doc
    assert "1 epoch, 96 training images per run. `reproduced.md`: 1 epoch, 96 training images" in doc
    assert "Of the 3 claims judged in both, 3 keep their verdict and 0 change." in doc
    assert "Incomplete" not in doc and "Incomplete" not in report_file.read_text()
    assert "rebuilt from the finished runs with `--report_only`" in doc
    command = doc.split("```")[1]  # the command that trains these runs: no --report_only
    assert "--compare_with" in command and "--report_only" not in command
    one_seed = workdir / "docs" / "one_seed.md"
    assert (
        main([*argv[:-1], str(one_seed), "--seeds", "1", "--report_only", "--compare_with", str(again)]) == 0
    )
    capsys.readouterr()
    doc = one_seed.read_text()
    assert "Of the 0 claims judged in both" in doc
    assert "Not compared: too few finished seeds in one of the two (3):" in doc
    assert "- tiny: four is between 5 and 10 on test/loss" in doc
    assert "| **inconclusive** |" not in doc.split("## Verdicts that change")[1].split("## Where")[0]

    # A crashed child (left KILLED) is run again; nothing else is.
    victim = next(r for r in children if r.data.tags["variant"] == "two" and r.data.tags["seed"] == "0")
    client.set_terminated(victim.info.run_id, "KILLED")
    third = _Counting()
    monkeypatch.setattr(executors, "launch", third)
    assert main(argv) == 0
    assert third.calls == [("two", 0)]
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
  - {name: also_six, overrides: {model.filters: 6}}
expected: [six beats four on test/acc]
""",
        "other.yaml",
    )
    fourth = _Counting()
    monkeypatch.setattr(executors, "launch", fourth)
    assert main(["study", str(other), *TINY, "--seeds", "1"]) == 0
    assert fourth.calls == [("six", 0)]  # four: a finished run; also_six: the same trial as six
    assert "reused its results" in capsys.readouterr().err
    (other_parent,) = client.search_runs(
        [exp.experiment_id], "tags.study = 'other' AND tags.study_role = 'parent'"
    )
    copies = [r for r in _children(client, other_parent.info.run_id) if "reused_from" in r.data.tags]
    assert sorted(r.data.tags["variant"] for r in copies) == ["also_six", "four"]
    for copy in copies:
        source = client.get_run(copy.data.tags["reused_from"])
        assert copy.data.metrics == source.data.metrics
        assert copy.data.tags["machine.cpu"] == source.data.tags["machine.cpu"]  # where it was computed


def test_a_failing_run_stops_the_study_with_its_message(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(workdir, TINY_STUDY, "tiny.yaml")
    # Parses and builds, but the synthetic data has 200 training images: setup fails in the run.
    code = main(["study", str(path), *TINY, "--data.val_size=500"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "[tiny] two seed 0" in err and "val_size=500" in err and "tiny-two-seed0.log" in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("study_role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("study_role") == "trial"]
    assert parent.info.status == "FAILED"
    assert len(trials) <= 1 and all(r.info.status == "FAILED" for r in trials)  # stopped at the first


def test_dry_run_plans_without_running(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["study", *map(str, STUDIES), "--dry_run", "--seeds", "2"])  # a switch: no value needed
    err = capsys.readouterr().err
    assert code == 0, err
    assert "(dry run)" in err and "[dropout]" in err and "seeds to run: [0, 1]" in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "studies").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["missing.yaml"], "missing.yaml does not exist"),
        ([], "missing studies"),
        (["studies/dropout", "--model.colour", "3"], "model.colour"),
        (["studies/dropout", "--model.dropout=1.5"], "dropout=1.5"),
        (["studies/dropout", "--seeds", "0"], "--seeds"),
        (["studies/dropout", "--trainer.max_epochs", "many"], "trainer.max_epochs"),
        (["studies/dropout", "--executor", "dask"], "dask"),
        (["studies/dropout", "--workers", "0"], "--workers 0"),
        (["studies/dropout", "--workers", "2"], "need --executor ray"),
        (["studies/dropout", "--trainer.logger.init_args.run_id", "x"], "the study creates its own runs"),
        (["--report_only", "studies/dropout"], "--report_only is a switch"),
        (["studies/dropout", "--compare_with", "short.md"], "give --combined_report too"),
        (
            ["studies/dropout", "--combined_report", "a.md", "--compare_with", "short.md"],
            "short.md does not exist",
        ),
        (["studies/dropout", "--combined_report", "journal.json"], "name the Markdown file (.md)"),
        (["studies/dropout", "--max_seeds", "2"], "--max_seeds 2 is below the 3 seeds asked for"),
    ],
)
def test_user_errors_are_one_clear_message(
    workdir: Path, capsys: pytest.CaptureFixture, argv, fragment
) -> None:
    code = main(["study", *argv, "--dry_run", "true"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fashion-cnn: error:") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the problem, and where to look
    assert not (workdir / "mlflow.db").exists()


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "study", "export", "sweep", "configs"):
        assert f"    {name} " in out, name
    for name in ("study", "export", "configs", "sweep", "fit"):
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--config" in text and "--print_config" in text, name


def test_study_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "study",
        "studies/dropout",
        "--seeds",
        "[0,1,7]",
        "--trainer.max_epochs",
        "1",
        "--dry_run",
        "true",
    ]
    assert main([*args, "--print_config"]) == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["seeds"] == [0, 1, 7] and config["trainer"] == {"max_epochs": 1}
    saved = tmp_path / "study.yaml"
    saved.write_text(printed)
    assert main(["study", "--config", str(saved), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


def test_shipped_study_hashes_are_pinned() -> None:
    """A rerun finds its finished runs by these hashes: a change to them orphans every user's runs
    (and this project's full-budget reproduction). Change them only on purpose."""
    pinned = {
        "baseline": "0d7806f4169f",
        "depth_width": "5e257126e9ca",
        "dropout": "3066d16199a8",
        "normalisation": "b2cbd32fb7f5",
        "combined": "40b5a736756a",
        "ultimate": "da4f452b74b6",
        "skip_connections": "c260a14a40df",  # new in issue 20; the journal's six are unchanged
    }
    from fashion_cnn.lightning_cli import ConfigResolver

    resolver = ConfigResolver()
    hashes = {p.stem: plan_study(load_study(p), resolver=resolver).study_hash for p in STUDIES}
    assert {k: hashes[k] for k in pinned} == pinned


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
    assert images_per_run(resolved) == (2, 2 * 30 * 64, 4 * 256, 10_000)
    full = {"trainer": {"max_epochs": 3}, "data": {"batch_size": 64, "val_size": 5000}}
    assert images_per_run(full) == (3, 3 * 55_000, 5000, 10_000)
    half = {
        "trainer": {"max_epochs": 1, "limit_train_batches": 0.5},
        "data": {"batch_size": 100, "val_size": 0},
    }
    assert images_per_run(half)[1] == 300 * 100


@pytest.mark.integration
def test_study_runs_twice_in_one_process_and_cleans_up(workdir: Path) -> None:
    """The runner as a library: twice in one interpreter, no SIGTERM/SIGINT handler left behind."""
    import signal

    from fashion_cnn.study import run_studies

    path = _write(workdir, TINY_STUDY.replace("seeds: 2", "seeds: 1"), "tiny.yaml")
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    overrides = [*TINY, "--trainer.enable_progress_bar=false"]
    first = run_studies([path], overrides=overrides)
    second = run_studies([path], overrides=overrides)
    assert len(first[0].finished) == len(second[0].finished) == 2
    assert {r.info.run_id for r in first[0].finished.values()} == {
        r.info.run_id for r in second[0].finished.values()
    }
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


@pytest.mark.realdata
@pytest.mark.integration
def test_study_console_script_in_an_empty_folder(tmp_path: Path) -> None:
    """A pip user's path: the packaged study, real data, the console script, nothing else in the folder."""
    done = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.cli", "study", "studies/dropout", "--seeds", "2", *TINY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "studies" / "dropout" / "report.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mlflow.db",
        "mlflow.db.lock",
        "mlruns",
        "studies",
    ]  # store, artifacts, study


class _Stop(Exception):
    """Raised by _Order once it has seen the trials: the order is the test, not the training."""


class _Order(executors.SerialExecutor):
    """Records the order the runner hands trials over in, with ``slots`` slots, and trains none."""

    name = "order"

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots, self.order = slots, []

    def run(self, runs, on_start, on_done) -> None:
        self.order += [t.key[1] for t in runs]
        raise _Stop


def test_a_parallel_executor_gets_the_longest_runs_first(workdir: Path) -> None:
    from fashion_cnn.study import run_studies

    path = _write(
        workdir,
        """
title: Budgets
hypothesis: Longer training helps.
variants:
  - {name: short, overrides: {trainer.max_epochs: 1}}
  - {name: long, overrides: {trainer.max_epochs: 2}}
  - {name: also_short, overrides: {trainer.max_epochs: 1, model.filters: 2}}
expected: [long beats short on test/acc]
""",
        "budgets.yaml",
    )
    overrides = [a for a in TINY if "max_epochs" not in a]
    parallel, serial = _Order(slots=2), _Order(slots=1)
    for executor in (parallel, serial):
        with pytest.raises(_Stop):
            run_studies([path], overrides=overrides, seeds=[0], executor=executor)
    assert parallel.order == ["long", "short", "also_short"]  # longest first, then plan order
    assert serial.order == ["short", "long", "also_short"]  # one slot: the plan's order


@pytest.mark.integration
def test_an_interrupted_run_continues_from_its_last_epoch(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """Ctrl+C in a run's second epoch; the same command again continues that run from the end of
    its first epoch, in the same MLflow run, and ends with the metrics of an uninterrupted run."""
    from fashion_cnn.runs import records as store

    path = _write(
        workdir,
        """
title: Resume
hypothesis: Two epochs train.
seeds: 1
variants:
  - {name: two_epochs, overrides: {trainer.max_epochs: 2}}
expected: [two_epochs is between 0 and 1 on test/acc]
""",
        "resume.yaml",
    )
    overrides = [a for a in TINY if "max_epochs" not in a]

    def study(folder: Path, marker: Path) -> tuple[int, str]:
        fault = (
            f'[{{"class_path": "_faults.InterruptOnce", "init_args": {{"marker": "{marker}", "step": 4}}}}]'
        )
        os.chdir(folder)  # its own store (./mlflow.db) and output (./studies/resume)
        code = main(["study", str(path), *overrides, "--trainer.callbacks", fault])
        return code, capsys.readouterr().err

    def trials(folder: Path) -> list:
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        exp = client.get_experiment_by_name("fashion-cnn-studies")
        return client.search_runs([exp.experiment_id], "tags.study_role = 'trial'")

    resumed, straight = workdir / "resumed", workdir / "straight"
    resumed.mkdir()
    straight.mkdir()
    (straight / "done").touch()  # its marker is there already: never interrupted
    assert study(straight, straight / "done")[0] == 0

    code, err = study(resumed, resumed / "interrupted")
    assert code == 130 and "rerun the same command" in err
    (killed,) = trials(resumed)
    assert killed.info.status == "KILLED"
    runs = resumed / "studies" / "resume" / "runs"
    checkpoints = runs / "resume-two_epochs-seed0" / killed.info.run_id / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()  # the end of epoch 1 of 2

    code, err = study(resumed, resumed / "interrupted")
    assert code == 0, err
    assert f"continues run {killed.info.run_id} from its last full epoch" in err
    (run,) = trials(resumed)  # the same run went on; no second one
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    (reference,) = trials(straight)
    for key in ("test/acc", "test/loss", "val/loss", "val/acc"):
        assert run.data.metrics[key] == reference.data.metrics[key], key
    history = MlflowClient(f"sqlite:///{resumed / 'mlflow.db'}").get_metric_history(
        run.info.run_id, "val/acc"
    )
    expected = MlflowClient(f"sqlite:///{straight / 'mlflow.db'}").get_metric_history(
        reference.info.run_id, "val/acc"
    )
    assert [(m.step, m.value) for m in history] == [(m.step, m.value) for m in expected]  # 2 epochs
    assert len(history) == 2
    # Its run time leaves out the pause between the two commands.
    assert store.TAG_RESUMED_AT in run.data.tags and float(run.data.tags[store.TAG_KEPT]) > 0
    assert store.run_seconds(run) < (run.info.end_time - run.info.start_time) / 1000.0
