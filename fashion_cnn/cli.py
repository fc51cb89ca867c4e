"""The ``fashion-cnn`` command line and :func:`run_experiment`, its Python twin.

``fashion-cnn fit --config configs/ultimate.yaml`` builds :class:`~fashion_cnn.FashionCNN`, the
:class:`~fashion_cnn.FashionMNISTDataModule` and a Lightning ``Trainer`` from the config, tracks the
run in MLflow, tests the best checkpoint when training ends, and files checkpoints under
``<output_dir>/<run name>/<run id>/checkpoints``. The logic lives in :class:`FashionCLI`; ``main``
only turns user errors into one clear line and an exit status.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_cnn import __version__
from fashion_cnn._io import atomic_write
from fashion_cnn.data import DataError, FashionMNISTDataModule
from fashion_cnn.evaluation import EvaluationReport
from fashion_cnn.seeding import EpochSeed
from fashion_cnn.speed import fast_precision
from fashion_cnn.system import FashionCNN, NonFiniteLossError
from fashion_cnn.tracking import (
    BEST_CHECKPOINT_TAG,
    RUN_ID_KEY,
    LogConfigToMLflow,
    RunCheckpoint,
    RunIdInCheckpoint,
)

log = logging.getLogger(__name__)

# run_experiment passes args while the calling program has its own sys.argv: that is intended.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

# Defaults every run gets unless the config says otherwise; the journal trained for 3 epochs.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 3,
    "logger": {"class_path": "fashion_cnn.tracking.MLflowLogger"},
    "callbacks": [RunIdInCheckpoint(), EpochSeed(), EvaluationReport()],
}


def default_progress_bar() -> TQDMProgressBar:
    """The progress bar of every run: redrawn every 10 steps instead of every step, which alone
    cost ~1 ms per step (3 % of a CPU training step) in benchmarks/bench_overhead.py."""
    return TQDMProgressBar(refresh_rate=10)


class UserError(Exception):
    """A problem the user can fix (bad path, unusable checkpoint); reported without a traceback."""


class _Parser(LightningArgumentParser):
    """Reports a bad argument in two lines (the problem, where to look) instead of the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        self._logger.error(message)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"fashion-cnn: error: {message.strip()}\nSee `{prog} --help` for the options.\n")
        sys.exit(2)


