"""The test-set evaluation report: confusion matrix, per-class scores, calibration, mistakes, curves.

:class:`EvaluationReport` is a Lightning callback. During ``trainer.test`` it collects the logits
and targets that :meth:`FashionCNN.test_step` returns and, at the end of the test epoch, writes

- ``confusion_matrix.png``: counts, coloured by the share of each true class (row);
- ``per_class.csv``: support, precision, recall, F1 and accuracy of each class;
- ``misclassified.png``: the most confidently misclassified test images, true and predicted label;
- ``reliability.png``: a reliability diagram with the expected calibration error, also logged as
  the metric ``test/ece``;
- ``learning_curves.png``: loss and accuracy per epoch from the MLflow run's metric history
  (skipped, with a log line, when the run has none, e.g. a test-only run);

to its output folder and, when the trainer logs to MLflow, as artifacts of the run under
``evaluation/``. The numbers come from ``torchmetrics.functional`` (confusion matrix, per-class
scores, calibration error); only the per-bin table the reliability diagram draws is binned here,
the way torchmetrics bins. The figures are in :mod:`fashion_cnn.figures`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics.functional.classification as tmf
from lightning.pytorch.callbacks import Callback

from fashion_cnn._io import atomic_write
from fashion_cnn.data import CLASS_NAMES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from fashion_cnn.tracking import MLflowLogger, mlflow_logger

__all__ = [
    "ARTIFACT_DIR",
    "CalibrationBins",
    "ClassStats",
    "EvaluationReport",
    "N_BINS",
    "calibration_bins",
    "confusion_matrix",
    "expected_calibration_error",
    "most_confident_mistakes",
    "per_class_stats",
    "pixel_intensities",
    "write_per_class_csv",
]

log = logging.getLogger(__name__)

ARTIFACT_DIR = "evaluation"  # folder of the report in the MLflow run's artifacts
N_BINS = 15  # equal-width confidence bins of the ECE, the usual choice since Guo et al. (2017)
LEARNING_CURVE_KEYS = ("train/loss", "val/loss", "train/acc", "val/acc")


# --------------------------------------------------------------------------------------------
# The numbers: pure functions of predictions and targets


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class.

    Args:
        preds: Predicted classes (N,).
        targets: True classes (N,).
        num_classes: Number of classes.
    """
    if preds.shape != targets.shape or preds.ndim != 1:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must both be (N,)")
    return tmf.multiclass_confusion_matrix(preds.long().cpu(), targets.long().cpu(), num_classes)


@dataclass(frozen=True)
class ClassStats:
    """Per-class scores, each a float tensor (C,) except the int64 counts.

    ``accuracy`` is the share of a class's images classified correctly (torchmetrics'
    ``average=None`` accuracy); for single-label data it equals ``recall``. Scores with a zero
    denominator (a class never predicted, or absent from the data) are 0.
    """

    support: torch.Tensor  # images of the class
    predicted: torch.Tensor  # images predicted as the class
    correct: torch.Tensor  # images of the class predicted as it
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    accuracy: torch.Tensor


