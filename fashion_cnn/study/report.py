"""A study's report: results read back from MLflow, judged claims, figures, ``report.md``, ``results.json``.

Everything comes from the finished child runs in the tracking store, so the report is the same
whichever executor trained them. The tables a combined report repeats per study live here too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_cnn import figures
from fashion_cnn.runs import records
from fashion_cnn.runs.progress import duration, now
from fashion_cnn.runs.progress import shown_path as rel
from fashion_cnn.runs.settings import as_args, hashable
from fashion_cnn.study.plan import StudyPlan, identical_variants
from fashion_cnn.study.power import (
    Outlook,
    claim_rows,
    fdr_line,
    fdr_summary,
    outlook_json,
    outlook_rule_lines,
    outlook_table,
    outlooks,
)
from fashion_cnn.study.sequential import ClaimState, Schedule, sequential_step
from fashion_cnn.study.verdicts import (
    Evaluation,
    evaluate_claim,
    fmt,
    fmt_interval,
    fmt_p,
    mean_ci,
    rule_lines,
)

log = logging.getLogger(__name__)

CAPTIONS = {
    "final": "Final metrics: mean and 95 % CI per variant; dots are seeds, crosses the journal's single "
    "runs.",
    "curves": "Learning curves: mean over seeds per epoch with its 95 % CI (band, or bars for one epoch).",
    "claims": "Claims at a glance: each claim's difference in its favour with its 95 % CI, coloured by "
    "verdict; grey: ± the difference these seeds detect with power 0.8; purple: no difference "
    "± the practical margin.",
}


@dataclass
class StudyResults:
    """What the report needs, read back from the finished child runs."""

    samples: dict[str, dict[str, list[float]]]  # metric -> variant -> one value per seed
    curves: dict[str, dict[str, list[list[float]]]]  # metric -> variant -> per seed, per epoch
    num_params: dict[str, int | None]
    wall: dict[str, float | None]  # mean seconds per run
    runs: list[tuple[str, int, Any]]  # (variant, seed, Run)
    evaluations: list[Evaluation]
    outlooks: list[Outlook | None] = field(default_factory=list)  # per claim; None: not testable
    p_fdr: list[float] = field(default_factory=list)  # per claim, Benjamini-Hochberg adjusted p
    sequential: list[ClaimState] = field(default_factory=list)  # adaptive seeds: per claim
    schedule: Schedule | None = None  # adaptive seeds: the study's planned looks


def collect_results(
    plan: StudyPlan, client: Any, max_seeds: int | None = None, schedule: Schedule | None = None
) -> StudyResults:
    """Gather final metrics, learning curves, parameter counts and wall times, and judge the claims.

    Args:
        max_seeds: The most seeds per variant the study may spend (``--max_seeds``); the seeds a
            claim needs beyond it are reported as "more than <max_seeds>".
        schedule: Adaptive seeds: each claim is judged at its planned looks, at the look's level,
            instead of once at alpha.
    """
    study = plan.study
    names = [vp.variant.name for vp in plan.variants]
    samples = plan.samples()
    curves: dict[str, dict[str, list[list[float]]]] = {c: {v: [] for v in names} for c in study.curves}
    params: dict[str, int | None] = {vp.variant.name: vp.num_params for vp in plan.variants}
    wall: dict[str, list[float]] = {v: [] for v in names}
    runs = []
    for name in names:
        for seed in plan.seeds_of(name):
            run = plan.finished.get((name, seed))
            if run is None:
                continue
            runs.append((name, seed, run))
            for c in study.curves:
                # One value per step, the latest: a resumed run may have logged its last epoch twice.
                history = client.get_metric_history(run.info.run_id, c)
                if history:
                    steps = sorted(history, key=lambda h: (h.step, h.timestamp))
                    curves[c][name].append(list({h.step: h.value for h in steps}.values()))
            logged = run.data.params.get("num_params")
            if logged and logged.isdigit():
                params[name] = int(logged)
            seconds = records.run_seconds(run)
            if seconds is not None:
                wall[name].append(seconds)
    evaluations = [evaluate_claim(c, samples[c.metric], study.metric(c.metric)) for c in study.claims]
    states: list[ClaimState] = []
    if schedule is not None:
        states = sequential_step(study.claims, samples, study.metrics, schedule).states
        evaluations = [s.evaluation or e for s, e in zip(states, evaluations, strict=True)]
    # An adaptive claim is judged, and so described, on the seeds of the look that settled it.
    at_look = [st.seeds if st.look >= 0 else None for st in states] or None
    looks, p_fdr = outlooks(study, samples, evaluations, max_seeds, seeds=at_look)
    mean_wall = {k: (sum(v) / len(v) if v else None) for k, v in wall.items()}
    return StudyResults(samples, curves, params, mean_wall, runs, evaluations, looks, p_fdr, states, schedule)


def write_report(plan: StudyPlan, client: Any, results: StudyResults) -> Path:
    """Write ``report.md``, the figures and ``results.json`` to the plan's output folder, and log them
    as artifacts of the parent run. Returns the report's path."""
    out = plan.output
    out.mkdir(parents=True, exist_ok=True)
    written = _figures(plan, results, out)
    report = out / "report.md"
    report.write_text(_report_markdown(plan, results, written))
    data = out / "results.json"
    data.write_text(json.dumps(results_json(plan, results), indent=2, default=str))
    if plan.parent_id:
        for path in [report, data, *(out / f for f in written.values())]:
            client.log_artifact(plan.parent_id, str(path), "report")
    return report


