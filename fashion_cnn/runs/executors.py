"""Where runs execute: the executor protocol, and the serial executor (this process, in turn).

An executor takes runs from an iterable, one whenever it has a free slot, so the caller can decide
the next run from the results so far (a sweep asks Optuna only when a slot frees). It reports each
start and outcome back, and owns no MLflow bookkeeping: the caller does that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from fashion_cnn.runs.launch import RunOutcome, RunSpec, launch

OnStart = Callable[[RunSpec], None]
OnDone = Callable[[RunSpec, RunOutcome], None]


class Executor(Protocol):
    """Runs runs and reports back; raises only when it cannot go on (lost runs, interrupts)."""

    name: str  # recorded on each run it trains (the ``executor`` tag)
    slots: int  # how many runs go at once
    threads: int | None  # torch threads per run (None: torch's default)

    def prepare(self, tracking_uri: str, shared_paths: Iterable[str] = ()) -> None:
        """Check (and start) what the runs need before the first one, or raise a UserError.

        ``shared_paths``: local files every run must reach (an Optuna journal), refused on a
        cluster of several machines.
        """

    def run(self, runs: Iterable[RunSpec], on_start: OnStart, on_done: OnDone) -> None:
        """Run ``runs``, taking the next one only when a slot is free. An exception raised by
        ``on_done`` (or Interrupted, ExecutorError) stops the rest and propagates."""

    def close(self) -> None:
        """Release what :meth:`prepare` started."""


class SerialExecutor:
    """One run after another in this process (the embedded path: no Ray, no server).

    Args:
        run_cpus: torch threads per run (None: torch's default, every core).
    """

    name = "serial"
    slots = 1

    def __init__(self, run_cpus: int | None = None) -> None:
        self.threads = run_cpus

    def prepare(self, tracking_uri: str, shared_paths: Iterable[str] = ()) -> None:
        return None

    def run(self, runs: Iterable[RunSpec], on_start: OnStart, on_done: OnDone) -> None:
        for spec in runs:
            on_start(spec)
            on_done(spec, launch(spec))

    def close(self) -> None:
        return None


def describe(executor: Executor) -> str:
    """Where runs train, in a few words: ``the ray executor (2 at once, 1 torch thread each)``."""
    threads = executor.threads
    each = f"{threads} torch thread{'s' * (threads != 1)}" if threads else "all cores"
    where = "in this process" if executor.name == "serial" else f"{executor.slots} at once"
    return f"the {executor.name} executor ({where}, {each} each)"
