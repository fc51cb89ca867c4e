"""Real services for the tests, started on this machine and stopped after: Ray, PostgreSQL, MLflow.

Nothing is mocked: a Ray head node (``ray start``), a throwaway PostgreSQL cluster in a temporary
folder (Debian's ``postgresql``; ``initdb`` refuses to run as root, so it runs as ``postgres``), and
an ``mlflow server`` over it on loopback.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Debian installs each major version in its own folder; take the newest there is.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/none/bin"))
# CI sets this: there a missing service is a failure, not a skipped test.
REQUIRED = os.environ.get("FASHION_CNN_REQUIRE_SERVICES") == "1"


def missing(what: str) -> None:
    """Skip the test for want of ``what`` (a developer's machine), or fail it (CI)."""
    if REQUIRED:
        pytest.fail(f"{what} (FASHION_CNN_REQUIRE_SERVICES=1)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[str]:
    """A Ray head node started with ``ray start``; yields its address (``ip:port``).

    It runs with ``--block`` in a session of its own, with its own temp folder, and is stopped by
    signalling that session: ``ray stop`` would also kill every other Ray on the machine (a user's
    running study among them).
    """
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    if not Path(ray_cli).exists():
        missing('Ray is not installed (pip install "fashion-cnn[ray]")')
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="fashion-cnn-ray-"))
    log = folder / "ray-start.log"
    token_set = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
    if not token_set and not (Path.home() / ".ray" / "auth_token").is_file():
        # `ray start` clusters use token authentication: on a fresh machine there is no token yet,
        # so the test makes one of its own (as `ray get-auth-token --generate` would), in its folder.
        token = folder / "auth_token"
        token.write_text(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                ray_cli,
                "start",
                "--head",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={folder}",
                "--block",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "Ray runtime started" in log.read_text() or head.poll() is not None, 180, "ray start"
        )
        if head.poll() is not None:
            raise RuntimeError(f"ray start failed:\n{log.read_text()[-2000:]}")
        import ray._private.services as services

        yield f"{services.get_node_ip_address()}:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:  # its processes shut down in seconds; a slow one holds nothing the tests need
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        if not token_set and os.environ.get("RAY_AUTH_TOKEN_PATH", "").startswith(str(folder)):
            del os.environ["RAY_AUTH_TOKEN_PATH"]
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with an empty database; yields its SQLAlchemy URL."""
    if not (PG_BIN / "initdb").exists():
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="fashion-cnn-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    port = free_port()
    data = folder / "data"
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        subprocess.run(
            [
                *as_postgres,
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "fashion",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/fashion"
    finally:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` over ``backend`` on 127.0.0.1; yields its URL."""
    port = free_port()
    mlflow_cli = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [
            mlflow_cli,
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 120, "mlflow server")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
