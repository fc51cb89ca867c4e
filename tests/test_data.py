"""Tests of fashion_cnn.data, fashion_cnn._idx and fashion_cnn.images.

Most run on tiny synthetic IDX files (see ``synthetic_idx_dir`` in conftest.py); the ``realdata``
ones need Debian's dataset-fashion-mnist and skip without it.
"""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from _cli_args import QUIET_TRAINER
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, DistributedSampler

from fashion_cnn import FashionCNN, _idx, data, images
from fashion_cnn._idx import DataError, atomic_write, read_idx
from fashion_cnn.data import (
    CLASS_NAMES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataModule,
    UInt8Dataset,
    augment_batch,
    identity_collate,
    prepare_batch,
)
from fashion_cnn.images import load_image

IDX_LOGGER = "fashion_cnn._idx"
N_TRAIN, N_TEST = 200, 50  # the sizes synthetic_idx_dir writes
SyntheticIdx = Any  # conftest.SyntheticIdx; not imported, so the tests folder needs no package


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = np.array((magic, *array.shape), dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def make_dm(synthetic: SyntheticIdx, **kwargs) -> FashionMNISTDataModule:
    """A datamodule over the synthetic files, copied from their source folder."""
    kwargs.setdefault("source_dir", str(synthetic.source_dir))
    kwargs.setdefault("val_size", 50)
    return FashionMNISTDataModule(**kwargs)


def ready_dm(synthetic: SyntheticIdx, stage: str | None = None, **kwargs) -> FashionMNISTDataModule:
    dm = make_dm(synthetic, **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data_dir"  # where synthetic_idx_dir points FASHION_CNN_DATA_DIR


# ---------------------------------------------------------------------------------------------
# IDX parsing and verification


def test_read_idx_parses_plain_and_gzipped_files(synthetic_idx_dir, tmp_path):
    for key, spec in synthetic_idx_dir.specs.items():
        from_gz = read_idx(synthetic_idx_dir.path(key), spec)
        plain = tmp_path / spec.name
        plain.write_bytes(synthetic_idx_dir.raw[key])
        np.testing.assert_array_equal(from_gz, synthetic_idx_dir.arrays[key])
        np.testing.assert_array_equal(read_idx(plain, spec), synthetic_idx_dir.arrays[key])
        assert from_gz.dtype == np.uint8 and from_gz.shape == spec.shape


def _truncated_gz(raw: bytes) -> bytes:
    compressed = gzip.compress(raw, mtime=0)
    return compressed[: len(compressed) // 2]


def _wrong_magic(raw: bytes) -> bytes:
    return gzip.compress((2050).to_bytes(4, "big") + raw[4:], mtime=0)


def _wrong_count(raw: bytes) -> bytes:
    count = int.from_bytes(raw[4:8], "big")
    return gzip.compress(raw[:4] + (count - 1).to_bytes(4, "big") + raw[8:], mtime=0)


def _wrong_checksum(raw: bytes) -> bytes:
    return gzip.compress(raw[:-1] + bytes([raw[-1] ^ 0xFF]), mtime=0)


def _truncated_content(raw: bytes) -> bytes:
    return gzip.compress(raw[:-10], mtime=0)  # a valid gzip of a short file


def _not_gzip(raw: bytes) -> bytes:
    return b"<html>404 Not Found</html>"


@pytest.mark.parametrize("key", ["train_images", "test_labels"])
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncated_gz, "truncated gzip"),
        (_truncated_content, "truncated"),
        (_wrong_magic, "wrong magic number 2050"),
        (_wrong_count, "wrong count"),
        (_wrong_checksum, "wrong checksum"),
        (_not_gzip, "not a valid gzip file"),
    ],
)
def test_verification_rejects_damaged_files(synthetic_idx_dir, tmp_path, key, damage, expected):
    spec = synthetic_idx_dir.specs[key]
    path = tmp_path / f"{spec.name}.gz"
    path.write_bytes(damage(synthetic_idx_dir.raw[key]))
    with pytest.raises(DataError, match=expected) as info:
        read_idx(path, spec)
    assert str(path) in str(info.value)


def test_verification_rejects_wrong_image_size(synthetic_idx_dir, tmp_path):
    spec = synthetic_idx_dir.specs["test_images"]
    path = tmp_path / spec.name
    path.write_bytes(idx_bytes(spec.magic, np.zeros((N_TEST, 32, 32), np.uint8)))
    with pytest.raises(DataError, match=r"wrong dimensions \(50, 32, 32\)"):
        read_idx(path, spec)


