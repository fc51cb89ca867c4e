"""The decoded-tensor cache of :class:`~fashion_cnn.ImageFolderDataModule`, one file per folder and settings.

A cache file holds one folder's decoded uint8 images for one (channels, image_size). It is used
only when its key matches: a SHA-256 over the settings, torchvision's version and every image
file's path, label, size and modification time (nanoseconds), the quick check that rsync and make
rely on. Adding, removing, renaming or rewriting a file changes the key, so the folder is decoded
again and the file replaced. The images' own SHA-256 is stored and checked on load, so a damaged
cache file is never used; any problem is logged and the folder is decoded instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision

from fashion_cnn._idx import atomic_write
from fashion_cnn.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SUBDIR = "image_folders"


def cache_file(cache_dir: Path, folder: Path, channels: int, image_size: int) -> Path:
    """Where the cache of ``folder`` decoded at these settings lives (its name shows the folder)."""
    folder = folder.resolve()
    tag = hashlib.sha256(f"{folder}\0{channels}\0{image_size}".encode()).hexdigest()[:16]
    return cache_dir / SUBDIR / f"{folder.parent.name}-{folder.name}-{channels}x{image_size}-{tag}.pt"


def listing_key(files: Sequence[tuple[str, int]], channels: int, image_size: int) -> str:
    """SHA-256 of the settings and every file's (path, label, size, mtime_ns); stats each file."""
    digest = hashlib.sha256()
    settings = {"format": CACHE_FORMAT, "channels": channels, "size": image_size}
    # torchvision's version too: its decoders and resize may change the pixels between releases.
    digest.update(json.dumps({**settings, "torchvision": torchvision.__version__}, sort_keys=True).encode())
    for path, label in files:
        stat = os.stat(path)
        digest.update(f"\n{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _images_sha256(images: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(images.contiguous().numpy()).cast("B")).hexdigest()  # type: ignore[arg-type]


Sizes = Counter[tuple[int, int]]  # how many images had each original (height, width)


def load(path: Path, key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, Sizes] | None:
    """The cached (images, original sizes) if ``path`` is valid for ``key`` and ``shape``, else None."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
            raise ValueError("unknown cache format")
        if content.get("key") != key:
            log.info("The images changed since %s was written; decoding them again", path)
            return None
        images, sizes = content["images"], content["sizes"]
        found = (images.dtype, tuple(images.shape)) if isinstance(images, torch.Tensor) else None
        if found != (torch.uint8, shape):
            raise ValueError(f"images are not uint8 {shape}")
        if _images_sha256(images) != content.get("sha256"):
            raise ValueError("the images do not match their SHA-256")
        counts = Counter({(int(h), int(w)): int(n) for h, w, n in sizes.tolist()})
    except Exception as e:  # torch.load raises many types on damaged files; none may pass
        log.warning("Ignoring the image cache %s (%s); decoding the images again", path, e)
        return None
    return images, counts


def save(path: Path, key: str, images: torch.Tensor, sizes: Sizes) -> None:
    """Write the cache atomically; a failure only logs a warning (the cache is an optimisation)."""
    table = torch.tensor([[h, w, n] for (h, w), n in sizes.items()], dtype=torch.long).reshape(-1, 3)
    content = {
        "format": CACHE_FORMAT,
        "key": key,
        "images": images,
        "sizes": table,
        "sha256": _images_sha256(images),
    }
    try:
        with atomic_write(path) as f:
            torch.save(content, f)
    except (DataError, OSError) as e:
        log.warning("Could not write the image cache %s: %s", path, e)
