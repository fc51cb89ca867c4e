"""The console: what `fashion-cnn fit` prints, what it keeps out, how fast the command answers, and
`fashion-cnn ui` over HTTP.

The fit and ui tests run the real command in a subprocess (the console a user sees: Lightning and
MLflow configure their own log handlers only when nothing else has); the filter tests run in process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
from mlflow.tracking import MlflowClient

from fashion_cnn.cli import TRAINER_HELP, main
from fashion_cnn.quiet import QUIET_LOG_LINES, console_scope
from fashion_cnn.system import FashionCNN
from fashion_cnn.ui import experiment_url, run_url, show_hint

REPO = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MODEL = ["--model.layers=2", "--model.filters=4", "--model.hidden=16"]
# What Lightning, MLflow and torch print that nobody running fashion-cnn can act on (issue 23).
NOISE = (
    "Creating initial MLflow database tables",
    "Updating database tables",
    "litlogger",
    "not supported by the model summary",
    "LeafSpec",
    "GPU available",
    "using the packaged config",
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FASHION_CNN_DATA_DIR": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _forward_flops(model: torch.nn.Module, image: torch.Tensor) -> int:
    """2 x the multiply-adds of every Conv2d and Linear in one forward pass, counted by hand."""
    macs = []

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs.append(output.numel() * module.in_channels // module.groups * kh * kw)
        elif isinstance(module, torch.nn.Linear):
            macs.append(output.numel() * module.in_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(image)
    for h in hooks:
        h.remove()
    return 2 * sum(macs)


@pytest.mark.integration
def test_fit_console_says_what_matters_once(tmp_path: Path) -> None:
    if not DEBIAN.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    (tmp_path / "data").mkdir()
    # A damaged tensor cache: our own warning, which must still reach the console.
    (tmp_path / "data" / "fashion_mnist_uint8.pt").write_bytes(b"not a tensor file")
    command = [
        sys.executable,
        "-m",
        "fashion_cnn.cli",
        "fit",
        "--config",
        "configs/debug.yaml",
        *MODEL,
        "--trainer.enable_model_summary=true",
        "--trainer.precision=bf16-mixed",  # the model summary warns about bf16: filtered
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-cnn").experiment_id])
    run_id = run.info.run_id
    # The header: each line once.
    for label in (
        "fashion-cnn fit: configs/debug.yaml",
        "  device ",
        "  precision ",
        "  MLflow run ",
        "  store ",
        "  checkpoints ",
    ):
        assert console.count(label) == 1, (label, console)
    assert "bf16-mixed (as configured)" in console
    assert sum("debug.yaml" in line for line in console.splitlines()) == 1  # the config is named once
    assert f"debug-seed0 (id {run_id}, experiment fashion-cnn)" in console
    # No third-party noise; our own warning stays.
    for noise in NOISE:
        assert noise not in console, noise
    assert "Ignoring the tensor cache" in console
    # The summary: the best checkpoint, the run id, the command that shows it.
    best = Path(run.data.tags["best_checkpoint"])
    checkpoint_line = re.search(r"^  checkpoint +(\S+)$", console, re.M)
    assert checkpoint_line and (tmp_path / checkpoint_line.group(1)).resolve() == best
    assert re.search(rf"^  run id +{run_id} \(debug-seed0, experiment fashion-cnn\)$", console, re.M)
    assert re.search(rf"^  see it +fashion-cnn ui --run {run_id}$", console, re.M)
    test_line = re.search(r"^  test +acc (\S+), loss (\S+)$", console, re.M)
    assert test_line and float(test_line.group(1)) == pytest.approx(run.data.metrics["test/acc"], abs=1e-4)
    assert re.search(r"^  best val/acc +\d\.\d{4} at epoch 0$", console, re.M)
    # The model summary's FLOPs: one image's forward pass, counted by hand, not 0.
    model = FashionCNN(layers=2, filters=4, hidden=16, dropout=0.1, norm="batch", pool_every=1)
    flops = _forward_flops(model, torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    assert flops > 0
    count = re.escape(get_human_readable_count(flops))
    # Lightning's plain summary ("119 K  Total Flops"), or its rich one where rich is installed.
    assert re.search(rf"^{count} +Total Flops$|Total FLOPs: {count}\b", console, re.M), console


def test_filters_apply_only_inside_the_scope_and_not_when_verbose() -> None:
    def leaf_spec_warning() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with console_scope(verbose=verbose, stream=sys.stderr):
                warnings.warn_explicit(
                    "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
                    FutureWarning,
                    "_pytree.py",
                    21,
                    module="lightning.pytorch.utilities._pytree",
                )
                warnings.warn_explicit("a real problem", UserWarning, "x.py", 1, module="fashion_cnn.data")
        return caught

    before = list(warnings.filters)
    verbose = False
    assert [str(w.message) for w in leaf_spec_warning()] == ["a real problem"]
    verbose = True
    assert len(leaf_spec_warning()) == 2
    assert warnings.filters == before

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    mlflow_db = logging.getLogger("mlflow.store.db.utils")
    handler = Keep()
    mlflow_db.addHandler(handler)
    level = mlflow_db.level
    mlflow_db.setLevel(logging.INFO)
    try:
        with console_scope(stream=sys.stderr):
            mlflow_db.info("Creating initial MLflow database tables...")
            mlflow_db.warning("the store is read-only")
        mlflow_db.info("Updating database tables")
    finally:
        mlflow_db.removeHandler(handler)
        mlflow_db.setLevel(level)
    assert seen == ["the store is read-only", "Updating database tables"]
    assert not any(logging.getLogger(name).filters for name in QUIET_LOG_LINES)


def test_our_log_lines_reach_the_console_in_the_scope(capsys: pytest.CaptureFixture) -> None:
    log = logging.getLogger("fashion_cnn.data")
    with console_scope():
        log.info("the header line")
        log.warning("a warning")
    log.warning("after the scope")
    err = capsys.readouterr().err
    assert "the header line\n" in err and "WARNING fashion_cnn.data: a warning\n" in err
    assert "after the scope" not in err


def test_show_hint_names_the_store_only_when_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert show_hint(local, "3", "abc") == "fashion-cnn ui --run abc"
    assert show_hint(local, "3") == "fashion-cnn ui --experiment_id 3"
    other = "sqlite:////elsewhere/my runs.db"
    assert (
        show_hint(other, "3", "abc")
        == "fashion-cnn ui --tracking_uri 'sqlite:////elsewhere/my runs.db' --run abc"
    )
    server = "http://tracking:5000"
    assert (
        show_hint(server, "3", "abc")
        == "http://tracking:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert show_hint(server, "3") == "http://tracking:5000/#/experiments/3?workflowType=machine_learning"


def test_fit_help_shows_every_option(capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--trainer.max_epochs",
        "--model.net",
        "--model.optimizer",
        "--model.scheduler",
        "--data.help",
        "--checkpoint.monitor",
        "--run_name",
        "--output_dir",
        "--verbose",
    ):
        assert option in out, option
    # The network's and the data's own options, as LightningCLI shows a class given by class path.
    for argv, option in (
        (["--model.net.help", "FashionCNNNet"], "--model.net.dropout"),
        (["--data.help", "FashionMNISTDataModule"], "--data.batch_size"),
    ):
        assert main(["fit", *argv]) == 0
        assert option in capsys.readouterr().out, option


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    from fashion_cnn.lightning_cli import TRAINER_SUBCOMMANDS

    assert tuple(TRAINER_HELP) == TRAINER_SUBCOMMANDS
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (*TRAINER_SUBCOMMANDS, "study", "sweep", "export", "configs", "ui"):
        assert re.search(rf"^    {name} ", out, re.M), name
    assert main(["fitt"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("args", [["--help"], ["configs"], ["ui", "--help"]])
def test_commands_that_train_nothing_import_no_torch_lightning_or_mlflow(args: list[str]) -> None:
    code = (
        "import sys\nfrom fashion_cnn.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules)\n"
        "sys.stderr.write(f'HEAVY={heavy}')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "HEAVY=[]" in done.stderr, done.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read()


def _sigint_default() -> None:
    """Ctrl+C as in a terminal: an ignored SIGINT is inherited across exec (an earlier test in this
    process may leave it ignored), and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_ui(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``fashion-cnn ui ARGS`` in ``tmp_path``; its stdout is a pipe, its stderr ``ui.err``."""
    return subprocess.Popen(
        [sys.executable, "-m", "fashion_cnn.cli", "ui", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        # A file, not a pipe: the server's own log lines go there too, and a pipe nobody reads
        # fills up and blocks them both (a 60 s hang in CI).
        stderr=(tmp_path / "ui.err").open("w"),
        text=True,
        preexec_fn=_sigint_default,
    )


@pytest.mark.integration
def test_ui_serves_the_runs_over_http(tmp_path: Path) -> None:
    from fashion_cnn.tracking import prepare_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = prepare_store(uri, "fashion-cnn")
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, run_name="debug-seed0").info.run_id
    client.log_metric(run_id, "val/acc", 0.5)
    client.set_terminated(run_id)
    port = _free_port()
    ui = _start_ui(tmp_path, "--port", str(port), "--run", run_id)
    try:
        line = ui.stdout.readline()  # printed once the server answers
        base = f"http://127.0.0.1:{port}"
        assert line.strip() == f"run debug-seed0: {run_url(base, experiment_id, run_id)}", (
            line or (tmp_path / "ui.err").read_text()
        )
        page = _get(line.split(": ", 1)[1].strip()).decode()
        assert "<title>MLflow</title>" in page
        got = json.loads(_get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}"))
        assert got["run"]["info"]["run_id"] == run_id
        assert "val/acc" in {m["key"] for m in got["run"]["data"]["metrics"]}
        found = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=fashion-cnn"))
        assert found["experiment"]["experiment_id"] == experiment_id
    finally:
        ui.send_signal(signal.SIGINT)
        code = ui.wait(timeout=60)
    assert code == 0
    with pytest.raises(OSError):  # the server went with it
        _get(f"http://127.0.0.1:{port}/health")
    assert experiment_url(base, experiment_id).endswith(
        f"/#/experiments/{experiment_id}?workflowType=machine_learning"
    )


def test_verbose_is_the_consoles_option_not_the_runs(capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--config", "configs/debug.yaml", "--verbose", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "seed_everything: 0" in printed and not re.search(r"^verbose:", printed, re.M)


def test_precision_reasons() -> None:
    from fashion_cnn.console import precision_reason
    from fashion_cnn.speed import cpu_bf16_feature

    feature = cpu_bf16_feature()
    if feature is not None:
        assert precision_reason("cpu", "bf16-mixed") == f"bf16 autocast: this CPU has {feature}"
    assert precision_reason("cpu", "32-true").startswith("fp32: this CPU has no native bf16")
    assert precision_reason("gpu", "bf16-mixed") == "bf16 autocast: this GPU computes bf16"
    assert precision_reason("mps", "32-true") == "32-true: the default on mps"


@pytest.mark.integration
def test_ui_stopped_while_starting_leaves_no_server(tmp_path: Path) -> None:
    """Ctrl+C before the server answers (the slow part: imports, schema) stops the server too."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to find the server process")
    from fashion_cnn.tracking import prepare_store

    prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "fashion-cnn")
    port = _free_port()
    ui = _start_ui(tmp_path, "--port", str(port))
    server_command = f"--backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}"

    def servers() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                words = cmdline.read_bytes().split(b"\0")
            except OSError:  # the process ended meanwhile
                continue
            if server_command in " ".join(w.decode(errors="replace") for w in words):
                found.append(cmdline.parent.name)
        return found

    try:
        deadline = time.monotonic() + 300  # the command imports MLflow first: slow on a busy machine
        while not servers() and ui.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # interrupt as soon as the server process exists, before it answers
        assert servers(), (tmp_path / "ui.err").read_text() if ui.poll() is not None else "no server started"
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
    finally:
        if ui.poll() is None:
            ui.send_signal(signal.SIGINT)
            ui.wait(timeout=60)
    time.sleep(1)
    assert servers() == []