def test_real_spec_table_matches_the_documented_sizes():
    sizes = {spec.name: spec.size for spec in _idx.SPECS.values()}
    assert sizes == {
        "train-images-idx3-ubyte": 47_040_016,
        "train-labels-idx1-ubyte": 60_008,
        "t10k-images-idx3-ubyte": 7_840_016,
        "t10k-labels-idx1-ubyte": 10_008,
    }


# ---------------------------------------------------------------------------------------------
# Sources: data_dir, local copies, downloads, errors


def test_files_are_copied_from_source_dir_and_data_matches(synthetic_idx_dir, tmp_path):
    dm = ready_dm(synthetic_idx_dir, stage=None)
    assert dm.data_dir == data_dir(tmp_path)
    for key, spec in synthetic_idx_dir.specs.items():
        assert (data_dir(tmp_path) / f"{spec.name}.gz").read_bytes() == synthetic_idx_dir.gz[key]
    assert (data_dir(tmp_path) / _idx.CACHE_NAME).is_file()
    train_all = torch.cat([dm.train_set.images[dm.train_set.index], dm.val_set.images[dm.val_set.index]])
    assert train_all.shape == (N_TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(dm.test_set.images[:, 0].numpy(), synthetic_idx_dir.arrays["test_images"])


def test_corrupt_file_in_data_dir_is_replaced_from_source(synthetic_idx_dir, tmp_path, caplog):
    ready_dm(synthetic_idx_dir)
    (data_dir(tmp_path) / _idx.CACHE_NAME).unlink()  # force the IDX files to be read again
    damaged = data_dir(tmp_path) / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # an interrupted copy by some other tool

    with caplog.at_level(logging.WARNING, logger=IDX_LOGGER):
        dm = ready_dm(synthetic_idx_dir, stage="fit")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(damaged) in m and "truncated" in m and "replaced" in m for m in warnings), warnings
    assert damaged.read_bytes() == synthetic_idx_dir.gz["train_images"]
    assert len(dm.train_set) == N_TRAIN - 50


def test_corrupt_plain_file_is_removed_when_a_valid_gz_is_there(synthetic_idx_dir, tmp_path, caplog):
    ready_dm(synthetic_idx_dir)
    (data_dir(tmp_path) / _idx.CACHE_NAME).unlink()
    stale = data_dir(tmp_path) / "t10k-labels-idx1-ubyte"  # checked before the .gz
    stale.write_bytes(b"\x00\x00\x08\x01junk")
    with caplog.at_level(logging.WARNING, logger=IDX_LOGGER):
        ready_dm(synthetic_idx_dir, stage="test")
    assert not stale.exists()
    assert any(str(stale) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("download", [True, False])
def test_no_source_at_all_lists_places_and_fixes(synthetic_idx_dir, tmp_path, download):
    empty = tmp_path / "empty_source"
    empty.mkdir()
    dm = FashionMNISTDataModule(val_size=50, download=download)  # source: the (absent) Debian dir
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    for expected in (
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        str(data_dir(tmp_path)),
        str(_idx.DEBIAN_DIR),
        "apt-get install dataset-fashion-mnist",
        "--data.source_dir",
        "--data.data_dir",
        "FASHION_CNN_DATA_DIR",
        "internet",
    ):
        assert expected in message, f"{expected!r} missing from:\n{message}"
    if download:
        assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz: <urlopen error" in message
        # One refused connection is enough: later files do not wait on the same server again.
        assert "http://127.0.0.1:9/t10k-labels-idx1-ubyte.gz: skipped" in message
    else:
        assert "download: disabled" in message


def test_corrupt_source_is_reported_with_its_problem(synthetic_idx_dir, tmp_path):
    synthetic_idx_dir.path("test_labels").write_bytes(_wrong_magic(synthetic_idx_dir.raw["test_labels"]))
    with pytest.raises(DataError, match="wrong magic number") as info:
        make_dm(synthetic_idx_dir, download=False).prepare_data()
    assert str(synthetic_idx_dir.path("test_labels")) in str(info.value)
    # The three valid files were still copied; the invalid one was not.
    assert not (data_dir(tmp_path) / "t10k-labels-idx1-ubyte.gz").exists()
    assert (data_dir(tmp_path) / "t10k-images-idx3-ubyte.gz").exists()


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "out" / "file.gz"
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as f:
        f.write(b"half of the data")
        raise KeyboardInterrupt
    assert list((tmp_path / "out").iterdir()) == []

    with atomic_write(target) as f:
        f.write(b"all of it")
    assert target.read_bytes() == b"all of it"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["file.gz"]


def test_failed_copy_leaves_no_file_in_data_dir(synthetic_idx_dir, tmp_path, monkeypatch):
    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_idx.os, "fsync", failing_fsync)
    with pytest.raises(DataError, match="No space left on device") as info:
        make_dm(synthetic_idx_dir).prepare_data()
    assert "FASHION_CNN_DATA_DIR" in str(info.value)
    assert list(data_dir(tmp_path).iterdir()) == []


