"""A sweep's report: the best trial's config and test metrics, three figures, ``report.md``.

:func:`write_report` writes to the sweep's output folder ``best_config.yaml`` (the best trial's full
``fit`` config, ready to run), ``optimization_history.png``, ``param_importances.png``,
``parallel_coordinates.png``, ``trials.json`` and ``report.md``, and logs them and the headline
numbers on the parent run. The best trial is evaluated on the test set once: a later report finds
that evaluation's MLflow run (tag ``sweep_role: test``) and reuses it.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_cnn import figures
from fashion_cnn.errors import RunFailed
from fashion_cnn.runs.launch import RunSpec, launch
from fashion_cnn.runs.progress import Progress, duration, now, shown_path
from fashion_cnn.runs.settings import word
from fashion_cnn.sweep.runner import TAG_ROLE, TAG_SWEEP, TAG_TRIAL, fit_config, logged_to
from fashion_cnn.sweep.search import ATTR_CHECKPOINT, ATTR_REASON, ATTR_RUN
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import shown

log = logging.getLogger(__name__)

FIGURES = {
    "optimization_history.png": "Optimisation history",
    "param_importances.png": "Parameter importances",
    "parallel_coordinates.png": "Parallel coordinates",
}


def write_report(
    spec: SweepSpec,
    study: Any,
    client: Any,
    parent_id: str,
    command: str | None = None,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the report files, evaluate the best trial on the test set (once), log it all on the
    parent run. Returns the report's path and the summary (also in ``trials.json``)."""
    progress = progress or Progress(prunes=True)
    out = spec.output
    out.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    complete = [t for t in trials if t.state.name == "COMPLETE" and finite(t.value)]
    best = None
    if complete:
        best = (max if spec.higher_is_better else min)(complete, key=lambda t: (t.value, -t.number))
    test: dict[str, float] = {}
    test_note = ""
    files = []
    if best is not None:
        config_path = out / "best_config.yaml"
        config_path.write_text(_best_config_text(spec, best, command), encoding="utf-8")
        files.append(config_path)
        test, test_note = evaluate_best(spec, best, client, parent_id, config_path)
        if test_note:
            progress.note(test_note)
    drawn, figure_notes = _figures(spec, study, trials, complete, out)
    files += [out / f for f in drawn]
    summary = _summary(spec, trials, counts, best, test)
    data = out / "trials.json"
    data.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    report = out / "report.md"
    text = report_markdown(
        spec, trials, counts, best, test, test_note, drawn, figure_notes, parent_id, command
    )
    report.write_text(text, encoding="utf-8")
    files += [data, report]
    metrics = {f"trials/{k.lower()}": float(v) for k, v in counts.items()}
    if best is not None:
        metrics[f"best/{spec.options.objective}"] = float(best.value)
        metrics.update({f"best/{k}": v for k, v in test.items()})
        client.set_tag(parent_id, "best_trial", str(best.number))
        client.set_tag(parent_id, "best_run_id", str(best.user_attrs.get(ATTR_RUN)))
    for key, value in metrics.items():
        client.log_metric(parent_id, key, value)
    for path in files:
        client.log_artifact(parent_id, str(path), "report")
    return report, summary


# --------------------------------------------------------------------------------------------
# The best trial: its config, its one test evaluation


def best_config(spec: SweepSpec, trial: Any) -> dict[str, Any]:
    """The best trial's full ``fit`` config without the sweep's plumbing (logger, names, pruning)."""
    return fit_config(spec, trial.params, f"{spec.options.name}-best")


