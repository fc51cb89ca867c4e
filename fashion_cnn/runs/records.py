"""The MLflow records of many runs: a parent run, its children, copies and resumes.

One parent run per study or sweep and one child per run, linked through MLflow's
``mlflow.parentRunId`` tag, which the UI nests on and which works across processes and machines.
Only the driver writes the parent; each child is written by its run, wherever it trains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn.tracking import BEST_CHECKPOINT_TAG

log = logging.getLogger(__name__)

PARENT_TAG = MLFLOW_PARENT_RUN_ID
TAG_EXECUTOR = "executor"  # serial or ray: what trained the run (fit adds the machine.* tags)
TAG_REUSED = "reused_from"  # the run a copy came from
# A run continued from its checkpoint: the seconds it had trained before, and when it went on.
TAG_KEPT, TAG_RESUMED_AT = "resume.kept_s", "resume.at_ms"


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


def open_parent(
    client: Any,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    existing: str | None = None,
) -> str:
    """Mark the parent run ``existing`` RUNNING again, or create one with ``tags`` and ``params``
    (params are written once: MLflow refuses to change them); returns its id."""
    from mlflow.exceptions import MlflowException

    if existing:
        try:
            if client.get_run(existing).info.lifecycle_stage != "deleted":
                client.update_run(existing, status="RUNNING")
                return existing
        except MlflowException:
            pass  # another tracking store than the one the parent was made in: make one here
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return str(run.info.run_id)


def close_parent(client: Any, run_id: str | None, status: str) -> None:
    """End the parent run with ``status``; a failure here is logged and the original error kept."""
    if run_id is None:
        return
    try:
        client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 - the store may be what failed; the original error matters
        log.warning("could not mark run %s %s", run_id, status, exc_info=True)


def children(client: Any, parent_id: str, role_filter: str, status: str | None = None) -> list[Any]:
    """The child runs of ``parent_id`` that match ``role_filter`` (optionally only ``status``)."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    filter_string = f"{role_filter} AND tags.`{PARENT_TAG}` = '{parent_id}'"
    if status is not None:
        filter_string += f" AND attributes.status = '{status}'"
    return search(client, experiment_id, filter_string)


def copy_run(client: Any, source: Any, tags: Mapping[str, str], run_name: str) -> Any:
    """A new run (a child where ``tags`` say so) holding ``source``'s params, metrics and
    histories, with where its results came from kept (checkpoint, executor, machine, timings)."""
    from mlflow.entities import Metric, Param

    kept = (BEST_CHECKPOINT_TAG, TAG_EXECUTOR, TAG_KEPT, TAG_RESUMED_AT)
    copied = {k: v for k, v in source.data.tags.items() if k in kept or k.startswith("machine.")}
    origin = source.data.tags.get(TAG_REUSED, source.info.run_id)
    run_id = client.create_run(
        source.info.experiment_id,
        start_time=source.info.start_time,
        tags={**copied, **tags, TAG_REUSED: origin},
        run_name=run_name,
    ).info.run_id
    params = [Param(k, v) for k, v in source.data.params.items()]
    metrics = [
        Metric(key, m.value, m.timestamp, m.step)
        for key in source.data.metrics
        for m in client.get_metric_history(source.info.run_id, key)
    ]
    for i in range(0, len(params), 100):  # MLflow's limits per batch
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run_id, "FINISHED", end_time=source.info.end_time)
    return client.get_run(run_id)


def mark_resumed(tracking_uri: str, run_id: str, kept_s: float) -> None:
    """Tag the run a resumed run continues with the seconds it had trained and when it goes on
    (now, when the run really starts, not when it was queued), so its time leaves out the pause."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, TAG_KEPT, f"{kept_s:.1f}")
    client.set_tag(run_id, TAG_RESUMED_AT, str(int(time.time() * 1000)))


def run_seconds(run: Any) -> float | None:
    """Seconds a finished run trained: start to end, less the pauses before it was resumed."""
    info, tags = run.info, run.data.tags
    if not (info.end_time and info.start_time):
        return None
    if TAG_RESUMED_AT in tags:
        return float(tags[TAG_KEPT]) + (info.end_time - int(tags[TAG_RESUMED_AT])) / 1000.0
    return (info.end_time - info.start_time) / 1000.0
