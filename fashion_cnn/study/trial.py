"""One trial of a study (a variant with a seed), run wherever an executor puts it.

:func:`run_trial` is the unit both executors run: in the study's own process (serial) or as a Ray
task on any node. It writes the trial's config next to its log, trains through the real CLI with
its console output in that log, and returns what the driver needs. Everything it gets is plain data,
so it pickles to a Ray worker unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from fashion_cnn.errors import Interrupted, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """Everything one run needs.

    Attributes:
        key: ``(study, variant, seed)``.
        config: The full ``fit`` config (resolved by the planner, with seed, names and tags set).
        log_file: Where the run's console output goes; its config is written beside it (``.yaml``).
        threads: torch's intra-op threads for the run (None: torch's default, all cores).
        resumes: The unfinished run this trial continues from its checkpoint (``config``'s
            ``ckpt_path``), and the seconds that run had trained; None for a fresh run.
    """

    key: tuple[str, str, int]
    config: dict[str, Any]
    log_file: str
    threads: int | None = None
    resumes: tuple[str, float] | None = None

    @property
    def label(self) -> str:
        study, variant, seed = self.key
        return f"[{study}] {variant} seed {seed}"


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial reports back: its MLflow run, final metrics and timings (seconds)."""

    key: tuple[str, str, int]
    run_id: str
    metrics: dict[str, float]
    wall_s: float  # from the call to the return, start-up included
    pid: int


class TrialFailed(UserError):
    """A trial stopped for a reason the user can fix (bad setting, data, tracking); not retried."""


def run_trial(trial: Trial) -> TrialResult:
    """Train ``trial`` in this process; its MLflow run ends FINISHED, FAILED or KILLED.

    Raises:
        TrialFailed: A user error (the message names the trial and the cause).
        Interrupted: Ctrl+C or SIGTERM reached the run.
    """
    from fashion_cnn.experiment import run_cli
    from fashion_cnn.tracking import mlflow_logger

    start = time.perf_counter()
    log_file = Path(trial.log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config_file = log_file.with_suffix(".yaml")
    config = trial.config
    if trial.resumes is not None and Path(config["ckpt_path"]).is_file():
        _mark_resumed(trial)
    elif trial.resumes is not None:  # another node of a cluster, whose disk does not have it
        log.warning("%s: %s is not on this machine; trains from the start", trial.label, config["ckpt_path"])
        config = {k: v for k, v in config.items() if k != "ckpt_path"}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with open(log_file, "a", encoding="utf-8") as out, console_to(out), torch_threads(trial.threads):
        try:
            cli = run_cli(["fit", "--config", str(config_file)])
        except (Interrupted, KeyboardInterrupt):
            raise
        except (UserError, ValueError) as exc:
            raise TrialFailed(f"{trial.label}: {exc} (log: {log_file})") from None
        except SystemExit as exc:
            raise TrialFailed(
                f"{trial.label}: stopped with exit status {exc.code} (log: {log_file})"
            ) from None
    logger = mlflow_logger(cli.trainer)
    if logger is None:
        raise TrialFailed(f"{trial.label}: the run has no MLflow logger")
    run_id = str(logger.run_id)
    metrics = dict(logger.experiment.get_run(run_id).data.metrics)
    return TrialResult(trial.key, run_id, metrics, time.perf_counter() - start, os.getpid())


def _mark_resumed(trial: Trial) -> None:
    """Tag the run it continues with the time it had trained and when it goes on (here, when the
    run really starts, not when it was queued), so its run time leaves out the pause."""
    from mlflow.tracking import MlflowClient

    from fashion_cnn.study.store import TAG_KEPT, TAG_RESUMED_AT

    assert trial.resumes is not None
    run_id, kept = trial.resumes
    client = MlflowClient(trial.config["trainer"]["logger"]["init_args"]["tracking_uri"])
    client.set_tag(run_id, TAG_KEPT, f"{kept:.1f}")
    client.set_tag(run_id, TAG_RESUMED_AT, str(int(time.time() * 1000)))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (Ray's CPUs are only logical)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def console_to(stream: IO[str]) -> Iterator[None]:
    """Send this process's console output (print, warnings, logging, progress bars) to ``stream``.

    Logging handlers keep the stream they were created with (Lightning's writes to the original
    stderr), so their streams are switched too and restored afterwards.
    """
    switched = []
    loggers = [logging.getLogger(), *logging.getLogger().manager.loggerDict.values()]
    for lg in loggers:
        for handler in getattr(lg, "handlers", []):
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stdout,
                sys.stderr,
                sys.__stdout__,
                sys.__stderr__,
            ):
                switched.append((handler, handler.setStream(stream)))
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        for handler, previous in switched:
            handler.setStream(previous)
