"""One study run serially and on Ray, side by side: wall time, and what each run spends outside training.

    python benchmarks/bench_study.py                                  # studies/dropout, 2 seeds, short
    python benchmarks/bench_study.py --study studies/normalisation --seeds 3 --train_batches 100
    python benchmarks/bench_study.py --workers 4 --run_cpus 4          # a bigger machine
    python benchmarks/bench_study.py --workers 8 --run_cpus 2 --run_gpus 0.125   # 8 runs on one GPU

Both modes run the same study on the real Fashion-MNIST files through the library's own runner
(``fashion_cnn.study.run_studies``), each in its own folder with its own sqlite store and with
reuse off, so both train every run:

- serial: the default executor, one run after another in this process, ``--serial_threads`` torch
  threads (default: every core);
- ray: a local Ray started for the study, ``--workers`` runs at once with ``--run_cpus`` threads each.

Per run it measures three times: the *driver wall* (from the executor reporting the run started to
the driver receiving its result), the *task wall* (inside the process that trains, from the call to
the return: config, data, fit, test) and the *MLflow run time* (the run's start to end: fit and
test). Their differences are the per-run overhead: ``driver - MLflow`` in all, of which
``task - MLflow`` is start-up inside the task (parsing, data, model, logger) and ``driver - task``
is scheduling and transfer (Ray). It prints the wall-time ratio and, from these per-run figures,
what N machines or GPUs with k runs each would take for the same study.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _fit_runs import machine
from mlflow.tracking import MlflowClient

from fashion_cnn.runs import ExecutorOptions, Progress
from fashion_cnn.study import run_studies

LABEL = re.compile(r"\[(?P<study>[^\]]+)\] (?P<variant>\S+) seed (?P<seed>\d+)")


class Timing(Progress):
    """Records when each run started and finished, as the driver sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at: dict[str, float] = {}
        self.driver: dict[str, float] = {}
        self.task: dict[str, float] = {}

    def started(self, label: str) -> None:
        self.started_at[label] = time.monotonic()
        super().started(label)

    def finished(self, key: tuple[str, str], label: str, seconds: float, metrics: str) -> None:
        self.driver[label] = time.monotonic() - self.started_at[label]
        self.task[label] = seconds
        super().finished(key, label, seconds, metrics)

    def note(self, line: str) -> None:
        pass


@dataclass
class Mode:
    name: str
    description: str
    slots: int
    wall_s: float = 0.0
    driver: list[float] = field(default_factory=list)
    task: list[float] = field(default_factory=list)
    mlflow: list[float] = field(default_factory=list)
    acc: dict[tuple[str, int], float] = field(default_factory=dict)

    def per_run(self) -> tuple[float, float, float]:
        return statistics.mean(self.driver), statistics.mean(self.task), statistics.mean(self.mlflow)


