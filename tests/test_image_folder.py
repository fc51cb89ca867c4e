"""ImageFolderDataModule on generated PNG/JPEG folders: layout, labels, split, statistics, errors, training."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from _cli_args import QUIET_TRAINER
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image
from torchvision.io import write_png

from fashion_cnn import FashionCNN, ImageFolderDataModule, image_folder
from fashion_cnn.data import prepare_batch, split_indices
from fashion_cnn.errors import ConfigError, ImageFolderError, UserError

# Deliberately not in sorted order on disk: the labels must follow the sorted names.
CLASSES = ("shirt", "bag", "coat")
SORTED = ("bag", "coat", "shirt")
N_TRAIN, N_TEST = 8, 3  # per class
LOGGER = "fashion_cnn.image_folder"

# write_png: torchvision 0.29 deprecates its image codecs (for TorchCodec) and warns on each call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def class_level(name: str) -> int:
    """The gray level that every pixel of a generated image of class ``name`` starts from."""
    return 40 + 80 * SORTED.index(name)


def write_image(
    path: Path, level: int, index: int, size: tuple[int, int] = (28, 28), rgb: bool = False
) -> None:
    """A (height, width) image: the class's level plus a few per-file pixels, written as PNG or JPEG."""
    height, width = size
    channels = 3 if rgb else 1
    image = torch.full((channels, height, width), level, dtype=torch.uint8)
    image[:, 0, : index + 1] = 255  # a short bright streak: each file differs, the level stays
    if rgb:
        image[1] = level // 2  # channels differ: R = level, G = level / 2, B = level
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        write_png(image, str(path))
    else:
        mode = "RGB" if rgb else "L"
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy(), mode).save(path, quality=95)


def make_folder(
    root: Path,
    classes: tuple[str, ...] = CLASSES,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    size: tuple[int, int] = (28, 28),
    rgb: bool = False,
) -> Path:
    """root/train/<class>/NN.png and root/test/<class>/NN.png, generated."""
    for split, count in (("train", n_train), ("test", n_test)):
        for name in classes:
            for i in range(count):
                write_image(root / split / name / f"{i:02d}.png", class_level(name), i, size, rgb)
    return root


