"""Benchmark: the package's own image, IDX and grid code against torchvision's, side by side.

Three jobs, each timed both ways in this one run (median of ``--repeats``) and checked for the
same result:

- **predict images**: :func:`fashion_cnn.images.load_image` (PIL decodes, PIL resizes) against a
  torchvision pipeline (``torchvision.io.decode_image`` with EXIF orientation,
  ``transforms.v2.functional.rgb_to_grayscale``, ``resize`` with antialiasing, ``center_crop``),
  on photo-like files of several sizes and kinds. Reported: ms per image and how far the 28x28
  results differ (max and mean absolute difference, share of pixels that differ).
- **IDX files**: :func:`fashion_cnn._idx.parse_idx` (header, dimensions, length and SHA-256
  checks) against ``torchvision.datasets.mnist.read_image_file`` / ``read_label_file`` (alone,
  and with the same SHA-256 added), on the decompressed real files; then what each says about
  damaged files.
- **grid of mistakes**: :func:`fashion_cnn.figures.plot_mistakes` (one ``make_grid`` image) against
  the hand-written layout it replaced (one matplotlib axes per image), drawn and saved as PNG.

Run from the repository root:  python3 benchmarks/bench_torchvision.py [--repeats 5]

The IDX part reads Debian's dataset-fashion-mnist (``/usr/share/datasets/fashion-mnist``); without
it that part uses synthetic files of the same shapes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.datasets import mnist
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from fashion_cnn import _idx, figures  # noqa: E402
from fashion_cnn.data import CLASS_NAMES  # noqa: E402
from fashion_cnn.images import SIZE, load_image  # noqa: E402
from fashion_cnn.speed import machine_tags  # noqa: E402

REAL = Path("/usr/share/datasets/fashion-mnist")


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, allocator, decoder tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Predict images


def torchvision_load_image(path: Path) -> torch.Tensor:
    """The same steps as ``load_image``, done with torchvision's decoder and tensor transforms."""
    # UNCHANGED: JPEG refuses the alpha modes, so take what the file has (1 to 4 channels).
    image = decode_image(str(path), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    if image.shape[0] in (2, 4):  # flatten the alpha channel onto white
        alpha = image[-1:].float() / 255.0
        image = (image[:-1].float() * alpha + 255.0 * (1.0 - alpha)).round().to(torch.uint8)
    pixels = (F.rgb_to_grayscale(image) if image.shape[0] == 3 else image)[0].to(torch.int16)  # (H, W)
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(border.float().median())  # numpy's median of an even count averages; close
    if background > 127:
        pixels, background = 255 - pixels, 255 - background
    pixels = (pixels - background).clamp(0, 255).to(torch.uint8)
    rows = torch.nonzero((pixels > 16).any(dim=1)).squeeze(1)
    cols = torch.nonzero((pixels > 16).any(dim=0)).squeeze(1)
    if len(rows) and len(cols):
        pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = pixels.shape
    scale = SIZE / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    fitted = F.resize(pixels[None].float(), size, antialias=True)[0]
    peak = fitted.max()
    if peak > 16:
        fitted = fitted * (255.0 / peak)
    fitted = fitted.round().clamp(0, 255).to(torch.uint8)
    return F.center_crop(fitted[None], [SIZE, SIZE])  # pads with black, centred as load_image does


def garment_photos(folder: Path) -> list[tuple[str, Path]]:
    """Product-photo-like files: a Fashion-MNIST garment (or an ellipse) enlarged, dark on white."""
    rng = np.random.default_rng(0)
    if (REAL / "t10k-images-idx3-ubyte.gz").exists():
        raw = gzip.decompress((REAL / "t10k-images-idx3-ubyte.gz").read_bytes())
        garments = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:8]
    else:
        yy, xx = np.mgrid[:28, :28]
        garments = np.stack([(((yy - 14) / 10) ** 2 + ((xx - 14) / 7) ** 2 < 1) * 220] * 8).astype(np.uint8)
    cases = [
        ("JPEG 4000x3000 RGB", (4000, 3000), "RGB", "jpg"),
        ("JPEG 1200x900 RGB", (1200, 900), "RGB", "jpg"),
        ("PNG 800x600 RGB", (800, 600), "RGB", "png"),
        ("PNG 400x600 RGBA", (400, 600), "RGBA", "png"),
        ("PNG 120x90 L", (120, 90), "L", "png"),
        ("PNG 20x20 L (enlarged)", (20, 20), "L", "png"),
    ]
    made = []
    for i, (name, (width, height), mode, suffix) in enumerate(cases):
        side = int(min(width, height) * 0.7)
        garment = Image.fromarray(garments[i]).resize((side, side), Image.Resampling.BICUBIC)
        canvas = np.full((height, width), 255, np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        canvas[top : top + side, left : left + side] = 255 - np.asarray(garment)  # dark garment, white
        noisy = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
        if mode == "L":
            image = Image.fromarray(noisy, "L")
        else:
            tint = np.stack([noisy, np.clip(noisy * 0.9, 0, 255), np.clip(noisy * 0.7 + 40, 0, 255)], -1)
            image = Image.fromarray(tint.astype(np.uint8), "RGB")
            if mode == "RGBA":
                alpha = np.where(canvas < 250, 255, 0).astype(np.uint8)  # a cut-out: transparent around
                image.putalpha(Image.fromarray(alpha))
        path = folder / f"case{i}.{suffix}"
        image.save(path, **({"quality": 90} if suffix == "jpg" else {}))
        made.append((name, path))
    return made


def bench_images(repeats: int) -> None:
    print("\n## predict images: load_image (PIL) vs torchvision.io + transforms.v2.functional")
    header = f"{'file':<26} {'PIL ms':>8} {'tv ms':>8} {'tv/PIL':>7}"
    print(f"{header} {'max |d|':>8} {'mean |d|':>9} {'differ':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in garment_photos(Path(tmp)):
            ours = load_image(path)
            theirs = torchvision_load_image(path)
            diff = (ours.int() - theirs.int()).abs()
            t_ours = median_s(lambda p=path: load_image(p), repeats)
            t_tv = median_s(lambda p=path: torchvision_load_image(p), repeats)
            print(
                f"{name:<26} {t_ours * 1e3:8.1f} {t_tv * 1e3:8.1f} {t_tv / t_ours:7.2f} "
                f"{int(diff.max()):8d} {float(diff.float().mean()):9.2f} "
                f"{float((diff > 0).float().mean()):7.1%}"
            )
        # What each decoder knows before decoding: PIL reads the size from the header alone, so
        # load_image refuses a decompression bomb before a pixel is decoded.
        big = Path(tmp) / "bomb.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.new("L", (20000, 20000), 255).save(big)
        start = time.perf_counter()
        refused = _outcome(lambda: load_image(big))
        t_header = time.perf_counter() - start
        start = time.perf_counter()
        decoded = decode_image(str(big), mode=ImageReadMode.GRAY)
        t_decode = time.perf_counter() - start
        print(
            f"\n20000x20000 PNG of {big.stat().st_size // 1024} KiB: "
            "load_image refuses it from the header in "
            f"{t_header * 1e3:.1f} ms ({refused[:60]}...);\n"
            f"torchvision.io has no header-only call: decode_image decodes {decoded.numel() / 1e6:.0f} MB "
            f"first ({t_decode * 1e3:.0f} ms)"
        )
        del decoded


# --------------------------------------------------------------------------------------------
# IDX files


def idx_files(folder: Path) -> dict[str, tuple[Path, bytes, _idx.IdxSpec]]:
    """Decompressed IDX files (real if installed, else synthetic with the same shapes)."""
    out = {}
    rng = np.random.default_rng(0)
    for key, spec in _idx.SPECS.items():
        gz = REAL / f"{spec.name}.gz"
        if gz.exists():
            data = gzip.decompress(gz.read_bytes())
        else:
            body = rng.integers(0, 256 if key.endswith("images") else 10, spec.shape, dtype=np.uint8)
            data = spec.header() + body.tobytes()
            spec = _idx.IdxSpec(spec.name, spec.magic, spec.shape, hashlib.sha256(data).hexdigest(), "")
        path = folder / spec.name
        path.write_bytes(data)
        out[key] = (path, data, spec)
    return out


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except Exception as e:  # what each reader raises is the point here
        return f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
    return "accepted"


def bench_idx(repeats: int) -> None:
    print("\n## IDX files: _idx.parse_idx vs torchvision.datasets.mnist.read_image_file / read_label_file")
    with tempfile.TemporaryDirectory() as tmp:
        files = idx_files(Path(tmp))
        print(f"{'file':<26} {'ours ms':>8} {'tv ms':>8} {'tv+sha ms':>10} {'tv/ours':>8} {'same':>5}")
        for key, (path, data, spec) in files.items():
            read = mnist.read_image_file if key.endswith("images") else mnist.read_label_file

            def ours(data: bytes = data, spec: _idx.IdxSpec = spec) -> np.ndarray:
                return _idx.parse_idx(data, spec)

            def tv_sha(path: Path = path, read: Callable = read) -> torch.Tensor:
                tensor = read(str(path))
                hashlib.sha256(path.read_bytes()).hexdigest()
                return tensor

            def ours_from_file(path: Path = path, spec: _idx.IdxSpec = spec) -> np.ndarray:
                return _idx.read_idx(path, spec)

            same = torch.equal(torch.from_numpy(ours().copy()).long(), read(str(path)).long())
            t_ours = median_s(ours_from_file, repeats)
            t_tv = median_s(lambda path=path, read=read: read(str(path)), repeats)
            t_tv_sha = median_s(tv_sha, repeats)
            print(
                f"{spec.name:<26} {t_ours * 1e3:8.1f} {t_tv * 1e3:8.1f} {t_tv_sha * 1e3:10.1f} "
                f"{t_tv / t_ours:8.2f} {'yes' if same else 'NO':>5}"
            )
        path, data, spec = files["test_images"]
        damaged = {
            "truncated (half the data)": data[: len(data) // 2],
            "one trailing byte": data + b"\0",
            "labels magic (2049)": (2049).to_bytes(4, "big") + data[4:],
            "wrong count (9999)": data[:4] + (9999).to_bytes(4, "big") + data[8:],
            "one pixel changed": data[:-1] + bytes([data[-1] ^ 1]),
            "empty file": b"",
        }
        print(f"\n{'damaged t10k-images':<26} | ours (DataError message) | torchvision read_image_file")
        for name, content in damaged.items():
            bad = Path(tmp) / "bad"
            bad.write_bytes(content)
            print(
                f"{name:<26} | {_outcome(lambda bad=bad: _idx.read_idx(bad, spec))} "
                f"| {_outcome(lambda bad=bad: mnist.read_image_file(str(bad)))}"
            )


# --------------------------------------------------------------------------------------------
# Grid of mistakes


def per_axes_mistakes(images, targets, preds, confidence, class_names):
    """The layout plot_mistakes had before make_grid: one matplotlib axes (and imshow) per image."""
    count = len(images)
    cols = min(5, max(count, 1))
    rows = max(math.ceil(count / cols), 1)
    fig = figures.new_figure(2.0 * cols, 2.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(
            f"true: {class_names[int(targets[i])]}\npred: {class_names[int(preds[i])]} "
            f"({float(confidence[i]):.2f})",
            fontsize=8,
        )
    fig.suptitle("Most confidently misclassified test images" if count else "No misclassified test image")
    return fig


def bench_grid(repeats: int) -> None:
    print("\n## grid of mistakes: make_grid + one imshow vs one axes per image (draw + save PNG)")
    gen = torch.Generator().manual_seed(0)
    print(f"{'images':>6} {'per-axes ms':>12} {'make_grid ms':>13} {'ratio':>6} {'PNG KiB old/new':>16}")
    for k in (5, 25, 50):
        args = (
            torch.rand(k, 1, 28, 28, generator=gen),
            torch.randint(0, 10, (k,), generator=gen),
            torch.randint(0, 10, (k,), generator=gen),
            torch.rand(k, generator=gen),
            list(CLASS_NAMES),
        )

        def save(plot: Callable, args: tuple = args) -> int:
            buffer = io.BytesIO()
            plot(*args).savefig(buffer, format="png", dpi=100)
            return buffer.tell()

        old, new = save(per_axes_mistakes), save(figures.plot_mistakes)
        t_old = median_s(lambda: save(per_axes_mistakes), repeats)
        t_new = median_s(lambda: save(figures.plot_mistakes), repeats)
        sizes = f"{old // 1024:>8}/{new // 1024}"
        print(f"{k:6d} {t_old * 1e3:12.0f} {t_new * 1e3:13.0f} {t_new / t_old:6.2f} {sizes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["images", "idx", "grid"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = machine_tags()["machine.cpu"]
    print(
        f"# {cpu}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Pillow {Image.__version__}, 1 torch thread, median of {args.repeats}"
    )
    for name, bench in (("images", bench_images), ("idx", bench_idx), ("grid", bench_grid)):
        if args.only in (None, name):
            bench(args.repeats)


if __name__ == "__main__":
    main()
