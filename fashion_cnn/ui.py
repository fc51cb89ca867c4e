"""MLflow's web UI over a run store: the URLs that open runs, and the server ``fashion-cnn ui`` starts.

MLflow 3.17's UI opens an experiment on its GenAI overview (traces, latency, token usage); the
query ``workflowType=machine_learning`` opens the *Model training* view with the runs table
instead, where a study's or sweep's parent run lists its child runs nested under it. These
helpers build those URLs, and the one line fit, study and sweep print to say how to look at a run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

from fashion_cnn.errors import TrackingError, UserError
from fashion_cnn.tracking_uri import DEFAULT_TRACKING_URI, is_server, resolve_tracking_uri, sqlite_file

DEFAULT_HOST = "127.0.0.1"  # loopback: the UI can change and delete runs, so it is not shared by default
DEFAULT_PORT = 5000
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
START_TIMEOUT_S = 120.0  # the first start of an MLflow server on a new store migrates its schema


def base_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """``http://host:port`` of a UI on this machine (``0.0.0.0`` is reached on loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def experiment_url(base: str, experiment_id: str) -> str:
    """The URL of an experiment's runs table in the Model training view (parents with children nested)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The URL of one run's page in the Model training view (its metrics, params, artifacts; a
    parent run's page lists its child runs)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def show_hint(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The one thing to type or open to see run ``run_id`` (or the experiment) in the browser.

    For a tracking server that is the URL itself; for a local store it is the ``fashion-cnn ui``
    command (with ``--tracking_uri`` unless the store is ``./mlflow.db`` of the working folder),
    which starts the UI and prints the URL. Call it for a plain run, a study's or a sweep's parent
    run alike: fit, study and sweep print the same line.

    Args:
        tracking_uri: The store the run is in (as the logger resolved it).
        experiment_id: The run's experiment.
        run_id: The run; None for the whole experiment.
    """
    if is_server(tracking_uri):
        if run_id is None:
            return experiment_url(tracking_uri, experiment_id)
        return run_url(tracking_uri, experiment_id, run_id)
    words = ["fashion-cnn", "ui"]
    if tracking_uri != _local_default():
        words += ["--tracking_uri", tracking_uri]
    words += ["--run", run_id] if run_id is not None else ["--experiment_id", experiment_id]
    return shlex.join(words)


def _local_default() -> str:
    """``./mlflow.db`` of this folder, as :func:`resolve_tracking_uri` writes it."""
    db = sqlite_file(DEFAULT_TRACKING_URI)
    assert db is not None
    return "sqlite:///" + str(db.resolve())


def local_store(tracking_uri: str | None) -> str:
    """The store ``fashion-cnn ui`` shows: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db.

    Raises:
        TrackingError: A local sqlite store that does not exist (nothing was trained here yet).
    """
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise TrackingError(
            f"no runs here: the MLflow store {db} does not exist. Train first (fashion-cnn fit --config "
            "configs/debug.yaml) or pass --tracking_uri (or set MLFLOW_TRACKING_URI) to the store of "
            "your runs."
        )
    return uri


def server_command(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``mlflow server`` command line that serves ``tracking_uri``'s runs (and their artifacts)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_server(
    tracking_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float = START_TIMEOUT_S,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start MLflow's UI server on ``tracking_uri`` and return once it answers at ``/health``.

    The server's own output goes to this process's stderr. The caller stops it (``terminate``).

    Raises:
        UserError: The server exited (the port is taken, say) or did not answer within ``timeout``.
    """
    # The server's messages go to stderr: stdout carries only the URLs the caller prints. It runs
    # in a session of its own, so stop_server() ends it with every process it started. MLflow 3's
    # job execution (GenAI jobs: seven huey worker processes of ~250 MB each, slow to start and to
    # stop) is off: looking at runs needs none of it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        server_command(tracking_uri, host, port), cwd=cwd, stdout=sys.stderr, env=env, start_new_session=True
    )
    health = base_url(host, port) + "/health"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise UserError(
                    f"the MLflow UI server stopped at start (exit status {process.returncode}; its "
                    f"messages are above). Is port {port} taken? Pass another with --port."
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:  # noqa: S310 - http only
                    response.read(16)
                return process
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise UserError(f"the MLflow UI server did not answer at {health} within {timeout:.0f} s")
    except BaseException:  # not answering, Ctrl+C or SIGTERM while waiting: no server is left behind
        stop_server(process)
        raise


def stop_server(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """End the server and every process it started (its session): SIGTERM, then SIGKILL after
    ``grace`` seconds."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
