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
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn.errors import Interrupted, SweepError, sigterm_raises
from fashion_cnn.runs import records
from fashion_cnn.runs.executors import Executor, SerialExecutor, describe
from fashion_cnn.runs.progress import Progress
from fashion_cnn.sweep import search
from fashion_cnn.sweep.search import ATTR_RUN
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import is_database, open_storage, shown
from fashion_cnn.sweep.trials import (
    MAX_FAILURES_IN_A_ROW,
    STATE_STATUS,
    TAG_ROLE,
    TAG_STATE,
    TAG_STORAGE,
    TAG_STUDY,
    TAG_SWEEP,
    Trials,
)
from fashion_cnn.tracking import prepare_store

log = logging.getLogger(__name__)


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
    if report_only and not is_database(spec.storage) and not Path(spec.storage).is_file():
        raise SweepError(
            f"no sweep named {spec.options.name!r} in {spec.storage} (no such file); run it first "
            "(without --report_only)"
        )
    storage = open_storage(spec.storage)
    study = search.open_study(spec, storage, create=not report_only)
    experiment_id = prepare_store(spec.tracking_uri, spec.options.experiment)
    client = MlflowClient(spec.tracking_uri)
    dead = search.fail_dead_trials(study, storage, spec.storage)
    if dead:
        progress.note(f"trials {dead} were left running by a process that is gone; marked failed")
    reconcile_runs(study, client)
    outcome = SweepOutcome(spec.options.name, shown(spec.storage), study.user_attrs.get(search.ATTR_PARENT))
    if not report_only:
        todo = None if spec.options.n_trials is None else spec.options.n_trials - search.counted(study)
        progress.note(
            f"sweep {spec.options.name}: {search.counted(study)} trials so far in {shown(spec.storage)}, "
            + (
                f"{max(todo, 0)} to run for n_trials {spec.options.n_trials}"
                if todo is not None
                else "running until the timeout"
            )
        )
        if todo is not None and todo <= 0:
            progress.note(f"the search has its {spec.options.n_trials} trials; raise --n_trials to add more")
        else:
            outcome.parent_run_id = open_parent(study, client, spec, experiment_id, executor)
            progress.note(
                f"trials train on {describe(executor)}; MLflow experiment {spec.options.experiment} in "
                f"{spec.tracking_uri}; report, logs and checkpoints in {spec.output}"
            )
            before = len(study.trials)
            _train(spec, storage, study, client, experiment_id, outcome.parent_run_id, executor, progress)
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
        run_id = trial.user_attrs.get(ATTR_RUN)
        state = trial.state.name
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


def _train(
    spec: SweepSpec,
    storage: Any,
    study: Any,
    client: Any,
    experiment_id: str,
    parent_id: str,
    executor: Executor,
    progress: Progress,
) -> None:
    o = spec.options
    sampler = search.make_sampler(o.sampler, o.seed, o.startup_trials, existing=len(study.trials))
    asking = search.load_with_sampler(o.name, storage, sampler, spec.pruner)
    trials = Trials(spec, asking, client, experiment_id, parent_id, executor.threads, executor.name, progress)
    todo = None if o.n_trials is None else o.n_trials - search.counted(study)
    status = "FAILED"
    executor.prepare(spec.tracking_uri, shared_paths=[spec.storage])
    try:
        with sigterm_raises():
            progress.begin(None if todo is None else [(o.name, "trial")] * todo, executor.slots)
            executor.run(trials, lambda run: progress.started(run.label), trials.done)
        if len(trials.failures) >= MAX_FAILURES_IN_A_ROW:
            reason = asking.trials[trials.failures[-1]].user_attrs.get(search.ATTR_REASON, "see its log")
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
        progress.end()
        with contextlib.suppress(Exception):  # the store may be what failed
            reconcile_runs(study, client)
        records.close_parent(client, parent_id, status)


__all__ = ["SweepOutcome", "open_parent", "reconcile_runs", "run_sweep"]
