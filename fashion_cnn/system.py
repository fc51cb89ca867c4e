"""The training system: loss, metrics, optimisation and logging around :class:`FashionCNNNet`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from fashion_cnn.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, prepare_batch
from fashion_cnn.errors import NonFiniteLossError
from fashion_cnn.network import FashionCNNNet, NormName, count_parameters

log = logging.getLogger(__name__)

# On accelerators the non-finite-loss flag is read every this many steps (a read is a host sync).
NONFINITE_CHECK_EVERY = 50

OptimizerName = Literal["adam", "adamw", "sgd"]


SchedulerName = Literal["plateau", "onecycle", "cosine", "none"]


class FashionCNN(L.LightningModule):
    """LightningModule that trains the journal's CNN on Fashion-MNIST.

    Architecture arguments go straight to :class:`~fashion_cnn.network.FashionCNNNet`; the rest
    choose the loss, optimiser and learning-rate schedule. Optimiser and scheduler are plain names
    (not objects) so that every run records them as hyperparameters and
    ``FashionCNN.load_from_checkpoint(path)`` needs nothing but the file.

    Args:
        layers: Number of convolutional blocks.
        filters: Channels of every block (one integer), or a list with one width per block.
        kernel_size: Odd convolution kernel size.
        norm: Normalisation in each block: none, batch, instance, layer or group.
        dropout: Dropout2d probability in each block, in [0, 1).
        norm_groups: Groups for norm=group; must divide filters.
        pool_every: A 2x2 max-pool closes every pool_every-th block (0: never).
        pool_after: Explicit 1-based block indices to pool after; overrides pool_every.
        hidden: Width of the head's hidden linear layer.
        num_classes: Number of classes (linked from the datamodule by the CLI).
        in_channels: Input channels (linked from the datamodule by the CLI).
        image_size: Input height and width (linked from the datamodule by the CLI).
        optimizer: adam (the journal's), adamw or sgd (with Nesterov momentum).
        lr: Learning rate; the peak rate for the onecycle schedule.
        weight_decay: Weight decay (decoupled for adamw, L2 for adam and sgd).
        momentum: Momentum for sgd.
        lr_scheduler: plateau (ReduceLROnPlateau on val/loss, the journal's), onecycle (per step),
            cosine (per epoch, to zero at max_epochs) or none.
        plateau_factor: Factor by which plateau multiplies the learning rate.
        plateau_patience: Epochs without val/loss improvement before plateau reduces the rate.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
        channels_last: Run the network in channels_last memory format. None (default) turns it
            on for none, batch and layer norm, off for instance and group norm, which it slows.
        compile: Run the network through ``torch.compile``. Measured on a 2-core AVX512-BF16 CPU
            (docs/benchmarks.md): 7-20 s to compile, then 1.39x for InstanceNorm nets in fp32
            but 0.75-0.8x under the default bf16 autocast, so leave it off there. Checkpoints
            stay loadable either way.
        input_mean: Pixel mean on the [0, 1] scale subtracted from uint8 input (linked from the
            datamodule by the CLI; 0 for unnormalised input).
        input_std: Pixel standard deviation uint8 input is divided by (1 for unnormalised input).

    The model takes uint8 images (0-255, as the datamodule yields them and as files store them)
    and turns them into ``(x / 255 - input_mean) / input_std`` itself; float images are taken as
    already prepared. Both values are hyperparameters, so a checkpoint carries them.
    """

    def __init__(
        self,
        layers: int = 4,
        filters: int | list[int] = 32,
        kernel_size: int = 3,
        norm: NormName = "none",
        dropout: float = 0.0,
        norm_groups: int = 8,
        pool_every: int = 3,
        pool_after: Sequence[int] | None = None,
        hidden: int = 128,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_scheduler: SchedulerName = "plateau",
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        label_smoothing: float = 0.0,
        channels_last: bool | None = None,
        compile: bool = False,
        input_mean: float = FASHION_MNIST_MEAN,
        input_std: float = FASHION_MNIST_STD,
    ) -> None:
        super().__init__()
        _check_training_args(
            optimizer,
            lr,
            weight_decay,
            momentum,
            lr_scheduler,
            plateau_factor,
            plateau_patience,
            label_smoothing,
        )
        if not input_std > 0:
            raise ValueError(f"input_std={input_std!r} must be > 0 (1 for unnormalised input)")
        if pool_after is not None:
            pool_after = list(pool_after)  # a YAML list or tuple; stored as a plain list
        self.save_hyperparameters()
        self.net = FashionCNNNet(
            layers=layers,
            filters=filters,
            kernel_size=kernel_size,
            norm=norm,
            dropout=dropout,
            norm_groups=norm_groups,
            pool_every=pool_every,
            pool_after=pool_after,
            hidden=hidden,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )
        # Auto: with bf16 on an AVX512-BF16 CPU, channels_last lifts none/batch/layer nets from
        # ~1.9x to ~2.4x over fp32, but drags instance (2.1x -> 1.9x) and group norm (2.0x ->
        # 1.05x), whose kernels lack a fast channels_last path; docs/benchmarks.md has the table.
        auto = norm in ("none", "batch", "layer")
        self.use_channels_last = auto if channels_last is None else channels_last
        if self.use_channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.num_params = count_parameters(self.net)
        # Kept outside the module tree (object.__setattr__), so the state_dict keys stay those of
        # self.net and a checkpoint loads with compile on or off.
        compiled = torch.compile(self.net) if compile else None
        object.__setattr__(self, "_compiled_net", compiled)
        # One metric object per stage: torchmetrics keeps separate running state for each.
        # validate_args=False: the inputs are our own logits and labels; the checks cost ~0.3 ms
        # a step, about 1 % of a CPU training step (benchmarks/bench_overhead.py).
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc_best = MaxMetric()
        self._first_bad_step: torch.Tensor | None = None

    @property
    def _hp(self) -> Any:
        """``self.hparams`` for attribute access (Lightning types it as a plain mapping)."""
        return self.hparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images (B, C, H, W): uint8 pixels, or prepared floats."""
        if x.dtype == torch.uint8:
            x = prepare_batch(x, self._hp.input_mean, self._hp.input_std)  # float32
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net: Any = self._compiled_net if self._compiled_net is not None else self.net
        return net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self._hp.label_smoothing)
        self._watch_loss(loss)
        self.train_acc(logits, y)
        # Per-epoch only, under exactly these keys (on_step would rename them to *_epoch), and no
        # .item() here: Lightning accumulates on the device, so there is no host sync per step.
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y)
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.val_acc(logits, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.test_acc(logits, y)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=len(y))
        # Returned for callbacks (on_test_batch_end) that build evaluation reports; Lightning
        # does not keep them, so this costs no memory.
        return {"logits": logits.detach(), "targets": y}

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities (B, num_classes), predicted class (B,) and the items' indices.

        Accepts ``images`` alone or ``(images, index)`` as the datamodule yields for prediction.
        """
        x, index = (batch, None) if isinstance(batch, torch.Tensor) else (batch[0], batch[1])
        probs = torch.softmax(self(x).float(), dim=1)
        out = {"probs": probs, "preds": probs.argmax(dim=1)}
        if index is not None:
            out["index"] = index
        return out

    def configure_optimizers(self) -> Any:
        hp = self._hp
        params = self.parameters()
        optimizer: torch.optim.Optimizer
        scheduler: Any
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params,
                lr=hp.lr,
                momentum=hp.momentum,
                nesterov=hp.momentum > 0,
                weight_decay=hp.weight_decay,
            )
        if hp.lr_scheduler == "none":
            return optimizer
        if hp.lr_scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience
            )
            # strict=False: a run without validation (limit_val_batches=0) keeps the rate and
            # warns instead of crashing at the end of the first epoch.
            config = {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}
            return {"optimizer": optimizer, "lr_scheduler": config}
        if hp.lr_scheduler == "onecycle":
            # The schedule needs the run's length in optimiser steps, known once the trainer has
            # the data (max_epochs x batches, or max_steps).
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=int(self.trainer.estimated_stepping_batches)
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_fit_start(self) -> None:
        self._log_model_size()

    def on_test_start(self) -> None:
        self._log_model_size()

    def on_train_start(self) -> None:
        # The sanity-check validation pass must not count as the best epoch.
        self.val_acc_best.reset()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Reading the flag syncs with the device: every step on the CPU (free), every
        # NONFINITE_CHECK_EVERY steps on accelerators so the hot loop keeps running ahead.
        last = batch_idx + 1 == self.trainer.num_training_batches
        if self.device.type == "cpu" or last or (batch_idx + 1) % NONFINITE_CHECK_EVERY == 0:
            self._raise_if_loss_was_not_finite()

    def on_train_epoch_start(self) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        # The same value on every DDP rank; sync_dist only silences Lightning's warning about
        # epoch-level values logged without it (one all-reduce per epoch).
        self.log("lr", float(lr), on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        # val_acc is already synchronised across DDP ranks; sync_dist only silences Lightning's
        # warning at the cost of one all-reduce per epoch.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False, sync_dist=True)

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Remember, on the device and without a sync, the first step whose loss was not finite."""
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        step = torch.full_like(self._first_bad_step, self.global_step)
        self._first_bad_step = torch.where(bad, step, self._first_bad_step)

    def _raise_if_loss_was_not_finite(self) -> None:
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step < 0:
            return
        hp = self._hp
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at epoch {self.current_epoch}, global step "
            f"{step}. Likely causes: a learning rate too high for this model (lr={hp.lr}, "
            f"optimizer={hp.optimizer}, norm={hp.norm}), or unnormalised inputs. Try a smaller "
            "--model.lr, --trainer.gradient_clip_val 1.0, or a norm layer. Training stopped; the "
            "checkpoints written before this epoch are intact (resume from last.ckpt)."
        )

    def _log_model_size(self) -> None:
        # The journal reports the parameter count for every experiment, so every run records it
        # with its hyperparameters.
        for logger in self.loggers:
            logger.log_hyperparams({"num_params": self.num_params})


def _check_training_args(
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    lr_scheduler: str,
    plateau_factor: float,
    plateau_patience: int,
    label_smoothing: float,
) -> None:
    """Fail at construction, naming the argument, for values that would only break mid-run."""
    if optimizer not in get_args(OptimizerName):
        raise ValueError(f"optimizer={optimizer!r} is unknown; use one of {get_args(OptimizerName)}")
    if lr_scheduler not in get_args(SchedulerName):
        raise ValueError(f"lr_scheduler={lr_scheduler!r} is unknown; use one of {get_args(SchedulerName)}")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0, e.g. 1e-3")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1), e.g. 0.9")
    if not 0 < plateau_factor < 1:
        raise ValueError(f"plateau_factor={plateau_factor!r} must be in (0, 1), e.g. 0.1")
    if plateau_patience < 0:
        raise ValueError(f"plateau_patience={plateau_patience!r} must be >= 0")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1), e.g. 0.1")


__all__ = ["FashionCNN", "NonFiniteLossError", "OptimizerName", "SchedulerName"]
