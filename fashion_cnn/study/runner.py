"""Running studies: plan everything, reuse what is done, hand the rest to an executor, report.

Every study file is loaded and every variant resolved before the first run starts. Finished runs
of the same study (same hash) are kept; a finished run of any study with the same resolved config
and seed is copied instead of trained; identical runs in one invocation train once. The runner does
all MLflow bookkeeping, so the records are the same whichever executor trained the runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn.errors import Interrupted, RunFailed, StudyError, sigterm_raises
from fashion_cnn.lightning_cli import ConfigResolver
from fashion_cnn.runs import records
from fashion_cnn.runs.executors import Executor, SerialExecutor, describe
from fashion_cnn.runs.launch import RunOutcome, RunSpec
from fashion_cnn.runs.progress import Progress
from fashion_cnn.study import store
from fashion_cnn.study.combined import write_combined_report
from fashion_cnn.study.compare import load_comparison
from fashion_cnn.study.plan import (
    DEFAULT_EXPERIMENT,
    StudyPlan,
    VariantPlan,
    describe_plan,
    images_per_run,
    plan_study,
)
from fashion_cnn.study.report import collect_results, write_report
from fashion_cnn.study.spec import load_study
from fashion_cnn.tracking import prepare_store, sqlite_file
from fashion_cnn.ui import show_hint

log = logging.getLogger(__name__)

Slot = tuple[StudyPlan, VariantPlan, int]  # (study, variant, seed): one run's place in a study


@dataclass
class _Job:
    """A run to train, its slot, and the other slots its result fills."""

    run: RunSpec
    plan: StudyPlan
    vp: VariantPlan
    seed: int
    followers: list[Slot] = field(default_factory=list)

    @property
    def budget(self) -> int:
        """Training images the run sees: what its time scales with."""
        return images_per_run(self.vp.resolved)[1]

    @property
    def kept_s(self) -> float:
        """Seconds an earlier attempt trained that this run continues (0 for a fresh run)."""
        return self.run.resumes[1] if self.run.resumes else 0.0


def run_studies(
    paths: Sequence[str | Path],
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    output: str | Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    dry_run: bool = False,
    report_only: bool = False,
    reuse: bool = True,
    combined_report: str | Path | None = None,
    command: str | None = None,
    compare_with: str | Path | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    resolver: ConfigResolver | None = None,
    max_seeds: int | None = None,
) -> list[StudyPlan]:
    """Plan, run (what is missing) and report one or more studies: all of ``fashion-cnn study``.

    Args:
        paths: Study files (paths, or packaged names such as ``studies/dropout``).
        overrides: ``--key=value`` CLI strings applied to every run, after the study's own.
        seeds: Seeds to use instead of the study files' ``seeds``.
        output: Report folder for a single study; with several, each goes to ``output/<name>``.
            Default ``studies/<name>``. Runs file their checkpoints and logs under it.
        experiment: MLflow experiment of the parent and child runs.
        dry_run: Only report the plan through ``progress``.
        report_only: Write reports from the runs already finished; run nothing.
        reuse: Copy the results of a finished run of another study in the same experiment that
            has the same resolved config and seed, instead of training again.
        combined_report: Also write one Markdown document over all studies here.
        command: The command line to quote in the combined report.
        compare_with: Another combined report (its ``.md`` or ``.json``): the combined report gets
            a table of the claims whose verdict differs between the two. Read before any run starts.
        executor: Where runs train (default: :class:`SerialExecutor`, in this process).
        progress: Receives the events (default: log lines).
        resolver: A config resolver to reuse (building one takes about half a second).
        max_seeds: Adaptive seeds: after the seeds asked for, add seeds in planned blocks (e.g.
            3 -> 5 -> 8 -> 12) only to the variants of claims still undecided and not futile, up to
            this many per variant (:mod:`fashion_cnn.study.sequential`). None: a fixed design.

    Raises:
        StudyError: For unusable study files or overrides (before any run starts).
        RunFailed: A run failed for a user reason; the study stopped there.
        ExecutorError: The executor could not start, or lost a run for good.
        Interrupted: Ctrl+C or SIGTERM; finished runs are kept, running ones marked KILLED.
    """
    from mlflow.tracking import MlflowClient

    progress = progress or Progress()
    executor = executor or SerialExecutor()
    if combined_report is not None and Path(combined_report).suffix == ".json":
        raise StudyError(
            f"--combined_report {combined_report}: name the Markdown file (.md); its results are "
            "written to the .json beside it"
        )
    if compare_with is not None and combined_report is None:
        raise StudyError("--compare_with adds a section to the combined report: give --combined_report too")
    comparison = load_comparison(compare_with) if compare_with is not None else None
    studies = [load_study(p) for p in paths]
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise StudyError(
            f"two study files share a name ({', '.join(sorted(names))}); set a different name: in one of them"
        )
    studies.sort(key=lambda s: _part_key(s.part))  # stable: files of one part keep their order
    resolver = resolver or ConfigResolver()
    plans = []
    for study in studies:
        out = None if output is None else (Path(output) if len(studies) == 1 else Path(output) / study.name)
        out = (out or Path("studies") / study.name).absolute()  # Ray workers run in other folders
        plans.append(plan_study(study, overrides, seeds, experiment, out, resolver))
    schedules = _schedules(plans, max_seeds)  # bad --max_seeds: refused before any run
    clients: dict[str, Any] = {}
    for plan in plans:
        db = sqlite_file(plan.tracking_uri)
        if dry_run and db is not None and not db.is_file():
            continue  # a dry run creates no database
        if plan.tracking_uri not in clients:
            prepare_store(plan.tracking_uri, experiment)
            clients[plan.tracking_uri] = MlflowClient(plan.tracking_uri)
        store.find_runs(plan, clients[plan.tracking_uri])
        if schedules:  # a rerun goes on from the block where it stopped
            _grow(plan, schedules[plan.study.name], progress, until_missing=True)
    total, todo = sum(p.total for p in plans), sum(len(p.todo) for p in plans)
    progress.note(
        f"{len(plans)} stud{'y' if len(plans) == 1 else 'ies'}, {total} runs planned, "
        f"{total - todo} already finished, {todo} to run" + (" (dry run)" if dry_run else "")
    )
    if dry_run:
        for line in (line for plan in plans for line in describe_plan(plan)):
            progress.note(line)
        for name, schedule in schedules.items():
            levels = ", ".join(f"{a:.2g}" for a in schedule.nominal)
            progress.note(
                f"[{name}] adaptive seeds: looks at {' -> '.join(map(str, schedule.looks))} seeds per "
                f"variant, {schedule.spending} levels {levels}; seeds go only where claims are undecided"
            )
        return plans
    if not report_only and todo:
        executor.prepare(next(p for p in plans if p.todo).tracking_uri)
        progress.note(
            f"runs train on {describe(executor)}; MLflow experiment {experiment} in "
            f"{', '.join(sorted({p.tracking_uri for p in plans}))}; "
            f"reports in {', '.join(str(p.output) for p in plans)}"
        )
        try:
            _train(plans, clients, executor, progress, reuse)
            # Adaptive seeds: each block's runs train together (in parallel on Ray), then the claims
            # are judged again, until none needs more seeds.
            while schedules and any([_grow(p, schedules[p.study.name], progress) for p in plans]):
                _train(plans, clients, executor, progress, reuse)
        finally:
            executor.close()
    all_results = []  # read back once, for the study's own report and the combined one
    for plan in plans:
        client = clients[plan.tracking_uri]
        if plan.parent_id is not None:
            store.find_runs(plan, client)
        all_results.append((plan, collect_results(plan, client, max_seeds, schedules.get(plan.study.name))))
        if plan.parent_id is None:
            progress.note(f"[{plan.study.name}] no runs yet; nothing to report")
            continue
        report = write_report(plan, client, all_results[-1][1])
        progress.note(f"[{plan.study.name}] report written to {report}")
        hint = show_hint(plan.tracking_uri, client.get_run(plan.parent_id).info.experiment_id, plan.parent_id)
        progress.note(f"[{plan.study.name}] see its runs: {hint}")
    if combined_report is not None:
        path = write_combined_report(all_results, combined_report, command, comparison, rebuilt=report_only)
        progress.note(f"combined report written to {path}")
    return plans


def _train(
    plans: Sequence[StudyPlan],
    clients: Mapping[str, Any],
    executor: Executor,
    progress: Progress,
    reuse: bool,
) -> None:
    """Open the parents, copy reusable runs, train the rest on ``executor``, close the parents."""
    active = [p for p in plans if p.todo]
    if not active:
        return
    with sigterm_raises():
        try:
            for plan in active:
                store.open_parent(plan, clients[plan.tracking_uri])
            jobs = _jobs(active, clients, progress, reuse, executor)
            keys = [(j.plan.study.name, j.vp.variant.name) for j in jobs]  # one per run to train
            budgets = {k: j.budget for k, j in zip(keys, jobs, strict=True)}
            progress.begin(keys, executor.slots, budgets, [j.kept_s for j in jobs])
            by_key = {j.run.key: j for j in jobs}

            def on_done(run: RunSpec, outcome: RunOutcome) -> None:
                if outcome.state != "finished":
                    raise RunFailed(outcome.error)
                _finished(by_key[run.key], outcome, clients, progress)

            executor.run([j.run for j in jobs], lambda r: progress.started(r.label), on_done)
        except (KeyboardInterrupt, Interrupted) as exc:
            _close(active, clients, "KILLED")
            sig = exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
            raise Interrupted(
                "study interrupted; rerun the same command to continue (finished runs are kept)", sig
            ) from None
        except BaseException:
            _close(active, clients, "FAILED")
            raise
        finally:
            progress.end()
    _close(active, clients, "FINISHED")


def _jobs(
    plans: Sequence[StudyPlan],
    clients: Mapping[str, Any],
    progress: Progress,
    reuse: bool,
    executor: Executor,
) -> list[_Job]:
    """The runs to train: one per distinct (resolved config, seed) still missing anywhere."""
    jobs: dict[tuple[str, int], _Job] = {}
    for plan in plans:
        client = clients[plan.tracking_uri]
        attempts = store.children(client, plan)  # once per study: where unfinished runs can resume
        for vp, seed in plan.todo:
            where = f"[{plan.study.name}] {vp.variant.name} seed {seed}"
            source = store.reusable_run(client, plan, vp, seed) if reuse else None
            if source is not None:
                _fill((plan, vp, seed), source, client)
                tags = source.data.tags
                progress.note(
                    f"{where}: same config and seed as finished run "
                    f"{tags.get(records.TAG_REUSED, source.info.run_id)} "
                    f"({tags.get(store.TAG_STUDY)}/{tags.get(store.TAG_VARIANT)}); reused its results"
                )
                continue
            key = (vp.config_hash, seed)
            if reuse and key in jobs:
                jobs[key].followers.append((plan, vp, seed))
                continue
            resume = store.resume_point(attempts, plan, vp, seed)
            if resume is not None:
                progress.note(
                    f"{where}: continues run {resume.run_id} from its last full epoch ({resume.checkpoint})"
                )
            jobs[key if reuse else (f"{plan.study.name}/{vp.variant.name}", seed)] = _Job(
                _run(plan, vp, seed, executor, resume), plan, vp, seed
            )
    ordered = list(jobs.values())
    if executor.slots > 1:
        # Longest budget first (stable within one budget): the last runs then end close together,
        # instead of the longest one training alone on one slot while the others sit idle.
        ordered.sort(key=lambda job: -job.budget)
    return ordered


def _run(
    plan: StudyPlan, vp: VariantPlan, seed: int, executor: Executor, resume: store.Resume | None = None
) -> RunSpec:
    """The run's full config: the resolved variant with its seed, name, tags and tracking set, and
    the checkpoint to go on from when an earlier attempt left one."""
    run_name = f"{plan.study.name}-{vp.variant.name}"
    config = {k: v for k, v in vp.resolved.items() if k != "config"}
    config |= {"seed_everything": seed, "run_name": run_name}
    if resume is not None:
        config["ckpt_path"] = resume.checkpoint  # fit continues the checkpoint's own MLflow run
    logger = dict(config["trainer"]["logger"])
    logger["init_args"] = {
        **(logger.get("init_args") or {}),
        "experiment_name": plan.experiment,
        "tracking_uri": plan.tracking_uri,
        "tags": {**store.trial_tags(plan, vp, seed), records.TAG_EXECUTOR: executor.name},
    }
    config["trainer"] = {**config["trainer"], "logger": logger}
    return RunSpec(
        key=(plan.study.name, vp.variant.name, seed),
        label=f"[{plan.study.name}] {vp.variant.name} seed {seed}",
        config=config,
        log_file=str(plan.output / "logs" / f"{run_name}-seed{seed}.log"),
        threads=executor.threads,
        resumes=None if resume is None else (resume.run_id, resume.kept_s),
    )


def _finished(job: _Job, result: RunOutcome, clients: Mapping[str, Any], progress: Progress) -> None:
    """Record a trained run: end lost attempts, fill its slot and its followers', report it."""
    plan, vp, seed = job.plan, job.vp, job.seed
    client = clients[plan.tracking_uri]
    # Attempts of this run whose process died (a killed Ray worker) never ended their run.
    store.end_running_children(client, plan, "FAILED", vp.variant.name, seed, keep=result.run_id)
    run = plan.finished[(vp.variant.name, seed)] = client.get_run(result.run_id)
    for slot in job.followers:
        _fill(slot, run, clients[slot[0].tracking_uri])
    metrics = "  ".join(
        f"{m.name} {run.data.metrics[m.name]:.4f}" for m in plan.study.metrics if m.name in run.data.metrics
    )
    progress.finished((plan.study.name, vp.variant.name), job.run.label, result.wall_s, metrics, job.kept_s)