def test_unwritable_data_dir_names_the_directory_and_the_fix(synthetic_idx_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dm = make_dm(synthetic_idx_dir, data_dir=str(blocker / "data"))
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    assert str(blocker / "data") in str(info.value)
    assert "FASHION_CNN_DATA_DIR" in str(info.value) and "--data.data_dir" in str(info.value)


def test_download_from_local_mirror(synthetic_idx_dir, tmp_path, local_mirror, monkeypatch, caplog):
    url, folder = local_mirror
    for key in synthetic_idx_dir.specs:
        (folder / synthetic_idx_dir.path(key).name).write_bytes(synthetic_idx_dir.gz[key])
    # The first mirror is down; the second serves the files.
    monkeypatch.setattr(_idx, "MIRRORS", ("http://127.0.0.1:9/", url))
    with caplog.at_level(logging.INFO, logger=IDX_LOGGER):
        dm = ready_dm(synthetic_idx_dir, stage="test", source_dir=None)
    assert any(f"Downloading {url}" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), synthetic_idx_dir.arrays["test_labels"])
    for key, spec in synthetic_idx_dir.specs.items():
        assert (data_dir(tmp_path) / f"{spec.name}.gz").read_bytes() == synthetic_idx_dir.gz[key]


def test_download_with_wrong_md5_is_rejected(synthetic_idx_dir, tmp_path, local_mirror, monkeypatch):
    url, folder = local_mirror
    for key in synthetic_idx_dir.specs:
        (folder / synthetic_idx_dir.path(key).name).write_bytes(synthetic_idx_dir.gz[key])
    specs = dict(synthetic_idx_dir.specs)
    spec = specs["train_labels"]
    specs["train_labels"] = _idx.IdxSpec(spec.name, spec.magic, spec.shape, spec.sha256, "0" * 32)
    monkeypatch.setattr(_idx, "SPECS", specs)
    monkeypatch.setattr(_idx, "MIRRORS", (url,))
    with pytest.raises(DataError, match="wrong MD5") as info:
        make_dm(synthetic_idx_dir, source_dir=None).prepare_data()
    assert f"{url}train-labels-idx1-ubyte.gz" in str(info.value)
    names = sorted(p.name for p in data_dir(tmp_path).iterdir())
    assert names == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]


# ---------------------------------------------------------------------------------------------
# The tensor cache


def test_cache_is_reused_without_reading_idx_files(synthetic_idx_dir, tmp_path, monkeypatch):
    ready_dm(synthetic_idx_dir)
    for spec in synthetic_idx_dir.specs.values():
        (data_dir(tmp_path) / f"{spec.name}.gz").unlink()

    def no_idx_reading(*args, **kwargs):
        raise AssertionError("IDX files read although the cache is valid")

    monkeypatch.setattr(_idx, "_read_verified", no_idx_reading)
    dm = ready_dm(synthetic_idx_dir, stage=None, source_dir=None, download=False)
    np.testing.assert_array_equal(dm.test_set.images[:, 0].numpy(), synthetic_idx_dir.arrays["test_images"])