def run_mode(mode: Mode, study: str, seeds: Sequence[int], overrides: list[str], executor) -> Mode:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-study-{mode.name}-"))
    store = f"sqlite:///{folder / 'mlflow.db'}"
    previous, previous_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = store
    timing = Timing()
    start = time.monotonic()
    try:
        run_studies(
            [study],
            overrides=overrides,
            seeds=seeds,
            output=folder / "study",
            reuse=False,
            executor=executor,
            progress=timing,
        )
    finally:
        mode.wall_s = time.monotonic() - start
        os.chdir(previous)
        if previous_uri is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("fashion-cnn-studies")
    runs = client.search_runs([experiment.experiment_id], "tags.study_role = 'trial'")
    by_key = {(r.data.tags["variant"], int(r.data.tags["seed"])): r for r in runs}
    for label, driver in timing.driver.items():
        match = LABEL.fullmatch(label)
        assert match, label
        run = by_key[(match["variant"], int(match["seed"]))]
        mode.driver.append(driver)
        mode.task.append(timing.task[label])
        mode.mlflow.append((run.info.end_time - run.info.start_time) / 1000)
        mode.acc[(match["variant"], int(match["seed"]))] = run.data.metrics["test/acc"]
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/dropout", help="a study file or packaged name")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per variant")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train_batches", type=int, default=40, help="limit_train_batches per epoch")
    parser.add_argument("--workers", type=int, default=2, help="Ray: runs at once")
    parser.add_argument("--run_cpus", type=int, default=1, help="Ray: CPUs and torch threads per run")
    parser.add_argument(
        "--run_gpus", type=float, default=0.0, help="Ray: GPUs per run (both sides train on GPU)"
    )
    parser.add_argument("--serial_threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    overrides = [
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.limit_train_batches={args.train_batches}",
        "--trainer.limit_val_batches=8",
        "--trainer.limit_test_batches=20",
        *(["--trainer.accelerator=gpu", "--trainer.devices=1"] if args.run_gpus else []),
    ]
    seeds = list(range(args.seeds))
    print(f"machine: {machine()}")
    print(f"study: {args.study}, seeds {seeds}, real data, {' '.join(overrides)}")
    serial = run_mode(
        Mode("serial", f"serial (1 process, {args.serial_threads} threads)", 1),
        args.study,
        seeds,
        overrides,
        ExecutorOptions("serial", run_cpus=args.serial_threads).build(),
    )
    ray = run_mode(
        Mode(
            "ray",
            f"ray ({args.workers} workers x {args.run_cpus} thread{'s' * (args.run_cpus > 1)})",
            args.workers,
        ),
        args.study,
        seeds,
        overrides,
        ExecutorOptions(
            "ray", workers=args.workers, run_cpus=args.run_cpus, run_gpus=args.run_gpus, max_retries=0
        ).build(),
    )
    runs = len(serial.driver)
    print(f"{runs} runs per mode")
    print(
        f"{'mode':34s} {'wall':>8s} {'driver/run':>11s} {'task/run':>9s} {'MLflow/run':>11s} "
        f"{'overhead/run':>13s} {'start-up':>9s} {'sched.':>7s}"
    )
    for mode in (serial, ray):
        driver, task, mlflow = mode.per_run()
        print(
            f"{mode.description:34s} {mode.wall_s:7.1f}s {driver:10.1f}s {task:8.1f}s {mlflow:10.1f}s "
            f"{driver - mlflow:12.1f}s {task - mlflow:8.1f}s {driver - task:6.1f}s"
        )
    print(f"wall-time ratio serial / ray: {serial.wall_s / ray.wall_s:.2f}x")
    diffs = [abs(serial.acc[k] - ray.acc[k]) for k in serial.acc]
    same_threads = args.serial_threads == args.run_cpus
    print(
        f"largest test/acc difference between the modes, same run: {max(diffs):.4f} "
        + (
            "(same thread count: must be 0)"
            if same_threads
            else f"({args.serial_threads} against {args.run_cpus} torch threads sum in another order)"
        )
    )
    # The same study on N machines (or GPUs) with k runs each, from the per-run figures: the runs go
    # in ceil(runs / (N k)) waves of one run's driver wall each, plus the Ray start-up measured here.
    driver, _, mlflow = ray.per_run()
    fixed = ray.wall_s - math.ceil(runs / ray.slots) * driver
    print(
        f"Ray fixed cost (start, planning, reports): {fixed:.1f} s; one run {driver:.1f} s "
        f"(of which training and test {mlflow:.1f} s) at {args.run_cpus} thread(s)"
    )
    for n, k in ((1, 1), (1, 4), (2, 4), (8, 4)):
        waves = math.ceil(runs / (n * k))
        print(
            f"  {n} x {k} runs at once: {waves} wave(s), ~{fixed + waves * driver:.0f} s "
            "(if one run keeps this speed when k share a device)"
        )
    if same_threads and max(diffs) > 0:
        sys.exit("serial and Ray runs with the same threads gave different metrics")


if __name__ == "__main__":
    main()
