"""Benchmark: ImageFolderDataModule's decode + setup time on a generated folder of PNG images.

Writes ``--images`` random PNGs (10 classes, ``--size`` pixels square, gray or ``--rgb``) into a
temporary ``train/<class>/`` folder plus a fifth as many into ``test/<class>/``, then times
``setup(None)`` on a fresh datamodule: listing, decoding with torchvision and resizing to
``--image-size`` (``cache=False``) or loading the decoded-tensor cache (``cache=True``), the
seeded split, and reading ``input_mean`` (the training split's statistics). One training epoch
through ``train_dataloader()`` is timed too.

Run from the repository root:  python3 benchmarks/bench_image_folder.py [--images 2000] [--repeats 5]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torchvision.io import write_png

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from fashion_cnn.image_folder import ImageFolderDataModule  # noqa: E402


def write_folder(root: Path, n_train: int, size: int, rgb: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    channels = 3 if rgb else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's codec notice
        for split, count in (("train", n_train), ("test", n_train // 5)):
            for c in range(10):
                folder = root / split / f"class{c}"
                folder.mkdir(parents=True)
                for i in range(count // 10):
                    shape = (channels, size, size)
                    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
                    write_png(image, str(folder / f"{i:05d}.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images (test: a fifth)")
    parser.add_argument("--size", type=int, default=28, help="side of the generated images")
    parser.add_argument("--image-size", type=int, default=28, help="side the datamodule resizes to")
    parser.add_argument("--rgb", action="store_true", help="3-channel images, channels=3")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, load average {os.getloadavg()}")
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    print(f"python {platform.python_version()}, {versions}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_folder(root, args.images, args.size, args.rgb)
        took = time.perf_counter() - start
        print(f"wrote {args.images} + {args.images // 5} PNGs of {args.size}x{args.size} in {took:.2f} s")
        os.environ["FASHION_CNN_DATA_DIR"] = str(root / "data_dir")  # the cache stays in tmp
        channels = 3 if args.rgb else 1
        n = args.images + args.images // 5
        timings: dict[bool, list[float]] = {False: [], True: []}
        epochs = []
        ImageFolderDataModule(str(root), channels=channels, image_size=args.image_size).setup(None)  # fill
        for _ in range(args.repeats):
            for cache in (False, True):
                dm = ImageFolderDataModule(
                    str(root), channels=channels, image_size=args.image_size, cache=cache
                )
                start = time.perf_counter()
                dm.setup(None)
                _ = dm.input_mean
                timings[cache].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _batch in dm.train_dataloader():
                pass
            epochs.append(time.perf_counter() - start)
        shape = tuple(dm.train_set.images.shape[1:])
        for cache, label in ((False, "decoding (cache=False)"), (True, "from the cache")):
            median = statistics.median(timings[cache])
            runs = ", ".join(f"{t:.3f}" for t in timings[cache])
            print(
                f"setup(None) + statistics, {n} images -> {shape}, {label}: median {median:.3f} s "
                f"({n / median:,.0f} images/s; runs: {runs})"
            )
        print(f"one training epoch, batch 64: median {statistics.median(epochs):.4f} s")


if __name__ == "__main__":
    main()
