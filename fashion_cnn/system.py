"""The training system: loss, metrics, optimisation and logging around a network (:class:`FashionCNN`)."""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from fashion_cnn.components import (
    accepted,
    as_factory,
    build_module,
    check_output_shape,
    class_path_of,
    factory_class,
    factory_kwargs,
    spec_of,
)
from fashion_cnn.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, prepare_batch
from fashion_cnn.errors import NonFiniteLossError
from fashion_cnn.legacy import FLAT_KEYS, NET_KEYS, check_flat, to_parts
from fashion_cnn.network import FashionCNNNet, count_parameters

log = logging.getLogger(__name__)

# On accelerators the non-finite-loss flag is read every this many steps (a read is a host sync).
NONFINITE_CHECK_EVERY = 50

# The names the flat hyperparameters of before issue 20 used (fashion_cnn.legacy maps them).
OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["plateau", "onecycle", "cosine", "none"]

# Scheduler arguments the trainer fills in when the config leaves them out: the run's length in
# optimiser steps (the scheduler then steps every batch) or in epochs.
STEP_ARGS = ("total_steps",)
EPOCH_ARGS = ("T_max",)


class FashionCNN(L.LightningModule):
    """The training system: loss, metrics, optimisation and logging around a network.

    The network, optimiser and learning-rate scheduler are arguments, as in Lightning's own guidance
    (the LightningModule is the system around a model) and lightning-hydra-template's
    ``MNISTLitModule``: on the command line and in configs each is a class path with its own
    arguments (``model.net: {class_path: my_nets.TinyResNet, init_args: {...}}``), so any importable
    ``nn.Module``, ``torch.optim`` optimiser and scheduler works. The data decides ``num_classes``,
    ``input_shape``, ``input_mean`` and ``input_std`` through the CLI's links, into the network too
    when it takes ``num_classes``, ``in_channels``, ``image_size`` or ``input_shape``.

    Args:
        net: The network: images (B, C, H, W) -> logits (B, num_classes). Default: the journal's
            :class:`~fashion_cnn.network.FashionCNNNet` for the data's shape. A ``{class_path,
            init_args}`` mapping is built here (as a checkpoint stores it).
        optimizer: Builds the optimiser from the parameters (``OptimizerCallable``). Default: the
            journal's Adam (lr 1e-3).
        scheduler: Builds the learning-rate scheduler from the optimiser (``LRSchedulerCallable``),
            or None. Default: the journal's ReduceLROnPlateau on val/loss (factor 0.1, patience
            10), stepped per epoch. A scheduler that takes ``total_steps`` (OneCycleLR) gets the
            run's optimiser steps from the trainer and steps every batch; one that takes ``T_max``
            (CosineAnnealingLR) gets max_epochs when the config leaves it out.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
        num_classes: Number of classes (linked from the datamodule by the CLI).
        input_shape: (channels, height, width) of the images (linked from the datamodule by the
            CLI); the network's output is checked on one dummy batch of this shape at construction.
        channels_last: Run the network in channels_last memory format. None (default) turns it
            on for the journal's network with none, batch or layer norm, off otherwise (instance
            and group norm kernels lack a fast channels_last path).
        compile: Run the network through ``torch.compile``. Measured on a 2-core AVX512-BF16 CPU
            (docs/benchmarks.md): 7-20 s to compile, then 1.39x for InstanceNorm nets in fp32
            but 0.75-0.8x under the default bf16 autocast, so leave it off there. Checkpoints
            stay loadable either way.
        input_mean: Pixel mean on the [0, 1] scale subtracted from uint8 input (linked from the
            datamodule by the CLI; 0 for unnormalised input).
        input_std: Pixel standard deviation uint8 input is divided by (1 for unnormalised input).

    The model takes uint8 images (0-255, as the datamodule yields them and as files store them)
    and turns them into ``(x / 255 - input_mean) / input_std`` itself; float images are taken as
    already prepared. Every part is recorded in the hyperparameters as plain data (class paths and
    arguments), so ``FashionCNN.load_from_checkpoint(path)`` needs nothing but the file and the
    network's module on the path. Checkpoints of the old flat form (``layers, filters, ...``)
    load too (:mod:`fashion_cnn.legacy`).
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = torch.optim.lr_scheduler.ReduceLROnPlateau,
        label_smoothing: float = 0.0,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        channels_last: bool | None = None,
        compile: bool = False,
        input_mean: float = FASHION_MNIST_MEAN,
        input_std: float = FASHION_MNIST_STD,
        **flat: Any,
    ) -> None:
        super().__init__()
        if flat or isinstance(optimizer, str):
            net, optimizer, scheduler, num_classes, input_shape = _from_flat(
                flat, optimizer, scheduler, net, num_classes, input_shape
            )
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1), e.g. 0.1")
        if not input_std > 0:
            raise ValueError(f"input_std={input_std!r} must be > 0 (1 for unnormalised input)")
        input_shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        spec = dict(net) if isinstance(net, Mapping) else None
        if isinstance(net, Mapping):
            net = build_module(net)
        if net is None:
            channels, size = input_shape[0], input_shape[1]
            net = FashionCNNNet(num_classes=num_classes, in_channels=channels, image_size=size)
        self.optimizer_factory: Callable[..., Any] = (
            as_factory(optimizer, "model.optimizer") if isinstance(optimizer, Mapping) else optimizer
        )
        self.scheduler_factory: Callable[..., Any] | None = (
            as_factory(scheduler, "model.scheduler") if isinstance(scheduler, Mapping) else scheduler
        )
        with warnings.catch_warnings():
            # The network is saved as its spec below, not as a module object.
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Plain data only (class paths and arguments): a checkpoint loads with weights_only=True.
        # Under the CLI the parts arrive here as the parsed specs (with every argument); built in
        # Python, they are described from the objects.
        hp = self.hparams
        for key in [k for k in hp if k not in _PARAMETERS]:
            hp.pop(key)  # _instantiator (rebuilt here from the specs) and the old flat arguments
        given = spec if spec is not None else hp.get("net")
        hp["net"] = _net_spec(net, given if isinstance(given, Mapping) else None)
        for key, factory in (("optimizer", self.optimizer_factory), ("scheduler", self.scheduler_factory)):
            given = hp.get(key)
            hp[key] = spec_of(given if isinstance(given, Mapping) else factory)
        hp["input_shape"] = list(input_shape)
        self._hparams_initial = copy.deepcopy(hp)  # what loggers record
        self.net = net
        check_output_shape(self.net, input_shape, num_classes)
        # Auto: with bf16 on an AVX512-BF16 CPU, channels_last lifts none/batch/layer nets from
        # ~1.9x to ~2.4x over fp32, but drags instance (2.1x -> 1.9x) and group norm (2.0x ->
        # 1.05x), whose kernels lack a fast channels_last path; docs/benchmarks.md has the table.
        auto = isinstance(net, FashionCNNNet) and net.init_args["norm"] in ("none", "batch", "layer")
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
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        cls = factory_class(self.scheduler_factory)
        given = factory_kwargs(self.scheduler_factory)
        params = inspect.signature(cls).parameters if cls is not None else {}
        extra: dict[str, Any] = {}
        interval = "epoch"
        for name in STEP_ARGS:
            if name in params and given.get(name) is None:
                # The run's length in optimiser steps, known once the trainer has the data
                # (max_epochs x batches, or max_steps).
                extra[name] = int(self.trainer.estimated_stepping_batches)
                interval = "step"
        for name in EPOCH_ARGS:
            if name in params and given.get(name) is None:
                max_epochs = self.trainer.max_epochs
                extra[name] = max_epochs if max_epochs and max_epochs > 0 else 1
        scheduler = self.scheduler_factory(optimizer, **extra)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # strict=False: a run without validation (limit_val_batches=0) keeps the rate and
            # warns instead of crashing at the end of the first epoch.
            config = {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}
            return {"optimizer": optimizer, "lr_scheduler": config}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

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
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else None
        norm = (hp.net.get("init_args") or {}).get("norm", "n/a")
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at epoch {self.current_epoch}, global step "
            f"{step}. Likely causes: a learning rate too high for this model (lr={lr}, "
            f"optimizer={hp.optimizer['class_path']}, norm={norm}), or unnormalised inputs. Try a smaller "
            "--model.optimizer.lr, --trainer.gradient_clip_val 1.0, or a norm layer. Training stopped; the "
            "checkpoints written before this epoch are intact (resume from last.ckpt)."
        )

    def _log_model_size(self) -> None:
        # The journal reports the parameter count for every experiment, so every run records it
        # with its hyperparameters.
        for logger in self.loggers:
            logger.log_hyperparams({"num_params": self.num_params})


_PARAMETERS = frozenset(
    ("net", "optimizer", "scheduler", "label_smoothing", "num_classes", "input_shape", "channels_last")
    + ("compile", "input_mean", "input_std")
)


def _from_flat(
    flat: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    net: Any,
    num_classes: int,
    input_shape: tuple[int, int, int],
) -> tuple[Any, Any, Any, int, tuple[int, int, int]]:
    """The parts the old flat arguments describe (see :mod:`fashion_cnn.legacy`)."""
    if isinstance(optimizer, str):
        flat["optimizer"] = optimizer
    unknown = sorted(set(flat) - FLAT_KEYS)
    if unknown:
        raise TypeError(f"FashionCNN got unexpected keyword arguments {unknown}")
    check_flat(flat)
    if net is not None and any(k in flat for k in NET_KEYS):
        raise TypeError("give the network either as net= or as flat arguments (layers=...), not both")
    flat.setdefault("num_classes", num_classes)
    flat.setdefault("in_channels", input_shape[0])
    flat.setdefault("image_size", input_shape[1])
    parts = to_parts(flat)
    if net is None:
        net = parts["net"]
    shape = tuple(parts["input_shape"])
    return net, parts["optimizer"], parts["scheduler"], int(parts["num_classes"]), shape


def _net_spec(net: nn.Module, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The network's spec: the one the CLI parsed, else its class path and the arguments it
    records (``init_args``; a network built in Python that records none is stored by class only).
    Arguments the class does not take (links offer num_classes and the input shape to every
    network) are left out."""
    spec = spec_of(given if given is not None else net) or {}
    spec["class_path"] = class_path_of(type(net))
    spec["init_args"] = accepted(type(net), spec.get("init_args") or {})
    return spec


__all__ = ["FashionCNN", "NonFiniteLossError", "OptimizerName", "SchedulerName"]
