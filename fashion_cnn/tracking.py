"""MLflow tracking for runs of the CLI: the logger, the config artifact, the run id in checkpoints.

Each piece here defuses one known LightningCLI + MLFlowLogger trap (see ``docs/cli.md``):

- :class:`MLflowLogger` defaults to ``sqlite:///mlflow.db`` (MLflow 3 refuses the old ``./mlruns``
  file store), reads ``MLFLOW_TRACKING_URI`` when the run starts rather than at import, logs each
  hyperparameter once (MLflow refuses to change a logged param, e.g. on resume), fails within
  seconds, naming the URI, when an HTTP tracking server does not answer, and files its experiment
  as a model-training experiment so that MLflow's UI opens on the runs.
- :class:`LogConfigToMLflow` stores the resolved config as the run artifact ``config.yaml``
  instead of Lightning's ``config.yaml`` in the logger's ``log_dir`` (the tracking root for MLflow,
  so the second run would fail with "config.yaml already exists").
- :class:`RunIdInCheckpoint` stores the MLflow run id in every checkpoint, so that
  ``fit --ckpt_path`` continues the same run.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fashion_cnn.errors import TrackingError
from fashion_cnn.tracking_uri import DEFAULT_TRACKING_URI, is_server, resolve_tracking_uri, sqlite_file

__all__ = [  # the store resolution lives in tracking_uri (no Lightning import); re-exported here
    "DEFAULT_TRACKING_URI",
    "LogConfigToMLflow",
    "MLflowLogger",
    "RunIdInCheckpoint",
    "is_server",
    "mlflow_logger",
    "prepare_store",
    "resolve_tracking_uri",
    "sqlite_file",
]

log = logging.getLogger(__name__)

RUN_ID_KEY = "mlflow_run_id"
TRACKING_URI_KEY = "mlflow_tracking_uri"
BEST_CHECKPOINT_TAG = "best_checkpoint"
# MLflow 3's UI opens an experiment by its kind; without this tag it shows the GenAI traces view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SERVER_TIMEOUT_S = 5.0  # how long a tracking server may take to answer the first request


def check_server(uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` within ``timeout`` seconds if the server at ``uri`` does not answer.

    MLflow's own client retries a dead server with backoff for minutes; asking its ``/health``
    endpoint once first turns a wrong address or a stopped server into one clear message. Later
    requests keep MLflow's retries, which ride out a server restart in the middle of a run.
    """
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            response.read(64)
    except urllib.error.HTTPError:
        return  # it answered (a proxy or an older server without /health): the address is right
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"the MLflow tracking server {uri} does not answer ({reason}). Start it (mlflow server "
            "--host 0.0.0.0 --port 5000 --backend-store-uri ...) or point MLFLOW_TRACKING_URI / "
            "--trainer.logger.init_args.tracking_uri at a reachable store (the default is "
            "sqlite:///mlflow.db in this folder)."
        ) from None


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (or restored) as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return str(
            client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        )
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(experiment.experiment_id)


