"""One Optuna trial is one real ``fit``: sample the space, create its MLflow child run, train, score.

:class:`Objective` is what every worker process calls. It holds only plain data (a
:class:`TrialPlan`), so it pickles to a spawned worker unchanged. For each trial it samples the
space, creates the trial's MLflow child run (so its id is known before training, and kept in the
trial's user attributes), writes the trial's full config and trains it through
:func:`~fashion_cnn.study.trial.run_trial` (console output in ``<output>/logs/trial-NNNN.log``,
checkpoints under ``<output>/runs``, never the test set). The trial's value is the best value of
the objective over its epochs: the epoch whose checkpoint the trial keeps.

How a trial ends, in Optuna and in its MLflow run (tag ``optuna_state`` and status):

============  ==============  =====================================================================
Optuna        MLflow status   why
============  ==============  =====================================================================
COMPLETE      FINISHED        trained its whole budget
PRUNED        KILLED          stopped on purpose before the end of its budget, which is what KILLED
                              means in MLflow; FAILED would read as a crash, FINISHED as a full run
FAIL          FAILED/KILLED   a bad combination of values, a crash, or Ctrl+C (KILLED)
============  ==============  =====================================================================
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.study.trial import Trial as RunSpec
from fashion_cnn.study.trial import TrialFailed, run_trial
from fashion_cnn.sweep.pruning import PrunerSettings
from fashion_cnn.sweep.space import SearchSpace
from fashion_cnn.tracking import BEST_CHECKPOINT_TAG

log = logging.getLogger(__name__)

# Tags of the sweep's MLflow runs; plain keys keep MLflow filters simple.
TAG_SWEEP, TAG_ROLE, TAG_TRIAL, TAG_STATE = "sweep", "sweep_role", "optuna_trial", "optuna_state"
TAG_STUDY, TAG_STORAGE, TAG_PRUNED_AT = "optuna_study", "optuna_storage", "pruned_at_epoch"
PARAM_PREFIX = "sweep/"  # the sampled values, as params of the child run: sweep/model.lr
STATE_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

# Trial user attributes (Optuna): where the trial's records are.
ATTR_RUN, ATTR_CHECKPOINT, ATTR_WORKER, ATTR_REASON = (
    "mlflow_run_id",
    "best_checkpoint",
    "worker",
    "fail_reason",
)


@dataclass(frozen=True)
class TrialPlan:
    """What a worker needs to run trials: plain data, so it pickles to another process."""

    name: str
    storage: str
    objective: str
    higher_is_better: bool
    space: SearchSpace
    resolved: dict[str, Any]  # the base config with the fixed settings, as fit resolves it
    output: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    pruner: PrunerSettings
    threads: int | None = None

    def log_file(self, number: int) -> Path:
        return Path(self.output) / "logs" / f"trial-{number:04d}.log"

    def run_name(self, number: int) -> str:
        return f"{self.name}-trial{number:04d}"


class Objective:
    """The Optuna objective of a sweep: trains one trial and returns its best objective value.

    Raises (to Optuna, which records the state):
        optuna.TrialPruned: The pruner stopped the trial.
        TrialFailed: The trial's values cannot train (bad combination, NaN loss); recorded as FAIL
            and the search goes on.
        Interrupted: Ctrl+C or SIGTERM; the trial is FAIL, its run KILLED.
    """

    def __init__(self, plan: TrialPlan) -> None:
        self.plan = plan

    def __call__(self, trial: Any) -> float:
        import optuna
        from mlflow.tracking import MlflowClient

        plan = self.plan
        number = trial.number
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        sampled = plan.space.suggest(trial)
        client = MlflowClient(plan.tracking_uri)
        run_id = self._create_run(client, number, sampled)
        trial.set_user_attr(ATTR_RUN, run_id)
        config = trial_config(plan, number, sampled, run_id)
        seed = int(config.get("seed_everything") or 0)
        spec = RunSpec((plan.name, f"trial{number}", seed), config, str(plan.log_file(number)), plan.threads)
        try:
            run_trial(spec)
        except optuna.TrialPruned:
            epochs = _reported_epochs(trial)
            client.set_tag(run_id, TAG_PRUNED_AT, str(epochs[-1] if epochs else 0))
            mark_run(client, run_id, "PRUNED")
            raise
        except TrialFailed as exc:
            trial.set_user_attr(ATTR_REASON, str(exc)[:1000])
            mark_run(client, run_id, "FAIL")
            raise
        except BaseException as exc:
            # Interrupted, or a bug: run_cli has ended the run (KILLED or FAILED); only the tag is left.
            with contextlib.suppress(Exception):  # the store may be what failed; keep the real error
                trial.set_user_attr(ATTR_REASON, f"{type(exc).__name__}: {exc}"[:1000])
                mark_run(client, run_id, "FAIL", status=None)
            raise
        value = self._value(client, run_id, number)
        checkpoint = client.get_run(run_id).data.tags.get(BEST_CHECKPOINT_TAG)
        if checkpoint:
            trial.set_user_attr(ATTR_CHECKPOINT, checkpoint)
        mark_run(client, run_id, "COMPLETE")
        return value

    def _create_run(self, client: Any, number: int, sampled: Mapping[str, Any]) -> str:
        from fashion_cnn.sweep.storage import shown

        plan = self.plan
        tags = {
            MLFLOW_PARENT_RUN_ID: plan.parent_run_id,
            TAG_SWEEP: plan.name,
            TAG_ROLE: "trial",
            TAG_STUDY: plan.name,
            TAG_TRIAL: str(number),
            TAG_STATE: "RUNNING",
            TAG_STORAGE: shown(plan.storage),
        }
        run = client.create_run(plan.experiment_id, run_name=plan.run_name(number), tags=tags)
        from mlflow.entities import Param

        params = [Param(f"{PARAM_PREFIX}{k}", str(v)) for k, v in sampled.items()]
        if params:
            client.log_batch(run.info.run_id, params=params)
        return str(run.info.run_id)

    def _value(self, client: Any, run_id: str, number: int) -> float:
        import math

        history = [m.value for m in client.get_metric_history(run_id, self.plan.objective)]
        values = [v for v in history if math.isfinite(v)]
        if not values:
            raise TrialFailed(
                f"trial {number}: the run logged no finite {self.plan.objective} "
                f"(log: {self.plan.log_file(number)})"
            )
        return max(values) if self.plan.higher_is_better else min(values)


def trial_config(plan: TrialPlan, number: int, sampled: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The full ``fit`` config of trial ``number``: the resolved base, the sampled values, and the
    sweep's own settings (names, places, logger, pruning callback, no test)."""
    config = copy.deepcopy(plan.resolved)
    config.pop("config", None)
    for key, value in sampled.items():
        set_dotted(config, key, value)
    config["run_name"] = plan.run_name(number)
    config["output_dir"] = str(Path(plan.output) / "runs")
    config["test_after_fit"] = False
    config["checkpoint"] = {**config["checkpoint"], "save_last": False}  # trials are never resumed
    trainer = dict(config["trainer"])
    trainer["enable_progress_bar"] = False  # the log file gets no progress bar redraws
    logger = copy.deepcopy(trainer["logger"])
    logger["init_args"] = {
        **(logger.get("init_args") or {}),
        "tracking_uri": plan.tracking_uri,
        "run_id": run_id,
    }
    trainer["logger"] = logger
    pruning = {
        "class_path": "fashion_cnn.sweep.pruning.OptunaPruning",
        "init_args": {
            "storage": plan.storage,
            "study_name": plan.name,
            "trial_number": number,
            "monitor": plan.objective,
            "pruner": plan.pruner.as_dict(),
        },
    }
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), pruning]
    config["trainer"] = trainer
    return config


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree["model"]["lr"] = value`` for ``key`` ``model.lr`` (missing levels created)."""
    *path, last = key.split(".")
    node = tree
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def mark_run(client: Any, run_id: str, state: str, status: str | None = "") -> None:
    """Tag the trial's run with its Optuna ``state`` and end it with the matching MLflow status.

    ``status=""``: the status of :data:`STATE_STATUS`; None: leave the status as it is.
    """
    client.set_tag(run_id, TAG_STATE, state)
    wanted = STATE_STATUS.get(state) if status == "" else status
    if wanted is not None and client.get_run(run_id).info.status != wanted:
        client.set_terminated(run_id, wanted)


def _reported_epochs(trial: Any) -> list[int]:
    """The epochs the pruning callback reported for ``trial`` (read back from the storage)."""
    for frozen in trial.study.get_trials(deepcopy=False):
        if frozen.number == trial.number:
            return sorted(frozen.intermediate_values)
    return []


__all__ = ["STATE_STATUS", "Objective", "TrialPlan", "mark_run", "set_dotted", "trial_config"]
