"""Optuna sweeps through the real CLI: resume, pruning, two workers on a real PostgreSQL, bad input.

In-process sweeps train a 2-layer network on the synthetic data (200 train / 50 test images) for a
few batches with one torch thread, so a trial takes seconds. The two-worker test spawns processes,
which cannot see the synthetic data (it is patched into this process only), so it uses the real
files at a tiny budget.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import free_port, postgres

from fashion_cnn.cli import build_parser, main
from fashion_cnn.configs import packaged_root
from fashion_cnn.lightning_cli import ConfigResolver
from fashion_cnn.sweep import VALIDATION_METRICS, build_spec, parse_space
from fashion_cnn.sweep.search import make_sampler
from fashion_cnn.sweep.spec import SweepOptions, settings_of
from fashion_cnn.sweep.storage import open_storage

SWEEPS = packaged_root() / "sweeps"
TINY_SWEEP = """
# A tiny sweep for the tests.
name: tiny
n_trials: 2
startup_trials: 1
pruner: none
run_cpus: 1
space:
  model.filters: {type: categorical, choices: [2, 4]}
  model.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
model: {layers: 2, hidden: 16, pool_every: 1}
data: {val_size: 40, batch_size: 32}
trainer: {max_epochs: 1, limit_train_batches: 3, enable_model_summary: false}
"""


class InterruptOnce(L.Callback):
    """Ctrl+C (KeyboardInterrupt) in the middle of the first trial that runs after ``marker`` is made
    by an earlier trial: the second trial of a sweep is interrupted, once."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        path = Path(self.marker)
        state = path.read_text() if path.exists() else ""
        if state == "" and trainer.global_step == 1:
            path.write_text("one trial ran")
        elif state == "one trial ran" and trainer.global_step == 1:
            path.write_text("interrupted")
            raise KeyboardInterrupt


def _sweep_file(folder: Path, text: str = TINY_SWEEP, **changes) -> Path:
    spec = yaml.safe_load(text)
    for key, value in changes.items():
        spec[key] = value
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _study(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(folder / "optuna.journal")))


def _runs(client: MlflowClient, role: str) -> list:
    experiment = client.get_experiment_by_name("fashion-cnn-sweeps")
    return client.search_runs([experiment.experiment_id], f"tags.sweep_role = '{role}'", max_results=1000)


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fashion-cnn: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------
# Without training


def test_the_shipped_sweep_and_its_best_config_parse_through_the_real_cli() -> None:
    config = build_parser().parse_args(["sweep", "--config", str(SWEEPS / "architecture.yaml")])
    options = {k: v for k, v in config["sweep"].items() if k in SweepOptions.__dataclass_fields__}
    groups = {g: config["sweep"][g] for g in ("model", "data", "trainer", "checkpoint")}
    spec = build_spec(SweepOptions(**options), settings=settings_of(groups))
    net = "model.net.init_args."
    assert spec.space.keys == [
        *(net + k for k in ("layers", "filters", "norm", "norm_groups", "dropout")),
        "model.optimizer.init_args.lr",
    ]
    assert spec.enqueue == (
        {net + "layers": 6, net + "filters": 64, net + "norm": "instance", net + "dropout": 0.1}
        | {"model.optimizer.init_args.lr": 0.001},
    )
    # The old flat keys still name the same settings.
    assert parse_space({"model.layers": {"type": "int", "low": 2, "high": 8}}).keys == [net + "layers"]
    best = SWEEPS / "architecture_best.yaml"
    if best.exists():
        resolved = ConfigResolver().resolve(best)
        assert resolved["model"]["net"]["init_args"]["layers"] >= 2


def test_the_same_seed_proposes_the_same_first_trials_and_a_rerun_does_not_repeat_them() -> None:
    space = parse_space(yaml.safe_load(TINY_SWEEP)["space"])

    def first(existing: int, worker: int) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler("tpe", 0, 1, existing, worker))
        proposals = []
        for _ in range(3):
            trial = study.ask()
            proposals.append(space.suggest(trial))
            study.tell(trial, 0.5)
        return proposals

    assert first(0, 0) == first(0, 0)
    assert first(0, 0)[0] != first(2, 0)[0]  # a rerun after 2 trials
    assert first(0, 0)[0] != first(0, 1)[0]  # a second worker


