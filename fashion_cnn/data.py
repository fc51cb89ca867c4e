"""The Fashion-MNIST LightningDataModule: verified files, seeded split, uint8 batches in memory.

Images stay uint8 tensors in memory, (N, 1, 28, 28) per split; a batch is taken with one index
operation (``__getitems__``) and augmented, still uint8, on whole batches after it reaches the
device (:meth:`FashionMNISTDataModule.on_after_batch_transfer`). The loaders yield uint8 images:
:class:`~fashion_cnn.FashionCNN` turns them into normalised floats itself (:func:`prepare_batch`),
so a plain PyTorch loop over ``train_dataloader()`` works too. That costs ~0.05 s per epoch on two
CPU cores against ~7 s for torchvision's per-sample PIL path.
"""

import logging
import os
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fashion_cnn import _idx
from fashion_cnn.errors import DataError
from fashion_cnn.images import IMAGE_SUFFIXES, load_folder
from fashion_cnn.seeding import epoch_seed

__all__ = [
    "CLASS_NAMES",
    "DataError",
    "EpochRandomSampler",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "UInt8Dataset",
    "augment_batch",
    "default_data_dir",
    "identity_collate",
    "prepare_batch",
    "split_indices",
    "uint8_loader",
]

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Pixel mean and standard deviation of all 60,000 official training images scaled to [0, 1]
# (computed once in float64 from the decompressed IDX file). The 5,000 validation images drawn
# from them shift these by well under 1 %, so one pair of constants serves every split.
FASHION_MNIST_MEAN = 0.2860405969887955
FASHION_MNIST_STD = 0.35302424451492254
ENV_DATA_DIR = "FASHION_CNN_DATA_DIR"


def default_data_dir() -> Path:
    """``$FASHION_CNN_DATA_DIR``, else ``$XDG_CACHE_HOME/fashion_cnn``, else ``~/.cache/...``."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "fashion_cnn"


# --------------------------------------------------------------------------------------------
# Batch transforms, usable without the datamodule (export tests, benchmarks)


def prepare_batch(
    images: torch.Tensor,
    mean: float = FASHION_MNIST_MEAN,
    std: float = FASHION_MNIST_STD,
    normalize: bool = True,
) -> torch.Tensor:
    """Turn uint8 images into the network's float input.

    Args:
        images: uint8 tensor (B, 1, 28, 28) with values 0-255, on any device.
        mean: Subtracted after scaling to [0, 1].
        std: Divided by after subtracting ``mean``.
        normalize: If False, return the images scaled to [0, 1] only (as mean 0, std 1 do).

    Returns:
        float32 tensor of the same shape and device.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"prepare_batch expects uint8 images (0-255), got {images.dtype}")
    if normalize and (mean, std) != (0.0, 1.0):
        # (x / 255 - mean) / std, folded into one multiply and one subtract, both in place.
        return images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)
    return images.float().div_(255.0)


