"""The run layer: launching runs, the executors that run them, their MLflow records, the progress.

Studies (:mod:`fashion_cnn.study`) and sweeps (:mod:`fashion_cnn.sweep`) are both "many runs":
they differ only in how they choose what to run next and how they report. Everything else lives
here once: :func:`~fashion_cnn.runs.launch.launch` trains one run in this process and returns its
outcome from the trainer; an executor (:class:`~fashion_cnn.runs.executors.SerialExecutor`, or
:class:`~fashion_cnn.runs.ray_executor.RayExecutor` on a local Ray or a cluster, with fractional
GPUs and retries) runs many, chosen by :class:`~fashion_cnn.runs.options.ExecutorOptions`;
:mod:`~fashion_cnn.runs.records` keeps the MLflow parent and child runs;
:class:`~fashion_cnn.runs.progress.ConsoleProgress` is the one progress display.
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