def _tamper_pixel(path: Path) -> None:
    content = torch.load(path, weights_only=True)
    content["train_images"][3, 14, 14] ^= 1  # a valid file with one wrong pixel
    torch.save(content, path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_dtype(path: Path) -> None:
    content = torch.load(path, weights_only=True)
    content["test_labels"] = content["test_labels"].long()
    torch.save(content, path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_tamper_pixel, "SHA-256"), (_truncate, ""), (_wrong_dtype, "torch.int64")],
)
def test_corrupt_cache_is_rebuilt(synthetic_idx_dir, tmp_path, caplog, damage, reason):
    ready_dm(synthetic_idx_dir)
    cache = data_dir(tmp_path) / _idx.CACHE_NAME
    damage(cache)
    with caplog.at_level(logging.WARNING, logger=IDX_LOGGER):
        dm = ready_dm(synthetic_idx_dir, stage=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(cache) in m and reason in m for m in warnings), warnings
    full = dm.train_set.images[:, 0].numpy()
    np.testing.assert_array_equal(full, synthetic_idx_dir.arrays["train_images"])
    # The rebuilt cache verifies.
    assert _idx._load_cache(cache, synthetic_idx_dir.specs) is not None


# ---------------------------------------------------------------------------------------------
# Split and loaders


def test_split_sizes_disjoint_and_seeded(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="fit", val_size=50, split_seed=7)
    train, val = dm.train_indices, dm.val_indices
    assert (len(dm.train_set), len(dm.val_set)) == (150, 50)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(N_TRAIN))
    # Labels line up with the images they came from.
    np.testing.assert_array_equal(
        dm.val_set.targets[val].numpy(), synthetic_idx_dir.arrays["train_labels"][val.numpy()]
    )

    same = ready_dm(synthetic_idx_dir, stage="fit", val_size=50, split_seed=7)
    other = ready_dm(synthetic_idx_dir, stage="fit", val_size=50, split_seed=8)
    assert torch.equal(same.val_indices, val)
    assert not torch.equal(other.val_indices, val)


def test_no_validation_split(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="fit", val_size=0)
    assert len(dm.train_set) == N_TRAIN and len(dm.val_set) == 0
    assert list(dm.val_dataloader()) == []


def test_val_size_checked_against_the_actual_training_set(synthetic_idx_dir):
    with pytest.raises(ValueError, match="val_size=200"):
        ready_dm(synthetic_idx_dir, stage="fit", val_size=N_TRAIN)


def test_test_set_is_the_official_test_set(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="test")
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), synthetic_idx_dir.arrays["test_labels"])
    assert dm.train_set is None and dm.val_set is None


def test_batches_dtypes_shapes_and_values(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage=None, batch_size=32, normalize=False)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (32,)
    # Outside training the batch passes through as it is: the model prepares uint8 images itself.
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x is images and y is labels
    # What the model is told to do with them: with normalize=false, only scale to [0, 1].
    assert (dm.input_mean, dm.input_std) == (0.0, 1.0)
    prepared = prepare_batch(images, dm.input_mean, dm.input_std)
    assert prepared.dtype == torch.float32 and prepared.min() >= 0.0 and prepared.max() <= 1.0
    torch.testing.assert_close(prepared, images.float() / 255)

    # Eval loaders: default batch max(batch_size, 256) covers the tiny sets in one batch, in order.
    ((val_images, val_labels),) = list(dm.val_dataloader())
    assert torch.equal(val_images, dm.val_set.images[dm.val_indices])
    assert len(list(dm.test_dataloader())) == 1
    assert ready_dm(synthetic_idx_dir, stage="test", eval_batch_size=20).test_dataloader().batch_size == 20


def test_train_order_changes_per_epoch_and_is_reproducible(synthetic_idx_dir):
    def epochs(dm: FashionMNISTDataModule, n: int) -> list[list[int]]:
        orders = []
        for _ in range(n):
            orders.append([int(i) for _, y in dm.train_dataloader() for i in y])
        return orders

    first = epochs(ready_dm(synthetic_idx_dir, stage="fit", split_seed=3, batch_size=16), 2)
    again = epochs(ready_dm(synthetic_idx_dir, stage="fit", split_seed=3, batch_size=16), 2)
    assert first == again
    assert first[0] != first[1]
    assert sorted(first[0]) == sorted(first[1])
    # What Lightning does on resume: set_epoch(1) on a fresh datamodule repeats epoch 1's order.
    resumed = ready_dm(synthetic_idx_dir, stage="fit", split_seed=3, batch_size=16)
    resumed.train_dataloader().sampler.set_epoch(1)
    assert [int(i) for _, y in resumed.train_dataloader() for i in y] == first[1]