def prepare_store(uri: str, experiment_name: str, artifact_location: str | None = None) -> str:
    """Make the store at ``uri`` usable and return the experiment's id.

    A server is asked once, with a short timeout. A sqlite store's tables and the experiment are
    created under an exclusive file lock: two runs started at once in one folder would otherwise
    both create the schema (one fails with "table ... already exists") or the experiment.

    Raises:
        TrackingError: The server does not answer, or the store cannot be opened.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if is_server(uri):
        check_server(uri)
    db = sqlite_file(uri)
    try:
        if db is None:
            return ensure_experiment(MlflowClient(uri), experiment_name, artifact_location)
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a") as lock:
            try:
                import fcntl
            except ImportError:  # Windows: no flock; concurrent first runs are then the user's call
                return ensure_experiment(MlflowClient(uri), experiment_name, artifact_location)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return ensure_experiment(MlflowClient(uri), experiment_name, artifact_location)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except (MlflowException, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise TrackingError(
            f"MLflow tracking store {uri} cannot be used: {message.splitlines()[0]}. Point "
            "MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at a reachable store."
        ) from None


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
        self._uri = uri
        self._given_run_name = run_name
        self._resumes = run_id is not None
        self._started = False
        self.interrupted = False  # set by RunCheckpoint when the fit is interrupted
        # Set by the CLI while a test follows the fit: the run is FINISHED only once it is tested.
        self.hold_success = False
        if _rank() == 0:
            prepare_store(uri, experiment_name, artifact_location)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            # MLflow tags are strings; a config file's "0" comes back from the parser as 0, which a
            # sqlite store coerces but a tracking server's protobuf API rejects.
            tags={str(k): str(v) for k, v in tags.items()} if tags else tags,
            run_id=run_id,
            artifact_location=artifact_location,
        )

    @property
    def tracking_uri(self) -> str:
        """The resolved tracking URI (absolute for a local sqlite store)."""
        return self._uri

    @property
    def run_name(self) -> str | None:
        """The run's readable name as configured (None: MLflow makes one up)."""
        return self._given_run_name

    @property
    def resumes(self) -> bool:
        """Whether this logger continues an existing run (``run_id`` was given)."""
        return self._resumes

    @property
    def started(self) -> bool:
        """Whether the MLflow run exists yet (it is created on first use, not at construction)."""
        return self._started

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``MlflowClient``; the first access creates (or reopens) the run."""
        from mlflow.exceptions import MlflowException

        try:
            client = super().experiment
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow tracking failed ({self._uri}): {exc.message.splitlines()[0]}. Point "
                "MLFLOW_TRACKING_URI / --trainer.logger.init_args.tracking_uri at a reachable store."
            ) from None
        self._started = True
        return client

    def log_hyperparams(self, params: Any) -> None:
        """Log each hyperparameter once: skip keys already logged with the same value.

        MLflow rejects a second, different value for a logged param. On resume the same values
        come again (skipped); a changed value is kept as it was first logged, with a warning.
        """
        if _rank() != 0:
            return
        flat = {k: v for k, v in flatten_params(params).items() if k != "_instantiator"}
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
        if status == "success" and self.hold_success:
            # Lightning finalizes after fit and again after test. A run marked FINISHED before its
            # test, then killed in the test, would read as complete with no test metrics.
            return
        super().finalize(status)

    def reopen(self) -> None:
        """Mark a resumed run RUNNING again (it may have ended FAILED or KILLED)."""
        if _rank() == 0:
            self.experiment.update_run(self.run_id, status="RUNNING")

    def end_if_running(self, status: str) -> None:
        """Mark the run ``status`` (FAILED, KILLED) if it was started and is still RUNNING.

        For failures outside Lightning's loops, which end runs themselves. Never raises: the store
        may be what failed.
        """
        if not self._started or _rank() != 0:
            return
        try:
            client = self.experiment
            if client.get_run(self.run_id).info.status == "RUNNING":
                client.set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001 - best effort while another error is on its way
            log.debug("could not mark run %s %s", self.run_id, status, exc_info=True)


def flatten_params(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and namespaces as one flat ``{"a/b": value}`` dict (Lightning's key style)."""
    if hasattr(params, "as_dict"):  # jsonargparse Namespace
        params = params.as_dict()
    elif hasattr(params, "__dict__") and not isinstance(params, Mapping):  # argparse Namespace
        params = vars(params)
    out: dict[str, Any] = {}
    for key, value in dict(params).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "as_dict"):
            out.update(flatten_params(value, name + "/"))
        else:
            out[name] = value
    return out


def _rank() -> int:
    """This process's global rank (Lightning sets it on ``rank_zero_only``; 0 outside DDP)."""
    return int(getattr(rank_zero_only, "rank", 0))


def mlflow_logger(trainer: L.Trainer) -> MLflowLogger | None:
    """The trainer's :class:`MLflowLogger`, if it has one."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)), None)


class RunIdInCheckpoint(Callback):
    """Writes the MLflow run id into every checkpoint, so a resumed fit continues that run."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint[RUN_ID_KEY] = logger.run_id
            checkpoint[TRACKING_URI_KEY] = logger.tracking_uri


class LogConfigToMLflow(SaveConfigCallback):
    """Logs the fully resolved config as the run artifact ``config.yaml``, the settings that are
    not model or data hyperparameters (seed, trainer) as params, and the machine as ``machine.*``
    tags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        text = self.parser.dump(self.config, skip_none=False)
        logger.experiment.log_text(logger.run_id, text, "config.yaml")
        logger.log_hyperparams(run_params(self.config))
        from mlflow.entities import RunTag

        from fashion_cnn.speed import machine_tags

        tags = [RunTag(k, v) for k, v in machine_tags().items()]
        logger.experiment.log_batch(logger.run_id, tags=tags)


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
