"""Benchmark: one training epoch of FashionMNISTDataModule against torchvision's per-sample path.

Ours: the datamodule's train_dataloader (55,000 images, batch 64, no workers) plus the same
uint8 -> float normalisation its ``on_after_batch_transfer`` hook applies. Theirs:
``torchvision.datasets.FashionMNIST`` with ``Compose([ToTensor(), Normalize(mean, std)])`` and a
shuffling ``DataLoader(batch_size=64, num_workers=0)`` over the 60,000 training images; its time
is also scaled to 55,000 images for the ratio. Both read the real files (Debian's
dataset-fashion-mnist), copied into a temporary folder, so nothing is downloaded.

Run from the repository root:  python3 benchmarks/bench_data.py [--repeats 5] [--tv-epochs 2]

Run it on an otherwise idle machine. The batch conversion runs on torch's intra-op threads; when
other processes hold the cores those threads wait on each other and the epoch takes 10-100x
longer (``--threads 1`` shows the figure without that effect).
"""

import argparse
import gzip
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from fashion_cnn import _idx  # noqa: E402
from fashion_cnn.data import FashionMNISTDataModule  # noqa: E402
from fashion_cnn.speed import machine_tags  # noqa: E402


def our_epoch(dm: FashionMNISTDataModule) -> float:
    start = time.perf_counter()
    seen = 0
    for batch in dm.train_dataloader():
        images, labels = dm.on_after_batch_transfer(batch, 0)  # uint8 -> normalised float32
        seen += len(labels)
    elapsed = time.perf_counter() - start
    assert seen == len(dm.train_set) and images.dtype == torch.float32
    return elapsed


def torchvision_epoch(loader: DataLoader) -> float:
    start = time.perf_counter()
    seen = 0
    for images, _labels in loader:
        seen += len(images)
    elapsed = time.perf_counter() - start
    assert seen == len(loader.dataset) and images.dtype == torch.float32
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", type=Path, default=_idx.DEBIAN_DIR)
    parser.add_argument("--repeats", type=int, default=5, help="epochs of ours (median)")
    parser.add_argument("--tv-epochs", type=int, default=2, help="epochs of torchvision (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other processes skew short timings
    cpu = machine_tags()["machine.cpu"]
    print(f"machine: {os.cpu_count()} cores, {cpu}, {platform.system()}, load average {load}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {torch.get_num_threads()} torch threads"
    )

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data_dir"
        dm = FashionMNISTDataModule(data_dir=str(data_dir), source_dir=str(args.source_dir))
        start = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        cold = time.perf_counter() - start

        warm_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            dm = FashionMNISTDataModule(data_dir=str(data_dir), source_dir=str(args.source_dir))
            dm.prepare_data()
            dm.setup("fit")
            warm_times.append(time.perf_counter() - start)

        our_epoch(dm)  # warm-up: first-call allocations
        ours = [our_epoch(dm) for _ in range(args.repeats)]

        # torchvision wants its decompressed raw files in <root>/FashionMNIST/raw.
        raw = Path(tmp) / "tv" / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for spec in _idx.SPECS.values():
            with gzip.open(args.source_dir / f"{spec.name}.gz") as src, open(raw / spec.name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((dm.mean,), (dm.std,))])
        dataset = FashionMNIST(str(Path(tmp) / "tv"), train=True, transform=transform, download=False)
        loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)
        theirs = [torchvision_epoch(loader) for _ in range(args.tv_epochs)]

    our_median = statistics.median(ours)
    their_median = statistics.median(theirs)
    their_scaled = their_median * len(dm.train_set) / len(dataset)
    print(
        f"ours: {len(dm.train_set)} images, batch 64, no workers: median {our_median:.3f} s "
        f"per epoch (runs: {', '.join(f'{t:.3f}' for t in ours)})"
    )
    print(
        f"torchvision: {len(dataset)} images, batch 64, no workers: median {their_median:.2f} s "
        f"per epoch (runs: {', '.join(f'{t:.2f}' for t in theirs)}), "
        f"{their_scaled:.2f} s scaled to {len(dm.train_set)} images"
    )
    print(f"speed-up at equal image count: {their_scaled / our_median:.0f}x")
    print(
        f"prepare_data()+setup('fit'): cold (copy, verify, decode, write cache) {cold:.2f} s; "
        f"warm cache median {statistics.median(warm_times):.3f} s "
        f"(runs: {', '.join(f'{t:.3f}' for t in warm_times)})"
    )


if __name__ == "__main__":
    main()
