"""The predictions CSV of ``fashion-cnn predict``, written batch by batch as Lightning predicts."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from fashion_cnn._io import atomic_write

log = logging.getLogger(__name__)


class PredictionWriter(BasePredictionWriter):
    """Writes one CSV row per predicted item: item, predicted class, confidence, one column per class.

    ``item`` is the image's file name for ``--data.predict_dir``, else ``test/<index>``. The file
    appears under ``path`` only when prediction ends (a failed or interrupted prediction leaves
    the previous file, if any). Under DDP each process writes its own share to
    ``<stem>.rank<N>.csv``.

    Args:
        path: The CSV file to write.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self._stack: ExitStack | None = None
        self._writer: Any = None
        self._names: list[str] = []
        self._items: list[str] = []
        self.rows = 0

    def target(self, trainer: L.Trainer) -> Path:
        """The file this process writes."""
        if trainer.world_size == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        num_classes = int(pl_module.hparams.get("num_classes", 10))
        self._names = list(getattr(datamodule, "class_names", None) or [str(i) for i in range(num_classes)])
        self._items = list(getattr(datamodule, "predict_names", None) or [])
        self._stack = ExitStack()
        handle: IO[str] = self._stack.enter_context(atomic_write(self.target(trainer), "w", newline=""))
        self._writer = csv.writer(handle)
        self._writer.writerow(["item", "predicted", "confidence", *[f"p_{n}" for n in self._names]])
        self.rows = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probs, preds = prediction["probs"].cpu(), prediction["preds"].cpu()
        index = prediction.get("index")
        for row in range(len(preds)):
            i = int(index[row]) if index is not None else self.rows
            item = self._items[i] if i < len(self._items) else str(i)
            p = probs[row]
            self._writer.writerow(
                [item, self._names[int(preds[row])], f"{float(p.max()):.6f}", *[f"{float(v):.6f}" for v in p]]
            )
            self.rows += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stack is not None:
            self._stack.close()  # complete: the file replaces any earlier one at once
            self._stack = None
            log.info("wrote %d predictions to %s", self.rows, self.target(trainer))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._stack is not None:
            # Unwind the atomic write with the error: the temporary file goes, nothing is renamed.
            self._stack.__exit__(type(exception), exception, exception.__traceback__)
            self._stack = None
