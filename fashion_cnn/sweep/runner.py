"""Running a sweep: storage and study, the MLflow parent run, the trials on an executor, the report.

:func:`run_sweep` is the whole life of ``fashion-cnn sweep``. It opens the storage (a database that
does not answer fails within seconds), creates or reopens the study (refusing a changed space),
marks trials whose driver died as failed, and brings every trial's MLflow run in line with its
Optuna state. Then the run layer's executor (serial in this process, or Ray: local, a cluster,
fractional GPUs) trains trials, asked from Optuna one at a time in this process, until the search
has ``n_trials`` trials or the timeout passes.

``n_trials`` is the size of the search, not of one invocation: complete, pruned and running trials
count toward it (failed ones do not; they are tried again). A rerun of the same command therefore
continues a stopped search and runs only what is missing; ``--n_trials 40`` on a search of 20 adds
20 trials. One driver asks for its trials in turn, so it never runs one too many; drivers on several
machines (one database) count the same trials and may, if two ask in the same instant, run one extra.

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

import contextlib
import copy
import dataclasses
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.errors import Interrupted, SweepError, sigterm_raises
from fashion_cnn.runs import records
from fashion_cnn.runs.executors import Executor, SerialExecutor, describe
from fashion_cnn.runs.launch import RunOutcome, RunSpec
from fashion_cnn.runs.progress import Progress
from fashion_cnn.runs.settings import set_dotted
from fashion_cnn.sweep import search
from fashion_cnn.sweep.pruning import OptunaPruning, make_pruner
from fashion_cnn.sweep.search import ATTR_CHECKPOINT, ATTR_DRIVER, ATTR_REASON, ATTR_RUN, ATTR_WORKER
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import is_database, open_storage, shown
from fashion_cnn.tracking import prepare_store

MAX_FAILURES_IN_A_ROW = 3  # the search stops when this many trials fail one after another

# Tags of the sweep's MLflow runs; plain keys keep MLflow filters simple.
TAG_SWEEP, TAG_ROLE, TAG_TRIAL, TAG_STATE = "sweep", "sweep_role", "optuna_trial", "optuna_state"
TAG_STUDY, TAG_STORAGE, TAG_PRUNED_AT = "optuna_study", "optuna_storage", "pruned_at_epoch"
PARAM_PREFIX = "sweep/"  # the sampled values, as params of the child run: sweep/model.lr
STATE_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did and where the results are."""

    name: str
    storage: str
    parent_run_id: str | None
    trials_run: int = 0
    report: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def run_sweep(
    spec: SweepSpec,
    executor: Executor | None = None,
    report_only: bool = False,
    progress: Progress | None = None,
    command: str | None = None,
) -> SweepOutcome:
    """Run (what is missing of) the sweep ``spec`` and write its report.

    Args:
        spec: The checked sweep (:func:`~fashion_cnn.sweep.spec.build_spec`).
        executor: Where trials train (default: :class:`SerialExecutor`, in this process).
        report_only: Write the report from the trials there are; train nothing.
        progress: Receives the events (default: log lines).
        command: The command line, quoted in the report.

    Raises:
        SweepError: The storage does not answer, the study changed, or trials keep failing.
        ExecutorError: The executor could not start, or lost a run for good.
        Interrupted: Ctrl+C or SIGTERM; finished trials are kept, running ones marked failed.
    """
    import optuna
    from mlflow.tracking import MlflowClient

    from fashion_cnn.sweep.report import write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress reports every trial itself
    progress = progress or Progress(prunes=True)
    executor = executor or SerialExecutor()
    o = spec.options
    if report_only and not is_database(spec.storage) and not Path(spec.storage).is_file():
        raise SweepError(
            f"no sweep named {o.name!r} in {spec.storage} (no such file); run it first "
            "(without --report_only)"
        )
    storage = open_storage(spec.storage)
    study = search.open_study(spec, storage, create=not report_only)
    experiment_id = prepare_store(spec.tracking_uri, o.experiment)
    client = MlflowClient(spec.tracking_uri)
    dead = search.fail_dead_trials(study, storage, spec.storage)
    if dead:
        progress.note(f"trials {dead} were left running by a process that is gone; marked failed")
    reconcile_runs(study, client)
    outcome = SweepOutcome(o.name, shown(spec.storage), study.user_attrs.get(search.ATTR_PARENT))
    if not report_only:
        todo = None if o.n_trials is None else o.n_trials - search.counted(study)
        progress.note(
            f"sweep {o.name}: {search.counted(study)} trials so far in {shown(spec.storage)}, "
            + (
                f"{max(todo, 0)} to run for n_trials {o.n_trials}"
                if todo is not None
                else "running until the timeout"
            )
        )
        if todo is not None and todo <= 0:
            progress.note(f"the search has its {o.n_trials} trials; raise --n_trials to add more")
        else:
            outcome.parent_run_id = open_parent(study, client, spec, experiment_id, executor)
            progress.note(
                f"trials train on {describe(executor)}; MLflow experiment {o.experiment} in "
                f"{spec.tracking_uri}; report, logs and checkpoints in {spec.output}"
            )
            before = len(study.trials)
            sampler = search.make_sampler(o.sampler, o.seed, o.startup_trials, existing=before)
            # The study as this driver asks it for trials: with its sampler and the sweep's pruner.
            asking = optuna.load_study(
                study_name=o.name, storage=storage, sampler=sampler, pruner=make_pruner(spec.pruner)
            )
            trials = Trials(spec, asking, client, experiment_id, outcome.parent_run_id, executor, progress)
            _train(trials, todo)
            outcome.trials_run = len(study.get_trials(deepcopy=False)) - before
    if outcome.parent_run_id is None:
        progress.note("no trials yet; nothing to report")
        return outcome
    reconcile_runs(study, client)
    outcome.report, outcome.summary = write_report(
        spec, study, client, outcome.parent_run_id, command, progress
    )
    return outcome