def _report_markdown(plan: StudyPlan, results: StudyResults, written: Mapping[str, str]) -> str:
    study = plan.study
    variants = f"{len(plan.variants)} variant{'' if len(plan.variants) == 1 else 's'}"
    added = ", ".join(f"{v}: {len(s)} more" for v, s in plan.added.items() if s)
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` from `{rel(study.path)}`: {variants} × {len(plan.seeds)} seeds "
        f"({', '.join(map(str, plan.seeds))})"
        + (f", and seeds added where claims needed them ({added})" if added else "")
        + f"; {len(results.runs)} of {plan.total} runs finished. MLflow parent run `{plan.parent_id}` in "
        f"experiment `{plan.experiment}` ({plan.tracking_uri}), study hash `{plan.study_hash}`. "
        f"Generated {now()}.",
        "",
        "## Hypothesis",
        "",
        f"> {study.hypothesis}",
        "",
        "## Setup",
        "",
        *_setup_lines(plan),
        "",
        "## Results",
        "",
        "Mean ± half-width of the 95 % t-interval over seeds (n per variant in brackets). The journal's "
        "figures are single runs at its own budget.",
        "",
        *results_tables(plan, results, wall=True),
    ]
    for key in ("final", "curves"):
        lines += figure_lines(CAPTIONS[key], written.get(key))
    lines += ["", "## Expected outcomes", "", *claim_lines(plan, results.evaluations)]
    lines += ["", "### What these seeds can and cannot tell", "", *outlook_lines(results)]
    lines += adaptive_lines(plan, results)
    lines += figure_lines(CAPTIONS["claims"], written.get("claims"))
    if study.unchecked:
        lines += ["", "Not tested here (the study has no measurement for them):", ""]
        lines += [f"- {u}" for u in study.unchecked]
    metrics = study.metrics
    lines += [
        "",
        "## Decision rule",
        "",
        *rule_lines(),
        *outlook_rule_lines(study),
        "",
        "## Runs",
        "",
        "| variant | seed | run id | " + " | ".join(m.name for m in metrics) + " | wall time |",
        "|---|---:|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for name, seed, run in results.runs:
        values = " | ".join(fmt(run.data.metrics.get(m.name, math.nan)) for m in metrics)
        lines.append(
            f"| {name} | {seed} | `{run.info.run_id}` | {values} | {_took(records.run_seconds(run))} |"
        )
    return "\n".join(lines) + "\n"


def figure_lines(caption: str, file: str | None) -> list[str]:
    return ["", f"![{caption}]({file})", "", f"*{caption}*"] if file else []


def _took(seconds: float | None) -> str:
    return duration(seconds) if seconds is not None else "–"


def _setup_lines(plan: StudyPlan) -> list[str]:
    study = plan.study
    cli = f"`{' '.join(plan.cli_overrides)}`" if plan.cli_overrides else "none"
    lines = [f"- Base config: `{rel(study.base)}`" if study.base else "- Base config: the CLI defaults"]
    if study.overrides:
        lines.append(f"- Study overrides: `{' '.join(as_args(study.overrides))}`")
    lines.append(f"- Command-line overrides for every run: {cli}")
    lines += [f"  - {change}" for change in budget_changes(plan)]
    lines += [
        "",
        "| variant | config | overrides | epochs | train batches per epoch |",
        "|---|---|---|---:|---:|",
    ]
    for vp in plan.variants:
        trainer = vp.resolved.get("trainer") or {}
        overrides = " ".join(f"`{a}`" for a in as_args(vp.variant.overrides)) or "–"
        lines.append(
            f"| {vp.variant.name} | `{rel(vp.config) if vp.config else 'defaults'}` | {overrides} | "
            f"{trainer.get('max_epochs')} | {_show(str(trainer.get('limit_train_batches') or 'all'))} |"
        )
    for group in identical_variants(plan):
        lines += [
            "",
            f"**Note:** {', '.join(group)} resolve to the same configuration in this study "
            "(only the seeds make their results differ); a claim between them tests nothing.",
        ]
    return lines


def budget_changes(plan: StudyPlan, per_variant: bool = True) -> list[str]:
    """What the command-line overrides changed, per setting: 'trainer.max_epochs: 3 → 1 (a, b)'."""
    changes: dict[tuple[str, str, str], list[str]] = {}
    for vp in plan.variants:
        if vp.as_configured is None:
            continue
        before, after = hashable(vp.as_configured), hashable(vp.resolved)
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                change = (key, str(before.get(key)), str(after.get(key)))
                changes.setdefault(change, []).append(vp.variant.name)
    return [
        f"`{k}`: {_show(b)} → {_show(a)}"
        + ("" if len(v) == len(plan.variants) or not per_variant else f" ({', '.join(v)})")
        for (k, b, a), v in changes.items()
    ]


def _show(text: str) -> str:
    """'30.0' -> '30' (the CLI reads integer batch limits as floats)."""
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


def results_tables(plan: StudyPlan, results: StudyResults, wall: bool) -> list[str]:
    """Each metric's mean ± CI beside the journal's, then the parameter counts (and wall times)."""
    metrics = plan.study.metrics
    lines = [
        "| variant | " + " | ".join(f"{m.name} ({m.direction} is better) | journal" for m in metrics) + " |",
        "|---|" + "---:|---:|" * len(metrics),
    ]
    for vp in plan.variants:
        cells = []
        for m in metrics:
            cells.append(_mean_cell(results.samples[m.name][vp.variant.name]))
            cells.append(fmt(vp.variant.journal[m.name]) if m.name in vp.variant.journal else "–")
        lines.append(f"| {vp.variant.name} | " + " | ".join(cells) + " |")
    head, rule = (" mean wall time per run |", "---:|") if wall else ("", "")
    lines += ["", "| variant | parameters (ours) | parameters (journal) |" + head, "|---|---:|---:|" + rule]
    for vp in plan.variants:
        name = vp.variant.name
        ours, journal = fmt_int(results.num_params.get(name)), fmt_int(vp.variant.journal.get("params"))
        row = f"| {name} | {ours} | {journal} |"
        lines.append(row + (f" {_took(results.wall.get(name))} |" if wall else ""))
    return lines


def _mean_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    ci = mean_ci(values)
    if ci.n < 2:
        return f"{fmt(ci.mean)} (n = 1)"
    return f"{fmt(ci.mean)} ± {ci.half_width:.4f} (n = {ci.n})"


def fmt_int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def claim_lines(plan: StudyPlan, evaluations: Sequence[Evaluation]) -> list[str]:
    """The claims table, then one sentence per claim (with how its two variants differ)."""
    study = plan.study
    lines = [
        "| # | the journal expected | checked as | verdict | test | p (claim) | difference (95 % CI) | "
        "Cohen's d | journal's figures |",
        "|---|---|---|---|---|---:|---|---:|---|",
    ]
    for i, ev in enumerate(evaluations, 1):
        c = ev.claim
        sign = c.kind != "between"
        diff = f"{fmt(ev.difference, sign)} {fmt_interval(*ev.ci, sign)}"
        if c.kind == "between":
            diff = f"mean {diff}"
        elif ev.compared_with and c.kind in ("best", "worst"):
            diff += f" vs {ev.compared_with}"
        d = ev.cohen_d
        cohen = "–" if math.isnan(d) else (f"{d:+.2f}".replace("-", "−") if math.isfinite(d) else fmt(d))
        names = [v.name for v in study.variants] if c.kind in ("best", "worst") else [c.a]
        names += [c.b] if isinstance(c.b, str) else []
        journal = [n for n in names if c.metric in study.variant(n).journal]
        figures_ = ", ".join(f"{n} {fmt(study.variant(n).journal[c.metric])}" for n in journal) or "–"
        lines.append(
            f"| {i} | {c.journal or '–'} | {c.text} | **{ev.verdict}** | {ev.test} | {fmt_p(ev.p_value)} | "
            f"{diff} | {cohen} | {figures_} |"
        )
    lines.append("")
    for i, ev in enumerate(evaluations, 1):
        line = f"{i}. **{ev.verdict}** ({ev.claim.text}): {ev.sentence}"
        if isinstance(ev.claim.b, str):
            line += f" *{_differences(plan, ev.claim.a, ev.claim.b)}*"
        lines.append(line)
    return lines


def _differences(plan: StudyPlan, a: str, b: str) -> str:
    """'a and b differ in: model.norm (instance vs batch).', from their resolved configs, and how
    they differ as the study files configure them if the command line changed that."""
    plans = {vp.variant.name: vp for vp in plan.variants}

    def diff(attr: str) -> list[str] | None:
        ra, rb = getattr(plans[a], attr), getattr(plans[b], attr)
        if ra is None or rb is None:
            return None
        ra, rb = hashable(ra), hashable(rb)
        keys = sorted(set(ra) | set(rb))
        return [f"{k} ({ra.get(k)} vs {rb.get(k)})" for k in keys if ra.get(k) != rb.get(k)]

    here = diff("resolved") or []
    if here:
        text = f"{a} and {b} differ in: " + "; ".join(here) + "."
    else:
        text = f"{a} and {b} have the same settings here: only the seeds differ."
    configured = diff("as_configured")
    if configured is not None and configured != here:
        text += " As the study files configure them (the journal's budget): " + (
            "; ".join(configured) + "." if configured else "the same settings."
        )
    return text


def outlook_lines(results: StudyResults) -> list[str]:
    return [
        *outlook_table(results.evaluations, results.outlooks, results.p_fdr),
        "",
        fdr_line(results.evaluations, results.p_fdr),
    ]


def adaptive_lines(plan: StudyPlan, results: StudyResults) -> list[str]:
    """The report's section on adaptive seeds: the planned looks and where each claim stopped."""
    schedule = results.schedule
    if schedule is None:
        return []
    levels = ", ".join(f"{n} seeds: {a:.2g}" for n, a in zip(schedule.looks, schedule.nominal, strict=True))
    lines = [
        "",
        "### Adaptive seeds",
        "",
        f"Seeds were added in planned blocks ({' → '.join(map(str, schedule.looks))} per variant) only to "
        f"the variants of claims still undecided. Each look tests at its {schedule.spending} alpha-spending "
        f"level ({levels}), so a claim's chance of a false 'supported' stays at most {schedule.alpha:g} "
        f"(docs/studies.md). Runs: {plan.total}, against {len(plan.variants) * schedule.max_seeds} for a "
        f"fixed design at {schedule.max_seeds} seeds.",
        "",
        "| # | claim | state | judged at | level | seeds needed at the observed effect |",
        "|---|---|---|---|---:|---|",
    ]
    for i, st in enumerate(results.sequential, 1):
        needed = str(st.seeds_needed) if st.seeds_needed is not None else f"more than {schedule.max_seeds}"
        if st.state in ("supported", "not supported"):
            needed = "– (decided)"
        where, level = (
            ("no look yet", "–") if st.look < 0 else (f"{st.seeds} seeds", f"{st.nominal_alpha:.2g}")
        )
        lines.append(f"| {i} | {st.claim.text} | {st.state} | {where} | {level} | {needed} |")
    return lines


def _figures(plan: StudyPlan, results: StudyResults, out: Path) -> dict[str, str]:
    if not figures.matplotlib_available():
        log.warning("matplotlib is not installed; the report has no figures (pip install matplotlib)")
        return {}
    study = plan.study
    names = [vp.variant.name for vp in plan.variants]
    estimates = {
        m.name: {n: _estimate(v) if (v := results.samples[m.name][n]) else None for n in names}
        for m in study.metrics
    }
    journal = {n: dict(study.variant(n).journal) for n in names}
    metrics = [(m.name, m.direction) for m in study.metrics]
    fig = figures.plot_final_metrics(study.title, metrics, estimates, journal)
    written = {"final": figures.save_figure(fig, out / "final_metrics.png", dpi=110).name}
    curves = {}
    for c in study.curves:
        # Per variant, per epoch over the seeds, up to the shortest seed's epochs.
        per_variant = {
            n: [_estimate([h[e] for h in seeds]) for e in range(min(len(h) for h in seeds))]
            for n in names
            if (seeds := results.curves[c][n])
        }
        if per_variant:
            curves[c] = per_variant
    if curves:
        fig = figures.plot_study_curves(study.title, curves)
        written["curves"] = figures.save_figure(fig, out / "learning_curves.png", dpi=110).name
    rows = claim_rows(results.evaluations, results.outlooks)
    if rows:
        fig = figures.plot_claim_intervals(f"{study.title}: claims at a glance", rows)
        written["claims"] = figures.save_figure(fig, out / "claims.png", dpi=110).name
    return written


def _estimate(values: Sequence[float]) -> figures.Estimate:
    ci = mean_ci(values)
    return figures.Estimate(ci.mean, ci.low, ci.high, list(values))


def results_json(plan: StudyPlan, results: StudyResults) -> dict[str, Any]:
    schedule = results.schedule
    claims = zip(
        results.evaluations,
        results.outlooks or [None] * len(results.evaluations),
        results.p_fdr or [math.nan] * len(results.evaluations),
        strict=True,
    )
    return {
        "study": plan.study.name,
        "title": plan.study.title,
        "hash": plan.study_hash,
        "parent_run_id": plan.parent_id,
        "seeds": plan.seeds,
        "overrides": plan.cli_overrides,
        "samples": results.samples,
        "num_params": results.num_params,
        "mean_wall_s": results.wall,
        "claims": [
            {
                "claim": e.claim.text,
                "journal": e.claim.journal,
                "verdict": e.verdict,
                "test": e.test,
                "p": e.p_value,
                "difference": e.difference,
                "ci": list(e.ci),
                "cohen_d": e.cohen_d,
                "sentence": e.sentence,
                **outlook_json(o, p),
            }
            for e, o, p in claims
        ],
        "runs": [{"variant": v, "seed": s, "run_id": r.info.run_id} for v, s, r in results.runs],
        "fdr": fdr_summary(results.evaluations, results.p_fdr),
        "margins": plan.study.margins,
        "seeds_per_variant": {vp.variant.name: plan.seeds_of(vp.variant.name) for vp in plan.variants},
        "adaptive": None
        if schedule is None
        else {
            "looks": list(schedule.looks),
            "spending": schedule.spending,
            "nominal_alpha": list(schedule.nominal),
            "claims": [
                {"claim": st.claim.text, "state": st.state, "seeds": st.seeds, "alpha": st.nominal_alpha}
                for st in results.sequential
            ],
        },
    }