def ready(root: Path, stage: str | None = None, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("val_size", 6)
    dm = ImageFolderDataModule(str(root), **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The decoded-image cache goes under tmp_path, never the user's cache folder."""
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(tmp_path / "data_dir"))
    return tmp_path / "data_dir"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


def one_line_user_error(info: pytest.ExceptionInfo) -> str:
    """The message, after checking it is a UserError the CLI can print as one line."""
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Layout, labels, shapes


def test_classes_are_the_sorted_train_folders_and_labels_follow_them(folder):
    dm = ready(folder, normalize=False)
    assert dm.class_names == SORTED and dm.num_classes == 3
    assert dm.input_shape == (1, 28, 28)
    assert len(dm.train_set) + len(dm.val_set) == 3 * N_TRAIN and len(dm.test_set) == 3 * N_TEST
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        images, labels = dataset.__getitems__(list(range(len(dataset))))
        assert images.dtype == torch.uint8 and images.shape == (len(dataset), 1, 28, 28)
        assert labels.dtype == torch.int64
        # Row 1 onwards is the class's level alone: it identifies the folder the image came from.
        levels = images[:, 0, 5, 5].tolist()
        assert levels == [class_level(SORTED[label]) for label in labels.tolist()]
    # Test images in file order, named by their path under root.
    assert dm.predict_names[:2] == ["test/bag/00.png", "test/bag/01.png"]
    assert dm.test_set.targets.tolist() == [0] * N_TEST + [1] * N_TEST + [2] * N_TEST


def test_class_names_are_sorted_whatever_order_the_file_system_lists(tmp_path):
    names = [f"{letter}{i}" for i, letter in enumerate("qzahmbxcyd")]
    for name in names:
        (tmp_path / "train" / name).mkdir(parents=True)  # listing needs no images
    assert ImageFolderDataModule(str(tmp_path)).class_names == tuple(sorted(names))


def test_batches_are_uint8_with_int64_labels_and_pass_through_outside_training(folder):
    dm = ready(folder, stage="fit", batch_size=5)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (5,)
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x is images and y is labels
    # Evaluation loaders keep the order; the default eval batch covers this tiny set at once.
    ((val_images, _),) = list(dm.val_dataloader())
    assert torch.equal(val_images, dm.val_set.images[dm.val_indices])


def test_rgb_images_are_resized_and_keep_their_channels(tmp_path):
    root = make_folder(tmp_path / "rgb", size=(40, 30), rgb=True)
    dm = ready(root, channels=3, image_size=16, normalize=False)
    assert dm.input_shape == (3, 16, 16)
    images, labels = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    assert images.shape == (len(dm.train_set), 3, 16, 16)
    # Away from the streak in row 0, a constant image stays constant through the resize.
    centre = images[:, :, 8, 8]
    expected = torch.tensor(
        [[class_level(SORTED[k]), class_level(SORTED[k]) // 2, class_level(SORTED[k])] for k in labels]
    )
    assert torch.equal(centre.long(), expected)
    # The same files read as grayscale: one channel, the ITU-R 601 luma of the colour.
    gray = ready(root, channels=1, image_size=16)
    assert gray.input_shape == (1, 16, 16) and gray.train_set.images.shape[1] == 1
    level = class_level(SORTED[int(gray.train_set.targets[0])])
    luma = 0.299 * level + 0.587 * (level // 2) + 0.114 * level
    assert abs(int(gray.train_set.images[0, 0, 8, 8]) - luma) <= 1


def test_jpeg_files_are_read_and_other_files_and_hidden_folders_ignored(folder):
    write_image(folder / "train" / "bag" / "extra.jpg", class_level("bag"), 0)
    write_image(folder / "train" / "bag" / "EXTRA2.JPEG", class_level("bag"), 0)
    (folder / "train" / "bag" / "notes.txt").write_text("not an image")
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    dm = ready(folder, normalize=False)
    assert dm.class_names == SORTED
    assert len(dm.train_set) + len(dm.val_set) == 3 * N_TRAIN + 2
    images = dm.train_set.images
    labels = dm.train_set.targets
    # JPEG is lossy: the level survives to within a few steps.
    jpeg_rows = (labels == 0).nonzero().squeeze(1)[-2:]
    assert (images[jpeg_rows, 0, 10, 10].int() - class_level("bag")).abs().max() <= 3


def test_test_folder_may_lack_classes_but_keeps_the_train_labels(tmp_path):
    root = make_folder(tmp_path / "images", n_test=0)
    for i in range(2):
        write_image(root / "test" / "shirt" / f"{i}.png", class_level("shirt"), i)
    dm = ready(root, stage="test")
    assert dm.test_set.targets.tolist() == [2, 2]  # "shirt" is class 2 of bag, coat, shirt


# ---------------------------------------------------------------------------------------------
# Split and statistics


def test_validation_split_is_seeded_reproducible_and_disjoint(folder):
    n = 3 * N_TRAIN
    dm = ready(folder, stage="fit", val_size=6, split_seed=7)
    train, val = dm.train_indices, dm.val_indices
    assert (len(dm.train_set), len(dm.val_set)) == (n - 6, 6)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    # Fashion-MNIST's scheme, on the images in file order.
    expected_train, expected_val = split_indices(n, 6, 7)
    assert torch.equal(train, expected_train) and torch.equal(val, expected_val)
    assert torch.equal(ready(folder, stage="fit", val_size=6, split_seed=7).val_indices, val)
    assert not torch.equal(ready(folder, stage="fit", val_size=6, split_seed=8).val_indices, val)
    # A fraction rounds to a count; 0 holds nothing out.
    assert len(ready(folder, stage="fit", val_size=0.25).val_set) == 6
    assert len(ready(folder, stage="fit", val_size=0).val_set) == 0


def test_training_order_is_seeded_and_changes_per_epoch(folder):
    def epochs(dm: ImageFolderDataModule) -> list[list[int]]:
        return [[int(i) for _, y in dm.train_dataloader() for i in y] for _ in range(2)]

    first = epochs(ready(folder, stage="fit", split_seed=3, batch_size=4))
    again = epochs(ready(folder, stage="fit", split_seed=3, batch_size=4))
    assert first == again and first[0] != first[1]


def test_mean_and_std_come_from_the_training_split(folder):
    dm = ready(folder, stage="fit", val_size=6)
    pixels = dm.train_set.images[dm.train_indices].double() / 255
    assert type(dm.input_mean) is float and type(dm.input_std) is float  # as FashionMNISTDataModule
    assert dm.input_mean == pytest.approx(pixels.mean().item(), abs=1e-12)
    assert dm.input_std == pytest.approx(pixels.std().item(), abs=1e-12)
    # The validation images are not in it: a different split gives different statistics.
    other = ready(folder, stage="fit", val_size=6, split_seed=1)
    assert other.input_mean != dm.input_mean
    x = prepare_batch(dm.train_set.images[dm.train_indices], dm.input_mean, dm.input_std)
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-5
    raw = ready(folder, normalize=False)
    assert (raw.input_mean, raw.input_std) == (0.0, 1.0)


def test_statistics_are_available_before_setup_for_the_cli_links(folder):
    dm = ImageFolderDataModule(str(folder), val_size=6)
    mean, std = dm.input_mean, dm.input_std  # what link_arguments reads right after construction
    dm.setup("fit")
    pixels = dm.train_set.images[dm.train_indices].double() / 255
    assert (mean, std) == pytest.approx((pixels.mean().item(), pixels.std().item()))


def test_flip_augments_training_batches_only(folder):
    dm = ready(folder, stage="fit", batch_size=18, augment_flip=True, normalize=False)
    images, labels = next(iter(dm.train_dataloader()))

    class Trainer:
        def __init__(self, training: bool) -> None:
            self.training = training

    torch.manual_seed(0)
    dm.trainer = Trainer(training=True)
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    flipped = [torch.equal(x[i], images[i].flip(-1)) for i in range(len(x))]
    assert all(f or torch.equal(x[i], images[i]) for i, f in enumerate(flipped))
    assert 0 < sum(flipped) < len(x)
    dm.trainer = Trainer(training=False)
    assert torch.equal(dm.on_after_batch_transfer((images, labels), 0)[0], images)


class DeviceTrainer:
    """A trainer stand-in whose strategy runs on ``device``."""

    def __init__(self, device: str, training: bool = True) -> None:
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()
        self.training = training


@pytest.mark.parametrize(
    "device",
    [
        "meta",  # shapes without data: the accelerator path's plumbing, on a CPU
        pytest.param("cuda:0", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_setup_moves_every_split_to_the_trainers_device(folder, device):
    dm = ImageFolderDataModule(
        str(folder), val_size=6, batch_size=4, augment_flip=True, augment_crop_padding=2
    )
    dm.trainer = DeviceTrainer(device)
    dm.setup()
    kind = torch.device(device).type
    for dataset in (dm.train_set, dm.val_set, dm.test_set, dm.predict_set):
        assert dataset.images.device.type == kind and dataset.targets.device.type == kind
    images, labels = next(iter(dm.train_dataloader()))
    assert images.device.type == kind and images.shape == (4, 1, 28, 28) and labels.device.type == kind
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.device.type == kind and x.dtype == torch.uint8 and x.shape == (4, 1, 28, 28)
    assert isinstance(dm.input_mean, float)  # computed on the CPU copy
    if kind == "cuda":
        rows = dm.train_indices[:4].tolist()
        assert torch.equal(dm.train_set.__getitems__([0, 1, 2, 3])[0].cpu(), dm.train_set.images[rows].cpu())


# ---------------------------------------------------------------------------------------------
# The decoded-image cache


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "image_folders").glob("*.pt"))


def test_cache_is_reused_until_a_file_changes(folder, data_dir, monkeypatch, caplog):
    first = ready(folder, normalize=False)
    names = [p.name for p in cache_files(data_dir)]
    # One file per folder and settings; the name says which.
    assert sorted(n.rsplit("-", 1)[0] for n in names) == ["images-test-1x28", "images-train-1x28"]
    decoded: list[int] = []
    real_decode = image_folder.decode_images

    def spy(paths, *args):
        decoded.append(len(paths))
        return real_decode(paths, *args)

    monkeypatch.setattr(image_folder, "decode_images", spy)
    again = ready(folder, normalize=False)
    assert decoded == []  # both splits came from the cache
    assert torch.equal(again.train_set.images, first.train_set.images)
    assert torch.equal(again.test_set.images, first.test_set.images)
    assert again.input_mean == first.input_mean

    # Rewrite one training image: train/ is decoded again (test/ still cached) and shows it.
    changed = folder / "train" / "coat" / "03.png"
    write_image(changed, 7, 0)
    os.utime(changed, ns=(1, 1))  # even with an old time stamp: the size and mtime differ
    fresh = ready(folder, normalize=False)
    assert decoded == [3 * N_TRAIN]
    row = N_TRAIN + 3  # files in order: bag/00..07, then coat/00..
    assert int(fresh.train_set.images[row, 0, 5, 5]) == 7
    assert int(first.train_set.images[row, 0, 5, 5]) == class_level("coat")
    ready(folder, normalize=False)
    assert decoded == [3 * N_TRAIN]  # the rewritten cache serves the next run
    assert len(cache_files(data_dir)) == 2  # replaced, not accumulated


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_cache_is_ignored_and_rewritten(folder, data_dir, caplog, damage):
    first = ready(folder, stage="fit")
    (path,) = [p for p in cache_files(data_dir) if "-train-" in p.name]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
        reason = "Ignoring the image cache"
    else:
        content = torch.load(path, weights_only=True)
        content["images"][0, 0, 5, 5] ^= 1  # key and recorded SHA-256 kept
        torch.save(content, path)
        reason = "the images do not match their SHA-256"
    with caplog.at_level(logging.WARNING):
        again = ready(folder, stage="fit")
    assert reason in caplog.text
    assert torch.equal(again.train_set.images, first.train_set.images)
    assert torch.load(path, weights_only=True)["images"].equal(first.train_set.images)


def test_cache_can_be_switched_off_and_an_unwritable_one_only_warns(folder, data_dir, monkeypatch, caplog):
    ready(folder, cache=False)
    assert not (data_dir / "image_folders").exists()
    blocked = data_dir.parent / "a_file"
    blocked.write_text("")
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(blocked))
    with caplog.at_level(logging.WARNING):
        dm = ready(folder)
    assert "Could not write the image cache" in caplog.text and len(dm.train_set) == 3 * N_TRAIN - 6


# ---------------------------------------------------------------------------------------------
# Bad input: each a UserError with one line that names the problem and the fix


def test_missing_root(tmp_path):
    with pytest.raises(ImageFolderError) as info:
        ImageFolderDataModule(str(tmp_path / "nowhere"))
    message = one_line_user_error(info)
    assert "nowhere does not exist" in message and "--data.root" in message


def test_missing_train_folder(tmp_path):
    (tmp_path / "images" / "test" / "bag").mkdir(parents=True)
    with pytest.raises(ImageFolderError) as info:
        ImageFolderDataModule(str(tmp_path / "images"))
    message = one_line_user_error(info)
    assert "has no train/ folder" in message and "train/<class name>/*.png" in message


@pytest.mark.parametrize("classes", [(), ("bag",)])
def test_fewer_than_two_class_folders(tmp_path, classes):
    root = make_folder(tmp_path / "images", classes=classes)
    (root / "train").mkdir(parents=True, exist_ok=True)
    dm = ImageFolderDataModule(str(root))
    with pytest.raises(ImageFolderError) as info:
        dm.prepare_data()
    message = one_line_user_error(info)
    assert ("only the class folder 'bag'" if classes else "no class folder") in message
    assert "at least 2 classes" in message


def test_class_folder_without_images(folder):
    (folder / "train" / "dress").mkdir()
    (folder / "train" / "dress" / "readme.txt").write_text("no images here")
    dm = ImageFolderDataModule(str(folder))
    assert dm.num_classes == 4  # the folder is a class, so the error must say why it is empty
    with pytest.raises(ImageFolderError) as info:
        dm.setup("fit")
    message = one_line_user_error(info)
    assert str(folder / "train" / "dress") in message
    assert "hold no .png/.jpg/.jpeg image" in message and "add images" in message


def test_test_classes_missing_from_train(folder):
    write_image(folder / "test" / "sandal" / "0.png", 10, 0)
    write_image(folder / "test" / "boot" / "0.png", 10, 0)
    dm = ready(folder, stage="fit")  # training does not read test/
    with pytest.raises(ImageFolderError) as info:
        dm.setup("test")
    message = one_line_user_error(info)
    assert "class folders that train/ lacks: boot, sandal" in message
    assert "add those classes there or rename or remove them in test/" in message


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\ntruncated", b"plain text, not an image"])
def test_corrupt_image_is_named(folder, content):
    bad = folder / "train" / "coat" / "broken.png"
    bad.write_bytes(content)
    dm = ImageFolderDataModule(str(folder))
    with pytest.raises(ImageFolderError) as info:
        dm.setup("fit")
    message = one_line_user_error(info)
    assert message.startswith(f"{bad}: not a readable image (")
    assert "replace it with a valid .png/.jpg/.jpeg file or delete it" in message
    assert ".cpp" not in message  # torchvision's source location is dropped


def test_mixed_sizes_are_resized_and_stated(folder, caplog):
    write_image(folder / "train" / "bag" / "big.png", class_level("bag"), 0, size=(60, 40))
    write_image(folder / "train" / "coat" / "small.png", class_level("coat"), 0, size=(10, 12))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm = ready(folder, stage="fit", normalize=False)
    assert dm.train_set.images.shape == (3 * N_TRAIN + 2, 1, 28, 28)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert "the images come in 3 sizes" in message and "28x28 (24)" in message
    assert "40x60 (1)" in message and "each was resized to 28x28 (aspect ratio not kept)" in message


def test_missing_test_folder_is_only_an_error_for_test(tmp_path):
    root = make_folder(tmp_path / "images", n_test=0)
    dm = ready(root, stage="fit")  # fine without test/
    with pytest.raises(ImageFolderError) as info:
        dm.setup("test")
    message = one_line_user_error(info)
    assert "has no test/ folder" in message and "--test_after_fit false" in message


def test_val_size_that_leaves_no_training_images(folder):
    dm = ImageFolderDataModule(str(folder), val_size=3 * N_TRAIN)
    with pytest.raises(ConfigError) as info:
        dm.setup("fit")
    message = one_line_user_error(info)
    assert (
        f"val_size={3 * N_TRAIN} holds out 24 of the 24 images" in message and "smaller val_size" in message
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"channels": 2}, "channels=2"),
        ({"image_size": 0}, "image_size=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": 1.5}, "val_size=1.5"),
        ({"split_seed": -1}, "split_seed=-1"),
        ({"augment_crop_padding": 28}, "augment_crop_padding=28"),
        ({"augment_cutout": 29}, "augment_cutout=29"),
        ({"normalize": "yes"}, "normalize='yes'"),
        ({"predict_dir": "/no/such/folder"}, "predict_dir='/no/such/folder'"),
        ({"eval_batch_size": 0}, "eval_batch_size=0"),
    ],
)
def test_bad_arguments_name_themselves(folder, kwargs, name):
    with pytest.raises(ConfigError, match="is not valid: use") as info:
        ImageFolderDataModule(str(folder), **kwargs)
    assert name in one_line_user_error(info)


