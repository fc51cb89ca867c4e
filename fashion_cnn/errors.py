"""The error types of fashion_cnn, in one place.

Every error a user can fix derives from :class:`UserError`; the command line reports those as one
``fashion-cnn: error: ...`` line and exit status 2, with no traceback. Anything else is a bug and
keeps its traceback. Library code raises these; only :mod:`fashion_cnn.cli` turns them into exits.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class UserError(Exception):
    """A problem the user can fix (bad path, unusable checkpoint, bad setting); the message says how."""


class ConfigError(UserError, ValueError):
    """A setting, config file or study/sweep file that cannot work; names the key and what would."""


class DataError(UserError, RuntimeError):
    """The Fashion-MNIST data cannot be found, verified, written or read."""


class ImageFolderError(DataError):
    """A folder of labelled images that cannot be used; names the folder or file and the fix."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable or of another model."""


class TrackingError(UserError):
    """The MLflow tracking store or server cannot be used; names the URI and the fix."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; names the extra to install."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch, step and causes."""


class StudyError(ConfigError):
    """A study file, or a study's command line, that cannot work; the message says how to fix it."""


class SweepError(ConfigError):
    """A sweep file, or a sweep's command line or storage, that cannot work; says how to fix it."""


class ExecutorError(UserError):
    """An executor that cannot start or reach its cluster (Ray), or a run the cluster lost."""


class RunFailed(UserError):
    """One of many runs (a study's) stopped for a reason the user can fix; names the run and its log."""


class Pruned(Exception):  # noqa: N818 - it is an event, not a failure
    """A pruner stopped a run on purpose at the end of an epoch (a sweep's trial judged hopeless)."""


class Interrupted(Exception):  # noqa: N818 - it is an event, not a failure
    """A run, study or sweep was interrupted (Ctrl+C or SIGTERM); finished work is kept.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``, for the exit status (130 or 143).
    """

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` inside the block, as Ctrl+C raises KeyboardInterrupt.

    The default SIGTERM action ends the process at once, leaving MLflow runs RUNNING and files
    half-written; raised instead, it unwinds through the same cleanup as Ctrl+C. Off the main
    thread (where signals cannot be handled) it does nothing. The previous handler comes back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("stopped by SIGTERM", "SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExecutorError",
    "ImageFolderError",
    "Interrupted",
    "MissingDependencyError",
    "NonFiniteLossError",
    "Pruned",
    "RunFailed",
    "StudyError",
    "SweepError",
    "TrackingError",
    "UserError",
    "sigterm_raises",
]
