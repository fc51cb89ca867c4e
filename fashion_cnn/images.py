"""Reading users' own image files into tensors that look like Fashion-MNIST samples.

Fashion-MNIST was made from product photos on white backgrounds: trimmed to the garment, the
longest side resized to 28 pixels, centred on a 28x28 canvas, converted to grayscale and negated,
so a light garment sits on a black background. :func:`load_image` repeats those steps so that a
photo of a shirt reaches the network in the form it was trained on.

PIL decodes and resizes; torchvision centres the result on the canvas (``center_crop`` pads with
black, centred as the hand-written canvas was). ``benchmarks/bench_torchvision.py`` measured the
all-torchvision way (``torchvision.io.decode_image`` with EXIF orientation,
``transforms.v2.functional``'s ``rgb_to_grayscale`` and antialiased ``resize``) on photo-like JPEG
and PNG files from 20x20 to 4000x3000 pixels and kept PIL, because torchvision:

- was slower: 0.95-3.3x PIL's time per image over two runs (4000x3000 JPEG: 0.40 s against
  0.12 s);
- changed the pictures the network sees: up to 40 grey levels, 0.2-9 on average, on 19-78 % of
  the pixels. Its tensor ``resize`` has no area (box) filter, only antialiased bilinear and
  bicubic; its grey conversion truncates where PIL rounds;
- has no header-only call: a 20000x20000 PNG of 428 KiB is refused here from its header in under
  a millisecond, while ``decode_image`` first decodes its 400 MB (1.6-7 s);
- refuses the alpha modes for JPEG files, so each format needs its own branch.
"""

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

log = logging.getLogger(__name__)

SIZE = 28  # Fashion-MNIST images are 28x28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FILE_BYTES = 50 * 1024 * 1024  # 50 MiB: far above any photo worth shrinking to 28x28
MAX_PIXELS = 50_000_000  # 50 megapixels; PIL's own Image.MAX_IMAGE_PIXELS applies too if lower
# Pixels this much brighter than the (black) background after inversion count as the object.
_OBJECT_THRESHOLD = 16


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an image file and convert it the way Fashion-MNIST images were made.

    Steps: apply the EXIF orientation; flatten transparency onto white (the dataset's photos had
    white backgrounds); convert to grayscale; invert when the background (median of the border
    pixels) is light, so the garment is light on black; subtract the background level; trim to
    the object's bounding box; resize so the longest side is 28 pixels, keeping the aspect ratio;
    stretch the contrast so the brightest pixel is 255; centre on a black 28x28 canvas.

    Args:
        path: An image file PIL can read (PNG and JPEG are what folder prediction picks up).

    Returns:
        A uint8 tensor of shape (1, 28, 28).

    Raises:
        ValueError: Naming the file, if it is not a readable image, is larger than
            :data:`MAX_FILE_BYTES`, or has more pixels than :data:`MAX_PIXELS` (or than PIL's
            ``Image.MAX_IMAGE_PIXELS``, if that is lower).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: file of {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit")

    pil_limit = Image.MAX_IMAGE_PIXELS  # None means the user switched PIL's check off
    limit = MAX_PIXELS if pil_limit is None else min(MAX_PIXELS, pil_limit)
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; we reject those too (below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise ValueError(
                        f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {limit}"
                    )
                gray = _to_gray(image)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: too many pixels: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        # SyntaxError is what some PIL decoders raise on malformed headers.
        raise ValueError(f"{path}: not a readable image: {e}") from e
    return _fashion_mnist_style(gray)


def _to_gray(image: Image.Image) -> Image.Image:
    """Oriented, alpha flattened onto white, 8-bit grayscale; forces the pixel data to load."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    gray = image.convert("L")
    gray.load()
    return gray


def _fashion_mnist_style(gray: Image.Image) -> torch.Tensor:
    pixels = np.asarray(gray, dtype=np.uint8)  # (H, W)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(np.median(border))
    if background > 127:
        # Light background (a product photo): negate, as the dataset did.
        pixels = 255 - pixels
        background = 255 - background
    # Map the background to black so the padding added later matches it.
    pixels = np.clip(pixels.astype(np.int16) - background, 0, 255).astype(np.uint8)

    rows = np.flatnonzero((pixels > _OBJECT_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((pixels > _OBJECT_THRESHOLD).any(axis=0))
    if rows.size and cols.size:  # a blank image keeps its full extent
        pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    height, width = pixels.shape
    scale = SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL wants (W, H)
    # Area averaging to shrink, bilinear to enlarge: neither overshoots (Lanczos rings at the
    # garment's edges, and the contrast stretch below would then dim its inside).
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    fitted = np.asarray(Image.fromarray(pixels).resize(new_size, resample), dtype=np.float32)
    peak = fitted.max()
    if peak > _OBJECT_THRESHOLD:  # the dataset's garments reach full brightness
        fitted = fitted * (255.0 / peak)
    fitted = np.clip(np.rint(fitted), 0, 255).astype(np.uint8)
    # Centred on a black 28x28 canvas: a centre crop larger than the image pads it with zeros.
    return F.center_crop(torch.from_numpy(fitted).unsqueeze(0), [SIZE, SIZE])  # (1, 28, 28)


def list_images(directory: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``directory`` (no subfolders), by suffix, sorted by name."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_folder(directory: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str]]:
    """Load every image in ``directory``, skipping (with a warning) the files that cannot be used.

    Returns:
        (uint8 tensor (N, 1, 28, 28), the N file names in the same order). N may be 0.
    """
    images: list[torch.Tensor] = []
    names: list[str] = []
    for path in list_images(directory):
        try:
            images.append(load_image(path))
        except ValueError as e:
            log.warning("Skipping %s", e)
            continue
        names.append(path.name)
    if not images:
        return torch.empty((0, 1, SIZE, SIZE), dtype=torch.uint8), names
    return torch.stack(images), names
