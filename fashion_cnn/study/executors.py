"""Where a study's trials run: in this process, one after another, or on Ray.

An executor takes the trials the runner planned and reports each start and result back; it owns
no MLflow bookkeeping (the runner does that) and no scheduling of its own (Ray does that). The
serial executor is the default and needs nothing beyond the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from fashion_cnn.study.trial import Trial, TrialResult, run_trial

ExecutorName = Literal["serial", "ray"]

OnStart = Callable[[Trial], None]
OnDone = Callable[[Trial, TrialResult], None]


class Executor(Protocol):
    """Runs trials and reports back; raises on the first failure it cannot retry."""

    name: str  # recorded on each run it trains (the ``executor`` tag)
    slots: int  # how many trials run at once
    threads: int | None  # torch threads per trial (None: torch's default)

    def prepare(self, tracking_uri: str) -> None:
        """Check (and start) what the trials need before the first one, or raise a UserError."""

    def run(self, trials: Sequence[Trial], on_start: OnStart, on_done: OnDone) -> None:
        """Run every trial; raises TrialFailed, Interrupted or ExecutorError and stops the rest."""

    def close(self) -> None:
        """Release what :meth:`prepare` started."""


class SerialExecutor:
    """One trial after another in this process (the embedded path: no Ray, no server).

    Args:
        run_cpus: torch threads per run (None: torch's default, every core).
    """

    name = "serial"
    slots = 1

    def __init__(self, run_cpus: int | None = None) -> None:
        self.threads = run_cpus

    def prepare(self, tracking_uri: str) -> None:
        return None

    def run(self, trials: Sequence[Trial], on_start: OnStart, on_done: OnDone) -> None:
        for trial in trials:
            on_start(trial)
            on_done(trial, run_trial(trial))

    def close(self) -> None:
        return None


def make_executor(
    name: ExecutorName = "serial",
    workers: int | None = None,
    run_cpus: int | None = None,
    run_gpus: float = 0.0,
    ray_address: str | None = None,
    max_retries: int = 2,
) -> SerialExecutor | Executor:
    """The executor ``name`` with its settings checked (see ``fashion-cnn study --help``).

    Raises:
        ConfigError: A setting out of range, or one the serial executor cannot honour.
    """
    from fashion_cnn.errors import ConfigError

    if name not in ("serial", "ray"):
        raise ConfigError(f"--executor {name!r} is unknown; use serial (default) or ray")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: use at least 1 (runs at once)")
    if run_cpus is not None and run_cpus < 1:
        raise ConfigError(f"--run_cpus {run_cpus}: use at least 1 CPU per run")
    if run_gpus < 0:
        raise ConfigError(f"--run_gpus {run_gpus}: use 0 or more, e.g. 0.25 for four runs per GPU")
    if max_retries < 0:
        raise ConfigError(f"--max_retries {max_retries}: use 0 or more")
    if name == "serial":
        if (workers or 1) > 1 or run_gpus or ray_address:
            raise ConfigError(
                "--workers > 1, --run_gpus and --ray_address need --executor ray (the serial executor runs "
                "one trial at a time in this process)"
            )
        return SerialExecutor(run_cpus)
    from fashion_cnn.study.ray_executor import RayExecutor

    return RayExecutor(
        address=ray_address,
        workers=workers,
        run_cpus=run_cpus or 1,
        run_gpus=run_gpus,
        max_retries=max_retries,
    )