class FashionCLI(LightningCLI):
    """LightningCLI over FashionCNN and FashionMNISTDataModule with MLflow tracking.

    Extra top-level options: ``--run_name`` (default: the config file's name), ``--output_dir``
    (where checkpoints and predictions go, default ``runs``), ``--test_after_fit`` (default true),
    ``--predictions_file`` and the ``--checkpoint.*`` options of :class:`RunCheckpoint`.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        self._checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, once read
        super().__init__(
            FashionCNN,
            FashionMNISTDataModule,
            save_config_callback=LogConfigToMLflow,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=True,
            parser_kwargs={"version": __version__},
            parser_class=_Parser,
            args=list(args) if args is not None else None,
            run=run,
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run name prefix in MLflow and under output_dir (default: the config file's name).",
        )
        parser.add_argument(
            "--output_dir",
            type=str,
            default="runs",
            help="Root folder for checkpoints (<output_dir>/<run name>/<run id>/checkpoints).",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the best checkpoint on the test set and log test/* metrics.",
        )
        parser.add_argument(
            "--predictions_file",
            type=str | None,
            default=None,
            help="CSV written by predict (default: <output_dir>/<run name>-predictions.csv).",
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # What the data decides is linked, never typed twice.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments(
            "data.input_shape", "model.in_channels", compute_fn=_channels, apply_on="instantiate"
        )
        parser.link_arguments(
            "data.input_shape", "model.image_size", compute_fn=_height, apply_on="instantiate"
        )

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Checkpoints are loaded without executing code; ours hold only tensors and plain values.
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, []):
            parser.set_defaults(weights_only=True)
        return parser

    def _parse_ckpt_path(self) -> None:
        # Lightning unpickles ckpt_path here to read the model's hyperparameters. Check the file
        # first, so a wrong path or a non-checkpoint gets a message that names it.
        sub = self.config.get("subcommand")
        if sub:
            ckpt = self.config[sub].get("ckpt_path")
            if sub == "fit" and ckpt == "last":
                ckpt = str(self._find_last_checkpoint())
                self.config[sub].ckpt_path = ckpt
            if ckpt and ckpt not in ("last", "best"):
                # Kept: fit reads the MLflow run id from it (_run_to_resume) without a reload.
                self._checkpoint = read_checkpoint(ckpt)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        sub = self.config[self.subcommand]
        run_name = _run_name(sub)
        if self.subcommand != "fit":
            run_name += f"-{self.subcommand}"
        sub.checkpoint.root = sub.output_dir
        if sub.trainer.get("precision") is None:
            # bf16 autocast where the hardware computes bf16 natively (2-2.5x on an AVX512-BF16
            # CPU); fp32 elsewhere, so no machine gets slower by default.
            sub.trainer.precision = fast_precision(_resolve_accelerator(sub.trainer.get("accelerator")))
        _check_writable(Path(sub.output_dir), "--output_dir")
        logger = sub.trainer.get("logger")
        if isinstance(logger, Mapping) or hasattr(logger, "init_args"):
            init = logger.init_args
            if "run_name" in init and init.run_name is None:
                init.run_name = run_name
            if self.subcommand == "fit" and self._checkpoint is not None and "run_id" in init:
                init.run_id = init.run_id or self._run_to_resume(sub.ckpt_path, init)
        self._run_name = run_name

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        wanted = config.get("enable_progress_bar") is not False
        given = [*(config.get("callbacks") or []), *callbacks]
        if wanted and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, default_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        _ACTIVE.append(trainer)
        return trainer

    def before_fit(self) -> None:
        logger = self.trainer.logger
        if isinstance(logger, MLFlowLogger) and logger._run_id is not None and hasattr(logger, "reopen"):
            logger.reopen()

    def after_fit(self) -> None:
        sub = self.config[self.subcommand]
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or ""
        if self.trainer.interrupted:
            return
        if sub.test_after_fit and self.trainer.limit_test_batches != 0:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)
        logger = self.trainer.logger
        if best and isinstance(logger, MLFlowLogger) and self.trainer.is_global_zero:
            logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
            logger.experiment.set_tag(logger.run_id, BEST_CHECKPOINT_TAG, str(Path(best).resolve()))

    def after_predict(self) -> None:
        sub = self.config[self.subcommand]
        predictions = self.trainer.predict_loop.predictions
        if not predictions or not self.trainer.is_global_zero:
            return
        path = Path(sub.predictions_file or Path(sub.output_dir) / f"{self._run_name}-predictions.csv")
        write_predictions(path, predictions, self.datamodule)
        log.info("wrote %s", path)
        sys.stderr.write(f"predictions written to {path}\n")

    def _find_last_checkpoint(self) -> Path:
        sub = self.config["fit"]
        pattern = f"{_run_name(sub)}/*/checkpoints/last.ckpt"
        found = sorted(Path(sub.output_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            # Interrupted before the first epoch ended: the partial epoch is all there is.
            partial = pattern.replace("last.ckpt", "interrupted.ckpt")
            found = sorted(Path(sub.output_dir).glob(partial), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(
                f"--ckpt_path last: no checkpoint matches {Path(sub.output_dir) / pattern}. Resume "
                "with the same config, seed_everything and output_dir as the interrupted run, or "
                "pass the checkpoint's path."
            )
        return found[-1]

    def _run_to_resume(self, ckpt_path: str, logger_args: Any) -> str | None:
        run_id = self._checkpoint.get(RUN_ID_KEY)
        if run_id is None:
            return None
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from fashion_cnn.tracking import resolve_tracking_uri

        try:
            MlflowClient(resolve_tracking_uri(logger_args.get("tracking_uri"))).get_run(run_id)
        except MlflowException:
            log.warning("run %s of %s is not in this tracking store; starting a new run", run_id, ckpt_path)
            return None
        return run_id


def _resolve_accelerator(accelerator: Any) -> str:
    """What Lightning's "auto" will pick: cuda, then mps, then cpu."""
    if isinstance(accelerator, str) and accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "gpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_writable(folder: Path, option: str) -> None:
    """Fail before training, not after the first epoch, when checkpoints could not be written."""
    # Nothing is created here (a config error found later must leave no folder behind): the
    # nearest existing ancestor must be a writable folder.
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:
        try:  # a real write: os.access says yes to root even where nothing can be written
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            problem = f"{existing}: {exc.strerror or exc}"
    if problem:
        raise UserError(
            f"{option} {folder} cannot be written ({problem}); pass a folder you can write to, "
            f"e.g. {option} ./runs"
        )