def open_parent(study: Any, client: Any, spec: SweepSpec, experiment_id: str, executor: Executor) -> str:
    """The sweep's MLflow parent run (recorded in the study), reopened; or created with its params."""
    o = spec.options
    tags = {
        TAG_SWEEP: o.name,
        TAG_ROLE: "parent",
        TAG_STUDY: o.name,
        TAG_STORAGE: shown(spec.storage),
        "mlflow.note.content": f"Optuna sweep **{o.name}**: {o.objective} "
        f"({'higher' if spec.higher_is_better else 'lower'} is better) over "
        + "; ".join(f"`{p.key}` {p.describe()}" for p in spec.space.params),
    }
    # Params never change in MLflow: only what the study itself fixes (a changed one is refused).
    params = {
        "sweep.base": str(spec.base) if spec.base else "defaults",
        "sweep.objective": f"{o.objective} ({spec.direction})",
        "sweep.settings": " ".join(f"{k}={v}" for k, v in spec.settings.items()) or "none",
        **{f"sweep.space.{p.key}": p.describe() for p in spec.space.params},
    }
    existing = study.user_attrs.get(search.ATTR_PARENT)
    run_id = records.open_parent(client, experiment_id, f"sweep-{o.name}", tags, params, existing)
    # What may change between invocations: tags, updated every time.
    for key, value in {
        "sweep.n_trials": o.n_trials,
        "sweep.timeout_s": o.timeout,
        "sweep.sampler": f"{o.sampler} (seed {o.seed}, {o.startup_trials} startup trials)",
        "sweep.pruner": f"{spec.pruner.name} (from epoch {spec.pruner.from_epoch})",
        "sweep.workers": executor.slots,
        "sweep.executor": executor.name,
    }.items():
        client.set_tag(run_id, key, str(value))
    if run_id != existing:
        study.set_user_attr(search.ATTR_PARENT, run_id)
    return run_id


def reconcile_runs(study: Any, client: Any) -> None:
    """Give every finished trial's MLflow run its Optuna state; end runs left RUNNING by a dead worker."""
    from mlflow.exceptions import MlflowException

    for trial in study.get_trials(deepcopy=False):
        run_id, state = trial.user_attrs.get(ATTR_RUN), trial.state.name
        if not run_id or state not in STATE_STATUS:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue  # logged to another tracking store
        if run.data.tags.get(TAG_STATE) != state:
            client.set_tag(run_id, TAG_STATE, state)
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, STATE_STATUS[state])


def _train(trials: Trials, todo: int | None) -> None:
    """The trials on the executor; the parent run ends FINISHED, FAILED or KILLED with them."""
    o, executor = trials.spec.options, trials.executor
    status = "FAILED"
    executor.prepare(trials.spec.tracking_uri, shared_paths=[trials.spec.storage])
    try:
        with sigterm_raises():
            trials.progress.begin(None if todo is None else [(o.name, "trial")] * todo, executor.slots)
            executor.run(trials, lambda run: trials.progress.started(run.label), trials.done)
        if len(trials.failures) >= MAX_FAILURES_IN_A_ROW:
            reason = trials.study.trials[trials.failures[-1]].user_attrs.get(ATTR_REASON, "see its log")
            raise SweepError(
                f"{len(trials.failures)} trials in a row failed (trials {trials.failures}); the search "
                f"stopped. The last one: {reason}"
            )
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted) as exc:
        status = "KILLED"
        sig = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        trials.abandon(f"Interrupted: stopped by {sig}", "KILLED")
        raise Interrupted(
            "sweep interrupted; rerun the same command to continue the search (finished trials are kept)", sig
        ) from None
    except BaseException as exc:
        trials.abandon(f"{type(exc).__name__}: {exc}", "FAILED")
        raise
    finally:
        executor.close()
        trials.progress.end()
        with contextlib.suppress(Exception):  # the store may be what failed
            reconcile_runs(trials.study, trials.client)
        records.close_parent(trials.client, trials.parent_id, status)