def test_getitems_matches_getitem(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="fit")
    images, labels = dm.train_set.__getitems__([5, 0, 17])
    for row, i in enumerate([5, 0, 17]):
        image, label = dm.train_set[i]
        assert torch.equal(images[row], image) and labels[row] == label


def test_normalization_gives_zero_mean_unit_std(synthetic_idx_dir):
    pixels = torch.from_numpy(synthetic_idx_dir.arrays["train_images"]).unsqueeze(1)
    scaled = pixels.double() / 255
    x = prepare_batch(pixels, scaled.mean().item(), scaled.std().item(), normalize=True)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    with pytest.raises(TypeError, match="uint8"):
        prepare_batch(pixels.float())


class _FakeTrainer:
    """Just what the datamodule reads from a trainer."""

    def __init__(self, training: bool) -> None:
        self.training = training


def test_flip_augmentation_only_in_training(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="fit", batch_size=64, augment_flip=True, normalize=False)
    images, labels = next(iter(dm.train_dataloader()))
    plain = images
    torch.manual_seed(0)
    dm.trainer = _FakeTrainer(training=True)
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.uint8  # augmented as pixels; the model prepares them
    flipped = [torch.equal(x[i], plain[i].flip(-1)) for i in range(len(x))]
    unchanged = [torch.equal(x[i], plain[i]) for i in range(len(x))]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 10 < sum(flipped) < 54  # p = 0.5 per sample: both outcomes occur

    dm.trainer = _FakeTrainer(training=False)  # validation, test, predict, sanity check
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(x, plain)


def test_crop_augmentation_shifts_each_sample_with_zero_padding():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (32, 1, 28, 28), dtype=torch.uint8)  # no zeros inside
    out = augment_batch(images, flip=False, crop_padding=3)
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = set()
    for i in range(len(images)):
        padded = torch.nn.functional.pad(images[i], (3, 3, 3, 3))
        matches = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(padded[:, dy : dy + 28, dx : dx + 28], out[i])
        ]
        assert len(matches) == 1, f"sample {i} is not a shifted copy of its input"
        shifts.add(matches[0])
    # Offsets are drawn per sample and per axis: 32 draws from 7 x 7 give ~23 distinct pairs,
    # a shared vertical or horizontal offset at most 7.
    assert len(shifts) > 10


def test_cutout_blacks_out_one_clipped_square_per_sample():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (256, 1, 28, 28), dtype=torch.uint8)  # no zeros inside
    out = augment_batch(images, flip=False, crop_padding=0, cutout=8)
    assert out.shape == images.shape and out.dtype == torch.uint8
    zeroed = out[:, 0] == 0  # (B, 28, 28)
    kept = ~zeroed
    assert torch.equal(out[:, 0][kept], images[:, 0][kept])  # everything else untouched
    areas = []
    for mask in zeroed:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)  # the centre is inside the image: never an empty cut
        # One axis-aligned rectangle: its bounding box is fully zero, at most 8 x 8.
        assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        assert len(rows) <= 8 and len(cols) <= 8
        areas.append(int(mask.sum()))
    # Squares near the border are clipped; most fall fully inside (centre in 4..23 on both axes).
    assert 64 in areas and min(areas) < 64


