"""Running a sweep: storage and study, the MLflow parent run, the workers, then the report.

:func:`run_sweep` is the whole life of ``fashion-cnn sweep``. It opens the storage (a database that
does not answer fails within seconds), creates or reopens the study (refusing a changed space),
marks trials whose worker died as failed, and brings every trial's MLflow run in line with its
Optuna state. Then the workers train until the search has ``n_trials`` trials or the timeout
passes: one in this process, or N spawned processes on the same storage.

``n_trials`` is the size of the search, not of one invocation: complete, pruned and running trials
count toward it (failed ones do not; they are tried again). A rerun of the same command therefore
continues a stopped search and runs only what is missing; ``--n_trials 40`` on a search of 20 adds
20 trials. Workers on one machine take turns to count and start a trial, so they never run one too
many; workers on several machines (one database) count the same trials and may, if two start in the
same instant, run one extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn.errors import Interrupted, sigterm_raises
from fashion_cnn.sweep import search
from fashion_cnn.sweep.objective import (
    ATTR_RUN,
    STATE_STATUS,
    TAG_ROLE,
    TAG_STATE,
    TAG_STORAGE,
    TAG_STUDY,
    TAG_SWEEP,
    TrialPlan,
)
from fashion_cnn.sweep.progress import SweepProgress
from fashion_cnn.sweep.space import SweepError
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import is_database, open_storage, shown
from fashion_cnn.sweep.workers import WorkerPlan, event, run_workers, work
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
    report_only: bool = False,
    progress: SweepProgress | None = None,
    command: str | None = None,
) -> SweepOutcome:
    """Run (what is missing of) the sweep ``spec`` and write its report.

    Args:
        spec: The checked sweep (:func:`~fashion_cnn.sweep.spec.build_spec`).
        report_only: Write the report from the trials there are; train nothing.
        progress: Receives the events (default: log lines).
        command: The command line, quoted in the report.

    Raises:
        SweepError: The storage does not answer, the study changed, or trials keep failing.
        Interrupted: Ctrl+C or SIGTERM; finished trials are kept, running ones marked failed.
    """
    import optuna
    from mlflow.tracking import MlflowClient

    from fashion_cnn.sweep.report import write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress reports every trial itself
    progress = progress or SweepProgress()
    if report_only and not is_database(spec.storage) and not Path(spec.storage).is_file():
        raise SweepError(
            f"no sweep named {spec.name!r} in {spec.storage} (no such file); run it first "
            "(without --report_only)"
        )
    storage = open_storage(spec.storage)
    study = search.open_study(spec, storage, create=not report_only)
    experiment_id = prepare_store(spec.tracking_uri, spec.experiment)
    client = MlflowClient(spec.tracking_uri)
    dead = search.fail_dead_trials(study, storage, spec.storage)
    if dead:
        progress.note(f"trials {dead} were left running by a worker that is gone; marked failed")
    reconcile_runs(study, client)
    outcome = SweepOutcome(spec.name, shown(spec.storage), study.user_attrs.get(search.ATTR_PARENT))
    if not report_only:
        todo = None if spec.n_trials is None else spec.n_trials - search.counted(study)
        progress.note(
            f"sweep {spec.name}: {search.counted(study)} trials so far in {shown(spec.storage)}, "
            + (
                f"{max(todo, 0)} to run for n_trials {spec.n_trials}"
                if todo is not None
                else "running until the timeout"
            )
        )
        if todo is not None and todo <= 0:
            progress.note(f"the search has its {spec.n_trials} trials; raise --n_trials to add more")
        else:
            outcome.parent_run_id = open_parent(study, client, spec, experiment_id)
            before = len(study.trials)
            _train(spec, study, client, experiment_id, outcome.parent_run_id, progress)
            outcome.trials_run = len(study.get_trials(deepcopy=False)) - before
    if outcome.parent_run_id is None:
        progress.note("no trials yet; nothing to report")
        return outcome
    reconcile_runs(study, client)
    outcome.report, outcome.summary = write_report(
        spec, study, client, outcome.parent_run_id, command, progress
    )
    return outcome


def open_parent(study: Any, client: Any, spec: SweepSpec, experiment_id: str) -> str:
    """The sweep's MLflow parent run (recorded in the study), reopened; or created with its params."""
    from mlflow.exceptions import MlflowException

    run_id = study.user_attrs.get(search.ATTR_PARENT)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage != "deleted":
                client.update_run(run_id, status="RUNNING")
                _tag_settings(client, run_id, spec)
                return str(run_id)
        except MlflowException:
            pass  # another tracking store than the one the parent was made in: make one here
    tags = {
        TAG_SWEEP: spec.name,
        TAG_ROLE: "parent",
        TAG_STUDY: spec.name,
        TAG_STORAGE: shown(spec.storage),
        "mlflow.note.content": f"Optuna sweep **{spec.name}**: {spec.objective} "
        f"({'higher' if spec.higher_is_better else 'lower'} is better) over "
        + "; ".join(f"`{p.key}` {p.describe()}" for p in spec.space.params),
    }
    run = client.create_run(experiment_id, run_name=f"sweep-{spec.name}", tags=tags)
    run_id = str(run.info.run_id)
    # Params never change in MLflow: only what the study itself fixes (a changed one is refused).
    params = {
        "sweep.base": str(spec.base) if spec.base else "defaults",
        "sweep.objective": f"{spec.objective} ({spec.direction})",
        "sweep.settings": " ".join(f"{k}={v}" for k, v in spec.settings.items())[:6000] or "none",
        **{f"sweep.space.{p.key}": p.describe()[:6000] for p in spec.space.params},
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    _tag_settings(client, run_id, spec)
    study.set_user_attr(search.ATTR_PARENT, run_id)
    return run_id


def _tag_settings(client: Any, run_id: str, spec: SweepSpec) -> None:
    """What may change between invocations: tags, updated every time."""
    pruner = spec.pruner
    for key, value in {
        "sweep.n_trials": spec.n_trials,
        "sweep.timeout_s": spec.timeout,
        "sweep.sampler": f"{spec.sampler} (seed {spec.seed}, {spec.startup_trials} startup trials)",
        "sweep.pruner": f"{pruner.name} (from epoch {pruner.from_epoch})",
        "sweep.workers": spec.workers,
    }.items():
        client.set_tag(run_id, key, str(value))


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
    spec: SweepSpec, study: Any, client: Any, experiment_id: str, parent_id: str, progress: SweepProgress
) -> None:
    threads = spec.run_cpus
    if threads is None and spec.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // spec.workers)
    trial_plan = TrialPlan(
        name=spec.name,
        storage=spec.storage,
        objective=spec.objective,
        higher_is_better=spec.higher_is_better,
        space=spec.space,
        resolved=spec.resolved,
        output=str(spec.output),
        tracking_uri=spec.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        pruner=spec.pruner,
        threads=threads,
    )
    plan = WorkerPlan(
        trial=trial_plan,
        sampler=spec.sampler,
        startup_trials=spec.startup_trials,
        seed=spec.seed,
        existing=len(study.trials),
        target=spec.n_trials,
        deadline=time.time() + spec.timeout if spec.timeout else None,
    )
    todo = None if spec.n_trials is None else spec.n_trials - search.counted(study)
    progress.begin(todo, spec.objective, spec.higher_is_better, spec.workers)
    status = "FAILED"
    try:
        with sigterm_raises():
            if spec.workers == 1:
                work(plan, 0, None, lambda t: progress.trial_done(event(t)))
            else:
                run_workers(plan, spec.workers, study, progress)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted) as exc:
        status = "KILLED"
        sig = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        raise Interrupted(
            "sweep interrupted; rerun the same command to continue the search (finished trials are kept)", sig
        ) from None
    finally:
        progress.end()
        with contextlib.suppress(Exception):  # the store may be what failed
            reconcile_runs(study, client)
            client.set_terminated(parent_id, status)


__all__ = ["SweepOutcome", "open_parent", "reconcile_runs", "run_sweep"]