def per_class_stats(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> ClassStats:
    """Support, precision, recall, F1 and accuracy of each class, from torchmetrics."""
    preds, targets = preds.long().cpu(), targets.long().cpu()
    confusion = confusion_matrix(preds, targets, num_classes)
    scores = {
        name: fn(preds, targets, num_classes, average="none", zero_division=0)
        for name, fn in (
            ("precision", tmf.multiclass_precision),
            ("recall", tmf.multiclass_recall),
            ("f1", tmf.multiclass_f1_score),
        )
    }
    accuracy = tmf.multiclass_accuracy(preds, targets, num_classes, average="none")
    return ClassStats(
        support=confusion.sum(dim=1),
        predicted=confusion.sum(dim=0),
        correct=confusion.diagonal().clone(),
        accuracy=accuracy,
        **scores,
    )


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


@dataclass(frozen=True)
class CalibrationBins:
    """Top-label calibration in ``n_bins`` equal-width bins, plus one bin for confidence exactly 1.

    Bin ``k < n_bins`` holds confidences in ``[k / n_bins, (k + 1) / n_bins)``; the last entry
    holds confidences equal to 1.0, which float32 softmax returns for every prediction whose logit
    margin exceeds ~17. torchmetrics bins them the same way, so the ECE computed here is the value
    of ``MulticlassCalibrationError(n_bins=n_bins, norm="l1")``. Each field has n_bins + 1 entries.
    """

    lower: torch.Tensor  # bin edges, float64
    upper: torch.Tensor
    confidence: torch.Tensor  # mean top-1 probability in the bin (0 for an empty bin)
    accuracy: torch.Tensor  # share of correct top-1 predictions in the bin (0 for an empty bin)
    count: torch.Tensor  # predictions in the bin, int64

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (share of predictions) x |acc - conf|."""
        total = int(self.count.sum())
        if total == 0:
            return 0.0
        weights = self.count.double() / total
        return float((weights * (self.accuracy - self.confidence).abs()).sum())


def calibration_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> CalibrationBins:
    """Bin the top-1 confidence of ``probs`` (N, C) against correctness on ``targets`` (N,)."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} must be an integer >= 1, e.g. 15")
    confidence, preds = probs.float().cpu().max(dim=1)
    correct = (preds == targets.cpu()).double()
    # Same float32 edges and bucketing as torchmetrics, so a confidence on an edge lands alike.
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    index = torch.bucketize(confidence, edges, right=True) - 1  # n_bins for confidence == 1.0
    index = index.clamp(0, n_bins)
    count = torch.bincount(index, minlength=n_bins + 1)
    conf_sum = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, index, confidence.double())
    acc_sum = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, index, correct)
    edges64 = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    lower = torch.cat([edges64[:-1], torch.ones(1, dtype=torch.float64)])
    upper = torch.cat([edges64[1:], torch.ones(1, dtype=torch.float64)])
    return CalibrationBins(lower, upper, _safe_divide(conf_sum, count), _safe_divide(acc_sum, count), count)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error (L1) of ``probs`` (N, C) on ``targets`` (N,), from
    torchmetrics."""
    probs = probs.float().cpu()
    return float(tmf.multiclass_calibration_error(probs, targets.long().cpu(), probs.shape[1], n_bins, "l1"))


def most_confident_mistakes(probs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of up to ``k`` misclassified items, highest top-1 probability first."""
    confidence, preds = probs.max(dim=1)
    wrong = (preds != targets).nonzero().squeeze(1)
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order[:k]]


def pixel_intensities(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Images as shown: uint8 pixels / 255, or prepared floats with ``(x * std + mean)`` undone."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return (images.float() * std + mean).clamp(0.0, 1.0)


def write_per_class_csv(path: str | os.PathLike[str], stats: ClassStats, class_names: Sequence[str]) -> Path:
    """Write one row per class (atomically: a reader never sees a half-written file)."""
    path = Path(path)
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "class_index",
                "class",
                "support",
                "predicted",
                "correct",
                "precision",
                "recall",
                "f1",
                "accuracy",
            ]
        )
        for i, name in enumerate(class_names):
            writer.writerow(
                [i, name, int(stats.support[i]), int(stats.predicted[i]), int(stats.correct[i])]
                + [f"{float(v[i]):.6f}" for v in (stats.precision, stats.recall, stats.f1, stats.accuracy)]
            )
    return path


# --------------------------------------------------------------------------------------------
# The callback


