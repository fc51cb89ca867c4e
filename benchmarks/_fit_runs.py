"""Run ``fashion-cnn fit`` as a user would, in a subprocess, and read its figures back from MLflow.

Shared by the time-to-accuracy and DDP benchmarks. Each run gets its own folder and sqlite store,
so nothing leaks between runs and the test metrics come from the store the CLI wrote.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient


@dataclass
class FitRun:
    """What one ``fashion-cnn fit`` produced."""

    seed: int
    test_acc: float
    test_loss: float
    wall_s: float
    peak_rss_mb: float  # of the largest process (with DDP: rank 0 or the rank it waited for)
    num_params: int
    command: str


def fit(config: Path, seed: int, extra: list[str], workdir: Path) -> FitRun:
    """Run one fit of ``config`` with ``seed`` in ``workdir`` (its output goes to ``fit.log`` there).

    Raises RuntimeError with the log's tail when the command fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["fit", "--config", str(config), "--seed_everything", str(seed), *extra]
    # The console script of this interpreter's environment (pip install -e . puts it there).
    script = shutil.which("fashion-cnn", path=str(Path(sys.executable).parent)) or shutil.which("fashion-cnn")
    if script is None:
        raise RuntimeError("no fashion-cnn command on PATH: run `pip install -e .` first")
    command = [script, *args]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    log = workdir / "fit.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited {code}; end of {log}:\n{tail}")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("fashion-cnn")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    data = runs[0].data
    return FitRun(
        seed=seed,
        test_acc=data.metrics["test/acc"],
        test_loss=data.metrics["test/loss"],
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,
        num_params=int(float(data.params["num_params"])),
        command="fashion-cnn " + " ".join(args).replace(str(config), os.path.relpath(config)),
    )


def machine() -> str:
    """One line naming the CPU, core count, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
