"""Where a sweep's Optuna study lives: a journal file by default, or a database for many machines.

- A path (no ``://``) is an Optuna journal file (``JournalStorage(JournalFileBackend(path))``): an
  append-only log guarded by a file lock, safe for several processes on one machine. sqlite is not
  the default because several processes writing one sqlite database get "database is locked"
  (optuna #820).
- An SQLAlchemy URL (``postgresql://user@host/db``, ``mysql+pymysql://...``) is an ``RDBStorage``
  that workers on many machines share. Before Optuna touches it, the server is asked once with a
  short timeout, so a wrong host or a stopped server fails within seconds, naming the URL (the
  drivers would otherwise wait for the operating system's TCP timeout, minutes). Its trials send a
  heartbeat, so a trial whose worker died is marked failed by the next worker that starts one.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Any

from fashion_cnn.errors import MissingDependencyError, SweepError

CONNECT_TIMEOUT_S = 5  # how long a database may take to accept the first connection
HEARTBEAT_S, GRACE_S = 60, 180  # RDB trials beat this often; one silent for GRACE_S is failed as stale
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
JOURNAL_NAME = "optuna.journal"


def is_database(storage: str) -> bool:
    """Whether ``storage`` is an SQLAlchemy URL (else a journal file path)."""
    return "://" in storage


def locate(storage: str | None, output: Path) -> str:
    """A database URL as given, a journal path made absolute; by default the journal file in the
    sweep's output folder, beside the trials' checkpoints and logs."""
    if storage is None:
        return str(output / JOURNAL_NAME)
    return storage if is_database(storage) else str(Path(storage).expanduser().absolute())


def shown(storage: str) -> str:
    """``storage`` with any password hidden, for messages, logs and tags."""
    if not is_database(storage):
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported by check_reachable
        return storage


def check_reachable(storage: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`SweepError` within ``timeout`` seconds if the database server does not answer.

    Journal files and sqlite URLs need no server and pass.
    """
    if not is_database(storage):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError as exc:
        raise SweepError(
            f"--storage {storage}: not a database URL ({exc}); write e.g. postgresql://user@host:5432/db, "
            "or a file path for a local journal"
        ) from None
    host = url.host or "localhost"
    port = url.port or _DEFAULT_PORTS.get(url.get_backend_name())
    if port is None:  # sqlite, or an unusual backend: leave it to its driver
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise SweepError(
            f"--storage {shown(storage)}: the database at {host}:{port} does not answer ({reason}, "
            f"waited up to {timeout:g} s). Start the server, fix the host or port, or leave --storage out "
            "for a local journal file"
        ) from None


def open_storage(storage: str, check: bool = True) -> Any:
    """The Optuna storage for ``storage`` (a journal path or a database URL).

    Args:
        storage: A file path (journal) or an SQLAlchemy URL.
        check: Ask the database server first (see :func:`check_reachable`).

    Raises:
        SweepError: The database does not answer or refuses the connection.
        MissingDependencyError: The URL's database driver is not installed.
    """
    import importlib.util

    import optuna

    if not is_database(storage):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage).expanduser()
        if path.is_dir():
            raise SweepError(
                f"--storage {storage} is a folder; name a journal file, e.g. {path / JOURNAL_NAME}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if check:
        check_reachable(storage)
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 (the ``postgres`` extra's); where only
    # psycopg2 is installed the URL names it (with neither, the driver's error names what to install).
    find = importlib.util.find_spec
    if url.drivername == "postgresql" and not find("psycopg") and find("psycopg2"):
        url = url.set(drivername="postgresql+psycopg2")
    backend = url.get_backend_name()
    server = backend != "sqlite"
    connect = (
        {"connect_timeout": CONNECT_TIMEOUT_S} if backend in ("postgresql", "mysql", "mariadb") else None
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
            return optuna.storages.RDBStorage(
                url.render_as_string(hide_password=False),
                engine_kwargs={"connect_args": connect} if connect else {},
                heartbeat_interval=HEARTBEAT_S if server else None,
                grace_period=GRACE_S if server else None,
            )
    except ImportError as exc:  # Optuna re-raises the driver's ModuleNotFoundError as an ImportError
        raise MissingDependencyError(
            f"--storage {shown(storage)} needs a database driver that is not installed ({exc}); for "
            'PostgreSQL: pip install "fashion-cnn[postgres]"'
        ) from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends: auth, missing database
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if "timeout expired" in first:
            first = f"it accepted the connection but did not answer within {CONNECT_TIMEOUT_S} s ({first})"
        raise SweepError(f"--storage {shown(storage)} cannot be used: {first}") from None


__all__ = ["check_reachable", "is_database", "locate", "open_storage", "shown"]
