"""The Ray executor, on a real local Ray: same results as serial, faults, bad input, and a tracking
server backed by PostgreSQL.

Ray workers are separate processes that cannot see the tests' synthetic data, so these runs use
the real Fashion-MNIST files with a tiny budget (a 2-layer net, 3 training batches).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from servers import mlflow_server, postgres, ray_head

from fashion_cnn.cli import main

pytestmark = [pytest.mark.realdata, pytest.mark.integration]
# `ray start` clusters require Ray's auth token (~/.ray/auth_token) by default; a driver sends it
# only in token mode, which Ray reads when it is first imported, so set it before that.
os.environ.setdefault("RAY_AUTH_MODE", "token")
pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent
TINY = [
    "--model.layers=2",
    "--model.hidden=16",
    "--model.pool_every=1",
    "--data.batch_size=32",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]
STUDY = """
# Two widths, for the Ray tests.
title: Ray study
hypothesis: Four filters beat two.
seeds: 2
variants:
  - {name: two, overrides: {model.filters: 2}}
  - {name: four, overrides: {model.filters: 4}}
expected: [four beats two on test/acc]
"""


def on_ray(address: str, *extra: str) -> list[str]:
    """The study options that send its runs to the Ray cluster at ``address``."""
    return ["--executor", "ray", "--ray_address", address, *extra]


@pytest.fixture(scope="module")
def head() -> str:
    with ray_head(num_cpus=2) as address:
        yield address


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_data_dir: Path) -> Path:
    """A working folder; the workers find the real data and the fault injectors (tests/_faults.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(real_data_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.syspath_prepend(str(TESTS))
    (tmp_path / "ray.yaml").write_text(STUDY)
    return tmp_path


def _trials(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    return client.search_runs([exp.experiment_id], "tags.study_role = 'trial'", max_results=1000)


def _a_trial_is_running(store: Path) -> bool:
    """Whether a study's child run is RUNNING, read without MLflow while the study may be starting.

    An ``MlflowClient`` on a store that the study is still creating would create the schema too,
    outside the study's lock, and one of the two fails with "table ... already exists" (CI saw it).
    A read-only sqlite connection creates nothing.
    """
    if not store.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT 1 FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid"
                " WHERE runs.status = 'RUNNING' AND tags.key = 'study_role' AND tags.value = 'trial'"
            ).fetchall()
    except sqlite3.OperationalError:  # no tables yet, or locked by a writer: ask again
        return False
    return bool(rows)


def _parent(store: Path):
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("fashion-cnn-studies")
    (parent,) = client.search_runs([exp.experiment_id], "tags.study_role = 'parent'")
    return parent


def _per_run(store: Path) -> dict[tuple[str, str], dict[str, float]]:
    runs = [r for r in _trials(store) if r.info.status == "FINISHED"]
    keys = ("test/acc", "test/loss", "val/loss", "train/loss")
    return {(r.data.tags["variant"], r.data.tags["seed"]): {k: r.data.metrics[k] for k in keys} for r in runs}


def test_ray_and_serial_give_identical_runs(work: Path, head: str, capsys: pytest.CaptureFixture) -> None:
    """The same adaptive study (2 seeds, then a block to 3) on both executors: the same runs, the
    same seeds added, the same verdicts at the same looks."""
    serial, parallel = work / "serial", work / "ray"
    for folder, extra in (
        (serial, []),
        (parallel, on_ray(head, "--workers", "2")),
    ):
        folder.mkdir()
        os.chdir(folder)
        code = main(["study", str(work / "ray.yaml"), *TINY, "--run_cpus", "1", "--max_seeds", "3", *extra])
        assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "2 running" in err  # two at once on Ray
    results = [json.loads((f / "studies" / "ray" / "results.json").read_text()) for f in (serial, parallel)]
    seeds = results[0]["seeds_per_variant"]
    assert len(_per_run(serial / "mlflow.db")) == sum(map(len, seeds.values())) >= 4
    assert _per_run(serial / "mlflow.db") == _per_run(parallel / "mlflow.db")
    assert results[1]["seeds_per_variant"] == seeds
    assert results[0]["adaptive"]["looks"] == [2, 3]
    assert results[1]["adaptive"] == results[0]["adaptive"]
    judged = ("verdict", "p", "difference", "ci", "seeds_needed")  # as JSON text: NaN == NaN there
    verdicts = [json.dumps([{k: c.get(k) for k in judged} for c in r["claims"]]) for r in results]
    assert verdicts[1] == verdicts[0]
    report = (parallel / "studies" / "ray" / "report.md").read_text()
    assert "four beats two on test/acc" in report
    for folder, executor in ((serial, "serial"), (parallel, "ray")):  # each run says what trained it
        tags = [r.data.tags for r in _trials(folder / "mlflow.db")]
        assert {t["executor"] for t in tags} == {executor}
        assert {t["machine.torch_threads"] for t in tags} == {"1"}  # --run_cpus 1, inside the worker


def test_without_an_address_the_study_starts_its_own_ray(
    work: Path, head: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the cluster in RAY_ADDRESS (nor a `ray start` one): a local Ray, stopped afterwards alone."""
    import ray

    monkeypatch.setenv("RAY_ADDRESS", head)  # a 2-CPU cluster a bare ray.init() would join
    caplog.set_level(logging.INFO, logger="fashion_cnn.runs.ray_executor")
    argv = ["study", str(work / "ray.yaml"), *TINY, "--seeds", "1", "--executor", "ray", "--workers", "1"]
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 0
    assert signal.getsignal(signal.SIGTERM) is before  # ray.init's handler does not outlive the study
    assert "Ray: 1 node(s), 1 CPUs" in caplog.text  # its own: workers x run_cpus, not the head's 2
    assert {r.data.tags["executor"] for r in _trials(work / "mlflow.db")} == {"ray"}
    ray.init(address=head)  # the other cluster is still up
    try:
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()


def test_a_killed_worker_is_retried_and_its_run_ends_failed(work: Path, head: str) -> None:
    marker = work / "killed-once"
    fault = f'[{{"class_path": "_faults.KillOnce", "init_args": {{"marker": "{marker}", "step": 1}}}}]'
    argv = ["study", str(work / "ray.yaml"), *TINY, "--seeds", "1", "--trainer.callbacks", fault]
    code = main([*argv, *on_ray(head, "--workers", "2", "--max_retries", "2")])
    assert code == 0
    assert marker.exists()  # one worker really died
    trials = _trials(work / "mlflow.db")
    statuses = sorted(r.info.status for r in trials)
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]  # the dead attempt, its retry, the other run
    assert "RUNNING" not in statuses
    assert _parent(work / "mlflow.db").info.status == "FINISHED"
    failed = next(r for r in trials if r.info.status == "FAILED")
    retried = [r for r in trials if r.data.tags["variant"] == failed.data.tags["variant"]]
    assert len(retried) == 2  # killed once, trained once; the other variant only once


def test_a_run_that_fails_for_a_user_reason_is_not_retried(
    work: Path, head: str, capsys: pytest.CaptureFixture
) -> None:
    nan = [
        "--model.optimizer=torch.optim.SGD",
        "--model.lr=1e12",
        "--model.norm=none",
        "--trainer.limit_train_batches=5",
    ]
    code = main(
        [
            "study",
            str(work / "ray.yaml"),
            *TINY,
            *nan,
            *on_ray(head, "--workers", "1"),
            "--max_retries",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "NaN or infinite" in err and "seed 0" in err and ".log" in err
    trials = _trials(work / "mlflow.db")
    assert len(trials) == 1 and trials[0].info.status == "FAILED"  # no retry, no further run
    assert _parent(work / "mlflow.db").info.status == "FAILED"


def test_sigterm_on_the_driver_kills_the_runs_and_a_rerun_continues(work: Path, head: str) -> None:
    slow = '[{"class_path": "_faults.Slow", "init_args": {"seconds": 1.0}}]'
    command = [
        sys.executable,
        "-m",
        "fashion_cnn.cli",
        "study",
        str(work / "ray.yaml"),
        *TINY,
        "--trainer.callbacks",
        slow,
        *on_ray(head, "--workers", "2"),
    ]
    proc = subprocess.Popen(command, cwd=work, stderr=subprocess.PIPE, text=True)
    store = work / "mlflow.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"the study ended before a run started: {proc.stderr.read()[-3000:]}")
        if _a_trial_is_running(store):
            break
    else:
        proc.kill()
        pytest.fail("no run started within 300 s")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    assert "rerun the same command" in err and "Traceback" not in err
    assert _parent(store).info.status == "KILLED"
    killed = [r for r in _trials(store) if r.info.status != "FINISHED"]
    assert killed and {r.info.status for r in killed} == {"KILLED"}
    finished_before = {r.info.run_id for r in _trials(store) if r.info.status == "FINISHED"}

    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _trials(store)
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 4 and finished_before <= {r.info.run_id for r in finished}
    # Only what was missing ran again: a new run each, or the killed run itself where it had
    # finished an epoch (it continues from its checkpoint).
    continued = {r.info.run_id for r in killed} & {r.info.run_id for r in finished}
    assert len(trials) == 4 + len(killed) - len(continued)
    assert _parent(store).info.status == "FINISHED"


def test_bad_ray_settings_stop_before_any_run(work: Path, head: str, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (
            on_ray(head, "--run_cpus", "64"),
            "no node of the cluster has that many CPUs",
        ),
        (
            on_ray(head, "--run_gpus", "1"),
            "no node of the cluster has that many GPUs",
        ),
        (on_ray("127.0.0.1:9"), "no Ray cluster answers there"),
        (["--executor", "ray", "--run_gpus", "-1"], "--run_gpus -1"),
        (["--executor", "serial", "--ray_address", head], "need --executor ray"),
    ]
    for extra, fragment in cases:
        start = time.monotonic()
        code = main(["study", str(work / "ray.yaml"), *TINY, *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert fragment in err and "Traceback" not in err, err
        assert time.monotonic() - start < 30, extra
    assert not (work / "mlflow.db").exists() or not _trials(work / "mlflow.db")


def test_ray_not_installed_names_the_extra(work: Path) -> None:
    blocker = work / "no_ray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.cli", "study", str(work / "ray.yaml"), "--executor", "ray"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and 'pip install "fashion-cnn[ray]"' in done.stderr
    assert "Traceback" not in done.stderr


def test_joining_a_token_cluster_without_token_mode_says_how(work: Path, head: str) -> None:
    """``ray start`` clusters want Ray's token; a driver sends it to host:port only in token mode."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.cli", "study", str(work / "ray.yaml"), *TINY] + on_ray(head),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot start or join {head}" in done.stderr and "RAY_AUTH_MODE=token" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_multi_node_cluster_needs_a_tracking_server(
    work: Path, head: str, capsys: pytest.CaptureFixture
) -> None:
    """A second Ray node (on this machine, but a node all the same): a local sqlite store is refused."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    second = subprocess.Popen(
        [ray_cli, "start", f"--address={head}", "--num-cpus=1", "--block"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import ray

        ray.init(address=head)
        try:
            deadline = time.monotonic() + 120
            while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            ray.shutdown()
        code = main(["study", str(work / "ray.yaml"), *TINY, *on_ray(head)])
        err = capsys.readouterr().err
        assert code == 2
        assert "2 nodes" in err and "MLflow tracking server" in err and "Traceback" not in err
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)


def test_workers_log_over_http_to_a_server_on_postgresql(
    work: Path, head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-machine setup on one machine: PostgreSQL, mlflow server over it, Ray workers over HTTP."""
    pytest.importorskip("psycopg")
    with postgres() as database, mlflow_server(database, work / "artifacts") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # MLflow's own variable, as on a cluster
        code = main(
            [
                "study",
                str(work / "ray.yaml"),
                *TINY,
                "--seeds",
                "1",
                *on_ray(head, "--workers", "2"),
            ]
        )
        assert code == 0
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("fashion-cnn-studies")
        (parent,) = client.search_runs([exp.experiment_id], "tags.study_role = 'parent'")
        children = client.search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        assert parent.info.status == "FINISHED" and len(children) == 2
        assert all(c.info.status == "FINISHED" and "test/acc" in c.data.metrics for c in children)
        for child in children:  # the artifacts went through the server to its artifact store
            names = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"config.yaml", "checkpoints", "evaluation"} <= names
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md"}
        assert not (work / "mlflow.db").exists()
