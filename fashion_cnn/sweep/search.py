"""The Optuna study behind a sweep: created or reopened and checked against the file, its sampler,
the trials that count toward the budget, and trials whose driver died.

A study stores what it searches (the space, and the resolved base config with the fixed settings)
as user attributes when it is created. Reopened with a different space or settings, the trials
already run would no longer be comparable with the new ones, so the sweep refuses and says how to
start a new search instead.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from typing import Any

from fashion_cnn.errors import SweepError
from fashion_cnn.runs.settings import hashable
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import is_database, shown

ATTR_SPACE, ATTR_SETTINGS, ATTR_OBJECTIVE = (
    "fashion_cnn.space",
    "fashion_cnn.settings",
    "fashion_cnn.objective",
)
ATTR_ENQUEUED, ATTR_PARENT = "fashion_cnn.enqueued", "fashion_cnn.mlflow_parent_run_id"
# Trial user attributes: where the trial's records are, and who ran it (host:pid of the run's
# process, and of the driver that asked for it and tells its end).
ATTR_RUN, ATTR_CHECKPOINT, ATTR_REASON = "mlflow_run_id", "best_checkpoint", "fail_reason"
ATTR_WORKER, ATTR_DRIVER = "worker", "driver"
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # trials that count toward n_trials (FAIL ones are redone)


def open_study(spec: SweepSpec, storage: Any, create: bool = True) -> Any:
    """The sweep's study in ``storage``: created with the spec's records, or reopened and checked.

    Raises:
        SweepError: The study exists with another space, settings, objective or direction; or it
            does not exist and ``create`` is False.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=spec.options.name, storage=storage)
    except KeyError:
        if not create:
            raise SweepError(
                f"no sweep named {spec.options.name!r} in {shown(spec.storage)}; run it first "
                "(without --report_only)"
            ) from None
        study = optuna.create_study(
            study_name=spec.options.name, storage=storage, direction=spec.direction, load_if_exists=True
        )
        _record(study, spec)
        return study
    check_unchanged(study, spec)
    return study


def _record(study: Any, spec: SweepSpec) -> None:
    if ATTR_SPACE in study.user_attrs:  # another worker created it a moment ago
        check_unchanged(study, spec)
        return
    study.set_user_attr(ATTR_SPACE, spec.space.canonical())
    study.set_user_attr(ATTR_SETTINGS, _settings(spec))
    study.set_user_attr(ATTR_OBJECTIVE, spec.options.objective)
    for values in spec.enqueue:
        study.enqueue_trial(values, skip_if_exists=True)
    study.set_user_attr(ATTR_ENQUEUED, len(spec.enqueue))


def check_unchanged(study: Any, spec: SweepSpec) -> None:
    """Refuse to add trials of another search to ``study`` (space, settings, objective, direction)."""
    attrs = study.user_attrs
    fix = (
        f"Run the file as it was to continue this search, or start a new one under another name "
        f"(--name {spec.options.name}-2; its output goes to a folder of that name)"
    )
    where = f"sweep {spec.options.name!r} in {shown(spec.storage)}"
    if ATTR_SPACE not in attrs:
        raise SweepError(f"{where} is an Optuna study that fashion-cnn did not create. {fix}")
    if attrs[ATTR_SPACE] != spec.space.canonical():
        raise SweepError(
            f"the search space changed since {where} was created ({_space_change(attrs[ATTR_SPACE], spec)}); "
            f"its {len(study.trials)} trials were sampled from the old one. {fix}"
        )
    if attrs.get(ATTR_OBJECTIVE) != spec.options.objective or study.direction.name.lower() != spec.direction:
        raise SweepError(
            f"the objective changed since {where} was created (it optimises {attrs.get(ATTR_OBJECTIVE)}, "
            f"{study.direction.name.lower()}). {fix}"
        )
    before = json.loads(attrs.get(ATTR_SETTINGS, "{}"))
    now = json.loads(_settings(spec))
    if before != now:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        shown_keys = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise SweepError(
            f"the trials' fixed settings changed since {where} was created ({shown_keys}{more}), so new "
            f"trials would not be comparable with the old ones. {fix}"
        )


def _settings(spec: SweepSpec) -> str:
    return json.dumps(hashable(spec.resolved), sort_keys=True, default=str)


def _space_change(stored: str, spec: SweepSpec) -> str:
    """What differs between the stored space (JSON of [key, entry] pairs) and the file's."""
    before = dict(json.loads(stored))
    now = dict(json.loads(spec.space.canonical()))
    parts = [f"{k} added" for k in now if k not in before]
    parts += [f"{k} removed" for k in before if k not in now]
    parts += [f"{k} changed" for k in now if k in before and before[k] != now[k]]
    return ", ".join(parts) or "the order of its keys changed"


def make_sampler(name: str, seed: int, startup_trials: int, existing: int, worker: int = 0) -> Any:
    """TPE (or random) seeded from ``seed``, the trials the study had when this run started, and a
    driver index: a fresh search with the same seed proposes the same first trials, while a rerun
    does not repeat the first run's proposals."""
    import numpy as np
    import optuna

    mixed = int(np.random.SeedSequence([seed, existing, worker]).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models the keys jointly, each group of keys that appear
        # together (norm_groups only with norm: group) on its own; constant_liar keeps parallel
        # runs (and drivers) from proposing the same point while the others' trials run.
        return optuna.samplers.TPESampler(
            seed=mixed, n_startup_trials=startup_trials, multivariate=True, group=True, constant_liar=True
        )


def counted(study: Any) -> int:
    """Trials that count toward ``n_trials``: complete, pruned, and running (by any driver)."""
    from optuna.trial import TrialState

    states = tuple(TrialState[s] for s in COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def fail_dead_trials(study: Any, storage: Any, storage_url: str) -> list[int]:
    """Mark FAIL the RUNNING trials whose driver process is gone; returns their numbers.

    A database storage has heartbeats for this (Optuna's ``fail_stale_trials``). A journal file is
    used on one machine, so a trial whose driver (``host:pid``: the process that asked for it and
    tells its end; ``worker`` for trials of older versions) was on this host and no longer exists can
    only be one whose process was killed.
    """
    import optuna
    from optuna.trial import TrialState

    if is_database(storage_url):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            optuna.storages.fail_stale_trials(study)
            after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted(before - after)
    host = socket.gethostname()
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(ATTR_DRIVER, trial.user_attrs.get(ATTR_WORKER, ""))
        worker_host, _, pid = str(owner).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, ATTR_REASON, f"its process (pid {pid}) ended while it ran")
        study.tell(trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["check_unchanged", "counted", "fail_dead_trials", "make_sampler", "open_study"]
