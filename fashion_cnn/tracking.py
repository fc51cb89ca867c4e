"""MLflow tracking and checkpoint placement for runs of the CLI.

Each piece here defuses one known LightningCLI + MLFlowLogger trap (see ``docs/tracking.md``):

- :class:`MLflowLogger` defaults to ``sqlite:///mlflow.db`` (MLflow 3 refuses the old ``./mlruns``
  file store), reads ``MLFLOW_TRACKING_URI`` when the run starts rather than at import, logs each
  hyperparameter once (MLflow refuses to change a logged param, e.g. on resume) and fails fast
  when an HTTP tracking server does not answer.
- :class:`RunCheckpoint` writes checkpoints under ``<output_dir>/<run name>/<run id>/checkpoints``,
  so runs of different configs, seeds or concurrent launches never share a file.
- :class:`LogConfigToMLflow` stores the resolved config as the run artifact ``config.yaml``
  instead of Lightning's ``config.yaml`` in the logger's ``log_dir`` (the tracking root for MLflow,
  so the second run would fail with "config.yaml already exists").
- :class:`RunIdInCheckpoint` stores the MLflow run id in every checkpoint, so that
  ``fit --ckpt_path`` continues the same run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

_SQLITE_PREFIX = "sqlite:///"
DEFAULT_TRACKING_URI = _SQLITE_PREFIX + "mlflow.db"
RUN_ID_KEY = "mlflow_run_id"
BEST_CHECKPOINT_TAG = "best_checkpoint"


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use: the argument, else ``MLFLOW_TRACKING_URI``, else local sqlite.

    A relative sqlite path is made absolute: MLflow caches stores by URI string, so a process
    that changes directory would otherwise keep writing to the first folder's database.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = _sqlite_file(uri)
    if db is None or db.is_absolute():
        return uri
    return _SQLITE_PREFIX + str(db.resolve())


def _fail_fast_on_http() -> None:
    # MLflow's HTTP client retries a dead server with backoff for minutes by default. A run that
    # cannot log should fail within seconds and say why; users can still raise these limits.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    return Path(uri[len(_SQLITE_PREFIX) :]) if uri.startswith(_SQLITE_PREFIX) else None


def _prepare_sqlite_store(uri: str, db: Path, experiment_name: str, artifact_location: str | None) -> None:
    """Create the store's tables and the experiment under an exclusive file lock.

    Two runs started at once in one folder would otherwise both create the schema (one fails
    with "table ... already exists") or both create the experiment (one fails on the unique name).
    """
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent first runs are then the user's call
            fcntl = None
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                client.create_experiment(experiment_name, artifact_location=artifact_location)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


class MLflowLogger(MLFlowLogger):
    """``MLFlowLogger`` with safe defaults for this project.

    Args:
        experiment_name: MLflow experiment the runs are filed under.
        run_name: Readable run name; the CLI derives it from the config file and seed.
        tracking_uri: Tracking store or server. Default: ``MLFLOW_TRACKING_URI`` if set, else
            ``sqlite:///mlflow.db`` in the working directory. ``http://host:port`` for a server.
        tags: Extra run tags.
        run_id: Continue this existing run instead of creating one (set by the CLI on resume).
        artifact_location: Where a newly created experiment stores artifacts (default: MLflow's
            choice, ``./mlartifacts`` next to a local sqlite store).
    """

    def __init__(
        self,
        experiment_name: str = "fashion-cnn",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        uri = resolve_tracking_uri(tracking_uri)
        if uri.startswith(("http://", "https://")):
            _fail_fast_on_http()
        self.interrupted = False  # set by RunCheckpoint when the fit is interrupted
        db = _sqlite_file(uri)
        if db is not None:
            _prepare_sqlite_store(uri, db, experiment_name, artifact_location)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            tags=tags,
            run_id=run_id,
            artifact_location=artifact_location,
        )

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    def log_hyperparams(self, params: Any) -> None:
        """Log each hyperparameter once: skip keys already logged with the same value.

        MLflow rejects a second, different value for a logged param. On resume the same values
        come again (skipped); a changed value is kept as it was first logged, with a warning.
        """
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        if rank_zero_only.rank != 0:
            return
        flat = {k: v for k, v in _flatten_dict(_convert_params(params)).items() if k != "_instantiator"}
        existing = self.experiment.get_run(self.run_id).data.params
        fresh = {}
        for key, value in flat.items():
            text = str(value)[:250]
            if key not in existing:
                fresh[key] = value
            elif existing[key] != text:
                log.warning(
                    "param %r was logged as %r and cannot change to %r in the same MLflow run; "
                    "keeping the first value",
                    key,
                    existing[key],
                    text,
                )
        if fresh:
            super().log_hyperparams(fresh)

    def finalize(self, status: str = "success") -> None:
        # Lightning reports an interrupted fit (Ctrl+C, SIGTERM) as "failed"; MLflow has a word
        # for it, so a user can tell a killed run from a crashed one.
        if status == "failed" and self.interrupted:
            status = "KILLED"
        super().finalize(status)

    def reopen(self) -> None:
        """Mark a resumed run RUNNING again (it may have ended FAILED or KILLED)."""
        if rank_zero_only.rank == 0:
            self.experiment.update_run(self.run_id, status="RUNNING")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that files checkpoints per run: ``<root>/<run name>/<run id>/checkpoints``.

    Every other argument is ``ModelCheckpoint``'s; the CLI sets ``root`` from ``--output_dir``.
    An explicit ``dirpath`` wins.
    """

    def __init__(self, *args: Any, root: str = "runs", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = root

    INTERRUPTED_NAME = "interrupted"

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, Path(filepath), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(run_directory(trainer, self.root) / "checkpoints")
        super().setup(trainer, pl_module, stage)

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
        if isinstance(trainer.logger, MLflowLogger):
            trainer.logger.interrupted = True
        if self.dirpath is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        path = Path(self.dirpath) / f"{self.INTERRUPTED_NAME}{self.FILE_EXTENSION}"
        save_checkpoint_atomically(trainer, path, weights_only=False)  # full state, to resume from
        log.warning(
            "fit interrupted at epoch %d, step %d; saved %s", trainer.current_epoch, trainer.global_step, path
        )


def save_checkpoint_atomically(trainer: L.Trainer, path: Path, weights_only: bool) -> None:
    """``trainer.save_checkpoint`` into ``<path>.partial``, then rename it over ``path``.

    Lightning writes the file in place: a kill or a full disk mid-write would leave a truncated
    last.ckpt where a good one was. The temporary name is the same on every DDP rank because the
    save is collective and only rank 0 writes (so ``fashion_cnn._io.atomic_path``, which draws a
    unique name per process, does not fit here).
    """
    partial = path.with_name(path.name + ".partial")
    trainer.save_checkpoint(partial, weights_only)
    if trainer.is_global_zero:
        os.replace(partial, path)
    trainer.strategy.barrier("save_checkpoint_atomically")


def run_directory(trainer: L.Trainer, root: str | os.PathLike[str]) -> Path:
    """``<root>/<run name>/<run id>`` of the trainer's MLflow run (``<root>/local`` without one).

    The run id is created on rank 0 and broadcast, so every process of a DDP run agrees.
    """
    name, run_id = "local", "no-run"
    logger = trainer.logger
    if isinstance(logger, MLFlowLogger):
        name = logger._run_name or "run"
        run_id = logger.run_id if trainer.is_global_zero else None
    run_id = trainer.strategy.broadcast(run_id)
    return Path(root) / name / str(run_id)


class RunIdInCheckpoint(Callback):
    """Writes the MLflow run id into every checkpoint, so a resumed fit continues that run."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if isinstance(trainer.logger, MLFlowLogger) and trainer.is_global_zero:
            checkpoint[RUN_ID_KEY] = trainer.logger.run_id
            checkpoint["mlflow_tracking_uri"] = trainer.logger._tracking_uri


class LogConfigToMLflow(SaveConfigCallback):
    """Logs the fully resolved config as the run artifact ``config.yaml`` and the settings that
    are not model or data hyperparameters (seed, trainer) as params."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLFlowLogger):
            return
        text = self.parser.dump(self.config, skip_none=False)
        logger.experiment.log_text(logger.run_id, text, "config.yaml")
        logger.log_hyperparams(run_params(self.config))


# The trainer settings that change results or cost; the rest (progress bar, logging cadence)
# would only clutter the run's params.
_TRAINER_PARAMS = (
    "max_epochs",
    "max_steps",
    "precision",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "deterministic",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
)


def run_params(config: Any) -> dict[str, Any]:
    """Seed and the trainer settings that matter, as flat MLflow params."""
    params: dict[str, Any] = {"seed": config.get("seed_everything")}
    trainer = config.get("trainer") or {}
    for key in _TRAINER_PARAMS:
        value = trainer.get(key)
        if isinstance(value, (str, int, float, bool)) or value is None:
            params[f"trainer.{key}"] = value
    return params
