"""Start-up time of the ``fashion-cnn`` command: how long until the commands that train nothing answer.

    python benchmarks/bench_startup.py                 # 7 runs of each command
    python benchmarks/bench_startup.py --runs 11 --source /tmp/base   # another checkout

Each command runs as a fresh subprocess (``python -m fashion_cnn.cli ...`` with ``PYTHONPATH`` set
to the checkout measured, so an editable install elsewhere does not interfere); the median,
minimum and maximum wall times are printed. Goal: ``--help`` and ``configs`` under one second.
The machine may be shared: compare figures taken in the same sitting, and look at the minimum too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (("--help",), ("configs",), ("fit", "--help"))


def measure(source: Path, args: tuple[str, ...], runs: int) -> list[float]:
    """Wall seconds of ``runs`` fresh ``fashion-cnn <args>`` processes (after one warm-up run)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "fashion_cnn.cli", *args]
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        if i:  # the first run fills the OS file cache and Python's bytecode cache
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the checkout to measure (default: this one)",
    )
    opts = parser.parse_args()
    print(f"fashion-cnn start-up, {opts.source}, {opts.runs} runs each, {os.cpu_count()} cores")
    for args in COMMANDS:
        times = measure(opts.source, args, opts.runs)
        label = "fashion-cnn " + " ".join(args)
        print(
            f"{label:<24} median {statistics.median(times):5.2f} s   "
            f"min {min(times):5.2f} s   max {max(times):5.2f} s"
        )


if __name__ == "__main__":
    main()
