"""Time to accuracy on real data: a shipped config over several seeds, through the real CLI.

    python benchmarks/bench_accuracy.py configs/fast_baseline.yaml --seeds 0 1 2 --goal 0.91
    python benchmarks/bench_accuracy.py configs/best_under_1m.yaml --seeds 0 1 2 --goal 0.945
    python benchmarks/bench_accuracy.py configs/debug.yaml --seeds 0 -- --trainer.max_epochs=1

Arguments after ``--`` go to ``fashion-cnn fit`` unchanged.

Each seed is one ``fashion-cnn fit --config CONFIG --seed_everything SEED`` in its own folder with
its own MLflow store (the CLI tests the best checkpoint after fitting; the figures are read back
from the store). Prints, per seed and then as mean ± sample standard deviation with a 95 %
t-interval: test accuracy, test loss, wall time (fit + test, including start-up) and peak resident
memory; then the parameter count and whether every seed and the mean reach ``--goal``.
Runs one fit at a time: two on the same cores would slow each other down.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _fit_runs import FitRun, fit, machine

from fashion_cnn.configs import resolve_config
from fashion_cnn.study.verdicts import mean_ci


def summarise(label: str, runs: list[FitRun], goal: float | None) -> None:
    for name, values, fmt in (
        ("test accuracy", [r.test_acc * 100 for r in runs], "{:.2f} %"),
        ("test loss", [r.test_loss for r in runs], "{:.4f}"),
        ("wall time", [r.wall_s for r in runs], "{:.0f} s"),
        ("peak RSS", [r.peak_rss_mb for r in runs], "{:.0f} MB"),
    ):
        ci = mean_ci(values)
        spread = f" ± {fmt.format(ci.sd)} (sd), 95 % CI [{fmt.format(ci.low)}, {fmt.format(ci.high)}]"
        print(f"{label} {name:14s}: {fmt.format(ci.mean)}" + (spread if len(values) > 1 else ""))
    print(f"{label} parameters    : {runs[0].num_params:,}")
    if goal is not None:
        accs = [r.test_acc for r in runs]
        mean = sum(accs) / len(accs)
        print(
            f"{label} goal {goal * 100:.2f} %: mean {'reached' if mean >= goal else 'MISSED'}, "
            f"{sum(a >= goal for a in accs)} of {len(accs)} seeds reached it"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=str, help="a config file or packaged name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--goal", type=float, default=None, help="test accuracy to reach, e.g. 0.945")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" goes to the CLI unchanged, e.g. -- --trainer.max_epochs=1
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench_accuracy-") as tmp:
        root = args.workdir or Path(tmp)
        runs = []
        for seed in args.seeds:
            run = fit(resolve_config(args.config).resolve(), seed, extra, root / f"seed{seed}")
            print(
                f"seed {seed}: test acc {run.test_acc * 100:.2f} %, test loss {run.test_loss:.4f}, "
                f"wall {run.wall_s:.0f} s, peak RSS {run.peak_rss_mb:.0f} MB   ({run.command})",
                flush=True,
            )
            runs.append(run)
        summarise(Path(args.config).stem, runs, args.goal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
