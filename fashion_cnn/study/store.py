"""A study's records in MLflow: its parent and children, what a rerun keeps, copies or continues.

One parent run per study (tagged with the study name and hash) and one child per variant x seed,
kept by the run layer's records (:mod:`fashion_cnn.runs.records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_cnn.runs import records
from fashion_cnn.runs.records import PARENT_TAG, TAG_KEPT, TAG_RESUMED_AT, search
from fashion_cnn.study.plan import StudyPlan, VariantPlan
from fashion_cnn.tracking import ensure_experiment

# Tags on the parent ("study") and child ("trial") runs; plain keys keep MLflow filters simple.
TAG_STUDY, TAG_HASH, TAG_ROLE, TAG_VARIANT, TAG_SEED = "study", "study_hash", "study_role", "variant", "seed"
TAG_CONFIG = "config_hash"  # per-variant config hash
CHILDREN = f"tags.{TAG_ROLE} = 'trial'"


@dataclass(frozen=True)
class Resume:
    """An unfinished attempt to continue: its run, its last full-epoch checkpoint and the seconds
    of training that checkpoint holds."""

    run_id: str
    checkpoint: str
    kept_s: float


def trial_tags(plan: StudyPlan, vp: VariantPlan, seed: int) -> dict[str, str]:
    """The tags of the child run of ``vp`` with ``seed`` (plus any the config's logger sets)."""
    assert plan.parent_id is not None
    own = (vp.resolved["trainer"]["logger"].get("init_args") or {}).get("tags") or {}
    return {
        **{str(k): str(v) for k, v in own.items()},
        PARENT_TAG: plan.parent_id,
        TAG_STUDY: plan.study.name,
        TAG_HASH: plan.study_hash,
        TAG_ROLE: "trial",
        TAG_VARIANT: vp.variant.name,
        TAG_SEED: str(seed),
        TAG_CONFIG: vp.config_hash,
    }


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
    plan.parent_id = min(parents, key=lambda r: r.info.start_time).info.run_id
    for run in children(client, plan, "FINISHED"):
        try:
            key = (run.data.tags[TAG_VARIANT], int(run.data.tags[TAG_SEED]))
        except (KeyError, ValueError):
            continue
        # Two finished runs of one variant and seed (e.g. concurrent launches): keep the newest.
        if key not in plan.finished or run.info.start_time > plan.finished[key].info.start_time:
            plan.finished[key] = run


def children(client: Any, plan: StudyPlan, status: str | None = None, where: str = "") -> list[Any]:
    """The child runs of the study's parent (optionally only those with ``status``, and ``where``)."""
    if plan.parent_id is None:
        return []
    return records.children(client, plan.parent_id, CHILDREN + where, status)


def end_running_children(
    client: Any,
    plan: StudyPlan,
    status: str,
    variant: str | None = None,
    seed: int | None = None,
    keep: str | None = None,
) -> None:
    """Mark the study's RUNNING children (all, or those of one variant and seed), except ``keep``,
    ``status``: a run whose process died (a killed Ray worker) cannot end its own MLflow run."""
    one = "" if variant is None else f" AND tags.{TAG_VARIANT} = '{variant}' AND tags.{TAG_SEED} = '{seed}'"
    for run in children(client, plan, "RUNNING", one):
        if run.info.run_id != keep:
            client.set_terminated(run.info.run_id, status)


def resume_point(runs: list[Any], plan: StudyPlan, vp: VariantPlan, seed: int) -> Resume | None:
    """The newest unfinished attempt of (variant, seed) among ``runs`` (the parent's children), with
    this config, that left a ``last.ckpt`` (the end of a full epoch) in its run folder.

    Training goes on from that epoch, in the same MLflow run. Fit's seeding makes the result the
    same as an uninterrupted run's; only the time lost since that epoch is trained again.
    """
    folder = Path(vp.resolved.get("output_dir") or "runs") / f"{plan.study.name}-{vp.variant.name}-seed{seed}"
    mine = {TAG_VARIANT: vp.variant.name, TAG_SEED: str(seed), TAG_CONFIG: vp.config_hash}
    attempts = [
        r
        for r in runs
        if r.info.status != "FINISHED" and all(r.data.tags.get(k) == v for k, v in mine.items())
    ]
    for run in sorted(attempts, key=lambda r: r.info.start_time, reverse=True):
        checkpoint = folder / run.info.run_id / "checkpoints" / "last.ckpt"
        if checkpoint.is_file():
            tags = run.data.tags
            since = int(tags.get(TAG_RESUMED_AT, run.info.start_time)) / 1000.0
            kept = float(tags.get(TAG_KEPT, 0.0)) + max(0.0, checkpoint.stat().st_mtime - since)
            return Resume(run.info.run_id, str(checkpoint), kept)
    return None


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


def open_parent(plan: StudyPlan, client: Any) -> str:
    """Create the study's parent run, or mark the existing one RUNNING again; returns its id."""
    study = plan.study
    tags = {
        TAG_STUDY: study.name,
        TAG_HASH: plan.study_hash,
        TAG_ROLE: "parent",
        "study_file": str(study.path),
        "mlflow.note.content": f"**{study.title}**\n\n{study.hypothesis}",
    }
    params = {
        "study.base": str(study.base) if study.base else "defaults",
        "study.variants": ", ".join(v.variant.name for v in plan.variants),
        "study.overrides": " ".join(plan.cli_overrides) or "none",
    }
    experiment_id = ensure_experiment(client, plan.experiment)
    plan.parent_id = records.open_parent(
        client, experiment_id, f"study-{study.name}", tags, params, existing=plan.parent_id
    )
    return plan.parent_id
