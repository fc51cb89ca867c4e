"""EvaluationReport: its numbers agree with torchmetrics, and real runs file the whole report."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from _cli_args import QUIET_TRAINER, TINY
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassPrecision,
    MulticlassRecall,
)

from fashion_cnn import FashionCNN, FashionMNISTDataModule, figures
from fashion_cnn import evaluation as ev
from fashion_cnn.data import CLASS_NAMES, prepare_batch
from fashion_cnn.lightning_cli import TRAINER_DEFAULTS
from fashion_cnn.runs import run_experiment

REPO = Path(__file__).resolve().parents[1]
# The CLI may already register the callback by default; adding a second one would write twice.
CALLBACK = (
    []
    if any(isinstance(c, ev.EvaluationReport) for c in TRAINER_DEFAULTS.get("callbacks", []))
    else ["--trainer.callbacks+=fashion_cnn.evaluation.EvaluationReport"]
)
REPORT = {"per_class.csv", "confusion_matrix.png", "reliability.png", "misclassified.png"}


def _predictions(n: int = 600, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities with the edge cases: a class never predicted, and confidences of exactly 1."""
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen) * 2
    logits[torch.arange(n), targets] += 2.0  # better than chance, as a trained model
    logits[:, 3] = -50.0  # class 3 is never predicted: its precision is 0/0
    logits[:40, 0] = 60.0  # margin > 17: float32 softmax gives exactly 1.0
    return torch.softmax(logits, dim=1), targets


def test_numbers_agree_with_torchmetrics() -> None:
    probs, targets = _predictions()
    preds = probs.argmax(dim=1)
    assert (probs.max(dim=1).values == 1.0).sum() >= 40 and not (preds == 3).any()

    confusion = ev.confusion_matrix(preds, targets, 10)
    expected = MulticlassConfusionMatrix(num_classes=10)(probs, targets)
    assert torch.equal(confusion, expected)
    assert confusion[targets[0], preds[0]] >= 1 and confusion.sum() == len(targets)  # row = true class

    stats = ev.per_class_stats(preds, targets, 10)
    for ours, metric in [
        (stats.precision, MulticlassPrecision(num_classes=10, average=None)),
        (stats.recall, MulticlassRecall(num_classes=10, average=None)),
        (stats.accuracy, MulticlassAccuracy(num_classes=10, average=None)),
    ]:
        torch.testing.assert_close(ours.float(), metric(probs, targets), rtol=0, atol=1e-6)
    assert stats.precision[3] == 0 and stats.support.sum() == len(targets)
    assert stats.correct.sum() == (preds == targets).sum()

    bins = ev.calibration_bins(probs, targets)
    ece = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(probs, targets)
    assert bins.ece == pytest.approx(float(ece), abs=1e-6)
    assert ev.expected_calibration_error(probs, targets) == pytest.approx(float(ece), abs=1e-6)
    assert len(bins.count) == 16 and bins.count[15] >= 40 and bins.count.sum() == len(targets)


def test_ece_by_hand() -> None:
    # Four predictions at confidence 0.9 (bin [0.8667, 0.9333)): three right, one wrong.
    probs = torch.tensor([[0.9, 0.1]] * 4)
    targets = torch.tensor([0, 0, 0, 1])
    bins = ev.calibration_bins(probs, targets)
    assert bins.ece == pytest.approx(abs(0.75 - 0.9))
    assert int(bins.count[13]) == 4 and float(bins.accuracy[13]) == 0.75
    with pytest.raises(ValueError, match="n_bins=0"):
        ev.calibration_bins(probs, targets, n_bins=0)


