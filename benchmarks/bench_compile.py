"""``--model.compile true`` against eager mode: compile time, steady throughput, break-even point.

    python benchmarks/bench_compile.py                     # four configs, ~10 min on 2 cores
    python benchmarks/bench_compile.py --only ultimate --steps 40
    python benchmarks/bench_compile.py --fp32              # without bf16 autocast

For each config, the LightningModule is built twice from the config's model section, once with
``compile=False`` and once with ``compile=True``, with the precision a CPU run gets by default
(bf16 autocast where the CPU has native bf16, else fp32) and the config's channels_last default.
Both run the same forward + backward + optimiser steps on the same (B, 1, 28, 28) batch.
The compiled side's first step includes the compilation; after it, eager and compiled steps are
interleaved over rounds and the medians compared. Printed: compile seconds, images/s of each,
the speedup, and how many epochs (55,000 images) a run needs before compiling has paid for itself.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch.nn import functional as F

from fashion_cnn import FashionCNN
from fashion_cnn.speed import cpu_has_fast_bf16

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["baseline", "fast_baseline", "ultimate", "best_under_1m"]
TRAIN_IMAGES = 55_000


def build(config: str, compile: bool) -> tuple[FashionCNN, torch.optim.Optimizer, int]:
    cfg = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())
    torch.manual_seed(0)
    model = FashionCNN(**cfg.get("model", {}), compile=compile)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, (cfg.get("data") or {}).get("batch_size", 64)


def make_step(model: FashionCNN, optimizer: torch.optim.Optimizer, batch: int, bf16: bool):
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="steps per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="config names to run")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast, even where it is fast")
    args = parser.parse_args()
    bf16 = cpu_has_fast_bf16() and not args.fp32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast: {bf16}")
    print(f"{args.steps} steps x {args.rounds} interleaved rounds per side, median images/s\n")
    columns = [("compile s", 10), ("eager img/s", 13), ("compiled img/s", 16)]
    columns += [("speedup", 9), ("break-even", 14)]
    print(f"{'config':16s}" + "".join(f"{name:>{width}s}" for name, width in columns))
    for config in CONFIGS:
        if args.only and config not in args.only:
            continue
        eager_model, eager_opt, batch = build(config, compile=False)
        compiled_model, compiled_opt, _ = build(config, compile=True)
        eager = make_step(eager_model, eager_opt, batch, bf16)
        compiled = make_step(compiled_model, compiled_opt, batch, bf16)
        eager_first = timed(eager, 2)  # oneDNN builds its kernels on the first steps, too
        compiled_first = timed(compiled, 2)  # includes compiling the forward and backward graphs
        rates: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            rates["eager"].append(args.steps * batch / timed(eager, args.steps))
            rates["compiled"].append(args.steps * batch / timed(compiled, args.steps))
        eager_rate = statistics.median(rates["eager"])
        compiled_rate = statistics.median(rates["compiled"])
        # Extra seconds of the first two steps, repaid at (1/eager - 1/compiled) s per image.
        compile_cost = compiled_first - eager_first
        saving = 1 / eager_rate - 1 / compiled_rate
        epochs = compile_cost / (saving * TRAIN_IMAGES) if saving > 0 else math.inf
        print(
            f"{config:16s}{compile_cost:10.1f}{eager_rate:13.0f}{compiled_rate:16.0f}"
            f"{compiled_rate / eager_rate:8.2f}x{epochs:11.2f} ep",
            flush=True,
        )


if __name__ == "__main__":
    main()