def _fill(slot: Slot, source: Any, client: Any) -> None:
    """Fill (plan, variant, seed) with a copy of the finished run ``source``."""
    plan, vp, seed = slot
    name = f"{plan.study.name}-{vp.variant.name}-seed{seed}"
    plan.finished[(vp.variant.name, seed)] = records.copy_run(client, source, store.trial_tags(*slot), name)


def _close(plans: Sequence[StudyPlan], clients: Mapping[str, Any], status: str) -> None:
    """End every parent (and, unless all went well, the children still RUNNING) with ``status``."""
    for plan in (p for p in plans if p.parent_id is not None):
        client = clients[plan.tracking_uri]
        try:
            if status != "FINISHED":
                store.end_running_children(client, plan, "KILLED" if status == "KILLED" else "FAILED")
            ended = status if status != "FINISHED" or not plan.todo else "FAILED"
            client.set_terminated(plan.parent_id, ended)
        except Exception:  # noqa: BLE001 - the store may be what failed; the original error matters
            log.warning("could not mark study %s %s", plan.study.name, status, exc_info=True)


def _schedules(plans: Sequence[StudyPlan], max_seeds: int | None) -> dict[str, Any]:
    """Each study's planned looks (its seeds, then blocks up to ``max_seeds``); {} for a fixed design.

    Raises:
        StudyError: ``max_seeds`` below a study's seeds.
    """
    if max_seeds is None:
        return {}
    from fashion_cnn.study.sequential import Schedule

    return {p.study.name: Schedule.blocks(len(p.seeds), max_seeds) for p in plans}


