"""What a run says on the console: a short header when it starts and a summary when it ends.

The header gives each decision that matters once, with its reason: the config used, the device,
the precision and why, the MLflow run (experiment, name, id, store) and where checkpoints go. The
summary names the result and where it is: the best validation score and its epoch, the test
accuracy and loss, the best checkpoint, the run id and the command that shows the run in the
browser. Both are log lines (logger ``fashion_cnn.console``); the command line shows them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fashion_cnn.configs import packaged_root
from fashion_cnn.speed import cpu_bf16_feature, machine_tags
from fashion_cnn.tracking import mlflow_logger
from fashion_cnn.ui import show_hint

log = logging.getLogger(__name__)

WIDTH = 12  # the label column of the header and summary


def precision_reason(accelerator: str, precision: str) -> str:
    """Why ``precision`` is the default on ``accelerator`` (as :func:`~fashion_cnn.speed.fast_precision`
    chose it), in a few words."""
    bf16 = precision.startswith("bf16")
    if accelerator == "cpu":
        feature = cpu_bf16_feature()
        if bf16:
            return f"bf16 autocast: this CPU has {feature or 'native bf16'}"
        return "fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast would be slower"
    if accelerator in ("gpu", "cuda"):
        return "bf16 autocast: this GPU computes bf16" if bf16 else "fp32: this GPU has no bf16"
    return f"{precision}: the default on {accelerator}"


def _line(label: str, text: str) -> str:
    return f"  {label:<{WIDTH}} {text}"


def _shown(path: str | os.PathLike[str]) -> str:
    """A path relative to the working folder when it is inside it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def describe_configs(configs: Sequence[str | os.PathLike[str]]) -> str:
    """The config files of a run, packaged ones named as such; "defaults (no --config)" without."""
    if not configs:
        return "defaults (no --config)"
    root = packaged_root().resolve()
    words = []
    for config in configs:
        path = Path(config).resolve()
        if path.is_relative_to(root):
            words.append(f"configs/{path.relative_to(root).as_posix()} (packaged: {path})")
        else:
            words.append(_shown(path))
    return ", ".join(words)


def describe_device(trainer: L.Trainer) -> str:
    """The device a trainer runs on: the CPU with its cores and threads, or the GPU(s) by name."""
    device = trainer.strategy.root_device
    count = f"{trainer.num_devices} x " if trainer.num_devices > 1 else ""
    if device.type == "cuda":
        return f"{count}{torch.cuda.get_device_name(device)} ({device.type})"
    if device.type == "cpu":
        tags = machine_tags()
        return (
            f"cpu: {tags['machine.cpu']} ({tags['machine.cores']} cores, "
            f"{tags['machine.torch_threads']} torch threads)"
        )
    return f"{count}{device.type}"


class RunConsole(Callback):
    """Logs the run's header when its first loop starts; the CLI asks for the summary at the end.

    Args:
        subcommand: fit, validate, test or predict.
        configs: The ``--config`` files, in order.
        precision_reason: Why the precision is what it is ("as configured", or the default's reason).
    """

    def __init__(
        self, subcommand: str, configs: Sequence[str | os.PathLike[str]], precision_reason: str
    ) -> None:
        self.subcommand = subcommand
        self.configs = list(configs)
        self.precision_reason = precision_reason
        self.announced = False
        self.started = time.monotonic()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.announce(trainer)  # after every callback's setup: the checkpoint folder is known

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.announce(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.announce(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.announce(trainer)

    def announce(self, trainer: L.Trainer) -> None:
        """Log the header, once per run (the test after a fit adds none)."""
        if self.announced or not trainer.is_global_zero:
            return
        self.announced = True
        self.started = time.monotonic()
        for text in self.header(trainer):
            log.info(text)

    def header(self, trainer: L.Trainer) -> list[str]:
        """The header's lines."""
        lines = [
            f"fashion-cnn {self.subcommand}: {describe_configs(self.configs)}",
            _line("device", describe_device(trainer)),
            _line("precision", f"{trainer.precision} ({self.precision_reason})"),
        ]
        logger = mlflow_logger(trainer)
        if logger is not None:
            lines.append(
                _line(
                    "MLflow run", f"{logger.run_name} (id {logger.run_id}, experiment {_experiment(logger)})"
                )
            )
            lines.append(_line("store", logger.tracking_uri))
        checkpoint = trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        if self.subcommand == "fit" and dirpath:
            lines.append(_line("checkpoints", _shown(dirpath)))
        return lines

    def summary(self, trainer: L.Trainer) -> list[str]:
        """The summary's lines after a fit (and its test): the result and where it is."""
        elapsed = time.monotonic() - self.started
        epochs = trainer.current_epoch
        lines = [f"fashion-cnn {self.subcommand}: done in {_duration(elapsed)}, {epochs} epoch(s)"]
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") or ""
        score = getattr(checkpoint, "best_model_score", None)
        monitor = getattr(checkpoint, "monitor", None)
        if monitor and score is not None:
            epoch = _checkpoint_epoch(best_path)
            at = f" at epoch {epoch}" if epoch is not None else ""
            lines.append(_line(f"best {monitor}", f"{float(score):.4f}{at}"))
        metrics = trainer.callback_metrics
        tested = [
            f"{key.split('/')[-1]} {float(metrics[key]):.4f}"
            for key in ("test/acc", "test/loss")
            if key in metrics
        ]
        if tested:
            lines.append(_line("test", ", ".join(tested)))
        if best_path:
            lines.append(_line("checkpoint", _shown(best_path)))
        logger = mlflow_logger(trainer)
        if logger is not None and logger.run_id is not None:
            lines.append(
                _line("run id", f"{logger.run_id} ({logger.run_name}, experiment {_experiment(logger)})")
            )
            lines.append(
                _line("see it", show_hint(logger.tracking_uri, str(logger.experiment_id), logger.run_id))
            )
        return lines

    def log_summary(self, trainer: L.Trainer) -> None:
        """Log :meth:`summary` (on rank 0)."""
        if trainer.is_global_zero:
            for text in self.summary(trainer):
                log.info(text)


def _experiment(logger: Any) -> str:
    """The name of the logger's experiment (``MLFlowLogger.name`` is its id)."""
    return str(logger.experiment.get_experiment(logger.experiment_id).name)


def _checkpoint_epoch(path: str) -> int | None:
    """The epoch a checkpoint was saved in (None when it cannot be read)."""
    if not path:
        return None
    try:
        content: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the summary then leaves the epoch out
        return None
    epoch = content.get("epoch") if isinstance(content, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}" if minutes else f"{secs} s"
    )