def test_most_confident_mistakes_and_pixel_intensities() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    targets = torch.tensor([1, 0, 1, 1])  # wrong: item 0 (0.9), 1 (0.8), 2 (0.6); right: item 3
    assert ev.most_confident_mistakes(probs, targets, 2).tolist() == [0, 1]
    assert ev.most_confident_mistakes(probs, targets, 10).tolist() == [0, 1, 2]
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    for mean, std in ((0.2860405969887955, 0.35302424451492254), (0.0, 1.0)):
        shown = ev.pixel_intensities(prepare_batch(pixels, mean, std), mean, std)
        torch.testing.assert_close(shown * 255, pixels.float(), rtol=0, atol=1e-3)
    torch.testing.assert_close(ev.pixel_intensities(pixels, 0.3, 0.4) * 255, pixels.float())  # raw pixels


def test_callback_on_a_plain_trainer(
    synthetic_idx_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No MLflow: the report goes to output_dir, test/ece matches torchmetrics on the same model."""
    caplog.set_level(logging.INFO, logger="fashion_cnn.evaluation")
    shown = {}
    plot = figures.plot_mistakes

    def record(*args):
        shown["args"] = args
        return plot(*args)

    monkeypatch.setattr(figures, "plot_mistakes", record)
    L.seed_everything(0)
    model = FashionCNN(layers=2, filters=4, hidden=16, norm="batch", pool_every=1)
    datamodule = FashionMNISTDataModule(
        source_dir=str(synthetic_idx_dir.source_dir), val_size=40, eval_batch_size=16
    )  # 4 test batches
    out = tmp_path / "report"
    trainer = L.Trainer(
        **QUIET_TRAINER,
        callbacks=[ev.EvaluationReport(str(out), max_mistakes=6)],
    )
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)

    assert {p.name for p in out.iterdir()} == REPORT  # no learning curves, and no .tmp left over
    assert "no learning curves" in caplog.text
    images = torch.from_numpy(synthetic_idx_dir.arrays["test_images"]).unsqueeze(1)  # (50, 1, 28, 28)
    labels = torch.from_numpy(synthetic_idx_dir.arrays["test_labels"]).long()
    with torch.no_grad():
        probs = torch.softmax(model.eval()(prepare_batch(images)), dim=1)
    ece = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(probs, labels)
    assert metrics["test/ece"] == pytest.approx(float(ece), abs=1e-5)

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == list(CLASS_NAMES)
    recall = MulticlassRecall(num_classes=10, average=None)(probs, labels)
    assert [float(r["recall"]) for r in rows] == pytest.approx(recall.tolist(), abs=1e-6)
    assert sum(int(r["support"]) for r in rows) == 50
    assert sum(int(r["correct"]) for r in rows) / 50 == pytest.approx(metrics["test/acc"])

    # The grid shows the six most confident mistakes over all batches, as the original pixels.
    grid, true, pred, confidence, names = shown["args"]
    wrong = (probs.argmax(1) != labels).nonzero().squeeze(1)
    top = wrong[probs.max(1).values[wrong].argsort(descending=True)[:6]]
    assert true.tolist() == labels[top].tolist() and pred.tolist() == probs[top].argmax(1).tolist()
    torch.testing.assert_close(confidence, probs[top].max(1).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(grid * 255, images[top].float(), rtol=0, atol=1e-3)
    assert names == list(CLASS_NAMES)


@pytest.mark.integration
def test_fit_files_the_report_in_mlflow(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    fit = run_experiment(
        REPO / "fashion_cnn" / "configs" / "debug.yaml", [*TINY, *CALLBACK, "--trainer.max_epochs=2"]
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(fit.run_id)
    # Beside the run's checkpoints, not in the working directory.
    folder = workdir / "runs" / "debug-seed0" / fit.run_id / "evaluation"
    assert {p.name for p in folder.iterdir()} == REPORT | {"learning_curves.png"}
    artifacts = {a.path for a in client.list_artifacts(fit.run_id, "evaluation")}
    assert artifacts == {f"evaluation/{name}" for name in REPORT | {"learning_curves.png"}}
    assert 0.0 <= run.data.metrics["test/ece"] <= 1.0
    assert fit.metrics["test/ece"] == run.data.metrics["test/ece"]
    for name in ("confusion_matrix.png", "learning_curves.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < (folder / name).stat().st_size < 200_000
    rows = list(csv.DictReader((folder / "per_class.csv").open()))
    assert sum(int(r["correct"]) for r in rows) / 50 == pytest.approx(run.data.metrics["test/acc"])

    # A test-only run has no training history: the report comes without learning curves.
    caplog.set_level(logging.INFO, logger="fashion_cnn.evaluation")
    tested = run_experiment(
        None, ["--ckpt_path", fit.best_checkpoint, "--data.val_size=40", *CALLBACK], subcommand="test"
    )
    assert {a.path for a in client.list_artifacts(tested.run_id, "evaluation")} == {
        f"evaluation/{name}" for name in REPORT
    }
    assert "no learning curves" in caplog.text
    assert tested.metrics["test/ece"] == pytest.approx(fit.metrics["test/ece"], abs=1e-6)


def test_learning_curve_history_maps_steps_to_epochs() -> None:
    class Metric:
        def __init__(self, step: int, value: float) -> None:
            self.step, self.value, self.timestamp = step, value, step

    class Client:
        def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
            return {
                "epoch": [Metric(9, 0.0), Metric(19, 1.0), Metric(29, 2.0)],
                "train/loss": [Metric(29, 0.5), Metric(9, 1.5), Metric(19, 1.0)],
                "val/acc": [Metric(9, 0.6), Metric(19, 0.7), Metric(29, 0.8)],
            }.get(key, [])

    class Logger:
        experiment, run_id = Client(), "r"

    history = ev._metric_history(Logger())
    assert history == {
        "train/loss": [(1, 1.5), (2, 1.0), (3, 0.5)],
        "val/acc": [(1, 0.6), (2, 0.7), (3, 0.8)],
    }
    assert ev._metric_history(None) == {}


def test_max_mistakes_is_checked() -> None:
    with pytest.raises(ValueError, match="max_mistakes=0"):
        ev.EvaluationReport(max_mistakes=0)


def test_without_matplotlib_the_numbers_still_come(
    synthetic_idx_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    model = FashionCNN(layers=2, filters=4, hidden=16, pool_every=1)
    datamodule = FashionMNISTDataModule(source_dir=str(synthetic_idx_dir.source_dir), val_size=40)
    trainer = L.Trainer(
        **QUIET_TRAINER,
        callbacks=[ev.EvaluationReport(str(tmp_path / "report"))],
    )
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["per_class.csv"]
    assert "pip install matplotlib" in caplog.text and 0 <= metrics["test/ece"] <= 1


def test_empty_mistake_grid() -> None:
    buffer = ev._MistakeBuffer(5)
    buffer.add(torch.zeros(2, 1, 28, 28), torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    images, targets, probs = buffer.gather(SimpleNamespace(world_size=1), num_classes=2)
    assert images.shape == (0, 1, 28, 28) and len(targets) == 0 and probs.shape == (0, 2)
    figure = figures.plot_mistakes(images, targets, probs.argmax(1), probs.max(1).values, ["a", "b"])
    assert figure.get_suptitle() == "No misclassified test image"


@pytest.mark.slow
def test_ddp_report_equals_single_process(tmp_path: Path) -> None:
    """Two CPU processes (ddp_spawn, ~25 s): the gathered report is the single-process one."""
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    )
    L.seed_everything(0)
    model = FashionCNN(layers=2, filters=4, hidden=16, pool_every=1)
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        trainer = L.Trainer(
            **QUIET_TRAINER,
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            callbacks=[ev.EvaluationReport(str(tmp_path / str(devices)), max_mistakes=5)],
        )
        (results[devices],) = trainer.test(model, dataloaders=DataLoader(data, batch_size=8), verbose=False)
    assert results[2]["test/ece"] == pytest.approx(results[1]["test/ece"], abs=1e-7)
    for name in ("per_class.csv", "misclassified.png", "reliability.png"):
        assert (tmp_path / "2" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name