def augment_batch(images: torch.Tensor, flip: bool, crop_padding: int, cutout: int = 0) -> torch.Tensor:
    """Randomly flip, shift and cut out a batch, each sample on its own draw, without a loop.

    Runs on the uint8 images, before normalisation, so the padding is exactly black (0), the
    dataset's background. Random numbers come from torch's default generator on the batch's
    device, so ``lightning.seed_everything`` makes them reproducible.

    Args:
        images: Tensor (B, C, H, W), any dtype.
        flip: Mirror each image left-right with probability 0.5.
        crop_padding: Pad each side with this many zero pixels and take a random H x W crop,
            i.e. shift each image by up to ``crop_padding`` pixels in each direction. 0 disables.
        cutout: Black out a ``cutout`` x ``cutout`` square centred on a uniformly random pixel
            (so it may hang over the border), as in DeVries & Taylor (2017). 0 disables.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    batch, _, height, width = images.shape
    device = images.device
    if flip:
        mirrored = torch.rand(batch, device=device) < 0.5
        images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(images, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros
        top = torch.randint(0, 2 * p + 1, (batch, 1, 1), device=device)
        left = torch.randint(0, 2 * p + 1, (batch, 1, 1), device=device)
        rows = top + torch.arange(height, device=device)[None, :, None]  # (B, H, 1)
        cols = left + torch.arange(width, device=device)[None, None, :]  # (B, 1, W)
        sample = torch.arange(batch, device=device)[:, None, None]  # (B, 1, 1)
        # Advanced indices broadcast to (B, H, W) and come first: result is (B, H, W, C).
        images = padded.permute(0, 2, 3, 1)[sample, rows, cols].permute(0, 3, 1, 2).contiguous()
    if cutout > 0:
        # The square covers rows [cy - cutout // 2, cy - cutout // 2 + cutout), likewise columns.
        top = torch.randint(0, height, (batch, 1, 1), device=device) - cutout // 2
        left = torch.randint(0, width, (batch, 1, 1), device=device) - cutout // 2
        rows = torch.arange(height, device=device)[None, :, None] - top  # (B, H, 1)
        cols = torch.arange(width, device=device)[None, None, :] - left  # (B, 1, W)
        inside = (rows >= 0) & (rows < cutout) & (cols >= 0) & (cols < cutout)  # (B, H, W)
        images = images.masked_fill(inside[:, None], 0)
    return images


# --------------------------------------------------------------------------------------------
# Dataset and loader pieces


class UInt8Dataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and one target per image, held as two tensors; a batch is one index operation.

    Args:
        images: uint8 tensor (N, 1, 28, 28).
        targets: int64 tensor (N,): class labels, or for prediction the item indices.
        index: Optional int64 tensor (M,) of rows of ``images`` that make up this dataset, so a
            split shares the one image tensor instead of copying it (43 MB, ~0.1 s).
    """

    def __init__(
        self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.index = index
        # On the CPU, batches are gathered with NumPy on views of the same memory: one
        # single-threaded call. torch's gather runs on its intra-op threads, which costs little on
        # an idle machine but up to seconds per epoch when other processes hold the cores.
        self._numpy = None
        if images.device.type == "cpu" and targets.device.type == "cpu":
            rows = None if index is None else index.cpu().numpy()
            self._numpy = (images.numpy(), targets.numpy(), rows)

    def __len__(self) -> int:
        return len(self.images) if self.index is None else len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = i if self.index is None else self.index[i]
        return self.images[row], self.targets[row]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataLoader hands over a batch's indices at once (torch >= 2.1); one gather per
        # tensor replaces B __getitem__ calls and a collate that stacks B small tensors.
        if self._numpy is not None:
            images, targets, index = self._numpy
            picked = np.asarray(indices, dtype=np.int64)
            if index is not None:
                picked = index[picked]
            return torch.from_numpy(images[picked]), torch.from_numpy(targets[picked])
        rows = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        if self.index is not None:
            rows = self.index[rows]
        return self.images[rows], self.targets[rows]


class EpochRandomSampler(RandomSampler):
    """Random order whose permutation depends only on ``seed`` and the epoch number.

    Lightning calls :meth:`set_epoch` before every training epoch, so epoch ``e`` of a run resumed
    from a checkpoint sees exactly the order that epoch ``e`` of the uninterrupted run saw. Iterated
    without ``set_epoch`` (a plain loop), each pass moves on to the next epoch's order. Under DDP
    Lightning replaces it, being a ``RandomSampler``, with a ``DistributedSampler``, which is
    keyed by (seed, epoch) the same way.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0
        self._epoch_was_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_was_set = True

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        if not self._epoch_was_set:
            self.epoch += 1  # the next plain pass gets the next epoch's order
        self._epoch_was_set = False
        yield from super().__iter__()


def identity_collate(batch: Any) -> Any:
    """``collate_fn`` for :class:`UInt8Dataset`: ``__getitems__`` already returns the batch."""
    return batch


def split_indices(n_train: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded validation split: ``val_size`` of ``n_train`` images, drawn by ``split_seed``.

    ``torch.randperm`` with a ``torch.Generator`` seeded by ``split_seed`` picks the validation
    images; the same (n_train, val_size, split_seed) always gives the same split.

    Returns:
        (train indices, validation indices): disjoint int64 tensors that together cover
        ``range(n_train)``, each ascending, so each split keeps the images' original order (stable
        validation batches).
    """
    generator = torch.Generator().manual_seed(split_seed)
    in_val = torch.zeros(n_train, dtype=torch.bool)
    in_val[torch.randperm(n_train, generator=generator)[:val_size]] = True
    return (~in_val).nonzero().squeeze(1), in_val.nonzero().squeeze(1)


def uint8_loader(
    dataset: UInt8Dataset, batch_size: int, seed: int, sampler: EpochRandomSampler | None = None
) -> DataLoader:
    """A standard DataLoader over a :class:`UInt8Dataset`: whole-batch gathers, no workers.

    Standard loader and sampler, so Lightning's DDP swaps in a ``DistributedSampler``.

    Args:
        dataset: The images and targets.
        batch_size: Images per batch.
        seed: Seeds the generator the loader draws its iterators' base seed from.
        sampler: The training order (an :class:`EpochRandomSampler`); None keeps the order.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Creating a DataLoader iterator draws a base seed from this generator; without one it
        # would draw from torch's global RNG, shifting the dropout masks of the next steps by
        # when Lightning happens to create the iterator (which differs after a resume).
        generator=torch.Generator().manual_seed(seed),
        collate_fn=identity_collate,
        num_workers=0,  # batches are one index operation: worker processes only add cost
    )


# --------------------------------------------------------------------------------------------
# The datamodule


@runtime_checkable
class DataProtocol(Protocol):
    """What the training system reads from a DataModule (the CLI links each into the model).

    Any ``LightningDataModule`` that has these five attributes (plain attributes or properties,
    readable right after ``__init__``) works by class path: ``--data my_data.MyDataModule``.

    Attributes:
        num_classes: Number of classes; the network's output width.
        input_shape: ``(channels, height, width)`` of one image as the batches carry it.
        input_mean: Pixel mean on the [0, 1] scale the model subtracts from uint8 images (0 for
            none); float batches are used as they come.
        input_std: Pixel standard deviation the model divides by (1 for none).
        class_names: One name per class, in label order (reports and predictions).
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    input_mean: float
    input_std: float
    class_names: Sequence[str]


class InMemoryDataModule(L.LightningDataModule):
    """What both shipped DataModules share: uint8 images held in memory (on the accelerator once
    setup runs), a seeded train/val split indexing one image tensor, the loaders, and augmentation
    on the device. A subclass sets ``mean``/``std`` and calls :meth:`_hold_train` and
    :meth:`_hold_test` from its ``setup``; its hyperparameters include ``normalize``,
    ``split_seed`` and the three ``augment_*`` settings."""

    def __init__(self, batch_size: int, eval_batch_size: int | None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.predict_names: list[str] = []
        self.train_set: UInt8Dataset | None = None
        self.val_set: UInt8Dataset | None = None
        self.test_set: UInt8Dataset | None = None
        self.predict_set: UInt8Dataset | None = None
        # Indices of the train/val images among all training images (in file order).
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self._train_sampler: EpochRandomSampler | None = None

    @property
    def _hp(self) -> Any:
        """``self.hparams`` for attribute access (Lightning types it as a plain mapping)."""
        return self.hparams

    @property
    def mean(self) -> float:
        raise NotImplementedError

    @property
    def std(self) -> float:
        raise NotImplementedError

    @property
    def input_mean(self) -> float:
        """Pixel mean on the [0, 1] scale the model subtracts (0 when ``normalize`` is off)."""
        return self.mean if self._hp.normalize else 0.0

    @property
    def input_std(self) -> float:
        """Pixel standard deviation the model divides by (1 when ``normalize`` is off)."""
        return self.std if self._hp.normalize else 1.0

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return uint8_loader(self.train_set, self.batch_size, self._hp.split_seed, self._train_sampler)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            raise RuntimeError("call setup('fit') or setup('validate') before val_dataloader()")
        return uint8_loader(self.val_set, self.eval_batch_size, self._hp.split_seed)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise RuntimeError("call setup('test') before test_dataloader()")
        return uint8_loader(self.test_set, self.eval_batch_size, self._hp.split_seed)

    def predict_dataloader(self) -> DataLoader:
        """Batches of (uint8 images, int64 indices into :attr:`predict_names`)."""
        if self.predict_set is None:
            raise RuntimeError("call setup('predict') before predict_dataloader()")
        return uint8_loader(self.predict_set, self.eval_batch_size, self._hp.split_seed)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment uint8 training batches on the device; other batches pass through unchanged.

        A bare tensor is no batch but the model summary's example input (its FLOPs count), which
        Lightning also passes through this hook."""
        trainer = self.trainer
        if trainer is None or not trainer.training or isinstance(batch, torch.Tensor):
            return batch
        images, targets = batch
        hp = self._hp
        return augment_batch(images, hp.augment_flip, hp.augment_crop_padding, hp.augment_cutout), targets

    def _hold_train(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        """The train and val datasets over ``images`` (N, C, H, W) uint8 by the split indices."""
        assert self.train_indices is not None and self.val_indices is not None
        images, labels = images.to(device), labels.to(device, torch.long)
        # Both splits index the one image tensor: no copies.
        self.train_set = UInt8Dataset(images, labels, self.train_indices.to(device))
        self.val_set = UInt8Dataset(images, labels, self.val_indices.to(device))
        # One sampler for the datamodule's life: a new order each epoch, and each epoch's order a
        # function of (split_seed, epoch) alone, so a resumed run sees the same data.
        self._train_sampler = EpochRandomSampler(self.train_set, self._hp.split_seed)

    def _hold_test(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        names: Sequence[str],
        device: torch.device,
        stage: str | None,
    ) -> None:
        """The test dataset, and the predict dataset over the test images unless predict_dir is set."""
        images = images.to(device)
        if stage in (None, "test"):
            self.test_set = UInt8Dataset(images, labels.to(device, torch.long))
        if stage in (None, "predict") and self._hp.predict_dir is None:
            self.predict_set = UInt8Dataset(images, torch.arange(len(images), device=device))
            self.predict_names = list(names)

    def _trainer_fn(self) -> str | None:
        trainer = self.trainer
        fn = None if trainer is None else trainer.state.fn
        return None if fn is None else str(fn.value)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return torch.device("cpu") if trainer is None else trainer.strategy.root_device


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST: 60,000 training images (a seeded validation split drawn from them) and the
    official 10,000 test images, 28x28 grayscale, 10 classes.

    Args:
        data_dir: Folder for the verified IDX files and the tensor cache. Default:
            ``$FASHION_CNN_DATA_DIR``, else ``$XDG_CACHE_HOME/fashion_cnn`` or
            ``~/.cache/fashion_cnn``.
        source_dir: Local folder holding the four IDX files (``.gz`` or decompressed) to copy
            from when data_dir lacks them. Default: Debian's ``/usr/share/datasets/fashion-mnist``
            (``apt-get install dataset-fashion-mnist``).
        download: Download missing files from the upstream mirror when no local copy works.
        batch_size: Training batch size.
        val_size: Number of training images held out for validation (0 for none).
        split_seed: Seed of the validation split and of the training shuffle order.
        normalize: Standardise pixels with the training set's mean and std; otherwise scale to
            [0, 1] only.
        augment_flip: In training, mirror each image left-right with probability 0.5.
        augment_crop_padding: In training, shift each image by up to this many pixels (zero
            padding, random crop back to 28x28). 0 disables.
        augment_cutout: In training, black out a random square of this many pixels a side in each
            image (cutout); 0 disables. Applied after flip and shift.
        predict_dir: Folder of .png/.jpg/.jpeg images to predict (not searched recursively).
            Default: predict the test set.
        eval_batch_size: Batch size for validation, test and prediction. Default: the larger of
            batch_size and 256.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        source_dir: str | None = None,
        download: bool = True,
        batch_size: int = 64,
        val_size: int = 5000,
        split_seed: int = 0,
        normalize: bool = True,
        augment_flip: bool = False,
        augment_crop_padding: int = 0,
        augment_cutout: int = 0,
        predict_dir: str | None = None,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size)
        _check_arguments(
            data_dir=data_dir,
            source_dir=source_dir,
            download=download,
            batch_size=batch_size,
            val_size=val_size,
            split_seed=split_seed,
            normalize=normalize,
            augment_flip=augment_flip,
            augment_crop_padding=augment_crop_padding,
            augment_cutout=augment_cutout,
            predict_dir=predict_dir,
            eval_batch_size=eval_batch_size,
        )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self._tensors: dict[str, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def mean(self) -> float:
        return FASHION_MNIST_MEAN

    @property
    def std(self) -> float:
        return FASHION_MNIST_STD

    # ---- data hooks, in the order Lightning calls them

    def prepare_data(self) -> None:
        """Make sure data_dir holds verified files and the tensor cache (fetching if needed)."""
        if self._hp.predict_dir is not None and self._trainer_fn() == "predict":
            return  # predicting a folder of images needs no Fashion-MNIST files
        self._tensors = self._load()

    def setup(self, stage: str | None = None) -> None:
        """Load the tensors and build the datasets ``stage`` needs (all of them for None)."""
        if stage in (None, "predict") and self._hp.predict_dir is not None:
            images, self.predict_names = load_folder(self._hp.predict_dir)
            if not len(images):
                raise DataError(
                    f"No usable image in {self._hp.predict_dir}: predict_dir needs "
                    f"{'/'.join(IMAGE_SUFFIXES)} files directly inside it (see the warnings above "
                    "for the files that were skipped)."
                )
            self.predict_set = UInt8Dataset(images, torch.arange(len(images)))
            if stage == "predict":
                return

        tensors = self._tensors if self._tensors is not None else self._load()
        self._tensors = tensors
        # On a GPU (or any accelerator) the uint8 tensors move there once (55 MB), so batches are
        # gathered on the device and never cross the bus.
        device = self._device()

        if stage in (None, "fit", "validate"):
            n_train = len(tensors["train_images"])
            if self._hp.val_size >= n_train:
                raise ValueError(
                    f"val_size={self._hp.val_size} leaves no training images out of "
                    f"{n_train}; use 0 <= val_size < {n_train}."
                )
            self.train_indices, self.val_indices = split_indices(
                n_train, self._hp.val_size, self._hp.split_seed
            )
            images = tensors["train_images"].unsqueeze(1)  # (60000, 1, 28, 28)
            self._hold_train(images, tensors["train_labels"], device)
        if stage in (None, "test", "predict"):
            images = tensors["test_images"].unsqueeze(1)  # (10000, 1, 28, 28)
            names = [f"test/{i}" for i in range(len(images))]
            self._hold_test(images, tensors["test_labels"], names, device, stage)

    # ---- helpers

    def _load(self) -> dict[str, torch.Tensor]:
        source = self._hp.source_dir
        sources = [Path(source).expanduser()] if source else [_idx.DEBIAN_DIR]
        return _idx.load_verified(self.data_dir, sources, self._hp.download)


def _check_arguments(**args: Any) -> None:
    """Raise ValueError naming the argument, its value and what would work."""

    def fail(name: str, expected: str) -> None:
        raise ValueError(f"{name}={args[name]!r} is not valid: {expected}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    n_train = _idx.SPECS["train_images"].shape[0]
    for name in ("data_dir", "source_dir", "predict_dir"):
        value = args[name]
        if value is not None and (not isinstance(value, str | os.PathLike) or str(value) == ""):
            fail(name, "use a folder path, or leave it unset for the default")
    data_dir = args["data_dir"]
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        fail("data_dir", "use a folder, not a file (the folder is created if missing)")
    for name in ("source_dir", "predict_dir"):
        value = args[name]
        if value is not None and not Path(value).expanduser().is_dir():
            fail(name, "use an existing folder (there is none at that path), or leave it unset")
    for name in ("download", "normalize", "augment_flip"):
        if not isinstance(args[name], bool):
            fail(name, "use true or false")
    if not is_int(args["batch_size"]) or args["batch_size"] < 1:
        fail("batch_size", "use an integer >= 1, e.g. 64")
    if not is_int(args["val_size"]) or not 0 <= args["val_size"] < n_train:
        fail("val_size", f"use an integer with 0 <= val_size < {n_train}, e.g. 5000")
    if not is_int(args["split_seed"]) or not 0 <= args["split_seed"] < 2**63:
        fail("split_seed", "use an integer >= 0")
    if not is_int(args["augment_crop_padding"]) or not 0 <= args["augment_crop_padding"] < 28:
        fail("augment_crop_padding", "use an integer from 0 (off) to 27 pixels, e.g. 2 or 4")
    if not is_int(args["augment_cutout"]) or not 0 <= args["augment_cutout"] <= 28:
        fail("augment_cutout", "use an integer from 0 (off) to 28 pixels, e.g. 8 or 12")
    eval_batch_size = args["eval_batch_size"]
    if eval_batch_size is not None and (not is_int(eval_batch_size) or eval_batch_size < 1):
        fail("eval_batch_size", "use an integer >= 1, or leave it unset for max(batch_size, 256)")
