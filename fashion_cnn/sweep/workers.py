"""Where trials run: the worker loop, in this process or in N spawned processes on one storage.

:func:`work` starts trials on the shared study until the search has its ``n_trials`` or the
deadline passes. Workers on one machine share a lock, held from counting the trials until this
worker's next trial is RUNNING, so they never start one too many. :func:`run_workers` spawns N of
them (``spawn``: a forked child would inherit torch's threads and locks), reports every trial they
finish by reading the storage, and hands their errors back as the driver's own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fashion_cnn.errors import Interrupted, UserError, sigterm_raises
from fashion_cnn.study.trial import TrialFailed
from fashion_cnn.sweep import search
from fashion_cnn.sweep.objective import ATTR_REASON, Objective, TrialPlan
from fashion_cnn.sweep.progress import SweepProgress, TrialEvent
from fashion_cnn.sweep.space import SweepError
from fashion_cnn.sweep.storage import open_storage

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3  # a worker stops when this many of its trials fail one after another
POLL_S = 1.0  # how often the driver of several workers looks for finished trials


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's orders: the trial plan plus the sampler, the budget and the deadline."""

    trial: TrialPlan
    sampler: str
    startup_trials: int
    seed: int
    existing: int  # trials in the study when this invocation started (seeds the sampler)
    target: int | None
    deadline: float | None  # time.time() after which no trial starts


def work(plan: WorkerPlan, index: int, lock: Any, on_trial: Callable[[Any], None] | None = None) -> None:
    """One worker: start trials on the shared study until the budget or the deadline is reached.

    Args:
        plan: The worker's orders.
        index: The worker's index (seeds its sampler).
        lock: A lock shared by this machine's workers, held from counting the trials until this
            worker's next trial is RUNNING (and so counted by the others); None for one worker.
        on_trial: Called with each finished ``FrozenTrial``.

    Raises:
        SweepError: ``MAX_FAILURES_IN_A_ROW`` trials failed one after another.
        Interrupted: Ctrl+C or SIGTERM.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver reports every trial itself
    storage = open_storage(plan.trial.storage, check=False)
    sampler = search.make_sampler(plan.sampler, plan.seed, plan.startup_trials, plan.existing, index)
    study = search.load_for_worker(plan.trial.name, storage, sampler, plan.trial.pruner)
    objective = Objective(plan.trial)
    failures: list[Any] = []

    def after(study: Any, trial: Any) -> None:
        if on_trial is not None:
            on_trial(trial)
        failures[:] = [*failures, trial] if trial.state.name == "FAIL" else []

    while True:
        with _Turn(lock) as turn:
            if plan.deadline is not None and time.time() >= plan.deadline:
                return
            if plan.target is not None and search.counted(study) >= plan.target:
                return
            study.optimize(turn.passing(objective), n_trials=1, catch=(TrialFailed,), callbacks=[after])
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            reason = failures[-1].user_attrs.get(ATTR_REASON, "see its log")
            raise SweepError(
                f"{len(failures)} trials in a row failed (trials {[t.number for t in failures]}); the search "
                f"stopped. The last one: {reason}"
            )


class _Turn:
    """Holds the workers' lock from counting the trials until the objective starts (trial RUNNING)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.held = False

    def __enter__(self) -> _Turn:
        if self.lock is not None:
            self.lock.acquire()
            self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def passing(self, objective: Any) -> Any:
        def run(trial: Any) -> float:
            self.release()
            return objective(trial)

        return run


def event(trial: Any) -> TrialEvent:
    """A finished ``FrozenTrial`` as a progress event."""
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    note = ""
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        note = f"after epoch {max(trial.intermediate_values)}"
    elif trial.state.name == "FAIL":
        note = str(trial.user_attrs.get(ATTR_REASON, ""))[:300]
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return TrialEvent(trial.number, trial.state.name, value, dict(trial.params), seconds, note)


# --------------------------------------------------------------------------------------------
# Several local workers: spawned processes on one storage


def run_workers(plan: WorkerPlan, count: int, study: Any, progress: SweepProgress) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
    lock = context.Lock()
    errors = context.Queue()
    workers = [
        context.Process(
            target=_worker_main, args=(plan, i, lock, errors), name=f"sweep-worker-{i}", daemon=False
        )
        for i in range(count)
    ]
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(POLL_S)
            seen = _report_new(study, seen, progress)
    except BaseException:
        _stop(workers)
        raise
    finally:
        _report_new(study, seen, progress)
    problems = []
    while True:
        try:
            problems.append(errors.get(timeout=0.5))
        except queue.Empty:
            break
    interrupted = [p for p in problems if p[0] == "interrupted"]
    if interrupted:
        raise Interrupted(interrupted[0][1], interrupted[0][2])
    for kind, message, _ in problems:
        if kind == "user":
            raise SweepError(message)
        raise RuntimeError(f"a sweep worker crashed:\n{message}")
    codes = [w.exitcode for w in workers if w.exitcode]
    if codes:
        raise SweepError(
            f"sweep workers ended with exit status {codes}; see the trial logs in {plan.trial.output}/logs"
        )


def _report_new(study: Any, seen: set[int], progress: SweepProgress) -> set[int]:
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state.is_finished() and trial.number not in seen:
            seen = seen | {trial.number}
            progress.trial_done(event(trial))
    return seen


def _stop(workers: list[Any]) -> None:
    """Interrupt the workers (their trials end KILLED), then wait; kill any that will not stop."""
    deadline = time.monotonic() + 5
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)  # Ctrl+C in a terminal reached them too: let them finish on their own
    for w in workers:
        if w.is_alive() and w.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():
            w.kill()
            w.join()


def _worker_main(plan: WorkerPlan, index: int, lock: Any, errors: Any) -> None:
    """Entry point of a spawned worker; its errors go back to the driver through ``errors``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with sigterm_raises():
            work(plan, index, lock)
    except (KeyboardInterrupt, Interrupted) as exc:
        sig = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
        errors.put(("interrupted", f"worker {index} interrupted", sig))
        raise SystemExit(130 if sig == "SIGINT" else 143) from None
    except (UserError, ValueError) as exc:
        errors.put(("user", f"worker {index}: {exc}", None))
        raise SystemExit(2) from None
    except BaseException:
        errors.put(("bug", traceback.format_exc(), None))
        raise SystemExit(1) from None


__all__ = ["WorkerPlan", "event", "run_workers", "work"]