def test_a_trial_whose_worker_was_killed_is_marked_failed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from fashion_cnn.sweep.search import fail_dead_trials

    url = str(tmp_path / "optuna.journal")
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, alive = study.ask(), study.ask()
    dead.set_user_attr("worker", f"{socket.gethostname()}:{int(gone.stdout)}")
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    assert fail_dead_trials(study, storage, url) == [dead.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {dead.number: "FAIL", alive.number: "RUNNING"}
    assert "ended while it ran" in study.trials[dead.number].user_attrs["fail_reason"]


# --------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status 2, before any trial


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"space": {"model.net.init_args.lyers": {"type": "int", "low": 2, "high": 4}}},
            "model.net.init_args.lyers is not a config key of fit",
        ),
        ({"space": {"model.dropout": {"type": "float", "low": 0.2, "high": 0.2}}}, "the range is empty"),
        ({"space": {"model.dropout": {"type": "float", "low": 0.4, "high": 0.1}}}, "the range is inverted"),
        (
            {"space": {"model.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
            "log scale needs low > 0",
        ),
        (
            {"space": {"model.norm": {"type": "categorical", "choices": ["batch"]}}},
            "needs two or more choices",
        ),
        (
            {"space": {"model.lr": {"type": "float", "lo": 0.1, "high": 0.2}}},
            "unknown field 'lo'; did you mean 'low'",
        ),
        ({"objective": "val/accuracy"}, "the runs never log val/accuracy"),
        ({"objective": "test/acc"}, "the test set is never the objective"),
        ({"report_only": True}, "no sweep named 'tiny'"),
    ],
    ids=[
        "unknown-key",
        "empty-range",
        "inverted-range",
        "log-bound",
        "one-choice",
        "unknown-field",
        "metric-not-logged",
        "test-metric",
        "report-of-nothing",
    ],
)
def test_bad_sweep_files_stop_before_any_trial(
    workdir: Path, capsys: pytest.CaptureFixture, changes: dict, expected: str
) -> None:
    path = _sweep_file(workdir, **changes)
    assert main(["sweep", "--config", str(path)]) == 2
    line = _error_line(capsys)
    assert expected in line, line
    assert not (workdir / "sweeps").exists()  # no storage, no log, no run


