"""The LightningModule: logged keys, optimisers, prediction output and checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from _cli_args import QUIET_TRAINER
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from fashion_cnn import FashionCNN, FashionMNISTDataModule
from fashion_cnn.data import prepare_batch
from fashion_cnn.legacy import to_flat


def _loader(n: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    # Learnable synthetic task: the class decides the brightness of one image row.
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.1
    x[torch.arange(n), 0, y * 2, :] += 3.0
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def test_journal_example() -> None:
    model = FashionCNN(layers=6, filters=64, kernel_size=3, norm="instance", dropout=0.1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.num_params == 588_106


def test_default_is_the_journals_recipe() -> None:
    model = FashionCNN()
    trainer = _trainer(Path("/tmp"), max_epochs=1)
    model.trainer = trainer
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config["lr_scheduler"]["monitor"] == "val/loss"


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "opt_cls"),
    [
        ("adamw", "onecycle", torch.optim.AdamW),
        ("sgd", "cosine", torch.optim.SGD),
        ("adam", "none", torch.optim.Adam),
    ],
)
def test_optimizers_and_schedulers_train(
    tmp_path: Path, optimizer: str, scheduler: str, opt_cls: type
) -> None:
    model = FashionCNN(layers=2, filters=4, optimizer=optimizer, lr_scheduler=scheduler, lr=0.01)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, _loader(), _loader(seed=1))
    assert isinstance(trainer.optimizers[0], opt_cls)
    # Recorded as class paths, and read back as the old names (the study hash's canonical form).
    assert model.hparams.optimizer["class_path"].endswith(opt_cls.__name__)
    flat = to_flat(model.hparams)
    assert flat is not None and flat["optimizer"] == optimizer and flat["lr_scheduler"] == scheduler


def test_logged_keys_and_parameter_count(tmp_path: Path) -> None:
    model = FashionCNN(layers=2, filters=4, norm="batch")
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, _loader(), _loader(seed=1))
    trainer.test(model, _loader(seed=2))
    metrics_csv = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in [
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/loss",
        "test/acc",
        "lr",
    ]:
        assert key in metrics_csv, key
    assert not any(k.endswith(("_step", "_epoch")) for k in metrics_csv)
    hparams = (Path(trainer.logger.log_dir) / "hparams.yaml").read_text()
    assert f"num_params: {model.num_params}" in hparams
    # The parts as class paths (plain data), not the old flat names.
    assert "class_path: torch.optim.Adam" in hparams and "ReduceLROnPlateau" in hparams
    assert "\nlr_scheduler:" not in hparams and "\nfilters:" not in hparams


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # hidden 32 and a pool after each block: a third of the time of the default head, same lesson.
    model = FashionCNN(layers=2, filters=8, hidden=32, pool_every=1, norm="batch", lr=3e-3)
    loader = _loader(128)
    x, y = next(iter(loader))
    model.eval()
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    model.train()
    _trainer(tmp_path, max_epochs=5, enable_checkpointing=False).fit(model, loader)
    model.eval()
    after = torch.nn.functional.cross_entropy(model(x), y).item()
    assert after < 0.5 * before


def test_predict_step_returns_probabilities() -> None:
    model = FashionCNN(layers=2, filters=4).eval()
    out = model.predict_step((torch.randn(5, 1, 28, 28), torch.arange(5)), 0)
    assert out["probs"].shape == (5, 10)
    assert torch.allclose(out["probs"].sum(dim=1), torch.ones(5))
    assert torch.equal(out["preds"], out["probs"].argmax(dim=1))
    assert torch.equal(out["index"], torch.arange(5))
    assert model.predict_step(torch.randn(3, 1, 28, 28), 0)["preds"].shape == (3,)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = FashionCNN(
        layers=3,
        filters=8,
        norm="group",
        norm_groups=4,
        dropout=0.1,
        pool_after=[1, 3],
        optimizer="sgd",
        lr=0.05,
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = FashionCNN.load_from_checkpoint(path)
    assert restored.hparams == model.hparams
    x = torch.randn(4, 1, 28, 28)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))


def test_channels_last_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    a = FashionCNN(layers=2, filters=8, norm="batch", channels_last=False).eval()
    b = FashionCNN(layers=2, filters=8, norm="batch", channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    # Auto: on for batch norm, off for instance norm (which it slows down).
    assert FashionCNN(norm="batch").use_channels_last
    assert not FashionCNN(norm="instance").use_channels_last


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
        ({"lr_scheduler": "step"}, "lr_scheduler='step'"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_invalid_training_settings(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        FashionCNN(**kwargs)


@pytest.mark.slow
def test_compiled_model_matches_and_checkpoints_interchange(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = FashionCNN(layers=2, filters=4, norm="batch").eval()
    compiled = FashionCNN(layers=2, filters=4, norm="batch", compile=True).eval()
    compiled.load_state_dict(eager.state_dict())  # same keys: the compiled net is not a submodule
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(eager(x), compiled(x), atol=1e-5)
    assert set(compiled.state_dict()) == set(eager.state_dict())


def test_a_plain_pytorch_loop_over_the_datamodule_trains(synthetic_idx_dir) -> None:
    """The loaders yield uint8 images; FashionCNN prepares them itself, so no Lightning is needed."""
    torch.manual_seed(0)
    datamodule = FashionMNISTDataModule(
        source_dir=str(synthetic_idx_dir.source_dir), val_size=40, batch_size=16
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = FashionCNN(layers=2, filters=8, hidden=32, pool_every=1, norm="batch")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8
    model.train()
    losses = []
    for _ in range(15):  # the same batch: the loss must fall
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    # uint8 in equals the prepared floats in: the model's conversion is the datamodule's.
    model.eval()
    with torch.no_grad():
        prepared = prepare_batch(images, datamodule.input_mean, datamodule.input_std)
        torch.testing.assert_close(model(images), model(prepared))


def test_train_dataloaders_argument_works(synthetic_idx_dir, tmp_path: Path) -> None:
    datamodule = FashionMNISTDataModule(
        source_dir=str(synthetic_idx_dir.source_dir), val_size=40, batch_size=32
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = FashionCNN(layers=2, filters=4, hidden=16, pool_every=1)
    trainer = L.Trainer(**QUIET_TRAINER, max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(
        model, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader()
    )
    assert trainer.state.finished and "train/loss" in trainer.callback_metrics


def test_checkpoint_carries_the_pixel_normalisation(tmp_path: Path) -> None:
    model = FashionCNN(layers=2, filters=4, hidden=16, pool_every=1, input_mean=0.0, input_std=1.0)
    trainer = L.Trainer(**QUIET_TRAINER)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = FashionCNN.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert (loaded.hparams.input_mean, loaded.hparams.input_std) == (0.0, 1.0)
    with pytest.raises(ValueError, match="input_std=0"):
        FashionCNN(input_std=0)