def _channels(shape: tuple[int, int, int]) -> int:
    return shape[0]


def _height(shape: tuple[int, int, int]) -> int:
    return shape[1]


def _run_name(sub: Any) -> str:
    """``<run_name or config file name>-seed<seed>``: names the MLflow run and its folder."""
    name = sub.run_name or _config_stem(sub.get("config")) or "fashion-cnn"
    return f"{name}-seed{sub.seed_everything}"


def _config_stem(configs: Any) -> str | None:
    if not configs:
        return None
    last = configs[-1]
    path = getattr(last, "relative", None) or getattr(last, "absolute", None) or str(last)
    return Path(str(path)).stem


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Lightning checkpoint without executing code, or raise ``UserError`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist; pass the path of a .ckpt file")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean the same here
        raise UserError(
            f"{p} is not a readable checkpoint ({type(exc).__name__}); pass a .ckpt written by "
            "fashion-cnn fit"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by fashion-cnn fit"
        )
    hparams = checkpoint.get("hyper_parameters", {})
    if "layers" not in hparams or "filters" not in hparams:
        raise UserError(
            f"{p} is a checkpoint of another model (its hyperparameters have no layers/filters); "
            "pass a checkpoint written by fashion-cnn fit"
        )
    return checkpoint


def write_predictions(path: Path, predictions: list[dict[str, torch.Tensor]], datamodule: Any) -> None:
    """CSV: item (file name or test index), predicted class, confidence, one column per class."""
    names = list(getattr(datamodule, "class_names", [str(i) for i in range(10)]))
    items = list(getattr(datamodule, "predict_names", []))
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["item", "predicted", "confidence", *[f"p_{n}" for n in names]])
        for batch in predictions:
            probs = batch["probs"].cpu()
            preds = batch["preds"].cpu()
            index = batch.get("index")
            for row in range(len(preds)):
                i = int(index[row]) if index is not None else row
                item = items[i] if i < len(items) else str(i)
                p = probs[row]
                writer.writerow(
                    [item, names[int(preds[row])], f"{float(p.max()):.6f}", *[f"{float(v):.6f}" for v in p]]
                )


_RESUME_HINT = (
    "Resume with the same command plus `--ckpt_path last` (last.ckpt: the last full epoch; "
    "interrupted.ckpt: the partial epoch)."
)

# Trainers built by this process, newest last, so that an error can end their MLflow run.
_ACTIVE: list[Any] = []


@dataclass
class RunResult:
    """What :func:`run_experiment` returns."""

    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    run_name: str | None = None


def run_experiment(
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    subcommand: str = "fit",
) -> RunResult:
    """Run one CLI subcommand from Python and return its MLflow run id and final metrics.

    Args:
        config: A YAML config (as for ``--config``), or None for the defaults.
        overrides: Further CLI arguments, either as strings (``["--trainer.max_epochs=1"]``) or
            as a mapping of dotted keys to values (``{"trainer.max_epochs": 1}``).
        subcommand: fit, validate, test or predict.

    Raises:
        UserError, ValueError, DataError: For bad input, like the CLI reports them.
        SystemExit: From the argument parser, for unknown keys or values of the wrong type.
    """
    args = [subcommand]
    if config is not None:
        args += ["--config", str(config)]
    if isinstance(overrides, Mapping):
        import json

        args += [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    else:
        args += list(overrides)
    cli = FashionCLI(args=args)
    trainer = cli.trainer
    logger = trainer.logger
    result = RunResult(run_id=None, run_name=getattr(cli, "_run_name", None))
    callback = trainer.checkpoint_callback
    result.best_checkpoint = getattr(callback, "best_model_path", None) or None
    if isinstance(logger, MLFlowLogger):
        result.run_id = logger.run_id
        result.metrics = dict(logger.experiment.get_run(logger.run_id).data.metrics)
    else:
        result.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return result


def _end_open_runs(status: str) -> None:
    """Mark MLflow runs this process left RUNNING as ``status``."""
    while _ACTIVE:
        trainer = _ACTIVE.pop()
        logger = getattr(trainer, "logger", None)
        if not isinstance(logger, MLFlowLogger) or not logger._initialized or logger._run_id is None:
            continue
        try:
            client = logger.experiment
            if client.get_run(logger.run_id).info.status == "RUNNING":
                client.set_terminated(logger.run_id, status)
        except Exception:  # the store itself may be what failed; nothing more to do
            log.debug("could not mark run %s %s", logger._run_id, status, exc_info=True)


def _active_tracking_uri() -> str:
    for trainer in reversed(_ACTIVE):
        logger = getattr(trainer, "logger", None)
        if isinstance(logger, MLFlowLogger):
            return logger._tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or "the configured tracking URI"


def _describe(exc: BaseException) -> str | None:
    """One line for a user error, or None for a bug (which keeps its traceback)."""
    from mlflow.exceptions import MlflowException

    if isinstance(
        exc, (UserError, DataError, NonFiniteLossError, ValueError, FileNotFoundError, PermissionError)
    ):
        return str(exc)
    if isinstance(exc, MlflowException):
        uri = _active_tracking_uri()
        return (
            f"MLflow tracking failed ({uri}): {exc.message.splitlines()[0]}. Start the tracking "
            "server or point MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at a "
            "reachable store (the default is sqlite:///mlflow.db in this folder)."
        )
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        return (
            "the checkpoint's weights do not fit the model built from the config: "
            f"{str(exc).splitlines()[0]} Use the config the checkpoint was trained with."
        )
    return None


# name -> (module, function(argv) -> exit code) for the subcommands beside fit/validate/test/predict.
_TOOLS: dict[str, tuple[str, str]] = {
    "study": ("fashion_cnn.study", "study_main"),
    "export": ("fashion_cnn.export", "export_main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fashion-cnn`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    # Subcommands that are not Trainer methods have their own small parsers.
    if args and args[0] in _TOOLS:
        module, function = _TOOLS[args[0]]
        return int(getattr(importlib.import_module(module), function)(args[1:]))
    try:
        FashionCLI(args=args)
    except KeyboardInterrupt:  # before or after Lightning's own handling of Ctrl+C
        _end_open_runs("KILLED")
        sys.stderr.write(f"fashion-cnn: interrupted. {_RESUME_HINT}\n")
        return 130
    except SIGTERMException:
        _end_open_runs("KILLED")
        sys.stderr.write(f"fashion-cnn: stopped by SIGTERM. {_RESUME_HINT}\n")
        return 143
    except SystemExit as exc:  # parser errors (2), --help (0), Lightning's exit after Ctrl+C (1)
        interrupted = any(getattr(t, "interrupted", False) for t in _ACTIVE)
        _end_open_runs("KILLED" if interrupted else "FAILED")
        if interrupted:
            sys.stderr.write(f"fashion-cnn: interrupted. {_RESUME_HINT}\n")
            return 130
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        message = _describe(exc)
        _end_open_runs("FAILED")
        if message is None:
            raise
        sys.stderr.write(f"fashion-cnn: error: {message}\n")
        return 2
    _ACTIVE.clear()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
