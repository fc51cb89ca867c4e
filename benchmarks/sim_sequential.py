"""Error rates of the adaptive-seed procedure (fashion_cnn.study.sequential), by simulation.

Run:  PYTHONPATH=$PWD python benchmarks/sim_sequential.py [--start 3] [--max_seeds 12] [--studies 20000]

For each spending function, simulated studies of one ``a beats b`` claim (normal seeds, sd 1, no
training): with no true difference (the rate of false "supported" verdicts, which must stay at or
below alpha), and with true differences in the claim's favour (power and the seeds per variant spent
on average, against one test at the maximum). Prints a Markdown table (docs/studies.md has it).
"""

from __future__ import annotations

import argparse
import time

from fashion_cnn.study.power import detectable_effect
from fashion_cnn.study.sequential import Schedule, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=3)
    parser.add_argument("--max_seeds", type=int, default=12)
    parser.add_argument("--studies", type=int, default=20000, help="per row under no difference")
    parser.add_argument("--alt_studies", type=int, default=5000, help="per row with a difference")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    design = detectable_effect(args.max_seeds, args.alpha)  # fixed design at the maximum: power 0.8
    effects = [0.0, design, 1.5]
    print(
        f"| spending | looks (seeds per variant) | true difference (sd) | studies | supported | "
        f"fixed design at {args.max_seeds} seeds: supported | mean seeds per variant (fixed: "
        f"{args.max_seeds}) | futile | undecided at the maximum |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    started = time.perf_counter()
    for spending in ("obrien-fleming", "pocock", "none"):
        schedule = Schedule.blocks(args.start, args.max_seeds, args.alpha, spending)  # type: ignore[arg-type]
        for effect in effects:
            n = args.studies if effect == 0 else args.alt_studies
            sim = simulate(schedule, effect, n, seed=1)
            print(
                f"| {spending} | {' → '.join(map(str, schedule.looks))} | {effect:.2f} | {n} | "
                f"{sim.supported:.4f} ± {sim.se:.4f} | {sim.fixed_supported:.4f} | {sim.mean_seeds:.2f} | "
                f"{sim.states['futile']:.3f} | {sim.states['undecided']:.3f} |",
                flush=True,
            )
    print(f"\n({time.perf_counter() - started:.0f} s; ± is one Monte Carlo standard error.)")


if __name__ == "__main__":
    main()
