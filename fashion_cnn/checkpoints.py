"""Checkpoints: where they go, how they are written, and how a file is checked before it is loaded.

- :class:`RunCheckpoint` files checkpoints under ``<output_dir>/<run name>/<run id>/checkpoints``,
  so runs of different configs, seeds or concurrent launches never share a file, and saves
  ``interrupted.ckpt`` on Ctrl+C or SIGTERM beside an untouched ``last.ckpt``.
- :class:`AtomicCheckpointIO` is the ``CheckpointIO`` plugin every CLI run gets: a checkpoint
  appears under its name only once it is complete.
- :func:`read_checkpoint` loads a file without executing code and names it in every failure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_cnn._io import atomic_path
from fashion_cnn.errors import CheckpointError
from fashion_cnn.tracking import mlflow_logger

log = logging.getLogger(__name__)

INTERRUPTED_NAME = "interrupted"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes into a hidden file beside the target, then renames it.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the
    system temp folder; when that is another filesystem (a tmpfs ``/tmp``, say) the final move is a
    copy, and a kill or a full disk in the middle leaves a truncated ``last.ckpt`` where a good one
    was. A rename within one folder is atomic. Only rank 0 saves, so one temporary name suffices.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that files checkpoints per run: ``<root>/<run name>/<run id>/checkpoints``.

    Every other argument is ``ModelCheckpoint``'s; the CLI sets ``root`` from ``--output_dir``.
    An explicit ``dirpath`` wins.
    """

    def __init__(self, *args: Any, root: str = "runs", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = root

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(run_directory(trainer, self.root) / "checkpoints")
        super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` at the end of every epoch, as resuming needs.

        Lightning (2.6) writes it only in a step where it also wrote a top-k checkpoint, so after an
        epoch whose monitored metric did not improve, ``last.ckpt`` still held an older epoch, and a
        resume trained that epoch again (and a finished run's ``last.ckpt`` was not its last).
        """
        at_epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.save_last is True and at_epoch_end and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl+C or SIGTERM, save ``interrupted.ckpt`` beside ``last.ckpt``.

        ``last.ckpt`` (end of the last full epoch) stays untouched: resuming from it reproduces
        an uninterrupted run exactly. ``interrupted.ckpt`` keeps the work of a partial epoch. A
        crash (NaN loss, a bug) saves nothing: its weights may be what went wrong.
        """
        super().on_exception(trainer, pl_module, exception)
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        logger = mlflow_logger(trainer)
        if logger is not None:
            logger.interrupted = True
        if self.dirpath is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        path = Path(self.dirpath) / f"{INTERRUPTED_NAME}{self.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # full state, to resume from
        log.warning(
            "fit interrupted at epoch %d, step %d; saved %s", trainer.current_epoch, trainer.global_step, path
        )


def run_directory(trainer: L.Trainer, root: str | os.PathLike[str]) -> Path:
    """``<root>/<run name>/<run id>`` of the trainer's MLflow run (``<root>/local/no-run`` without).

    The run id is created on rank 0 and broadcast, so every process of a DDP run agrees.
    """
    name, run_id = "local", "no-run"
    run_id_here: str | None = run_id
    logger = mlflow_logger(trainer)
    if logger is not None:
        name = logger.run_name or "run"
        run_id_here = logger.run_id if trainer.is_global_zero else None
    return Path(root) / name / str(trainer.strategy.broadcast(run_id_here))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Lightning checkpoint of a FashionCNN without executing code.

    Raises:
        CheckpointError: The file is missing, unreadable, not a Lightning checkpoint, or of
            another model; the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the path of a .ckpt file")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean the same here
        raise CheckpointError(
            f"{p} is not a readable checkpoint ({type(exc).__name__}); pass a .ckpt written by "
            "fashion-cnn fit"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by fashion-cnn fit"
        )
    hparams = checkpoint.get("hyper_parameters", {})
    if "net" not in hparams and ("layers" not in hparams or "filters" not in hparams):
        # New checkpoints name their network (net); those before issue 20 hold layers/filters.
        raise CheckpointError(
            f"{p} is a checkpoint of another model (its hyperparameters have no net, nor layers/filters); "
            "pass a checkpoint written by fashion-cnn fit"
        )
    return checkpoint


def load_model(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The :class:`~fashion_cnn.FashionCNN` of a checkpoint (eval mode, CPU) and the checkpoint.

    Checkpoints written before the model took uint8 input recorded the pixel normalisation only
    with the datamodule (``normalize``); the model then gets the matching ``input_mean``/``input_std``.

    Raises:
        CheckpointError: The file is missing, unreadable, of another model, or does not rebuild one.
    """
    from fashion_cnn.system import FashionCNN

    checkpoint = read_checkpoint(path)  # names the file in every failure
    overrides: dict[str, Any] = {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if "input_mean" not in checkpoint["hyper_parameters"] and data.get("normalize") is False:
        overrides = {"input_mean": 0.0, "input_std": 1.0}
    try:
        model = FashionCNN.load_from_checkpoint(str(path), map_location="cpu", weights_only=True, **overrides)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{path} does not rebuild a FashionCNN ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "pass a checkpoint written by fashion-cnn fit"
        ) from None
    return model.eval(), checkpoint