def _grow(plan: StudyPlan, schedule: Any, progress: Progress, until_missing: bool = False) -> bool:
    """Judge the claims on the finished seeds and add the next block of seeds to the variants of
    claims still undecided; returns whether any were added. A study that needs no more seeds is
    said once (``plan.settled``). ``until_missing``: repeat while the added seeds have all
    finished already (a rerun of an interrupted adaptive study)."""
    from fashion_cnn.study.sequential import sequential_step

    grew = False
    while True:
        step = sequential_step(plan.study.claims, plan.samples(), plan.study.metrics, schedule)
        added = {v: plan.grow(v, n) for v, n in step.next_seeds.items() if n > len(plan.seeds_of(v))}
        counts = step.counts()
        judged = max((st.seeds for st in step.states if st.look >= 0), default=0)
        head = f"[{plan.study.name}] " + (f"at {judged} seeds, " if judged else "") + "claims: "
        head += ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        if step.done and not plan.settled:
            plan.settled = True
            why = (
                f"the undecided ones reached the maximum of {schedule.max_seeds} seeds"
                if counts["undecided"]
                else "each is decided or futile"
            )
            progress.note(f"{head}; no more seeds: {why}")
        if not added:
            return grew
        grew = True
        progress.note(
            f"{head}; more seeds for " + ", ".join(f"{v} (to {len(plan.seeds_of(v))})" for v in added)
        )
        if not until_missing or plan.todo:
            return grew


def _part_key(part: str) -> tuple[int, str]:
    match = re.match(r"(\d+)(.*)", part)
    return (int(match.group(1)), match.group(2)) if match else (10**9, part)