def test_a_database_that_does_not_answer_fails_within_seconds_naming_it(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _sweep_file(workdir)
    # Nothing listens on this port: the connection is refused at once.
    refused = f"postgresql://fashion@127.0.0.1:{free_port()}/sweeps"
    assert main(["sweep", "--config", str(path), "--storage", refused]) == 2
    line = _error_line(capsys)
    assert f"127.0.0.1:{refused.split(':')[2].split('/')[0]}" in line and "does not answer" in line
    # A port that accepts the TCP connection but never speaks PostgreSQL: the driver's own timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://fashion@127.0.0.1:{silent.getsockname()[1]}/sweeps"
        start = time.monotonic()
        assert main(["sweep", "--config", str(path), "--storage", url]) == 2
        elapsed = time.monotonic() - start
    line = _error_line(capsys)
    assert url in line and "cannot be used" in line, line
    assert elapsed < 20, f"took {elapsed:.0f} s"
    assert not (workdir / "sweeps" / "tiny" / "logs").exists()


# --------------------------------------------------------------------------------------------
# Real sweeps


@pytest.mark.integration
def test_a_stopped_sweep_continues_when_started_again(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    marker = workdir / "interrupt.marker"
    path = _sweep_file(
        workdir,
        n_trials=3,
        trainer={
            **yaml.safe_load(TINY_SWEEP)["trainer"],
            "callbacks": [{"class_path": "test_sweep.InterruptOnce", "init_args": {"marker": str(marker)}}],
        },
    )
    out = workdir / "sweeps" / "tiny"
    # Ctrl+C in the second trial: the first is kept, the second is a failed trial.
    assert main(["sweep", "--config", str(path)]) == 130
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    # Started again: the search continues to its 3 trials.
    capsys.readouterr()
    assert main(["sweep", "--config", str(path)]) == 0
    study = _study(out)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    err = capsys.readouterr().err
    assert "3 complete, 0 pruned, 1 failed" in err
    assert (
        "sweep: trials train on the serial executor" in err
        and "sweep: see its runs: fashion-cnn ui --run " in err
    )

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents = _runs(client, "parent")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {int(r.data.tags["optuna_trial"]): r for r in _runs(client, "trial")}
    assert sorted(children) == [0, 1, 2, 3]
    assert {n: (r.info.status, r.data.tags["optuna_state"]) for n, r in children.items()} == {
        0: ("FINISHED", "COMPLETE"),
        1: ("KILLED", "FAIL"),
        2: ("FINISHED", "COMPLETE"),
        3: ("FINISHED", "COMPLETE"),
    }
    for number, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert study.trials[number].user_attrs["mlflow_run_id"] == run.info.run_id
        key = "model.net.init_args.filters"  # the space's model.filters, as the network's argument
        assert run.data.params[f"sweep/{key}"] == str(study.trials[number].params[key])
    assert set(VALIDATION_METRICS) <= set(children[0].data.metrics)  # the objectives a sweep accepts
    assert not any(k.startswith("test/") for r in children.values() for k in r.data.metrics)
    # The best trial was tested once; its test metrics are on the parent and in the report.
    tests = _runs(client, "test")
    assert len(tests) == 1 and "test/acc" in tests[0].data.metrics
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert tests[0].data.tags["optuna_trial"] == str(best.number)
    parent = client.get_run(parents[0].info.run_id)
    assert parent.data.metrics["best/test/acc"] == tests[0].data.metrics["test/acc"]
    assert parent.data.metrics["best/val/acc"] == pytest.approx(best.value)
    report = (out / "report.md").read_text()
    assert "4 trials: **3 complete, 0 pruned, 1 failed**" in report and "test/acc" in report
    for figure in ("optimization_history.png", "param_importances.png", "parallel_coordinates.png"):
        assert f"]({figure})" in report and (out / figure).stat().st_size > 0
    config = ConfigResolver().resolve(out / "best_config.yaml")
    assert config["model"]["net"]["init_args"]["filters"] == best.params["model.net.init_args.filters"]

    # Once the search has its trials, a rerun trains nothing and tests nothing again.
    assert main(["sweep", "--config", str(path)]) == 0
    assert len(_study(out).trials) == 4 and len(_runs(client, "test")) == 1
    # The space changed under the same name: refused, with how to start a new search.
    capsys.readouterr()
    changed = yaml.safe_load(path.read_text())
    changed["space"]["model.filters"]["choices"] = [2, 8]
    path.write_text(yaml.safe_dump(changed))
    assert main(["sweep", "--config", str(path), "--n_trials", "6"]) == 2
    line = _error_line(capsys)
    assert (
        "search space changed" in line
        and "model.net.init_args.filters changed" in line
        and "--name tiny-2" in line
    )
    assert len(_study(out).trials) == 4


@pytest.mark.integration
def test_a_pruned_trial_stops_within_an_epoch_and_is_marked_and_counted(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    trainer = {**yaml.safe_load(TINY_SWEEP)["trainer"], "max_epochs": 4}
    path = _sweep_file(workdir, n_trials=1, trainer=trainer)
    assert main(["sweep", "--config", str(path)]) == 0  # one complete trial, no pruning
    # The same search with a pruner no trial can satisfy (val/acc >= 1.01), judged from epoch 2 on.
    args = [
        "--n_trials",
        "2",
        "--pruner",
        "threshold",
        "--prune_threshold",
        "1.01",
        "--prune_from_epoch",
        "2",
    ]
    assert main(["sweep", "--config", str(path), *args]) == 0
    study = _study(workdir / "sweeps" / "tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    pruned = study.trials[1]
    assert sorted(pruned.intermediate_values) == [1, 2]  # judged at the end of epoch 2, then stopped

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna_state"] == "PRUNED" and run.data.tags["pruned_at_epoch"] == "2"
    # No epoch after the decision: validation ran for epochs 1 and 2 (steps count batches).
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert "**1 complete, 1 pruned, 0 failed**" in (workdir / "sweeps" / "tiny" / "report.md").read_text()
    assert "1 complete, 1 pruned, 0 failed" in capsys.readouterr().err


@pytest.mark.integration
def test_pruning_stops_a_trial_on_ray_too(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """The pruning callback travels to the Ray worker with its trial and reports through the
    storage: a trial no epoch can satisfy stops at the end of the first epoch it may be judged at."""
    pytest.importorskip("ray")
    trainer = {**yaml.safe_load(TINY_SWEEP)["trainer"], "max_epochs": 3}
    path = _sweep_file(workdir, n_trials=1, trainer=trainer)
    args = ["--pruner", "threshold", "--prune_threshold", "1.01", "--prune_from_epoch", "2"]
    assert main(["sweep", "--config", str(path), *args, "--executor", "ray", "--workers", "1"]) == 0
    (trial,) = _study(workdir / "sweeps" / "tiny").trials
    assert trial.state.name == "PRUNED" and sorted(trial.intermediate_values) == [1, 2]
    assert int(trial.user_attrs["worker"].rsplit(":", 1)[1]) != os.getpid()  # trained on a Ray worker
    run = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["pruned_at_epoch"] == "2"
    assert run.data.tags["executor"] == "ray"
    assert "0 complete, 1 pruned, 0 failed" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.integration
def test_two_workers_on_postgresql_lose_no_trial_and_run_none_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(real_data_dir))  # the spawned workers read it too
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = TINY_SWEEP.replace("data: {val_size: 40, batch_size: 32}", "data: {batch_size: 32}")
    trainer = {**yaml.safe_load(text)["trainer"], "limit_val_batches": 2, "limit_test_batches": 2}
    path = _sweep_file(tmp_path, text, n_trials=4, trainer=trainer)
    with postgres() as database:
        argv = ["sweep", "--config", str(path), "--storage", database, "--executor", "ray", "--workers", "2"]
        assert main(argv) == 0
        study = optuna.load_study(study_name="tiny", storage=open_storage(database))
        trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none extra
    assert all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in workers}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _runs(client, "trial")
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == [0, 1, 2, 3]  # one run each
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert all(r.info.status == "FINISHED" for r in children)
    assert "4 complete, 0 pruned, 0 failed" in capsys.readouterr().err
