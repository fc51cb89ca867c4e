"""One run of fit, validate, test or predict: :class:`FashionCLI`, :func:`run_cli` and the resolver.

The path of a run: a config (``configs/ultimate.yaml``) and overrides are parsed by
:class:`FashionCLI`, a LightningCLI over :class:`~fashion_cnn.FashionCNN` and
:class:`~fashion_cnn.FashionMNISTDataModule`; it builds the Trainer with an
:class:`~fashion_cnn.tracking.MLflowLogger`, trains, tests the best checkpoint, and files the
checkpoints under ``<output_dir>/<run name>/<run id>/checkpoints``. :func:`run_cli` is the one
wrapper that ends the MLflow run on an error or interrupt and restores the Ctrl+C handler, so
runs can be started many times in one process (a notebook, a study).

Only public extension points are used: LightningCLI's hooks (``init_parser``,
``add_arguments_to_parser``, ``parse_arguments``, ``before_instantiate_classes``,
``instantiate_trainer``, ``before_/after_<subcommand>``), a ``CheckpointIO`` plugin and a
``BasePredictionWriter``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import lightning as L
import torch
import yaml
from jsonargparse import capture_parser, lazy_instance
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fashion_cnn import __version__, legacy
from fashion_cnn.checkpoints import AtomicCheckpointIO, RunCheckpoint, read_checkpoint
from fashion_cnn.components import LINKS, config_files, diagnose
from fashion_cnn.configs import ConfigFileAction
from fashion_cnn.console import RunConsole, precision_reason
from fashion_cnn.data import FashionMNISTDataModule
from fashion_cnn.errors import CheckpointError, ConfigError, Interrupted, UserError
from fashion_cnn.evaluation import EvaluationReport
from fashion_cnn.legacy import is_flat, to_parts, translate_args
from fashion_cnn.network import FashionCNNNet
from fashion_cnn.predictions import PredictionWriter
from fashion_cnn.seeding import EpochSeed
from fashion_cnn.speed import fast_precision
from fashion_cnn.system import FashionCNN
from fashion_cnn.tracking import (
    BEST_CHECKPOINT_TAG,
    RUN_ID_KEY,
    LogConfigToMLflow,
    MLflowLogger,
    RunIdInCheckpoint,
    mlflow_logger,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# Defaults every run gets unless the config says otherwise; the journal trained for 3 epochs.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 3,
    "logger": {"class_path": "fashion_cnn.tracking.MLflowLogger"},
    "callbacks": [RunIdInCheckpoint(), EpochSeed(), EvaluationReport()],
}

RESUME_HINT = (
    "Resume with the same command plus `--ckpt_path last` (last.ckpt: the last full epoch; "
    "interrupted.ckpt: the partial epoch)."
)


def default_progress_bar() -> TQDMProgressBar:
    """The progress bar of every run: redrawn every 10 steps instead of every step, which alone
    cost ~1 ms per step (3 % of a CPU training step) in benchmarks/bench_overhead.py."""
    return TQDMProgressBar(refresh_rate=10)


class ArgumentParser(LightningArgumentParser):
    """The CLI's parser: a bad argument raises :class:`~fashion_cnn.errors.ConfigError` naming it.

    The console (:mod:`fashion_cnn.cli`) subclasses it to print the message and exit instead. The
    subcommands action it creates stays reachable as :attr:`subcommands_action`, so callers can
    register more subcommands next to LightningCLI's and find each subcommand's parser.
    """

    subcommands_action: Any = None

    def add_subcommands(self, *args: Any, **kwargs: Any) -> Any:
        self.subcommands_action = super().add_subcommands(*args, **kwargs)
        return self.subcommands_action

    def parse_args(  # type: ignore[override]  # the same parameters, passed on unchanged
        self, args: Any = None, namespace: Any = None, **kwargs: Any
    ) -> Any:
        # jsonargparse would say only that a value is not of the expected type: name the import
        # error, or the wrong kind of class, of a class path first (through error(), so the
        # console prints it as its one line).
        given = [str(a) for a in args] if args is not None else sys.argv[1:]
        files = config_files(given)
        problem = legacy.diagnose(given, files) or diagnose(given, files)
        if problem is not None:
            self.error(problem)
        # The old flat keys (--model.dropout, --model.lr) name the journal network's and the
        # optimiser's arguments (fashion_cnn.legacy.ALIASES).
        return super().parse_args(translate_args(given), namespace, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ConfigError(message.strip().replace("\n", " "))


@dataclass
class RunSession:
    """What one :class:`FashionCLI` run built, held by the caller so it can clean up after it."""

    trainer: L.Trainer | None = None

    @property
    def logger(self) -> MLflowLogger | None:
        return None if self.trainer is None else mlflow_logger(self.trainer)

    @property
    def interrupted(self) -> bool:
        return self.trainer is not None and self.trainer.interrupted

    def end(self, status: str) -> None:
        """Mark the run's MLflow run ``status`` if it is still RUNNING."""
        logger = self.logger
        if logger is not None:
            logger.end_if_running(status)