def _best_config_text(spec: SweepSpec, trial: Any, command: str | None) -> str:
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    header = [
        f"# Best trial of sweep {spec.options.name}: trial {trial.number}, "
        f"{spec.options.objective} {trial.value:.4f}",
        f"#           ({params}).",
        f"# Found by: {command or 'fashion-cnn sweep'}",
        f"# Run:      fashion-cnn fit --config {spec.output / 'best_config.yaml'}",
        "# The training budget is the sweep's (trainer.max_epochs, limit_*_batches); raise it for a",
        "# full run.",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(best_config(spec, trial), sort_keys=False)


def evaluate_best(
    spec: SweepSpec, trial: Any, client: Any, parent_id: str, config_path: Path
) -> tuple[dict[str, float], str]:
    """The test metrics of the best trial's best checkpoint: from an earlier evaluation of the same
    trial under this parent, else by running ``fashion-cnn test`` once. Returns (metrics, note).

    Raises:
        RunFailed: The test run failed for a user reason (named, with its log).
    """
    experiment_id = client.get_run(parent_id).info.experiment_id
    done = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{TAG_ROLE} = 'test' AND tags.{TAG_TRIAL} = '{trial.number}' "
        f"AND tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}' AND attributes.status = 'FINISHED'",
        max_results=10,
    )
    done = [r for r in done if any(k.startswith("test/") for k in r.data.metrics)]
    if done:
        return _test_metrics(done[0].data.metrics), ""
    checkpoint = trial.user_attrs.get(ATTR_CHECKPOINT)
    if not checkpoint or not Path(checkpoint).is_file():
        return {}, (
            f"best trial {trial.number}: its checkpoint {checkpoint or '(none recorded)'} is not on this "
            "machine; the test evaluation is left out (run the report where the trial trained)"
        )
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_id,
        TAG_SWEEP: spec.options.name,
        TAG_ROLE: "test",
        TAG_TRIAL: str(trial.number),
        "tested_run": str(trial.user_attrs.get(ATTR_RUN)),
    }
    name = f"{spec.options.name}-best-trial{trial.number:04d}-test"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["output_dir"] = str(spec.output / "runs")
    log_file = spec.output / "logs" / f"test-trial-{trial.number:04d}.log"
    test = RunSpec(
        (spec.options.name, trial.number, "test"),
        name,
        logged_to(config, spec.tracking_uri, run.info.run_id),
        str(log_file),
        subcommand="test",
        args=("--ckpt_path", checkpoint),
    )
    outcome = launch(test)
    if outcome.state != "finished":
        raise RunFailed(outcome.error)
    return _test_metrics(outcome.metrics), ""


def _test_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test/")}


# --------------------------------------------------------------------------------------------
# Figures


def _figures(
    spec: SweepSpec, study: Any, trials: Sequence[Any], complete: Sequence[Any], out: Path
) -> tuple[list[str], list[str]]:
    """Draw what the trials allow; returns the files written and notes on what was left out."""
    if not figures.matplotlib_available():
        return [], ["matplotlib is not installed: no figures"]
    objective, higher = spec.options.objective, spec.higher_is_better
    pruned = [(t.number, t.value) for t in trials if t.state.name == "PRUNED" and finite(t.value)]
    drawn = {
        "optimization_history.png": figures.plot_optimization_history(
            objective, higher, [(t.number, t.value) for t in complete], pruned
        )
    }
    notes = []
    importances = param_importances(study)
    if importances:
        drawn["param_importances.png"] = figures.plot_param_importances(objective, importances)
    else:
        notes.append("parameter importances need two or more complete trials that differ")
    if complete:
        axes = [
            figures.ParallelAxis(
                p.key,
                [t.params.get(p.key) for t in complete],
                p.log,
                list(p.choices) if p.kind == "categorical" else None,
            )
            for p in spec.space.params
        ]
        values = [t.value for t in complete]
        drawn["parallel_coordinates.png"] = figures.plot_parallel_coordinates(objective, higher, values, axes)
    for name, fig in drawn.items():
        figures.save_figure(fig, out / name)
    return list(drawn), notes


def param_importances(study: Any) -> dict[str, float]:
    """Optuna's fANOVA importances over the complete trials ({} when they cannot be computed).

    Only keys every complete trial sampled take part (a conditional key such as norm_groups does
    not).
    """
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError) as exc:  # e.g. no key varies across the complete trials
        log.info("parameter importances left out: %s", exc)
        return {}


# --------------------------------------------------------------------------------------------
# trials.json and report.md


def _summary(
    spec: SweepSpec, trials: Sequence[Any], counts: Mapping[str, int], best: Any, test: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "name": spec.options.name,
        "storage": shown(spec.storage),
        "objective": spec.options.objective,
        "direction": spec.direction,
        "counts": dict(counts),
        "wall_s": wall(trials),
        "trial_s": sum(s for s in map(seconds, trials) if s is not None),
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params, "test": dict(test)},
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if finite(t.value) else None,
                "params": t.params,
                "epochs": max(t.intermediate_values, default=0),
                "seconds": seconds(t),
                "mlflow_run_id": t.user_attrs.get(ATTR_RUN),
                "fail_reason": t.user_attrs.get(ATTR_REASON),
            }
            for t in trials
        ],
    }


