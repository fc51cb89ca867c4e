"""A sweep's trials on the run layer: Optuna asks for the next trial, the executor trains it, Optuna
is told how it ended.

:class:`Trials` is the iterable a sweep hands to its executor. Each time a slot frees it asks the
Optuna study for a trial (in this process: the sampler sees every finished and running trial),
samples the space, creates the trial's MLflow child run (so its id is known before training, and
kept in the trial's user attributes) and yields the run: the trial's full config, console output in
``<output>/logs/trial-NNNN.log``, checkpoints under ``<output>/runs``, never the test set, and the
pruning callback that reports every epoch to the trial through the storage. When the run ends,
:meth:`Trials.done` tells the study its value (the best of the objective over the epochs, read from
the trainer's checkpoint callback, which monitors the objective) or its state.

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

import copy
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.runs.launch import RunOutcome, RunSpec
from fashion_cnn.runs.progress import Progress
from fashion_cnn.runs.records import TAG_EXECUTOR
from fashion_cnn.runs.settings import set_dotted
from fashion_cnn.sweep.pruning import OptunaPruning
from fashion_cnn.sweep.search import ATTR_CHECKPOINT, ATTR_DRIVER, ATTR_REASON, ATTR_RUN, ATTR_WORKER, counted
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import shown

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3  # the search stops when this many trials fail one after another

# Tags of the sweep's MLflow runs; plain keys keep MLflow filters simple.
TAG_SWEEP, TAG_ROLE, TAG_TRIAL, TAG_STATE = "sweep", "sweep_role", "optuna_trial", "optuna_state"
TAG_STUDY, TAG_STORAGE, TAG_PRUNED_AT = "optuna_study", "optuna_storage", "pruned_at_epoch"
PARAM_PREFIX = "sweep/"  # the sampled values, as params of the child run: sweep/model.lr
STATE_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class Trials:
    """The sweep's trials, asked one at a time and told as they end.

    Args:
        spec: The checked sweep.
        study: The Optuna study, loaded with the driver's sampler and the sweep's pruner.
        client: The MLflow client of the sweep's store.
        experiment_id: The sweep's MLflow experiment.
        parent_id: The sweep's parent run.
        threads: torch threads per trial (the executor's).
        executor: The executor's name, tagged on each run.
        progress: Receives each finished trial.
    """

    def __init__(
        self,
        spec: SweepSpec,
        study: Any,
        client: Any,
        experiment_id: str,
        parent_id: str,
        threads: int | None,
        executor: str,
        progress: Progress,
    ) -> None:
        self.spec, self.study, self.client, self.parent_id = spec, study, client, parent_id
        self.threads, self.executor, self.progress = threads, executor, progress
        self.experiment_id = experiment_id
        self.deadline = time.time() + spec.options.timeout if spec.options.timeout else None
        self.running: dict[tuple[Any, ...], Any] = {}  # run key -> the live optuna Trial
        self.failures: list[int] = []  # trial numbers of the failures in a row
        self.best: float | None = None

    def __iter__(self) -> Iterator[RunSpec]:
        while len(self.failures) < MAX_FAILURES_IN_A_ROW:
            if self.deadline is not None and time.time() >= self.deadline:
                return
            target = self.spec.options.n_trials
            if target is not None and counted(self.study) >= target:
                return
            yield self._ask()

    def _ask(self) -> RunSpec:
        spec = self.spec
        trial = self.study.ask()
        trial.set_user_attr(ATTR_DRIVER, f"{socket.gethostname()}:{os.getpid()}")
        sampled = spec.space.suggest(trial)
        run_id = self._create_run(trial.number, sampled)
        trial.set_user_attr(ATTR_RUN, run_id)
        key = (spec.options.name, trial.number)
        self.running[key] = trial
        pruning = OptunaPruning(
            spec.storage, spec.options.name, trial.number, spec.options.objective, spec.pruner.as_dict()
        )
        return RunSpec(
            key,
            f"trial {trial.number}",
            trial_config(spec, trial.number, sampled, run_id),
            str(log_file(spec, trial.number)),
            self.threads,
            callbacks=(pruning,),
        )

    def _create_run(self, number: int, sampled: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        spec = self.spec
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_id,
            TAG_SWEEP: spec.options.name,
            TAG_ROLE: "trial",
            TAG_STUDY: spec.options.name,
            TAG_TRIAL: str(number),
            TAG_STATE: "RUNNING",
            TAG_STORAGE: shown(spec.storage),
            TAG_EXECUTOR: self.executor,
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name(spec, number), tags=tags)
        params = [Param(f"{PARAM_PREFIX}{k}", str(v)) for k, v in sampled.items()]
        if params:
            self.client.log_batch(run.info.run_id, params=params)
        return str(run.info.run_id)

    def done(self, run: RunSpec, outcome: RunOutcome) -> None:
        """Tell the study how the trial ended, mark its MLflow run, report it."""
        from optuna.trial import TrialState

        trial = self.running.pop(run.key)
        run_id = trial.user_attrs[ATTR_RUN]
        trial.set_user_attr(ATTR_WORKER, outcome.worker)
        state, note = "COMPLETE", ""
        if outcome.state == "pruned":
            state = "PRUNED"
            epochs = reported_epochs(self.study, trial.number)
            note = f"after epoch {epochs[-1]}" if epochs else ""
            self.client.set_tag(run_id, TAG_PRUNED_AT, str(epochs[-1] if epochs else 0))
            self.study.tell(trial, state=TrialState.PRUNED)
        elif outcome.state == "failed" or outcome.best is None:
            state = "FAIL"
            note = outcome.error or (
                f"trial {trial.number}: the run logged no finite {self.spec.options.objective} "
                f"(log: {run.log_file})"
            )
            trial.set_user_attr(ATTR_REASON, note[:1000])
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            if outcome.best_checkpoint:
                trial.set_user_attr(ATTR_CHECKPOINT, str(Path(outcome.best_checkpoint).resolve()))
            self.study.tell(trial, outcome.best)
        mark_run(self.client, run_id, state)
        self.failures = [*self.failures, trial.number] if state == "FAIL" else []
        self.progress.finished(
            (self.spec.options.name, "trial"),
            run.label,
            outcome.wall_s,
            self._line(outcome, trial, state, note),
            state={"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed"}[state],
        )

    def _line(self, outcome: RunOutcome, trial: Any, state: str, note: str) -> str:
        """``val/acc 0.8123 (best so far 0.8123)  [filters=4, lr=0.00123]: note``."""
        value = outcome.best if state == "COMPLETE" else None
        if value is not None and math.isfinite(value):
            higher = self.spec.higher_is_better
            if self.best is None or (value > self.best if higher else value < self.best):
                self.best = value
        shown_params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
        metric = f"{self.spec.options.objective} {value:.4f}" if value is not None else ""
        best = f" (best so far {self.best:.4f})" if self.best is not None else ""
        return f"{metric}{best}  [{shown_params}]" + (f": {note[:300]}" if note else "")

    def abandon(self, reason: str, status: str) -> None:
        """The trials still running will not end on their own (Ctrl+C, a lost run): FAIL them, and
        end their MLflow runs ``status`` where the run could not."""
        from optuna.trial import TrialState

        for trial in self.running.values():
            trial.set_user_attr(ATTR_REASON, reason[:1000])
            self.study.tell(trial, state=TrialState.FAIL)
            mark_run(self.client, trial.user_attrs[ATTR_RUN], "FAIL", status=status)
        self.running = {}


def log_file(spec: SweepSpec, number: int) -> Path:
    return spec.output / "logs" / f"trial-{number:04d}.log"


def run_name(spec: SweepSpec, number: int) -> str:
    return f"{spec.options.name}-trial{number:04d}"


def trial_config(spec: SweepSpec, number: int, sampled: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The full ``fit`` config of trial ``number``: the resolved base, the sampled values, and the
    sweep's own settings (names, places, logger, no test)."""
    config = copy.deepcopy(spec.resolved)
    config.pop("config", None)
    for key, value in sampled.items():
        set_dotted(config, key, value)
    config["run_name"] = run_name(spec, number)
    config["output_dir"] = str(spec.output / "runs")
    config["test_after_fit"] = False
    config["checkpoint"] = {**config["checkpoint"], "save_last": False}  # trials are never resumed
    trainer = dict(config["trainer"])
    trainer["enable_progress_bar"] = False  # the log file gets no progress bar redraws
    logger = copy.deepcopy(trainer["logger"])
    logger["init_args"] = {
        **(logger.get("init_args") or {}),
        "tracking_uri": spec.tracking_uri,
        "run_id": run_id,
    }
    trainer["logger"] = logger
    config["trainer"] = trainer
    return config


def mark_run(client: Any, run_id: str, state: str, status: str | None = "") -> None:
    """Tag the trial's run with its Optuna ``state`` and end it with the matching MLflow status.

    ``status=""``: the status of :data:`STATE_STATUS`; None: leave the status as it is.
    """
    client.set_tag(run_id, TAG_STATE, state)
    wanted = STATE_STATUS.get(state) if status == "" else status
    if wanted is not None and client.get_run(run_id).info.status != wanted:
        client.set_terminated(run_id, wanted)


def reported_epochs(study: Any, number: int) -> list[int]:
    """The epochs the pruning callback reported for trial ``number`` (read back from the storage)."""
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            return sorted(frozen.intermediate_values)
    return []


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


__all__ = ["STATE_STATUS", "Trials", "mark_run", "trial_config"]