class EvaluationReport(Callback):
    """Writes the test-set evaluation report (see the module docstring) at the end of every test.

    Args:
        output_dir: Folder for the report files. Default: ``evaluation/`` beside the run's
            checkpoints (``<output_dir>/<run name>/<run id>/evaluation``), else
            ``<trainer.default_root_dir>/evaluation/<MLflow run id>`` (``no-run`` without MLflow).
        max_mistakes: How many of the most confidently misclassified images the grid shows.
    """

    def __init__(self, output_dir: str | None = None, max_mistakes: int = 25) -> None:
        super().__init__()
        if not isinstance(max_mistakes, int) or max_mistakes < 1:
            raise ValueError(f"max_mistakes={max_mistakes!r} must be an integer >= 1, e.g. 25")
        self.output_dir = output_dir
        self.max_mistakes = max_mistakes
        # Per-test state, reset at each test epoch start: the CLI shares one instance across runs.
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._mistakes: _MistakeBuffer | None = None
        self._warned = False

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._targets = [], []
        self._mistakes = _MistakeBuffer(self.max_mistakes)
        self._warned = False

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict) or "logits" not in outputs or "targets" not in outputs:
            if not self._warned:
                log.warning("test_step returned no {'logits', 'targets'}; no evaluation report")
                self._warned = True
            return
        logits = outputs["logits"].detach().float().cpu()  # (B, C)
        targets = outputs["targets"].detach().long().cpu()  # (B,)
        self._logits.append(logits)
        self._targets.append(targets)
        images = batch[0] if isinstance(batch, (tuple, list)) else None
        if not isinstance(images, torch.Tensor) or images.shape[0] != len(targets):
            if self._mistakes is not None:
                log.warning("test batches are not (images, targets): no grid of misclassified images")
            self._mistakes = None
        elif self._mistakes is not None:
            self._mistakes.add(images.detach().cpu(), torch.softmax(logits, dim=1), targets)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._logits:
            return
        logits = _gather(trainer, torch.cat(self._logits))
        targets = _gather(trainer, torch.cat(self._targets))
        # None: no images to show; empty tensors: no mistake (the grid says so).
        mistakes = self._mistakes.gather(trainer, logits.shape[1]) if self._mistakes is not None else None
        self._logits, self._targets, self._mistakes = [], [], None
        probs = torch.softmax(logits, dim=1)
        bins = calibration_bins(probs, targets)
        # Every rank has gathered all predictions and logs the same value; sync_dist (a mean of
        # equal values) only spares DDP runs Lightning's warning.
        ece = expected_calibration_error(probs, targets)  # torchmetrics; bins.ece agrees (tested)
        pl_module.log("test/ece", ece, on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self._write_report(trainer, pl_module, probs, targets, bins, mistakes)

    # ---- helpers

    def _write_report(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        probs: torch.Tensor,
        targets: torch.Tensor,
        bins: CalibrationBins,
        mistakes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> None:
        from fashion_cnn import figures

        mlflow = mlflow_logger(trainer)
        folder = self._folder(trainer, mlflow)
        folder.mkdir(parents=True, exist_ok=True)
        datamodule = getattr(trainer, "datamodule", None)
        names = list(getattr(datamodule, "class_names", None) or CLASS_NAMES)
        num_classes = probs.shape[1]
        if len(names) != num_classes:
            names = [str(i) for i in range(num_classes)]
        preds = probs.argmax(dim=1)
        stats = per_class_stats(preds, targets, num_classes)
        written = [write_per_class_csv(folder / "per_class.csv", stats, names)]
        if not figures.matplotlib_available():
            log.warning(
                "matplotlib is not installed: the evaluation report has no figures (pip install matplotlib)"
            )
        else:
            confusion = confusion_matrix(preds, targets, num_classes)
            written.append(
                figures.save_figure(
                    figures.plot_confusion_matrix(confusion, names), folder / "confusion_matrix.png"
                )
            )
            written.append(figures.save_figure(figures.plot_reliability(bins), folder / "reliability.png"))
            if mistakes is None:
                log.info("test batches carry no images: no grid of misclassified images")
            else:
                images, true, picked = mistakes
                hp = pl_module.hparams
                shown = pixel_intensities(
                    images,
                    float(hp.get("input_mean", FASHION_MNIST_MEAN)),
                    float(hp.get("input_std", FASHION_MNIST_STD)),
                )
                figure = figures.plot_mistakes(
                    shown, true, picked.argmax(dim=1), picked.max(dim=1).values, names
                )
                written.append(figures.save_figure(figure, folder / "misclassified.png"))
            history = _metric_history(mlflow)
            if history:
                written.append(
                    figures.save_figure(figures.plot_learning_curves(history), folder / "learning_curves.png")
                )
            else:
                log.info("no train/val metric history in this run (a test-only run?): no learning curves")
        if mlflow is not None:
            for path in written:
                mlflow.experiment.log_artifact(mlflow.run_id, str(path), ARTIFACT_DIR)
        log.info("evaluation report (test ECE %.4f) written to %s", bins.ece, folder)

    def _folder(self, trainer: L.Trainer, mlflow: MLflowLogger | None) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir).expanduser()
        # Beside the run's checkpoints (<output_dir>/<run name>/<run id>/evaluation), so a run's
        # files stay together and nothing lands in the working directory.
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath and Path(dirpath).name == "checkpoints":
            return Path(dirpath).parent / ARTIFACT_DIR
        root = Path(trainer.default_root_dir or os.getcwd())
        return root / ARTIFACT_DIR / ((mlflow.run_id if mlflow is not None else None) or "no-run")


class _MistakeBuffer:
    """The ``k`` most confident mistakes seen so far, so the report never holds the whole test set."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.images: torch.Tensor | None = None  # (<=k, C, H, W), as the test batches hold them
        self.targets = torch.zeros(0, dtype=torch.long)
        self.probs = torch.zeros(0, 0)

    def add(self, images: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> None:
        keep = most_confident_mistakes(probs, targets, self.k)
        if not len(keep):
            return
        if self.images is None:
            images, probs, targets = images[keep], probs[keep], targets[keep]
        else:
            images = torch.cat([self.images, images[keep]])
            probs = torch.cat([self.probs, probs[keep]])
            targets = torch.cat([self.targets, targets[keep]])
        top = most_confident_mistakes(probs, targets, self.k)
        self.images, self.probs, self.targets = images[top], probs[top], targets[top]

    def gather(self, trainer: L.Trainer, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, targets, probs) of the ``k`` most confident mistakes over all ranks."""
        if trainer.world_size > 1:
            return self._gather_ranks(trainer, num_classes)
        if self.images is None:
            return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), torch.zeros(0, num_classes)
        return self.images, self.targets, self.probs

    def _gather_ranks(
        self, trainer: L.Trainer, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # all_gather needs one shape on every rank: pad each rank's buffer to k rows, marked with
        # target -1 and dropped after the gather. A rank without mistakes does not know the image
        # shape: ask the others.
        mine = None if self.images is None else (tuple(self.images.shape[1:]), str(self.images.dtype))
        shapes = [s for s in _all_gather_object(trainer, mine) if s is not None]
        if not shapes:
            return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), torch.zeros(0, num_classes)
        shape, dtype = shapes[0]
        images = torch.zeros(self.k, *shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
        probs = torch.zeros(self.k, num_classes)
        targets = torch.full((self.k,), -1, dtype=torch.long)
        n = 0 if self.images is None else len(self.images)
        if self.images is not None and n:
            images[:n], probs[:n], targets[:n] = self.images, self.probs, self.targets
        images, probs, targets = (_gather(trainer, t) for t in (images, probs, targets))
        real = targets >= 0
        images, probs, targets = images[real], probs[real], targets[real]
        top = most_confident_mistakes(probs, targets, self.k)
        return images[top], targets[top], probs[top]


def _all_gather_object(trainer: L.Trainer, obj: Any) -> list[Any]:
    objects: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(objects, obj)
    return objects


def _gather(trainer: L.Trainer, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over all ranks (itself on one process).

    DistributedSampler gives every rank the same number of items (repeating a few to even them
    out), so the per-rank tensors have one shape, as all_gather requires.
    """
    if trainer.world_size <= 1:
        return tensor
    gathered = trainer.strategy.all_gather(tensor.to(trainer.strategy.root_device))  # (world, N, ...)
    return gathered.flatten(0, 1).cpu()


def _metric_history(mlflow: MLflowLogger | None) -> dict[str, list[tuple[float, float]]]:
    """key -> [(epoch, value)] for the learning-curve keys the run has; {} without MLflow."""
    if mlflow is None:
        return {}
    client, run_id = mlflow.experiment, mlflow.run_id
    # Lightning logs "epoch" next to every epoch-level metric, at the same step: map step -> epoch.
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    history = {}
    for key in LEARNING_CURVE_KEYS:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        if points:
            history[key] = [(epochs.get(m.step, i) + 1, m.value) for i, m in enumerate(points)]
    return history
