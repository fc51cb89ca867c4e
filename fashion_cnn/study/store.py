"""A study's records in MLflow: the parent run, its child runs, and what a rerun can reuse.

One parent run per study (tagged with the study name and hash) and one child per variant × seed,
linked through MLflow's ``mlflow.parentRunId`` tag, which the UI nests on and which works across
processes and machines. Only the driver of a study writes here; each child run is created by the
run itself (through its :class:`~fashion_cnn.tracking.MLflowLogger`), wherever it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.study.plan import StudyPlan, VariantPlan
from fashion_cnn.tracking import BEST_CHECKPOINT_TAG, ensure_experiment

log = logging.getLogger(__name__)

# Tags on the parent ("study") and child ("trial") runs; plain keys keep MLflow filters simple.
TAG_STUDY, TAG_HASH, TAG_ROLE, TAG_VARIANT, TAG_SEED = "study", "study_hash", "study_role", "variant", "seed"
TAG_CONFIG, TAG_REUSED = "config_hash", "reused_from"  # per-variant config hash; the run a copy came from
TAG_EXECUTOR = "executor"  # serial or ray: what trained the run (fit adds the machine.* tags)
# A run continued from its checkpoint: the seconds it had trained before, and when it went on.
TAG_KEPT, TAG_RESUMED_AT = "resume.kept_s", "resume.at_ms"
PARENT_TAG = MLFLOW_PARENT_RUN_ID


@dataclass(frozen=True)
class Resume:
    """An unfinished attempt of a trial to continue: its run, its last full-epoch checkpoint and
    the seconds of training that checkpoint holds."""

    run_id: str
    checkpoint: str
    kept_s: float


def trial_tags(plan: StudyPlan, vp: VariantPlan, seed: int) -> dict[str, str]:
    """The tags of the child run of ``vp`` with ``seed`` (plus any the config's logger sets)."""
    assert plan.parent_id is not None
    tags = {
        str(k): str(v)
        for k, v in ((vp.resolved["trainer"]["logger"].get("init_args") or {}).get("tags") or {}).items()
    }
    tags.update(
        {
            PARENT_TAG: plan.parent_id,
            TAG_STUDY: plan.study.name,
            TAG_HASH: plan.study_hash,
            TAG_ROLE: "trial",
            TAG_VARIANT: vp.variant.name,
            TAG_SEED: str(seed),
            TAG_CONFIG: vp.config_hash,
        }
    )
    return tags


def search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching ``filter_string`` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_runs(plan: StudyPlan, client: Any) -> None:
    """Fill ``plan.parent_id`` and ``plan.finished`` from the tracking store (no runs created)."""
    experiment = client.get_experiment_by_name(plan.experiment)
    plan.parent_id, plan.finished = None, {}
    if experiment is None:
        return
    base = f"tags.{TAG_STUDY} = '{plan.study.name}' AND tags.{TAG_HASH} = '{plan.study_hash}'"
    parents = search(client, experiment.experiment_id, f"{base} AND tags.{TAG_ROLE} = 'parent'")
    if not parents:
        return
    parents.sort(key=lambda r: r.info.start_time)
    plan.parent_id = parents[0].info.run_id
    for run in children(client, plan, experiment.experiment_id):
        tags = run.data.tags
        if run.info.status != "FINISHED":
            continue
        try:
            key = (tags[TAG_VARIANT], int(tags[TAG_SEED]))
        except (KeyError, ValueError):
            continue
        # Two finished runs of one variant and seed (e.g. concurrent launches): keep the newest.
        if key not in plan.finished or run.info.start_time > plan.finished[key].info.start_time:
            plan.finished[key] = run


def children(
    client: Any, plan: StudyPlan, experiment_id: str | None = None, status: str | None = None
) -> list[Any]:
    """The child runs of the study's parent (optionally only those with ``status``)."""
    if plan.parent_id is None:
        return []
    if experiment_id is None:
        experiment_id = client.get_run(plan.parent_id).info.experiment_id
    filter_string = f"tags.{TAG_ROLE} = 'trial' AND tags.`{PARENT_TAG}` = '{plan.parent_id}'"
    if status is not None:
        filter_string += f" AND attributes.status = '{status}'"
    return search(client, experiment_id, filter_string)


def end_running_children(
    client: Any,
    plan: StudyPlan,
    status: str,
    variant: str | None = None,
    seed: int | None = None,
    keep: str | None = None,
) -> list[str]:
    """Mark the study's RUNNING children ``status`` (all, or those of one variant and seed), except
    ``keep``; returns their ids.

    A run whose process died (a killed Ray worker, a cancelled task) cannot end its own MLflow run;
    the driver ends it for it, so no run stays RUNNING.
    """
    ended = []
    for run in children(client, plan, status="RUNNING"):
        tags = run.data.tags
        if run.info.run_id == keep:
            continue
        if variant is not None and (tags.get(TAG_VARIANT) != variant or tags.get(TAG_SEED) != str(seed)):
            continue
        client.set_terminated(run.info.run_id, status)
        ended.append(run.info.run_id)
    return ended


def resume_point(runs: list[Any], plan: StudyPlan, vp: VariantPlan, seed: int) -> Resume | None:
    """The newest unfinished attempt of (variant, seed) among ``runs`` (the parent's children, see
    :func:`children`), with this config, that left a ``last.ckpt`` (the end of a full epoch) in its
    run folder; None if there is none.

    Training goes on from that epoch, in the same MLflow run. Fit's seeding makes the result the
    same as an uninterrupted run's; only the time lost since that epoch is trained again.
    """
    folder = Path(vp.resolved.get("output_dir") or "runs") / f"{plan.study.name}-{vp.variant.name}-seed{seed}"
    attempts = [
        r
        for r in runs
        if r.info.status != "FINISHED"
        and r.data.tags.get(TAG_VARIANT) == vp.variant.name
        and r.data.tags.get(TAG_SEED) == str(seed)
        and r.data.tags.get(TAG_CONFIG) == vp.config_hash
    ]
    for run in sorted(attempts, key=lambda r: r.info.start_time, reverse=True):
        checkpoint = folder / run.info.run_id / "checkpoints" / "last.ckpt"
        if checkpoint.is_file():
            tags = run.data.tags
            since = int(tags.get(TAG_RESUMED_AT, run.info.start_time)) / 1000.0
            kept = float(tags.get(TAG_KEPT, 0.0)) + max(0.0, checkpoint.stat().st_mtime - since)
            return Resume(run.info.run_id, str(checkpoint), kept)
    return None


def run_seconds(run: Any) -> float | None:
    """Seconds a finished run trained: start to end, less the pauses before it was resumed."""
    info, tags = run.info, run.data.tags
    if not (info.end_time and info.start_time):
        return None
    if TAG_RESUMED_AT in tags:
        return float(tags[TAG_KEPT]) + (info.end_time - int(tags[TAG_RESUMED_AT])) / 1000.0
    return (info.end_time - info.start_time) / 1000.0


def reusable_run(client: Any, plan: StudyPlan, vp: VariantPlan, seed: int) -> Any | None:
    """A finished trial of any study in this experiment with the same resolved config and seed."""
    experiment = client.get_experiment_by_name(plan.experiment)
    if experiment is None:
        return None
    found = search(
        client,
        experiment.experiment_id,
        f"tags.{TAG_CONFIG} = '{vp.config_hash}' AND tags.{TAG_SEED} = '{seed}' "
        f"AND tags.{TAG_ROLE} = 'trial' AND attributes.status = 'FINISHED'",
    )
    found = [r for r in found if r.info.end_time]
    return min(found, key=lambda r: r.info.start_time) if found else None


def copy_run(client: Any, source: Any, tags: dict[str, str], run_name: str) -> Any:
    """A child run under this study's parent holding ``source``'s params, metrics and histories."""
    origin = source.data.tags.get(TAG_REUSED, source.info.run_id)
    copied = {  # where the results came from stays true of the copy
        k: v
        for k, v in source.data.tags.items()
        if k in (BEST_CHECKPOINT_TAG, TAG_EXECUTOR, TAG_KEPT, TAG_RESUMED_AT) or k.startswith("machine.")
    }
    run = client.create_run(
        source.info.experiment_id,
        start_time=source.info.start_time,
        tags={**copied, **tags, TAG_REUSED: origin},
        run_name=run_name,
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in source.data.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    metrics = []
    for key in source.data.metrics:
        metrics += [
            MlflowMetric(key, m.value, m.timestamp, m.step)
            for m in client.get_metric_history(source.info.run_id, key)
        ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run_id, "FINISHED", end_time=source.info.end_time)
    return client.get_run(run_id)


def open_parent(plan: StudyPlan, client: Any) -> str:
    """Create the study's parent run, or mark the existing one RUNNING again; returns its id."""
    if plan.parent_id is not None:
        client.update_run(plan.parent_id, status="RUNNING")
        return plan.parent_id
    study = plan.study
    experiment_id = ensure_experiment(client, plan.experiment)
    tags = {
        TAG_STUDY: study.name,
        TAG_HASH: plan.study_hash,
        TAG_ROLE: "parent",
        "study_file": str(study.path),
        "mlflow.note.content": f"**{study.title}**\n\n{study.hypothesis}",
    }
    run = client.create_run(experiment_id, run_name=f"study-{study.name}", tags=tags)
    for key, value in {
        "study.base": str(study.base) if study.base else "defaults",
        "study.variants": ", ".join(v.variant.name for v in plan.variants),
        "study.overrides": " ".join(plan.cli_overrides)[:6000] or "none",
    }.items():
        client.log_param(run.info.run_id, key, value)
    plan.parent_id = run.info.run_id
    return plan.parent_id
