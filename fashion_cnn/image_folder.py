"""A LightningDataModule for a folder of labelled images: ``root/train/<class>/`` and ``root/test/<class>/``.

The images are decoded with torchvision once, converted to 1 or 3 channels, resized to one square
size and held as uint8 tensors in memory, exactly like Fashion-MNIST in :mod:`fashion_cnn.data`:
the same seeded validation split, the same whole-batch loaders and the same on-device
augmentation. Pixel mean and standard deviation come from the training split.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torchvision.datasets.folder import make_dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as tvf

from fashion_cnn import _folder_cache
from fashion_cnn.data import InMemoryDataModule, UInt8Dataset, default_data_dir, split_indices
from fashion_cnn.errors import ConfigError, ImageFolderError
from fashion_cnn.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, list_images

__all__ = ["ImageFolderDataModule", "ImageFolderError", "decode_images", "find_classes"]

log = logging.getLogger(__name__)

SUFFIXES = "/".join(IMAGE_SUFFIXES)  # for messages: .png/.jpg/.jpeg
_TORCHVISION_IO_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"


@dataclass(frozen=True)
class _Split:
    """One folder's images, decoded: uint8 (N, C, S, S), int64 labels (N,), file names (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]


def find_classes(folder: Path) -> list[str]:
    """The class folders directly in ``folder``, sorted by name; hidden folders (``.x``) are skipped."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _list_files(folder: Path, classes: Sequence[str], class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``folder/<class>/`` (subfolders included), in order.

    Raises:
        ImageFolderError: Naming the class folders that hold no image.
    """
    files = make_dataset(
        folder,
        {name: class_to_idx[name] for name in classes},
        extensions=IMAGE_SUFFIXES,
        allow_empty=True,
    )
    counts = Counter(label for _, label in files)
    empty = [name for name in classes if counts[class_to_idx[name]] == 0]
    if empty:
        shown = ", ".join(str(folder / name) for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise ImageFolderError(
            f"{len(empty)} class folder(s) hold no {SUFFIXES} image: {shown}; add images to them "
            "or remove them"
        )
    return files


def _decode_reason(error: Exception) -> str:
    """torchvision's message without its C++ source location ('decode_png, /path/x.cpp:62, ')."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\w+, \S+:\d+, ", "", text)


def _decode(path: str, channels: int) -> torch.Tensor:
    """One file as uint8 (channels, H, W), upright by its EXIF orientation."""
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise ImageFolderError(
            f"{path}: file of {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit; shrink the "
            "image or remove it"
        )
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        image = decode_image(path, mode=mode, apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise ImageFolderError(
            f"{path}: not a readable image ({_decode_reason(e)}); replace it with a valid "
            f"{SUFFIXES} file or delete it"
        ) from e
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = tvf.to_dtype(image, torch.uint8, scale=True)
    return image


def decode_images(
    paths: list[str], channels: int, image_size: int
) -> tuple[torch.Tensor, Counter[tuple[int, int]]]:
    """Decode image files with torchvision into one uint8 tensor (N, channels, size, size).

    Each image is turned upright by its EXIF orientation, converted to grayscale (channels=1) or
    RGB (channels=3; transparency is dropped), and resized to ``image_size`` x ``image_size``
    with antialiasing; the aspect ratio is not kept. Images of the same size are resized
    together, one call per size.

    Args:
        paths: Image files (PNG or JPEG; torchvision also reads GIF and WebP).
        channels: 1 or 3.
        image_size: Height and width of the result.

    Returns:
        (images, how many images had each original (height, width)).

    Raises:
        ImageFolderError: Naming the first file that is too large or cannot be decoded.
    """
    out = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)
    groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    with warnings.catch_warnings():
        # torchvision 0.29 deprecated its image codecs in favour of TorchCodec (not a dependency
        # here) and warns on every call; this function is the one place to switch.
        warnings.filterwarnings("ignore", _TORCHVISION_IO_DEPRECATED, DeprecationWarning)
        for i, path in enumerate(paths):
            image = _decode(path, channels)
            groups.setdefault((image.shape[-2], image.shape[-1]), []).append((i, image))
    for (height, width), members in groups.items():
        rows = torch.tensor([i for i, _ in members])
        batch = torch.stack([image for _, image in members])
        if (height, width) != (image_size, image_size):
            batch = tvf.resize(batch, [image_size, image_size], antialias=True)
        out[rows] = batch
    sizes = Counter({size: len(members) for size, members in groups.items()})
    return out, sizes


class ImageFolderDataModule(InMemoryDataModule):
    """Labelled images in class folders, held in memory as uint8 tensors like Fashion-MNIST.

    Layout (class names are the folder names; images may sit in subfolders of a class folder)::

        root/train/<class>/*.png|*.jpg|*.jpeg   training images; the validation split is drawn here
        root/test/<class>/*.png|*.jpg|*.jpeg    test images (optional; needed by test)

    The classes are the folders in ``train/``, sorted by name; label ``i`` is the ``i``-th of
    them. ``test/`` may lack some classes but may not have others. Hidden files and folders and
    files with other suffixes are ignored.

    Args:
        root: The folder that holds ``train/`` (and ``test/``).
        channels: 1 to convert every image to grayscale, 3 for RGB.
        image_size: Every image is resized to image_size x image_size pixels (aspect ratio not
            kept), once, when the images are decoded.
        batch_size: Training batch size.
        val_size: Training images held out for validation: a count (0 for none), or a fraction
            of the training images in (0, 1).
        split_seed: Seed of the validation split and of the training shuffle order.
        normalize: Standardise pixels with the training split's mean and std; otherwise scale
            to [0, 1] only.
        augment_flip: In training, mirror each image left-right with probability 0.5.
        augment_crop_padding: In training, shift each image by up to this many pixels (zero
            padding, random crop back to image_size). 0 disables.
        augment_cutout: In training, black out a random square of this many pixels a side in
            each image; 0 disables. Applied after flip and shift.
        predict_dir: Folder of .png/.jpg/.jpeg images to predict (not searched recursively),
            decoded like the training images. Default: predict the test set.
        eval_batch_size: Batch size for validation, test and prediction. Default: the larger of
            batch_size and 256.
        cache: Keep the decoded images of train/ and test/ in a tensor file under
            ``$FASHION_CNN_DATA_DIR/image_folders`` (default data folder as for Fashion-MNIST),
            reused while no image file's name, size or modification time changes.
    """

    def __init__(
        self,
        root: str,
        channels: Literal[1, 3] = 1,
        image_size: int = 28,
        batch_size: int = 64,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        normalize: bool = True,
        augment_flip: bool = False,
        augment_crop_padding: int = 0,
        augment_cutout: int = 0,
        predict_dir: str | None = None,
        eval_batch_size: int | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__(batch_size, eval_batch_size)
        _check_arguments(
            channels=channels,
            image_size=image_size,
            batch_size=batch_size,
            val_size=val_size,
            split_seed=split_seed,
            normalize=normalize,
            augment_flip=augment_flip,
            augment_crop_padding=augment_crop_padding,
            augment_cutout=augment_cutout,
            predict_dir=predict_dir,
            eval_batch_size=eval_batch_size,
            cache=cache,
        )
        self.root = _check_root(root)
        self.save_hyperparameters()
        self._classes: list[str] | None = None
        self._train: _Split | None = None
        self._test: _Split | None = None
        self._stats: tuple[float, float] | None = None

    # ---- the data protocol the training system links from

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class folders in ``root/train``, sorted by name: label i is class_names[i]."""
        if self._classes is None:
            self._classes = self._find_train_classes()
        return tuple(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, image_size, image_size) of every batch image."""
        size = self._hp.image_size
        return (self._hp.channels, size, size)

    @property
    def mean(self) -> float:
        """Pixel mean of the training split (all channels together) on the [0, 1] scale."""
        return self._pixel_stats()[0]

    @property
    def std(self) -> float:
        """Pixel standard deviation of the training split (all channels together), [0, 1] scale."""
        return self._pixel_stats()[1]

    # ---- data hooks, in the order Lightning calls them

    def prepare_data(self) -> None:
        """Check the folder layout early (cheap: lists the folders, decodes nothing)."""
        if self._hp.predict_dir is not None and self._trainer_fn() == "predict":
            return
        _ = self.class_names

    def setup(self, stage: str | None = None) -> None:
        """Decode the images (once) and build the datasets ``stage`` needs (all of them for None)."""
        device = self._device()
        if stage in (None, "predict") and self._hp.predict_dir is not None:
            paths = [str(p) for p in list_images(self._hp.predict_dir)]
            if not paths:
                raise ImageFolderError(
                    f"{self._hp.predict_dir} holds no {SUFFIXES} image directly inside it; "
                    "point --data.predict_dir at a folder of images"
                )
            images, _ = decode_images(paths, self._hp.channels, self._hp.image_size)
            self.predict_set = UInt8Dataset(images.to(device), torch.arange(len(images), device=device))
            self.predict_names = [Path(p).name for p in paths]
            if stage == "predict":
                return

        if stage in (None, "fit", "validate"):
            train = self._train_split()
            self._split_train()
            self._hold_train(train.images, train.labels, device)
        if stage in (None, "test") or (stage == "predict" and self._hp.predict_dir is None):
            test = self._test_split()
            self._hold_test(test.images, test.labels, test.names, device, stage)

    # ---- helpers

    def _find_train_classes(self) -> list[str]:
        train_dir = self.root / "train"
        classes = find_classes(train_dir)
        if len(classes) < 2:
            found = f"only the class folder {classes[0]!r}" if classes else "no class folder"
            raise ImageFolderError(
                f"{train_dir} has {found}; put each class's images in its own folder, "
                f"{train_dir}/<class name>/*.png, with at least 2 classes"
            )
        return classes

    def _class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    def _train_split(self) -> _Split:
        if self._train is None:
            self._train = self._decode_folder(self.root / "train", self.class_names)
        return self._train

    def _test_split(self) -> _Split:
        if self._test is not None:
            return self._test
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            raise ImageFolderError(
                f"{self.root} has no test/ folder; put test images in {test_dir}/<class name>/, "
                "or skip testing (--test_after_fit false)"
            )
        classes = find_classes(test_dir)
        unknown = sorted(set(classes) - set(self.class_names))
        if unknown:
            raise ImageFolderError(
                f"{test_dir} has class folders that train/ lacks: {', '.join(unknown)}; the classes "
                f"come from {self.root / 'train'}: add those classes there or rename or remove them in test/"
            )
        if not classes:
            raise ImageFolderError(
                f"{test_dir} has no class folder; put the test images in {test_dir}/<class name>/*.png"
            )
        self._test = self._decode_folder(test_dir, classes)
        return self._test

    def _decode_folder(self, folder: Path, classes: Sequence[str]) -> _Split:
        files = _list_files(folder, classes, self._class_to_idx())
        start = time.perf_counter()
        paths = [path for path, _ in files]
        channels, size = self._hp.channels, self._hp.image_size
        cached = cache_path = key = None
        if self._hp.cache:
            cache_path = _folder_cache.cache_file(default_data_dir(), folder, channels, size)
            key = _folder_cache.listing_key(files, channels, size)
            cached = _folder_cache.load(cache_path, key, (len(paths), channels, size, size))
        if cached is not None:
            images, sizes = cached
            how = f"from the cache {cache_path}"
        else:
            images, sizes = decode_images(paths, channels, size)
            how = "decoded"
            if cache_path is not None and key is not None:
                _folder_cache.save(cache_path, key, images, sizes)
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        # Paths under root as strings (make_dataset joins them so); pathlib would take longer
        # than loading the cache.
        prefix = len(os.path.join(self.root, ""))
        names = [p[prefix:].replace(os.sep, "/") for p in paths]
        log.info(
            "%d images of %s, %s in %.2f s: %s uint8",
            len(paths),
            folder,
            how,
            time.perf_counter() - start,
            tuple(images.shape),
        )
        if len(sizes) > 1:
            common = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sizes.most_common(3))
            log.warning(
                "%s: the images come in %d sizes (width x height: %s%s); each was resized to %dx%d "
                "(aspect ratio not kept)",
                folder,
                len(sizes),
                common,
                ", ..." if len(sizes) > 3 else "",
                size,
                size,
            )
        return _Split(images, labels, names)

    def _split_train(self) -> None:
        """Draw the seeded validation split (once) over the images in train/, in file order."""
        if self.train_indices is not None:
            return
        n_train = len(self._train_split().labels)
        val_size = self._hp.val_size
        n_val = round(val_size * n_train) if isinstance(val_size, float) else val_size
        if n_val >= n_train:
            raise ConfigError(
                f"val_size={val_size!r} holds out {n_val} of the {n_train} images in "
                f"{self.root / 'train'}, leaving none for training; use a smaller val_size, or add images"
            )
        self.train_indices, self.val_indices = split_indices(n_train, n_val, self._hp.split_seed)

    def _pixel_stats(self) -> tuple[float, float]:
        """Mean and std of the training split's pixels on the [0, 1] scale, exact in float64."""
        if self._stats is None:
            self._split_train()
            assert self.train_indices is not None
            pixels = self._train_split().images[self.train_indices]
            # A histogram of the 256 pixel values: exact moments without a float copy of the data.
            counts = torch.from_numpy(np.bincount(pixels.numpy().ravel(), minlength=256)).double()
            values = torch.arange(256, dtype=torch.float64) / 255
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = (counts * (values - mean) ** 2).sum() / max(float(n) - 1, 1.0)
            if not var > 0:
                raise ImageFolderError(
                    f"every training pixel in {self.root / 'train'} has the same value, so the "
                    "images cannot be standardised; check the images, or use --data.normalize false"
                )
            self._stats = (float(mean), float(var.sqrt()))
        return self._stats


def _check_root(root: Any) -> Path:
    """``root`` as a Path, if it exists and holds train/; otherwise ImageFolderError with the fix."""
    if not isinstance(root, str | os.PathLike) or str(root) == "":
        raise ConfigError(f"root={root!r} is not valid: use the folder that holds train/ and test/")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise ImageFolderError(
            f"image folder {path} does not exist or is not a folder; pass --data.root with the "
            "folder that holds train/<class>/ and test/<class>/"
        )
    if not (path / "train").is_dir():
        raise ImageFolderError(
            f"{path} has no train/ folder; put the training images in {path}/train/<class name>/*.png "
            "(see docs/data.md for the layout)"
        )
    return path


def _check_arguments(**args: Any) -> None:
    """Raise ConfigError naming the argument, its value and what would work."""

    def fail(name: str, expected: str) -> None:
        raise ConfigError(f"{name}={args[name]!r} is not valid: {expected}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if args["channels"] not in (1, 3) or isinstance(args["channels"], bool):
        fail("channels", "use 1 (grayscale) or 3 (RGB)")
    if not is_int(args["image_size"]) or not 4 <= args["image_size"] <= 1024:
        fail("image_size", "use an integer from 4 to 1024 pixels, e.g. 28 or 32")
    for name in ("normalize", "augment_flip", "cache"):
        if not isinstance(args[name], bool):
            fail(name, "use true or false")
    if not is_int(args["batch_size"]) or args["batch_size"] < 1:
        fail("batch_size", "use an integer >= 1, e.g. 64")
    val_size = args["val_size"]
    if is_int(val_size):
        if val_size < 0:
            fail("val_size", "use a count >= 0 or a fraction in (0, 1), e.g. 0.1")
    elif not isinstance(val_size, float) or not 0 < val_size < 1:
        fail("val_size", "use a count >= 0 or a fraction in (0, 1), e.g. 0.1")
    if not is_int(args["split_seed"]) or not 0 <= args["split_seed"] < 2**63:
        fail("split_seed", "use an integer >= 0")
    size = args["image_size"]
    if not is_int(args["augment_crop_padding"]) or not 0 <= args["augment_crop_padding"] < size:
        fail("augment_crop_padding", f"use an integer from 0 (off) to {size - 1} pixels, e.g. 2 or 4")
    if not is_int(args["augment_cutout"]) or not 0 <= args["augment_cutout"] <= size:
        fail("augment_cutout", f"use an integer from 0 (off) to {size} pixels, e.g. 8")
    predict_dir = args["predict_dir"]
    if predict_dir is not None and not Path(predict_dir).expanduser().is_dir():
        fail("predict_dir", "use an existing folder of images, or leave it unset to predict the test set")
    eval_batch_size = args["eval_batch_size"]
    if eval_batch_size is not None and (not is_int(eval_batch_size) or eval_batch_size < 1):
        fail("eval_batch_size", "use an integer >= 1, or leave it unset for max(batch_size, 256)")