class FashionCLI(LightningCLI):
    """LightningCLI over FashionCNN and FashionMNISTDataModule with MLflow tracking.

    Extra top-level options: ``--run_name`` (default: the config file's name), ``--output_dir``
    (where checkpoints and predictions go, default ``runs``), ``--test_after_fit`` (default true),
    ``--predictions_file`` and the ``--checkpoint.*`` options of :class:`RunCheckpoint`.

    Args:
        args: Command-line style arguments (``["fit", "--config", "configs/debug.yaml"]``).
        session: Receives the trainer as soon as it exists, for :func:`run_cli`'s cleanup.
        parser_class: The parser class (the console uses one that adds the other subcommands).
        callbacks: Callbacks added to the trainer besides the config's (a sweep's pruner).
    """

    def __init__(
        self,
        args: Sequence[str] | None = None,
        session: RunSession | None = None,
        parser_class: type[LightningArgumentParser] = ArgumentParser,
        callbacks: Sequence[L.Callback] = (),
    ) -> None:
        self.session = session if session is not None else RunSession()
        self.extra_callbacks = list(callbacks)
        self._checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, once read
        self.run_name = "fashion-cnn"
        self.precision_reason = "as configured"
        super().__init__(
            FashionCNN,
            L.LightningDataModule,  # any DataModule by class path; Fashion-MNIST by default
            subclass_mode_data=True,
            save_config_callback=LogConfigToMLflow,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=True,
            parser_kwargs={"prog": "fashion-cnn", "version": __version__},
            parser_class=parser_class,
            args=list(args) if args is not None else None,
            auto_configure_optimizers=False,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ConfigFileAction,
            help="A YAML config: a path, or a packaged one by name (configs/ultimate.yaml, ultimate; "
            "`fashion-cnn configs` lists them).",
        )
        return parser

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
        # The journal's network and data unless the config names others (by class path).
        parser.set_defaults(
            {"model.net": lazy_instance(FashionCNNNet), "data": lazy_instance(FashionMNISTDataModule)}
        )
        # What the data decides is linked, never typed twice: into the training system, and into
        # the network for any network that takes these arguments (jsonargparse skips a link whose
        # target the chosen class does not have). Each reads the DataModule through its protocol
        # (data.DataProtocol), so a missing attribute is named before anything is built.
        for target, read in LINKS:
            parser.link_arguments("data", target, compute_fn=read, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the model's hyperparameters from --ckpt_path into the config; those
        # of a checkpoint written before issue 20 are flat (layers, filters, ...): map them.
        checkpoint = self._checkpoint
        if checkpoint is None or not self.config.get("subcommand"):
            return
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if is_flat(hparams):
            hparams = to_parts(hparams)
        if not hparams:
            return
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with warnings.catch_warnings():
            # args given from Python while the program has its own sys.argv: that is intended.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub not in TRAINER_SUBCOMMANDS:
            return
        settings = self.config[sub]
        settle(settings)
        ckpt = settings.get("ckpt_path")
        if sub == "fit" and ckpt == "last":
            ckpt = settings.ckpt_path = str(self._find_last_checkpoint(settings))
        if ckpt and ckpt not in ("last", "best"):
            # Lightning unpickles ckpt_path next to read the model's hyperparameters: check the file
            # first, so a wrong path or a non-checkpoint gets a message that names it. Kept: fit
            # reads the MLflow run id from it without a second load.
            self._checkpoint = read_checkpoint(ckpt)

    def before_instantiate_classes(self) -> None:
        sub = self.config[self.subcommand]
        run_name = run_name_of(sub)
        if self.subcommand != "fit":
            run_name += f"-{self.subcommand}"
        sub.checkpoint.root = sub.output_dir
        if sub.trainer.get("precision") is None:
            # bf16 autocast where the hardware computes bf16 natively (2-2.5x on an AVX512-BF16
            # CPU); fp32 elsewhere, so no machine gets slower by default.
            accelerator = _resolve_accelerator(sub.trainer.get("accelerator"))
            sub.trainer.precision = fast_precision(accelerator)
            self.precision_reason = precision_reason(accelerator, sub.trainer.precision)
        check_writable(Path(sub.output_dir), "--output_dir")
        logger = sub.trainer.get("logger")
        if isinstance(logger, Mapping) or hasattr(logger, "init_args"):
            init = logger.init_args
            if "run_name" in init and init.run_name is None:
                init.run_name = run_name
            if self.subcommand == "fit" and self._checkpoint is not None and "run_id" in init:
                init.run_id = init.run_id or self._run_to_resume(sub.ckpt_path, init)
        self.run_name = run_name

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as exc:
            # A link's compute function (LINKS) found the DataModule without a protocol attribute;
            # jsonargparse wraps that message in its own, which the user needs not read.
            text = str(exc)
            if "compute_fn of link" in text and "failed: " in text:
                raise ConfigError(text.split("failed: ", 1)[1]) from None
            raise

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        settings = self.config_init[self.subcommand]["trainer"]
        callbacks = [*_as_list(settings.get("callbacks")), *self.extra_callbacks]
        plugins = list(_as_list(settings.get("plugins")))
        defaults = list(_as_list(self.trainer_defaults.get("callbacks")))
        if settings.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks + defaults
        ):
            callbacks.append(default_progress_bar())
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(self._predictions_path()))
        if not any(isinstance(c, RunConsole) for c in callbacks):
            configs = [
                getattr(c, "absolute", None) or str(c)
                for c in self.config[self.subcommand].get("config") or []
            ]
            callbacks.append(RunConsole(str(self.subcommand), configs, self.precision_reason))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer = super().instantiate_trainer(callbacks=callbacks, plugins=plugins, **kwargs)
        self.session.trainer = trainer
        return trainer

    def before_fit(self) -> None:
        shape = self.model.hparams.get("input_shape")  # (C, H, W), linked from the data
        if self.model.example_input_array is None and shape:
            # Lightning's model summary counts FLOPs by running this input; without one its FLOPs
            # column is 0 for every layer. One uint8 image: the forward FLOPs per image.
            self.model.example_input_array = torch.zeros((1, *shape), dtype=torch.uint8)
        logger = mlflow_logger(self.trainer)
        if logger is not None and logger.resumes:
            logger.reopen()
        if logger is not None:
            logger.hold_success = self._tests_after_fit()

    def after_fit(self) -> None:
        logger = mlflow_logger(self.trainer)
        if logger is not None:
            logger.hold_success = False  # the test's end marks the run FINISHED
        if self.trainer.interrupted:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or ""
        if best and logger is not None and self.trainer.is_global_zero:
            logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
            logger.experiment.set_tag(logger.run_id, BEST_CHECKPOINT_TAG, str(Path(best).resolve()))
        if self._tests_after_fit():
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)
        console = next((c for c in self.trainer.callbacks if isinstance(c, RunConsole)), None)  # type: ignore[attr-defined]
        if console is not None:
            console.log_summary(self.trainer)

    def _tests_after_fit(self) -> bool:
        return bool(self.config[self.subcommand].test_after_fit) and self.trainer.limit_test_batches != 0

    def _predictions_path(self) -> Path:
        sub = self.config[self.subcommand]
        return Path(sub.predictions_file or Path(sub.output_dir) / f"{self.run_name}-predictions.csv")

    def _find_last_checkpoint(self, sub: Any) -> Path:
        pattern = f"{run_name_of(sub)}/*/checkpoints/last.ckpt"
        found = sorted(Path(sub.output_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            # Interrupted before the first epoch ended: the partial epoch is all there is.
            partial = pattern.replace("last.ckpt", "interrupted.ckpt")
            found = sorted(Path(sub.output_dir).glob(partial), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CheckpointError(
                f"--ckpt_path last: no checkpoint matches {Path(sub.output_dir) / pattern}. Resume "
                "with the same config, seed_everything and output_dir as the interrupted run, or "
                "pass the checkpoint's path."
            )
        return found[-1]

    def _run_to_resume(self, ckpt_path: str, logger_args: Any) -> str | None:
        run_id = (self._checkpoint or {}).get(RUN_ID_KEY)
        if run_id is None:
            return None
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(resolve_tracking_uri(logger_args.get("tracking_uri"))).get_run(run_id)
        except MlflowException:
            log.warning("run %s of %s is not in this tracking store; starting a new run", run_id, ckpt_path)
            return None
        return run_id


def settle(settings: Any) -> None:
    """Defaults that depend on nothing but must be in the parsed config (and so in its hash)."""
    # Checkpoints are loaded without executing code; ours hold only tensors and plain values.
    if "weights_only" in settings and settings.get("weights_only") is None:
        settings.weights_only = True


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve_accelerator(accelerator: Any) -> str:
    """What Lightning's "auto" will pick: cuda, then mps, then cpu."""
    if isinstance(accelerator, str) and accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "gpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_writable(folder: Path, option: str) -> None:
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


def run_name_of(sub: Any) -> str:
    """``<run_name or config file name>-seed<seed>``: names the MLflow run and its folder."""
    name = sub.get("run_name") or _config_stem(sub.get("config")) or "fashion-cnn"
    return f"{name}-seed{sub.get('seed_everything')}"


def _config_stem(configs: Any) -> str | None:
    if not configs:
        return None
    last = configs[-1]
    path = getattr(last, "relative", None) or getattr(last, "absolute", None) or str(last)
    return Path(str(path)).stem


# --------------------------------------------------------------------------------------------
# Running from Python, with cleanup


@contextlib.contextmanager
def _tracking_uri_kept() -> Iterator[None]:
    """Undo MLflow's process-wide tracking URI afterwards.

    Lightning's MLFlowLogger calls ``mlflow.set_tracking_uri``, which also sets the environment
    variable ``MLFLOW_TRACKING_URI``: the next run in this process (or any child process) would
    log to this run's store even from another folder. Put back what was there before.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if os.environ.get("MLFLOW_TRACKING_URI") != before:
            import mlflow

            mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets both (MLflow's code)


@contextlib.contextmanager
def _sigint_handler_kept() -> Iterator[None]:
    """Restore the Ctrl+C handler afterwards: Lightning ignores SIGINT once it has handled one."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_cli(
    args: Sequence[str],
    parser_class: type[LightningArgumentParser] = ArgumentParser,
    callbacks: Sequence[L.Callback] = (),
) -> FashionCLI:
    """Run ``FashionCLI(args)`` (with ``callbacks`` added); the MLflow run never stays RUNNING.

    Raises:
        Interrupted: Ctrl+C or SIGTERM stopped the run (marked KILLED; checkpoints kept).
        ConfigError: A bad argument (with the default parser class).
        SystemExit: ``--help`` or ``--print_config`` (and a bad argument with the console's parser).
        Exception: Anything else, after the run was marked FAILED.
    """
    session = RunSession()
    with _sigint_handler_kept(), _tracking_uri_kept():
        try:
            return FashionCLI(args, session=session, parser_class=parser_class, callbacks=callbacks)
        except KeyboardInterrupt:
            session.end("KILLED")
            raise Interrupted(f"interrupted. {RESUME_HINT}") from None
        except SIGTERMException:
            session.end("KILLED")
            raise Interrupted(f"stopped by SIGTERM. {RESUME_HINT}", "SIGTERM") from None
        except SystemExit:
            # Lightning turns Ctrl+C during a loop into sys.exit(1) after finalizing the run.
            if session.interrupted:
                session.end("KILLED")
                raise Interrupted(f"interrupted. {RESUME_HINT}") from None
            session.end("FAILED")
            raise
        except BaseException:
            session.end("FAILED")
            raise


# --------------------------------------------------------------------------------------------
# Resolving configs without running them (studies, sweeps)


class ConfigResolver:
    """Resolves ``fit`` configs exactly as ``fashion-cnn fit ... --print_config`` shows them.

    Builds the CLI's parser once (about half a second) and parses each config through it; nothing
    is instantiated and nothing is printed.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            self.parser: Any = capture_parser(lambda: FashionCLI(args=["fit"]))
        self.fit_parser: Any = cast(Any, self.parser).subcommands_action.choices["fit"]

    def resolve(self, config: str | os.PathLike[str] | None, args: Sequence[str] = ()) -> dict[str, Any]:
        """The full ``fit`` config of ``--config config`` plus ``args``, as plain data.

        Raises:
            ConfigError: The parser's message for a bad key or value.
        """
        argv = ["fit", *(["--config", str(config)] if config else []), *args]
        settings = self.parser.parse_args(argv)["fit"]
        settle(settings)
        return yaml.safe_load(self.fit_parser.dump(settings, skip_unset=False)) or {}