# ---------------------------------------------------------------------------------------------
# Training and prediction through Lightning with the package's training system


def test_tiny_training_with_fashion_cnn_runs_to_the_end(tmp_path):
    root = make_folder(tmp_path / "images", size=(20, 24), rgb=True)
    dm = ImageFolderDataModule(
        str(root),
        channels=3,
        image_size=16,
        batch_size=4,
        val_size=6,
        augment_flip=True,
        augment_crop_padding=2,
    )
    channels, height, _ = dm.input_shape
    model = FashionCNN(
        layers=2,
        filters=4,
        hidden=16,
        num_classes=dm.num_classes,
        in_channels=channels,
        image_size=height,
        input_mean=dm.input_mean,
        input_std=dm.input_std,
    )
    trainer = L.Trainer(
        **QUIET_TRAINER, accelerator="cpu", max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 2
    assert {"train/loss", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    (results,) = trainer.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= results["test/acc"] <= 1.0
    outputs = trainer.predict(model, datamodule=dm)
    index = torch.cat([o["index"] for o in outputs])
    assert index.tolist() == list(range(3 * N_TEST)) and len(dm.predict_names) == 3 * N_TEST


def test_predict_dir_is_decoded_like_the_training_images(folder, tmp_path):
    loose = tmp_path / "loose"
    write_image(loose / "b.png", 200, 0, size=(50, 50))
    write_image(loose / "a.jpg", 100, 0, size=(50, 50))
    dm = ImageFolderDataModule(str(folder), predict_dir=str(loose), image_size=14)
    dm.setup("predict")
    assert dm.predict_names == ["a.jpg", "b.png"]
    images, index = next(iter(dm.predict_dataloader()))
    assert images.shape == (2, 1, 14, 14) and index.tolist() == [0, 1]
    assert abs(int(images[0, 0, 7, 7]) - 100) <= 3 and int(images[1, 0, 7, 7]) == 200


def test_a_config_selects_it_by_class_path(folder):
    """The form ``data: {class_path: fashion_cnn.ImageFolderDataModule, init_args: {...}}`` parses
    through Lightning's parser in subclass mode, typed from the signature, and instantiates."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    config = parser.parse_string(
        "data:\n"
        "  class_path: fashion_cnn.ImageFolderDataModule\n"
        f"  init_args: {{root: {folder}, channels: 3, image_size: 16, val_size: 0.25}}\n"
    )
    dm = parser.instantiate(config).data
    assert isinstance(dm, ImageFolderDataModule)
    assert dm.input_shape == (3, 16, 16) and dm.hparams.val_size == 0.25
    config = parser.parse_args(["--data=ImageFolderDataModule", f"--data.root={folder}", "--data.val_size=5"])
    assert config.data.init_args.val_size == 5 and isinstance(config.data.init_args.val_size, int)
    with pytest.raises(Exception, match="channels"):
        parser.parse_args(["--data=ImageFolderDataModule", f"--data.root={folder}", "--data.channels=2"])