def report_markdown(
    spec: SweepSpec,
    trials: Sequence[Any],
    counts: Mapping[str, int],
    best: Any,
    test: Mapping[str, float],
    test_note: str,
    drawn: Sequence[str],
    figure_notes: Sequence[str],
    parent_id: str,
    command: str | None,
) -> str:
    """The report as Markdown (figures referenced by file name, beside it)."""
    o = spec.options
    elapsed = wall(trials)
    total = sum(s for s in map(seconds, trials) if s is not None)
    epochs = spec.resolved["trainer"]["max_epochs"]
    keys = spec.space.keys
    head = ["trial", "state", o.objective, "epochs", *(k.split(".")[-1] for k in keys), "time"]
    lines = [
        f"# Sweep `{o.name}`",
        "",
        f"Optuna study `{o.name}` in `{shown(spec.storage)}`; MLflow parent run `{parent_id}` in experiment "
        f"`{o.experiment}` (`{spec.tracking_uri}`). Generated {now()}.",
        "",
        "## Search",
        "",
        f"- objective: `{o.objective}`, {'higher' if spec.higher_is_better else 'lower'} is better, the best "
        "epoch of each trial (the test set is never looked at during the search)",
        f"- base config: `{shown_path(spec.base) if spec.base else 'defaults'}`; fixed settings: "
        + (", ".join(f"`{k}={v}`" for k, v in spec.settings.items()) or "none"),
        f"- budget per trial: {epochs} epoch{'s' if epochs != 1 else ''}; search size: "
        + (f"{o.n_trials} trials" if o.n_trials else "until the timeout")
        + (f", timeout {duration(o.timeout)} per invocation" if o.timeout else ""),
        f"- sampler: {o.sampler} (seed {o.seed}, {o.startup_trials} random startup trials); pruner: "
        f"{spec.pruner.name} (from epoch {spec.pruner.from_epoch})",
        "",
        "| key | sampled as |",
        "|---|---|",
        *(f"| `{p.key}` | {p.describe()} |" for p in spec.space.params),
        "",
        "## Trials",
        "",
        f"{len(trials)} trials: **{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['FAIL']} failed**"
        + (f", {counts['RUNNING']} running" if counts.get("RUNNING") else "")
        + f". Wall time {duration(elapsed) if elapsed is not None else '-'} from the first trial's start to "
        f"the last one's end; {duration(total)} of trial time in all.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for t in trials:
        took = seconds(t)
        cells = [
            f"{t.number}{' (best)' if best is not None and t.number == best.number else ''}",
            t.state.name.lower(),
            f"{t.value:.4f}" if finite(t.value) else "-",
            str(max(t.intermediate_values, default=0)),
            *(_cell(t.params.get(k)) for k in keys),
            duration(took) if took is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Best trial", ""]
    if best is None:
        lines += ["No trial is complete yet.", ""]
    else:
        args = " ".join(f"--{k} {shlex.quote(word(v))}" for k, v in {**spec.settings, **best.params}.items())
        base = f"--config {shown_path(spec.base)} " if spec.base else ""
        lines += [
            f"Trial {best.number}: **{o.objective} {best.value:.4f}** with "
            + ", ".join(f"`{k}={_cell(v)}`" for k, v in best.params.items())
            + ".",
            "",
        ]
        if test:
            shown_test = ", ".join(f"{k} **{v:.4f}**" for k, v in test.items())
            lines += [
                f"Its best checkpoint on the test set, evaluated once after the search: {shown_test}.",
                "",
            ]
        elif test_note:
            lines += [test_note + ".", ""]
        lines += [
            "Its full config is `best_config.yaml` beside this report; the same run from the command line:",
            "",
            "```bash",
            f"fashion-cnn fit {base}--seed_everything {o.seed} {args}".replace("  ", " "),
            "```",
            "",
        ]
    if drawn or figure_notes:
        lines += ["## Figures", "", *(f"![{FIGURES[f]}]({f})\n" for f in drawn)]
        lines += [f"- {n}" for n in figure_notes] + [""]
    if command:
        lines += ["## Command", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def seconds(trial: Any) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def wall(trials: Sequence[Any]) -> float | None:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


__all__ = ["FIGURES", "best_config", "evaluate_best", "param_importances", "report_markdown", "write_report"]