class Trials:
    """The sweep's trials, asked one at a time and told as they end.

    Args:
        spec: The checked sweep.
        study: The Optuna study, loaded with the driver's sampler and the sweep's pruner.
        client: The MLflow client of the sweep's store.
        experiment_id: The sweep's MLflow experiment.
        parent_id: The sweep's parent run.
        executor: Where the trials train (its threads per trial, and its name, tagged on each run).
        progress: Receives each finished trial.
    """

    def __init__(
        self,
        spec: SweepSpec,
        study: Any,
        client: Any,
        experiment_id: str,
        parent_id: str,
        executor: Executor,
        progress: Progress,
    ) -> None:
        self.spec, self.study, self.client, self.experiment_id = spec, study, client, experiment_id
        self.parent_id, self.executor, self.progress = parent_id, executor, progress
        self.deadline = time.time() + spec.options.timeout if spec.options.timeout else None
        self.running: dict[tuple[Any, ...], Any] = {}  # run key -> the live optuna Trial
        self.failures: list[int] = []  # trial numbers of the failures in a row
        self.best: float | None = None

    def __iter__(self) -> Iterator[RunSpec]:
        target = self.spec.options.n_trials
        while len(self.failures) < MAX_FAILURES_IN_A_ROW:
            if self.deadline is not None and time.time() >= self.deadline:
                return
            if target is not None and search.counted(self.study) >= target:
                return
            yield self._ask()

    def _ask(self) -> RunSpec:
        from mlflow.entities import Param

        spec, o = self.spec, self.spec.options
        trial = self.study.ask()
        trial.set_user_attr(ATTR_DRIVER, f"{socket.gethostname()}:{os.getpid()}")
        sampled = spec.space.suggest(trial)
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_id,
            TAG_SWEEP: o.name,
            TAG_ROLE: "trial",
            TAG_STUDY: o.name,
            TAG_TRIAL: str(trial.number),
            TAG_STATE: "RUNNING",
            TAG_STORAGE: shown(spec.storage),
            records.TAG_EXECUTOR: self.executor.name,
        }
        name = f"{o.name}-trial{trial.number:04d}"
        run_id = str(self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id)
        params = [Param(f"{PARAM_PREFIX}{k}", str(v)) for k, v in sampled.items()]
        if params:
            self.client.log_batch(run_id, params=params)
        trial.set_user_attr(ATTR_RUN, run_id)
        key = (o.name, trial.number)
        self.running[key] = trial
        config = fit_config(spec, sampled, name)
        config["output_dir"] = str(spec.output / "runs")
        config["test_after_fit"] = False
        config["checkpoint"] = {**config["checkpoint"], "save_last": False}  # trials are never resumed
        pruning = OptunaPruning(
            spec.storage, o.name, trial.number, o.objective, dataclasses.asdict(spec.pruner)
        )
        return RunSpec(
            key,
            f"trial {trial.number}",
            logged_to(config, spec.tracking_uri, run_id),
            str(spec.output / "logs" / f"trial-{trial.number:04d}.log"),
            self.executor.threads,
            callbacks=(pruning,),
        )

    def done(self, run: RunSpec, outcome: RunOutcome) -> None:
        """Tell the study how the trial ended, mark its MLflow run, report it."""
        from optuna.trial import TrialState

        trial = self.running.pop(run.key)
        run_id = trial.user_attrs[ATTR_RUN]
        trial.set_user_attr(ATTR_WORKER, outcome.worker)
        state, note = "COMPLETE", ""
        if outcome.state == "pruned":
            state = "PRUNED"
            # The epochs the pruning callback reported, read back from the storage.
            frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
            epoch = max(frozen.intermediate_values, default=0)
            note = f"after epoch {epoch}" if epoch else ""
            self.client.set_tag(run_id, TAG_PRUNED_AT, str(epoch))
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
        shown_params = ", ".join(
            f"{k.split('.')[-1]}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in trial.params.items()
        )
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


def fit_config(spec: SweepSpec, sampled: Mapping[str, Any], run_name: str) -> dict[str, Any]:
    """The full ``fit`` config of the resolved base with ``sampled`` values, named ``run_name``."""
    config = copy.deepcopy(spec.resolved)
    config.pop("config", None)
    for key, value in sampled.items():
        set_dotted(config, key, value)
    config["run_name"] = run_name
    return config


def logged_to(config: dict[str, Any], tracking_uri: str, run_id: str) -> dict[str, Any]:
    """``config`` logging to the MLflow run ``run_id``, without progress bar redraws in its log."""
    trainer = dict(config["trainer"], enable_progress_bar=False)
    logger = copy.deepcopy(trainer["logger"])
    logger["init_args"] = {**(logger.get("init_args") or {}), "tracking_uri": tracking_uri, "run_id": run_id}
    return {**config, "trainer": {**trainer, "logger": logger}}


def mark_run(client: Any, run_id: str, state: str, status: str | None = "") -> None:
    """Tag the trial's run with its Optuna ``state`` and end it with the matching MLflow status.

    ``status=""``: the status of :data:`STATE_STATUS`; None: leave the status as it is.
    """
    client.set_tag(run_id, TAG_STATE, state)
    wanted = STATE_STATUS.get(state) if status == "" else status
    if wanted is not None and client.get_run(run_id).info.status != wanted:
        client.set_terminated(run_id, wanted)


__all__ = ["STATE_STATUS", "SweepOutcome", "Trials", "mark_run", "open_parent", "reconcile_runs", "run_sweep"]