def test_augmentation_runs_in_a_real_trainer_only_while_training(synthetic_idx_dir, monkeypatch, tmp_path):
    calls: list[bool] = []
    real_augment = data.augment_batch

    def spy(images, *args):
        calls.append(trainer.training)
        return real_augment(images, *args)

    monkeypatch.setattr(data, "augment_batch", spy)
    seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(28 * 28, 10)

        def training_step(self, batch, batch_idx):
            seen["train"].append(batch[0])
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1).float()), batch[1])

        def validation_step(self, batch, batch_idx):
            seen["val"].append(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = make_dm(synthetic_idx_dir, batch_size=16, augment_flip=True, augment_crop_padding=2)
    trainer = L.Trainer(
        **QUIET_TRAINER,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(Recorder(), datamodule=dm)
    assert calls == [True] * 3
    assert all(b.dtype == torch.uint8 for b in seen["train"] + seen["val"])  # the model prepares them
    expected_val = dm.val_set.images[dm.val_indices]
    for batch in seen["val"]:  # sanity check + validation: never augmented
        torch.testing.assert_close(batch, expected_val)


class _DeviceTrainer:
    """A trainer stand-in whose strategy runs on ``device``."""

    def __init__(self, device: str, training: bool = True) -> None:
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()
        self.training = training


def test_setup_moves_the_tensors_to_the_trainers_device(synthetic_idx_dir):
    # "meta" tensors carry shapes without data: the plumbing of the accelerator path, on a CPU.
    dm = make_dm(synthetic_idx_dir, batch_size=16, augment_flip=True, augment_crop_padding=2)
    dm.trainer = _DeviceTrainer("meta")
    dm.prepare_data()
    dm.setup()
    for dataset in (dm.train_set, dm.val_set, dm.test_set, dm.predict_set):
        assert dataset.images.device.type == "meta" and dataset.targets.device.type == "meta"
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device.type == "meta" and images.shape == (16, 1, 28, 28)
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.device.type == "meta" and x.dtype == torch.uint8 and x.shape == (16, 1, 28, 28)
    prepared = prepare_batch(x, dm.input_mean, dm.input_std)  # what the model does, on the device
    assert prepared.device.type == "meta" and prepared.dtype == torch.float32


def test_the_dataset_is_held_once_and_never_copied_per_epoch(synthetic_idx_dir, tmp_path):
    dm = make_dm(synthetic_idx_dir, batch_size=16, augment_flip=True, augment_crop_padding=2)
    seen: list[tuple[int, int, int]] = []

    class Storage(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            train, val = trainer.datamodule.train_set, trainer.datamodule.val_set
            numpy_view = train._numpy[0]  # what __getitems__ gathers from on the CPU
            seen.append(
                (
                    train.images.untyped_storage().data_ptr(),
                    val.images.untyped_storage().data_ptr(),
                    numpy_view.__array_interface__["data"][0],
                )
            )

    trainer = L.Trainer(
        **QUIET_TRAINER,
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=2,  # the storage is the test, not the training: two batches an epoch
        limit_val_batches=1,
        callbacks=[Storage()],
        default_root_dir=tmp_path,
    )
    trainer.fit(FashionCNN(layers=1, filters=2, hidden=8), datamodule=dm)
    assert len(seen) == 3
    # Train and validation index one uint8 tensor, the NumPy view shares its memory, and the
    # same memory serves every epoch: nothing is copied or rebuilt per epoch.
    assert all(ptrs == (seen[0][0],) * 3 for ptrs in seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_stay_on_the_gpu(synthetic_idx_dir):
    dm = make_dm(synthetic_idx_dir, batch_size=16, augment_flip=True, augment_crop_padding=2)
    dm.trainer = _DeviceTrainer("cuda:0")
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.uint8
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.is_cuda and x.dtype == torch.float32
    expected = prepare_batch(images.cpu())
    dm.trainer.training = False
    torch.testing.assert_close(dm.on_after_batch_transfer((images, labels), 0)[0].cpu(), expected)


def test_distributed_sampler_gives_disjoint_shards(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="fit")
    for seed in (0, 1):
        shards = []
        for rank in range(2):
            dataset = UInt8Dataset(dm.train_set.images, torch.arange(N_TRAIN), dm.train_set.index)
            sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=seed)
            sampler.set_epoch(1)
            loader = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=identity_collate)
            shards.append([int(i) for _, rows in loader for i in rows])
        assert set(shards[0]).isdisjoint(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(dm.train_indices.tolist())


def test_lightning_can_swap_in_a_distributed_sampler(synthetic_idx_dir):
    update = pytest.importorskip("lightning.pytorch.utilities.data")._update_dataloader
    dm = ready_dm(synthetic_idx_dir, stage="fit", batch_size=16)
    loader = dm.train_dataloader()
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    swapped = update(loader, sampler)
    assert swapped.sampler is sampler and swapped.batch_size == 16
    assert swapped.collate_fn is identity_collate
    images, labels = next(iter(swapped))
    assert images.shape == (16, 1, 28, 28) and labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# Arguments and properties


def test_properties_and_hyperparameters(synthetic_idx_dir):
    dm = make_dm(synthetic_idx_dir, batch_size=32)
    assert dm.num_classes == 10 and dm.class_names == CLASS_NAMES
    assert dm.class_names[0] == "T-shirt/top" and dm.class_names[-1] == "Ankle boot"
    assert dm.input_shape == (1, 28, 28)
    assert (dm.mean, dm.std) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    assert dm.hparams.batch_size == 32 and dm.hparams.val_size == 50
    assert dm.eval_batch_size == 256


def test_default_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FASHION_CNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "xdg" / "fashion_cnn"
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "env"
    assert FashionMNISTDataModule(data_dir=str(tmp_path / "arg")).data_dir == tmp_path / "arg"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": 60000}, "val_size=60000"),
        ({"augment_crop_padding": -2}, "augment_crop_padding=-2"),
        ({"augment_crop_padding": 28}, "augment_crop_padding=28"),
        ({"augment_cutout": -1}, "augment_cutout=-1"),
        ({"augment_cutout": 29}, "augment_cutout=29"),
        ({"eval_batch_size": 0}, "eval_batch_size=0"),
        ({"split_seed": -1}, "split_seed=-1"),
        ({"download": "yes"}, "download='yes'"),
        ({"predict_dir": "/no/such/folder"}, "predict_dir='/no/such/folder'"),
        ({"source_dir": "/no/such/folder"}, "source_dir='/no/such/folder'"),
        ({"data_dir": ""}, "data_dir=''"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match="is not valid: use") as info:
        FashionMNISTDataModule(**kwargs)
    assert name in str(info.value)


def test_data_dir_that_is_a_file_is_rejected(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ValueError, match="data_dir=.*not a file"):
        FashionMNISTDataModule(data_dir=str(afile))


# ---------------------------------------------------------------------------------------------
# Prediction and users' images


def _garment(size: tuple[int, int], background: int, garment: int, mode: str = "L") -> Image.Image:
    """A filled ellipse over the middle half of the image (so its bounding box has background
    corners), on a plain background."""
    width, height = size
    image = Image.new("L", size, background)
    box = (width // 4, height // 4, 3 * width // 4 - 1, 3 * height // 4 - 1)
    ImageDraw.Draw(image).ellipse(box, fill=garment)
    return image.convert(mode)


def test_load_image_inverts_light_backgrounds_and_fits_28(tmp_path):
    path = tmp_path / "shirt.png"
    _garment((60, 60), background=255, garment=30).save(path)  # a dark shirt on white
    x = load_image(path)
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8
    assert x[0, 0, 0] == 0 and x[0, -1, -1] == 0  # black background
    assert x[0, 14, 14] == 255  # light garment, full contrast
    assert (x[0] > 128).sum() > 0.7 * 28 * 28  # trimmed: the ellipse (pi/4 of its box) fills it

    dark = tmp_path / "dark.png"
    _garment((60, 60), background=0, garment=200).save(dark)  # already Fashion-MNIST-like
    assert load_image(dark)[0, 14, 14] == 255


def test_load_image_keeps_aspect_ratio(tmp_path):
    path = tmp_path / "wide.jpg"
    _garment((200, 100), background=255, garment=0, mode="RGB").save(path, quality=95)
    x = load_image(path)[0]
    rows = torch.nonzero(x.max(dim=1).values > 64).squeeze(1)
    cols = torch.nonzero(x.max(dim=0).values > 64).squeeze(1)
    assert len(cols) >= 27  # the long side spans the frame...
    assert 12 <= len(rows) <= 16  # ...the short side half of it (100x50 object -> 28x14)
    assert abs((rows.min() + rows.max()).item() / 2 - 13.5) <= 1  # centred vertically


def test_load_image_flattens_transparency_onto_white(tmp_path):
    path = tmp_path / "cutout.png"
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent...
    rgba[10:30, 15:25] = (20, 20, 20, 255)  # ...around an opaque dark garment, 10 wide x 20 high
    Image.fromarray(rgba, "RGBA").save(path)
    x = load_image(path)[0]
    assert x[0, 0] == 0 and x[14, 14] == 255


def test_load_image_rejects_non_images(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*not a readable image"):
        load_image(path)


def test_load_image_rejects_oversized_images(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _garment((100, 100), 255, 0).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(ValueError, match=r"big.png: 100x100 = 10000 pixels exceeds the limit of 5000"):
        load_image(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # PIL's own limit is respected too
    with pytest.raises(ValueError, match="big.png"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="big.png: file of .* bytes exceeds the 100-byte limit"):
        load_image(path)


def test_predict_folder_keeps_names_and_skips_bad_files(synthetic_idx_dir, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    _garment((28, 28), 255, 0).save(folder / "b_shirt.png")
    _garment((64, 48), 240, 40, mode="RGB").save(folder / "a_boot.JPEG")
    colour = np.zeros((300, 200, 3), np.uint8)
    colour[50:250, 40:160] = (200, 30, 30)  # a red garment on black, 200x300
    Image.fromarray(colour).save(folder / "c_dress.png")
    (folder / "d_notes.png").write_text("this is text")
    (folder / "e_readme.txt").write_text("ignored: not an image suffix")
    (folder / "sub").mkdir()
    _garment((28, 28), 255, 0).save(folder / "sub" / "nested.png")  # not recursive

    dm = make_dm(synthetic_idx_dir, predict_dir=str(folder), source_dir=None, download=False)
    with caplog.at_level(logging.WARNING, logger="fashion_cnn.images"):
        dm.setup("predict")  # needs no Fashion-MNIST files at all
    assert dm.predict_names == ["a_boot.JPEG", "b_shirt.png", "c_dress.png"]
    assert any("d_notes.png" in r.getMessage() for r in caplog.records)
    ((x, index),) = list(dm.predict_dataloader())
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 28, 28)
    assert index.tolist() == [0, 1, 2]
    assert all(x[i, 0, 0, 0] == 0 and x[i].max() == 255 for i in range(3))


def test_predict_folder_without_usable_images_raises(synthetic_idx_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dm = make_dm(synthetic_idx_dir, predict_dir=str(folder))
    with pytest.raises(DataError, match="No usable image in .*photos"):
        dm.setup("predict")


def test_predict_defaults_to_the_test_set(synthetic_idx_dir):
    dm = ready_dm(synthetic_idx_dir, stage="predict", eval_batch_size=20)
    assert dm.predict_names == [f"test/{i}" for i in range(N_TEST)]
    batches = list(dm.predict_dataloader())
    assert [len(b[1]) for b in batches] == [20, 20, 10]
    x, index = batches[1]
    assert index.dtype == torch.int64 and index.tolist() == list(range(20, 40))
    np.testing.assert_array_equal(x[:, 0].numpy(), synthetic_idx_dir.arrays["test_images"][20:40])


def test_trainer_predict_on_a_folder_needs_no_dataset(synthetic_idx_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _garment((40, 40), 255, 0).save(folder / "one.png")
    _garment((40, 40), 0, 255).save(folder / "two.png")

    class Passthrough(L.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch

    # No source, no download: prepare_data must not try to fetch Fashion-MNIST.
    dm = make_dm(synthetic_idx_dir, predict_dir=str(folder), source_dir=None, download=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    ((x, index),) = trainer.predict(Passthrough(), datamodule=dm)
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 28, 28) and index.tolist() == [0, 1]
    assert dm.predict_names == ["one.png", "two.png"]


# ---------------------------------------------------------------------------------------------
# The real data


@pytest.mark.realdata
@pytest.mark.integration
def test_real_split_counts_classes_and_ranges(real_data_dir):
    dm = FashionMNISTDataModule(data_dir=str(real_data_dir), download=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())
    labels = torch.cat([dm.train_set.targets[dm.train_indices], dm.val_set.targets[dm.val_indices]])
    assert torch.bincount(labels).tolist() == [6_000] * 10
    assert torch.bincount(dm.test_set.targets).tolist() == [1_000] * 10
    for dataset in (dm.train_set, dm.test_set):
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1:] == (1, 28, 28)
        assert dataset.targets.dtype == torch.int64
        assert dataset.images.min() == 0 and dataset.images.max() == 255
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)


@pytest.mark.realdata
@pytest.mark.integration
def test_real_normalization_constants(real_data_dir):
    dm = FashionMNISTDataModule(data_dir=str(real_data_dir), download=False)
    dm.prepare_data()
    dm.setup("fit")
    x = prepare_batch(dm.train_set.images[dm.train_indices], dm.mean, dm.std)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


@pytest.mark.realdata
@pytest.mark.integration
def test_real_warm_start_is_fast(real_data_dir):
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        dm = FashionMNISTDataModule(data_dir=str(real_data_dir), download=False)
        dm.prepare_data()
        dm.setup("fit")
        durations.append(time.perf_counter() - start)
    assert min(durations) < 1.0, durations
