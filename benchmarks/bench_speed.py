"""Training-step throughput per journal config: fp32 vs channels_last vs bf16 autocast, side by side.

    python benchmarks/bench_speed.py                  # all journal architectures, ~5 min on 2 cores
    python benchmarks/bench_speed.py --steps 20 --only ultimate baseline
    python benchmarks/bench_speed.py --device cuda --batch 512     # on a GPU

Each variant runs the same forward + backward + Adam step on the same (B, 1, 28, 28) batches; the
variants of one config are interleaved over several rounds and the median is reported, so load
from other processes hits all of them alike. Prints images/s and the speedup over fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from fashion_cnn.network import FashionCNNNet
from fashion_cnn.speed import cpu_has_fast_bf16

CONFIGS = {  # name: (layers, filters, norm, dropout)
    "baseline": (4, 32, "none", 0.0),
    "arch_deep_narrow": (6, 16, "none", 0.0),
    "arch_deep_wide": (6, 64, "none", 0.0),
    "arch_very_deep": (8, 32, "none", 0.0),
    "dropout_0.1 (batch)": (4, 32, "batch", 0.1),
    "norm_instance": (4, 32, "instance", 0.1),
    "norm_layer": (4, 32, "layer", 0.1),
    "norm_group": (4, 32, "group", 0.1),
    "ultimate (instance)": (6, 64, "instance", 0.1),
    "ultimate with batch norm": (6, 64, "batch", 0.1),
}
VARIANTS = {  # name: (channels_last, bf16)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "channels_last+bf16": (True, True),
}


def time_steps(
    net: torch.nn.Module, channels_last: bool, bf16: bool, steps: int, batch: int, device: torch.device
) -> float:
    """Images per second of ``steps`` training steps (after two warm-up steps)."""
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # GPU work is asynchronous: time what has finished
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="substrings of config names to run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    else:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"fast bf16 CPU: {cpu_has_fast_bf16()}"
        )
    print(f"batch {args.batch}, {args.steps} steps x {args.rounds} interleaved rounds, median images/s\n")
    header = f"{'config':28s}" + "".join(f"{v:>20s}" for v in VARIANTS)
    print(header)
    for name, (layers, filters, norm, dropout) in CONFIGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        torch.manual_seed(0)
        net = FashionCNNNet(layers=layers, filters=filters, norm=norm, dropout=dropout)
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, (cl, bf16) in VARIANTS.items():
                rates[variant].append(time_steps(net, cl, bf16, args.steps, args.batch, device))
        base = statistics.median(rates["fp32"])
        cells = []
        for variant in VARIANTS:
            rate = statistics.median(rates[variant])
            cells.append(f"{rate:8.0f} ({rate / base:4.2f}x)")
        print(f"{name:28s}" + "".join(f"{c:>20s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
