"""``report.md`` of a sweep: the search, every trial, the best one and its test metrics, the figures.

Plain text from plain values: :mod:`fashion_cnn.sweep.report` gathers them and writes the file.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from fashion_cnn.runs.progress import duration, now, shown_path
from fashion_cnn.sweep.spec import SweepSpec
from fashion_cnn.sweep.storage import shown

FIGURES = {
    "optimization_history.png": "Optimisation history",
    "param_importances.png": "Parameter importances",
    "parallel_coordinates.png": "Parallel coordinates",
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
    word = "higher" if spec.higher_is_better else "lower"
    elapsed = wall(trials)
    total = sum(s for s in map(seconds, trials) if s is not None)
    epochs = spec.resolved["trainer"]["max_epochs"]
    lines = [
        f"# Sweep `{spec.options.name}`",
        "",
        f"Optuna study `{spec.options.name}` in `{shown(spec.storage)}`; MLflow parent run `{parent_id}` in "
        "experiment "
        f"`{spec.options.experiment}` (`{spec.tracking_uri}`). Generated {now()}.",
        "",
        "## Search",
        "",
        f"- objective: `{o.objective}`, {word} is better, the best epoch of each trial (the test set is "
        "never looked at during the search)",
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
        "the last "
        f"one's end; {duration(total)} of trial time in all.",
        "",
        *_trial_table(spec, trials, best),
        "",
    ]
    lines += _best_section(spec, best, test, test_note)
    if drawn or figure_notes:
        lines += ["## Figures", ""]
        lines += [f"![{FIGURES[f]}]({f})" + "\n" for f in drawn]
        lines += [f"- {n}" for n in figure_notes]
        lines.append("")
    if command:
        lines += ["## Command", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def _trial_table(spec: SweepSpec, trials: Sequence[Any], best: Any) -> list[str]:
    keys = spec.space.keys
    head = ["trial", "state", spec.options.objective, "epochs", *(k.split(".")[-1] for k in keys), "time"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        mark = " (best)" if best is not None and t.number == best.number else ""
        value = f"{t.value:.4f}" if finite(t.value) else "-"
        took = seconds(t)
        cells = [
            f"{t.number}{mark}",
            t.state.name.lower(),
            value,
            str(max(t.intermediate_values, default=0)),
            *(_cell(t.params.get(k)) for k in keys),
            duration(took) if took is not None else "-",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _best_section(spec: SweepSpec, best: Any, test: Mapping[str, float], test_note: str) -> list[str]:
    if best is None:
        return ["## Best trial", "", "No trial is complete yet.", ""]
    args = " ".join(f"--{k} {shlex.quote(_exact(v))}" for k, v in best.params.items())
    settings = " ".join(f"--{k} {shlex.quote(_exact(v))}" for k, v in spec.settings.items())
    base = f"--config {shown_path(spec.base)} " if spec.base else ""
    lines = [
        "## Best trial",
        "",
        f"Trial {best.number}: **{spec.options.objective} {best.value:.4f}** with "
        + ", ".join(f"`{k}={_cell(v)}`" for k, v in best.params.items())
        + ".",
        "",
    ]
    if test:
        shown_test = ", ".join(f"{k} **{v:.4f}**" for k, v in test.items())
        lines += [f"Its best checkpoint on the test set, evaluated once after the search: {shown_test}.", ""]
    elif test_note:
        lines += [test_note + ".", ""]
    lines += [
        "Its full config is `best_config.yaml` beside this report; the same run from the command line:",
        "",
        "```bash",
        f"fashion-cnn fit {base}--seed_everything {spec.options.seed} {settings} {args}".replace("  ", " "),
        "```",
        "",
    ]
    return lines


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


def _exact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["FIGURES", "finite", "report_markdown", "seconds", "wall"]
