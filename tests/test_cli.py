"""The real CLI: every shipped config parses, and short real fits are inspected in a real MLflow store.

Runs go through ``fashion_cnn.cli.main`` in this process (so the synthetic-data fixture applies) with
a temporary working directory holding the sqlite store; one test runs the installed console script.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _cli_args import TINY, run_console_script
from mlflow.tracking import MlflowClient

from fashion_cnn.cli import main, run_experiment
from fashion_cnn.data import CLASS_NAMES
from fashion_cnn.network import count_parameters
from fashion_cnn.system import FashionCNN

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "fashion_cnn" / "configs").glob("*.yaml"))
# `fashion-cnn fit --config configs/debug.yaml` in a fresh interpreter, as the subprocess tests run it.
DEBUG_FIT = [
    sys.executable,
    "-m",
    "fashion_cnn.cli",
    "fit",
    "--config",
    str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
]


def _client(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def _runs(work: Path) -> list:
    client = _client(work)
    experiment = client.get_experiment_by_name("fashion-cnn")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses_through_the_cli(config: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    wanted = yaml.safe_load(config.read_text())
    # The data's settings under init_args (data is a DataModule by class path, Fashion-MNIST by default).
    printed["data"] = printed["data"]["init_args"]
    for section in ("model", "data", "trainer"):
        _assert_within(wanted.get(section) or {}, printed[section], f"{config.name}: {section}")
    assert config.read_text().startswith("# "), "each config opens with its header comment"


def _assert_within(wanted: dict, printed: dict, where: str) -> None:
    """Every key of ``wanted`` (nested) has its value in ``printed``."""
    for key, value in wanted.items():
        if isinstance(value, dict):
            _assert_within(value, printed[key], f"{where}.{key}")
        else:
            assert printed[key] == value, f"{where}.{key}"


def test_best_under_1m_recipe_is_under_1m_parameters() -> None:
    model = yaml.safe_load((REPO / "fashion_cnn" / "configs" / "best_under_1m.yaml").read_text())["model"]
    net = FashionCNN(**model).net
    assert count_parameters(net) == 630_410 < 1_000_000


def test_configs_cover_the_journal() -> None:
    names = {c.stem for c in CONFIGS}
    expected = {"baseline", "combined", "ultimate", "debug"}
    expected |= {f"arch_{n}" for n in ("shallow_wide", "baseline", "deep_narrow", "deep_wide", "very_deep")}
    expected |= {f"dropout_{r}" for r in ("0.1", "0.3", "0.5")}
    expected |= {f"norm_{n}" for n in ("instance", "batch", "layer", "group", "none")}
    assert expected <= names


def test_fit_records_everything_in_mlflow(workdir: Path) -> None:
    result = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--trainer.max_epochs=2"]
    )
    (run,) = _runs(workdir)
    assert run.info.run_id == result.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "debug-seed0"
    params = run.data.params
    net = "net/init_args/"
    assert (
        params[net + "layers"] == "2" and params[net + "filters"] == "4" and params[net + "norm"] == "batch"
    )
    assert (
        params["optimizer/class_path"] == "torch.optim.Adam" and params["optimizer/init_args/lr"] == "0.001"
    )
    assert params["scheduler/class_path"] == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert params["seed"] == "0" and params["trainer.max_epochs"] == "2"
    assert params["batch_size"] == "32"
    from fashion_cnn import FashionCNN

    expected_params = FashionCNN(layers=2, filters=4, hidden=16, norm="batch", dropout=0.1, pool_every=1)
    assert params["num_params"] == str(expected_params.num_params)
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "lr",
        "test/loss",
        "test/acc",
    ):
        assert key in run.data.metrics, key
    client = _client(workdir)
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # one point per epoch
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    logged_config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir.parent))).read_text()
    )
    assert logged_config["model"]["net"]["init_args"]["layers"] == 2 and logged_config["seed_everything"] == 0
    ckpts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert len(ckpts) == 1 and ckpts[0].endswith(".ckpt")
    best = Path(run.data.tags["best_checkpoint"])
    assert best.is_file() and best == Path(result.best_checkpoint).resolve()
    assert best.parent == (workdir / "runs" / "debug-seed0" / run.info.run_id / "checkpoints").resolve()
    assert torch.load(best, weights_only=True)["mlflow_run_id"] == run.info.run_id
    assert result.metrics["test/acc"] == run.data.metrics["test/acc"]
    assert not (workdir / "config.yaml").exists()  # Lightning's SaveConfigCallback file: not written
    # Where it trained, so a figure can always be traced to its machine.
    assert run.data.tags["machine.cores"] == str(os.cpu_count())
    assert run.data.tags["machine.torch"] == torch.__version__ and run.data.tags["machine.cpu"]
    assert run.data.tags["machine.gpu"] == (
        "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    )
    assert run.data.params["trainer.precision"] in ("32-true", "bf16-mixed")


@pytest.mark.integration
def test_runs_never_share_files(workdir: Path) -> None:
    a = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--seed_everything=1"])
    b = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--seed_everything=2"])
    c = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--seed_everything=2"])
    assert len({a.run_id, b.run_id, c.run_id}) == 3
    assert len({Path(r.best_checkpoint).parent for r in (a, b, c)}) == 3
    assert [r.info.run_name for r in _runs(workdir)] == ["debug-seed1", "debug-seed2", "debug-seed2"]


def test_unseeded_run_records_its_seed(workdir: Path) -> None:
    config = workdir / "noseed.yaml"
    config.write_text(
        "model:\n  net:\n    init_args:\n      pool_every: 1\ntrainer:\n  max_epochs: 1\n  limit_train_batches: 2\n"
    )
    result = run_experiment(config, [*TINY, "--test_after_fit=false"])
    (run,) = _runs(workdir)
    seed = int(run.data.params["seed"])
    assert run.info.run_name == f"noseed-seed{seed}" == result.run_name


@pytest.mark.integration
def test_test_and_predict_rebuild_the_model_from_the_checkpoint(workdir: Path) -> None:
    fit = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--model.filters=6"])
    # No config: the architecture comes from the checkpoint alone.
    tested = run_experiment(
        None, ["--ckpt_path", fit.best_checkpoint, "--data.val_size=40"], subcommand="test"
    )
    assert tested.run_id != fit.run_id
    assert 0.0 <= tested.metrics["test/acc"] <= 1.0
    assert tested.metrics["test/acc"] == pytest.approx(fit.metrics["test/acc"])
    out = workdir / "pred.csv"
    code = main(
        [
            "predict",
            "--ckpt_path",
            fit.best_checkpoint,
            "--data.val_size=40",
            "--predictions_file",
            str(out),
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 50  # the synthetic test set
    assert rows[0]["item"] == "test/0"
    assert rows[0]["predicted"] in CLASS_NAMES
    probs = [float(v) for k, v in rows[0].items() if k.startswith("p_")]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert float(rows[0]["confidence"]) == pytest.approx(max(probs), abs=1e-6)


@pytest.mark.integration
def test_resume_continues_the_same_run(workdir: Path) -> None:
    first = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml",
        [*TINY, "--trainer.max_epochs=1", "--test_after_fit=false"],
    )
    second = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--trainer.max_epochs=2", "--ckpt_path=last"]
    )
    assert second.run_id == first.run_id
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"
    history = _client(workdir).get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2
    assert "test/acc" in run.data.metrics


def test_resume_without_a_checkpoint_says_what_to_do(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["fit", "--config", str(REPO / "fashion_cnn" / "configs" / "debug.yaml"), "--ckpt_path", "last"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no checkpoint matches" in err and "debug-seed0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model.dropout=1.5"], ["dropout=1.5", "[0, 1)"]),
        (["--model.layers=0"], ["layers=0"]),
        (["--model.filters=-1"], ["filters=-1"]),
        (["--model.norm=weight"], ["norm", "weight"]),
        (
            ["--model.norm=group", "--model.filters=12", "--model.norm_groups=8"],
            ["norm_groups=8", "filters=12"],
        ),
        (["--model.layers=20", "--model.pool_every=1"], ["pool after block"]),
        (["--model.colour=3"], ["unrecognized", "model.colour"]),
        (["--model.layers=abc"], ["layers", "abc"]),
        (["--trainer.max_epochs=many"], ["max_epochs"]),
    ],
)
def test_user_errors_are_one_clear_message(
    workdir: Path, capsys: pytest.CaptureFixture, args: list[str], fragments: list[str]
) -> None:
    code = main(["fit", "--config", str(REPO / "fashion_cnn" / "configs" / "debug.yaml"), *TINY, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("fashion-cnn: error:")
    for fragment in fragments:
        assert fragment in err
    assert not (workdir / "runs").exists()


def test_missing_config_file(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--config", "missing.yaml"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.yaml" in err and "does not exist" in err


@pytest.mark.parametrize("kind", ["text", "other_model", "missing"])
def test_bad_checkpoints_are_named(workdir: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    path = workdir / "bad.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "other_model":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"hidden_dim": 3}}, path)
    code = main(["test", "--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and str(path.name) in err and "Traceback" not in err
    if kind == "other_model":
        assert "another model" in err
    if kind != "missing":
        assert path.exists()  # never deleted or rewritten


def test_unreachable_tracking_server_fails_fast(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    uri = "http://127.0.0.1:9"  # the discard port: connection refused at once
    code = main(
        [
            "fit",
            "--config",
            str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
            *TINY,
            f"--trainer.logger.init_args.tracking_uri={uri}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert uri in err and "Traceback" not in err


@pytest.mark.realdata
@pytest.mark.integration
def test_console_script_on_real_data(tmp_path: Path) -> None:
    done = run_console_script(
        tmp_path,
        "fit",
        "--config",
        str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-cnn").experiment_id])
    assert run.info.status == "FINISHED"
    # 10 training batches of a 2-layer net already beat chance (10 %) clearly on real data.
    assert run.data.metrics["test/acc"] > 0.3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.integration
def test_interrupted_fit_is_killed_with_a_checkpoint_and_resumes(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, signum: int
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    previous = signal.getsignal(signal.SIGTERM)
    # 200 - 40 images / batch 32 = 5 steps per epoch: the signal arrives in the second epoch.
    args = [
        "fit",
        "--config",
        str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
        *TINY,
        "--trainer.max_epochs=3",
        "--trainer.callbacks+=_faults.SignalAt",
        "--trainer.callbacks.step=7",
        f"--trainer.callbacks.signum={int(signum)}",
    ]
    try:
        code = main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert code == (143 if signum == signal.SIGTERM else 130)
    assert "--ckpt_path last" in err and "Traceback" not in err
    (run,) = _runs(workdir)
    assert run.info.status == "KILLED"
    checkpoints = workdir / "runs" / "debug-seed0" / run.info.run_id / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and (checkpoints / "interrupted.ckpt").is_file()
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--trainer.max_epochs=3", "--ckpt_path=last"]
    )
    assert resumed.run_id == run.info.run_id
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"
    assert len(_client(workdir).get_metric_history(run.info.run_id, "val/acc")) == 3
    if signum == signal.SIGTERM:
        # Resuming from last.ckpt repeats the uninterrupted run exactly: same data order,
        # dropout masks and augmentation per epoch (seeded from the seed and the epoch).
        straight = run_experiment(
            REPO / "fashion_cnn" / "configs" / "debug.yaml",
            [*TINY, "--trainer.max_epochs=3", "--run_name=straight"],
        )
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
            assert resumed.metrics[key] == straight.metrics[key], key


@pytest.mark.integration
def test_last_checkpoint_is_the_last_epoch_even_when_it_was_not_the_best(workdir: Path) -> None:
    """With lr 1e-30 and no BatchNorm statistics nothing changes, so val/acc never improves after
    epoch 1 and Lightning writes no new top-k checkpoint; last.ckpt must still be the end of epoch
    3 (what a resume starts from). Lightning 2.6 alone leaves epoch 1 there."""
    done = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml",
        [*TINY, "--trainer.max_epochs=3", "--model.lr=1e-30", "--model.norm=none"],
    )
    checkpoints = workdir / "runs" / "debug-seed0" / done.run_id / "checkpoints"
    best = [p.name for p in checkpoints.glob("best-*.ckpt")]
    assert best == ["best-epoch00.ckpt"]  # no improvement after the first epoch
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2


@pytest.mark.integration
def test_a_run_killed_in_its_test_is_not_finished(workdir: Path) -> None:
    """SIGKILL as the test after the fit starts: the run must not read FINISHED (Lightning ends it
    after the fit, before the test), and `--ckpt_path last` then tests it and finishes it."""
    command = [*DEBUG_FIT, *TINY]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run(
        [*command, "--trainer.callbacks+=_faults.KillAtTest"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run,) = _runs(workdir)
    assert run.info.status == "RUNNING" and "test/acc" not in run.data.metrics  # not complete, not FINISHED
    done = subprocess.run(
        [*command, "--ckpt_path", "last"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics


def test_non_finite_loss_stops_with_the_epoch_and_step(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "fit",
            "--config",
            str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
            *TINY,
            "--trainer.max_epochs=3",
            "--model.optimizer=torch.optim.SGD",
            "--model.optimizer.lr=1e12",
            "--model.net.norm=none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "NaN or infinite at epoch" in err and "global step" in err and "--model.optimizer.lr" in err
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"
    assert not list((workdir / "runs").glob("*/*/checkpoints/interrupted.ckpt"))


@pytest.mark.integration
def test_same_seed_gives_identical_metrics(workdir: Path) -> None:
    a = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--trainer.max_epochs=2"])
    b = run_experiment(REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, "--trainer.max_epochs=2"])
    assert a.run_id != b.run_id
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert a.metrics[key] == b.metrics[key], key


def test_unwritable_output_dir(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = workdir / "file"
    blocker.write_text("")
    code = main(
        [
            "fit",
            "--config",
            str(REPO / "fashion_cnn" / "configs" / "debug.yaml"),
            *TINY,
            f"--output_dir={blocker}/runs",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--output_dir" in err and "cannot be written" in err


@pytest.mark.realdata
@pytest.mark.integration
def test_concurrent_fits_in_one_folder(tmp_path: Path) -> None:
    """Two fits started at once on a fresh sqlite store both finish, as separate runs and files."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    env = {**os.environ, "FASHION_CNN_DATA_DIR": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    # Fill the data cache first: the race under test is MLflow's, not the data copy's.
    subprocess.run(
        [sys.executable, "-c", "from fashion_cnn import FashionMNISTDataModule as D; D().prepare_data()"],
        env=env,
        check=True,
        timeout=300,
    )
    command = DEBUG_FIT
    procs = [
        subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0, err[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fashion-cnn").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    bests = {r.data.tags["best_checkpoint"] for r in runs}
    assert len(bests) == 2 and all(Path(b).is_file() for b in bests)
