"""DDP on the CPU: does a 2-process run (gloo) reach the single-process accuracy?

    python benchmarks/bench_ddp.py                                   # fast_baseline, seeds 0 1 2
    python benchmarks/bench_ddp.py configs/fast_baseline.yaml --seeds 0 1 2 3 4

For each seed, alternately, one ``fashion-cnn fit`` in one process and one with
``--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp``, both through the real
CLI on the real data. The DDP run gives each process half the config's batch size, so both sides
take the same optimiser steps on the same global batch of images per step (Lightning's
DistributedSampler hands each process its own half of every epoch; ``tests/test_ddp.py`` checks
that). Lightning gives each DDP process ``cores / 2`` torch threads, so both sides use the same
cores. Prints test accuracy and wall time per run, then the DDP - single difference of mean test
accuracy with its Welch 95 % interval: "within noise" means that interval contains 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from _fit_runs import FitRun, fit, machine

from fashion_cnn.configs import resolve_config
from fashion_cnn.study.verdicts import mean_ci, welch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=str, nargs="?", default="configs/fast_baseline.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.config = resolve_config(args.config).resolve()

    batch = (yaml.safe_load(args.config.read_text()).get("data") or {}).get("batch_size", 64)
    if batch % 2:
        parser.error(f"the config's data.batch_size={batch} must be even to split over 2 processes")
    ddp_args = [
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--data.batch_size={batch // 2}",
    ]
    print(f"machine: {machine()}")
    print(f"config: {args.config}; single process batch {batch}; DDP 2 x {batch // 2}")
    results: dict[str, list[FitRun]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory(prefix="bench_ddp-") as tmp:
        root = args.workdir or Path(tmp)
        for seed in args.seeds:
            for side, extra in (("single", []), ("ddp", ddp_args)):
                run = fit(args.config.resolve(), seed, extra, root / f"{side}-seed{seed}")
                results[side].append(run)
                print(
                    f"seed {seed} {side:6s}: test acc {run.test_acc * 100:.2f} %, test loss "
                    f"{run.test_loss:.4f}, wall {run.wall_s:.0f} s   ({run.command})",
                    flush=True,
                )
    for side, runs in results.items():
        acc = mean_ci([r.test_acc * 100 for r in runs])
        wall = mean_ci([r.wall_s for r in runs])
        print(f"{side:6s}: test acc {acc.mean:.2f} ± {acc.sd:.2f} % (sd, n={acc.n}); wall {wall.mean:.0f} s")
    diff = welch([r.test_acc * 100 for r in results["ddp"]], [r.test_acc * 100 for r in results["single"]])
    low, high = diff.ci()
    verdict = "within noise" if low <= 0 <= high else "DIFFERENT"
    print(f"DDP - single: {diff.diff:+.2f} pp, 95 % CI [{low:+.2f}, {high:+.2f}] pp: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
