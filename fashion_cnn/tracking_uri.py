"""Which MLflow store a command uses: the given URI, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db.

Kept apart from :mod:`fashion_cnn.tracking` (the Lightning logger) so that commands that only need
the store, such as ``fashion-cnn ui``, do not import Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path

_SQLITE_PREFIX = "sqlite:///"
DEFAULT_TRACKING_URI = _SQLITE_PREFIX + "mlflow.db"


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use: the argument, else ``MLFLOW_TRACKING_URI``, else local sqlite.

    A relative sqlite path is made absolute: MLflow caches stores by URI string, so a process
    that changes directory would otherwise keep writing to the first folder's database.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = sqlite_file(uri)
    if db is None or db.is_absolute():
        return uri
    return _SQLITE_PREFIX + str(db.resolve())


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    return Path(uri[len(_SQLITE_PREFIX) :]) if uri.startswith(_SQLITE_PREFIX) else None


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (which processes on other machines can reach)."""
    return uri.startswith(("http://", "https://"))
