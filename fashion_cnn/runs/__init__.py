"""The run layer: what studies and sweeps share, so that they differ only in what they run next.

One launch (:func:`~fashion_cnn.runs.launch.launch`), the executors that run many
(:class:`~fashion_cnn.runs.options.ExecutorOptions` picks one), their MLflow records and progress.
"""

from __future__ import annotations

from fashion_cnn.runs.executors import Executor, SerialExecutor
from fashion_cnn.runs.launch import RunOutcome, RunResult, RunSpec, launch, run_experiment
from fashion_cnn.runs.options import ExecutorOptions
from fashion_cnn.runs.progress import ConsoleProgress, Progress

__all__ = [
    "ConsoleProgress",
    "Executor",
    "ExecutorOptions",
    "Progress",
    "RunOutcome",
    "RunResult",
    "RunSpec",
    "SerialExecutor",
    "launch",
    "run_experiment",
]
