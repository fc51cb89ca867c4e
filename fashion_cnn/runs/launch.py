"""One run, launched in this process: the unit every executor runs; and ``run_experiment``.

A run that fails for a reason the user can fix, or that a pruner stopped, is an outcome, not an
exception: the caller decides whether that stops everything (a study) or one trial (a sweep).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from fashion_cnn.errors import Interrupted, Pruned, UserError
from fashion_cnn.runs.settings import as_args

log = logging.getLogger(__name__)

State = Literal["finished", "pruned", "failed"]


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs.

    Attributes:
        key: What the caller knows the run by: ``(study, variant, seed)``, ``(sweep, trial)``.
        label: How the run is named in messages, e.g. ``[dropout] dropout_0.1 seed 2``.
        config: The full config of ``subcommand`` (resolved by the caller, names and tags set).
        log_file: Where the run's console output goes; its config is written beside it (``.yaml``).
        threads: torch's intra-op threads for the run (None: torch's default, all cores).
        subcommand: ``fit`` (default) or ``test``.
        args: Further CLI arguments after the config, e.g. ``("--ckpt_path", "best.ckpt")``.
        callbacks: Lightning callbacks added to the run's trainer (picklable, e.g. a pruner's).
        resumes: The unfinished MLflow run this one continues from ``config["ckpt_path"]``, and
            the seconds that run had trained; None for a fresh run.
    """

    key: tuple[Any, ...]
    label: str
    config: dict[str, Any]
    log_file: str
    threads: int | None = None
    subcommand: str = "fit"
    args: tuple[str, ...] = ()
    callbacks: tuple[Any, ...] = ()
    resumes: tuple[str, float] | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended and what it measured, read from its trainer.

    Attributes:
        key: The run's :attr:`RunSpec.key`.
        state: ``finished``, ``pruned`` (a pruner stopped it) or ``failed`` (a user error).
        run_id: Its MLflow run (None when it failed before one was made).
        metrics: The run's final metrics (``val/acc``, ``test/loss``, ...): the last value MLflow
            holds of each, and the trainer's own where no logger recorded them.
        best: The best value of the checkpoint's monitored metric over the epochs, if any.
        best_checkpoint: The best checkpoint's path, if one was written.
        wall_s: Seconds from the call to the return, start-up included.
        worker: ``host:pid`` of the process that ran it.
        error: Why it failed or was pruned (one line, naming its log).
    """

    key: tuple[Any, ...]
    state: State
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best: float | None = None
    best_checkpoint: str | None = None
    wall_s: float = 0.0
    worker: str = ""
    error: str = ""


def launch(spec: RunSpec) -> RunOutcome:
    """Run ``spec`` in this process; its MLflow run ends FINISHED, FAILED or KILLED.

    Raises:
        Interrupted: Ctrl+C or SIGTERM reached the run.
    """
    from fashion_cnn.runs.records import mark_resumed

    start = time.perf_counter()
    log_file = Path(spec.log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config = spec.config
    if spec.resumes is not None and Path(config["ckpt_path"]).is_file():
        mark_resumed(config["trainer"]["logger"]["init_args"]["tracking_uri"], *spec.resumes)
    elif spec.resumes is not None:  # another node of a cluster, whose disk does not have it
        log.warning("%s: %s is not on this machine; trains from the start", spec.label, config["ckpt_path"])
        config = {k: v for k, v in config.items() if k != "ckpt_path"}
    config_file = log_file.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    args = [spec.subcommand, "--config", str(config_file), *spec.args]
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def ended(state: State, error: str = "", **found: Any) -> RunOutcome:
        return RunOutcome(
            spec.key, state, wall_s=time.perf_counter() - start, worker=worker, error=error, **found
        )

    with open(log_file, "a", encoding="utf-8") as out, console_to(out), torch_threads(spec.threads):
        try:
            result = run_in_process(args, spec.callbacks)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Pruned as exc:
            return ended("pruned", str(exc))
        except (UserError, ValueError) as exc:
            return ended("failed", f"{spec.label}: {exc} (log: {log_file})")
        except SystemExit as exc:
            return ended("failed", f"{spec.label}: stopped with exit status {exc.code} (log: {log_file})")
    if result.run_id is None:
        return ended("failed", f"{spec.label}: the run has no MLflow logger")
    return ended(
        "finished",
        run_id=result.run_id,
        metrics=result.metrics,
        best=result.best,
        best_checkpoint=result.best_checkpoint,
    )


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the MLflow run, final metrics, the best checkpoint."""

    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    run_name: str | None = None
    best: float | None = None  # the best value of the checkpoint's monitored metric


def run_in_process(args: Sequence[str], callbacks: Sequence[Any] = ()) -> RunResult:
    """Run ``fashion-cnn ARGS`` (a trainer subcommand) here, with ``callbacks`` added.

    Raises:
        ConfigError, UserError, ValueError: Bad input, named as the CLI names it.
        Pruned: A pruning callback stopped the run.
        Interrupted: Ctrl+C or SIGTERM; the run is marked KILLED.
    """
    from fashion_cnn.lightning_cli import run_cli
    from fashion_cnn.tracking import mlflow_logger

    cli = run_cli(args, callbacks=callbacks)
    trainer = cli.trainer
    checkpoint = trainer.checkpoint_callback
    score = getattr(checkpoint, "best_model_score", None)
    best = float(score) if score is not None and math.isfinite(float(score)) else None
    logger = mlflow_logger(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if logger is not None:  # the run's final value of every metric it logged, fit's and test's
        metrics = {**metrics, **logger.experiment.get_run(logger.run_id).data.metrics}
    return RunResult(
        run_id=None if logger is None else str(logger.run_id),
        metrics=metrics,
        best_checkpoint=getattr(checkpoint, "best_model_path", None) or None,
        run_name=cli.run_name,
        best=best,
    )


def run_experiment(
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    subcommand: str = "fit",
) -> RunResult:
    """Run one CLI subcommand from Python and return its MLflow run id and final metrics.

    Args:
        config: A YAML config (as for ``--config``: a path or a packaged name), or None for the
            defaults.
        overrides: Further CLI arguments, either as strings (``["--trainer.max_epochs=1"]``) or
            as a mapping of dotted keys to values (``{"trainer.max_epochs": 1}``).
        subcommand: fit, validate, test or predict.

    Raises:
        ConfigError: An unknown key or a value of the wrong type, named by the parser.
        UserError: For bad input (config, checkpoint, data, tracking store), like the CLI reports.
        ValueError: A value the model or data rejected.
        Interrupted: Ctrl+C or SIGTERM; the run is marked KILLED.
    """
    from fashion_cnn.lightning_cli import TRAINER_SUBCOMMANDS

    if subcommand not in TRAINER_SUBCOMMANDS:
        raise ValueError(f"subcommand={subcommand!r}: use one of {', '.join(TRAINER_SUBCOMMANDS)}")
    config_args = ["--config", str(config)] if config is not None else []
    return run_in_process([subcommand, *config_args, *as_args(overrides)])


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (Ray's CPUs are only logical)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
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
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for lg in loggers:
        for handler in getattr(lg, "handlers", []):
            if type(handler) is logging.StreamHandler and handler.stream in consoles:
                switched.append((handler, handler.setStream(stream)))
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        for handler, previous in switched:
            handler.setStream(previous)
