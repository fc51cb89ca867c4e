"""What each claim's seeds can and cannot tell, as the reports show it: table, sentences, JSON, figure rows.

The numbers come from :mod:`fashion_cnn.study.power` (detectable difference, seeds needed,
equivalence bound) and Benjamini–Hochberg across a study's claims; this module turns them into the
report's table, its false-discovery line, the results JSON fields and the rows of the claims figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fashion_cnn.figures import ClaimInterval
from fashion_cnn.study.power import DEFAULT_MAX_SEEDS, POWER, Outlook, fdr_adjusted, outlook
from fashion_cnn.study.spec import DEFAULT_MARGIN, Study
from fashion_cnn.study.verdicts import ALPHA, Evaluation, fmt, fmt_p


def outlooks(
    study: Study,
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    evaluations: Sequence[Evaluation],
    max_seeds: int | None = None,
    alpha: float = ALPHA,
) -> tuple[list[Outlook | None], list[float]]:
    """Each claim's outlook (``None``: not testable) and its Benjamini–Hochberg adjusted p-value.

    Args:
        study: The study (claims, metrics and their practical margins).
        samples: Metric -> variant -> one value per seed.
        evaluations: The claims' verdicts, in the study's order.
        max_seeds: The most seeds per variant the study may spend (default
            :data:`~fashion_cnn.study.power.DEFAULT_MAX_SEEDS`).
    """
    limit = max_seeds or DEFAULT_MAX_SEEDS
    margins = study.margins or {}
    looks = [
        outlook(
            ev.claim,
            samples[ev.claim.metric],
            study.metric(ev.claim.metric),
            margins.get(ev.claim.metric, DEFAULT_MARGIN),
            alpha,
            limit,
        )
        for ev in evaluations
    ]
    return looks, fdr_adjusted([ev.p_value for ev in evaluations], alpha)


def outlook_table(
    evaluations: Sequence[Evaluation], looks: Sequence[Outlook | None], p_fdr: Sequence[float]
) -> list[str]:
    """One row per claim: verdict, the detectable difference, the seeds that would decide it and
    the equivalence statement where the interval rules out every difference beyond the margin."""
    lines = [
        f"| # | claim | verdict | p (BH-adjusted) | difference in the claim's favour | detectable now "
        f"(power {POWER:g}) | seeds per variant to decide at the observed difference | bounded |",
        "|---|---|---|---:|---|---:|---|---|",
    ]
    for i, (ev, o) in enumerate(zip(evaluations, looks, strict=True), 1):
        p_bh = p_fdr[i - 1] if i - 1 < len(p_fdr) else math.nan
        if o is None:
            lines.append(
                f"| {i} | {ev.claim.text} | **{ev.verdict}** | – | – | – | needs 2 seeds per variant | – |"
            )
            continue
        bounded = o.statement or (
            "–" if math.isnan(o.equivalence) else f"no (bound {fmt(o.equivalence)} > margin {fmt(o.margin)})"
        )
        lines.append(
            f"| {i} | {ev.claim.text} | **{ev.verdict}** | {fmt_p(p_bh)} | {fmt(o.g, sign=True)} "
            f"[{fmt(o.g_ci[0], sign=True)}, {fmt(o.g_ci[1], sign=True)}] | ±{fmt(o.detectable)} "
            f"(n = {o.seeds}) | {_needed(ev, o)} | {bounded} |"
        )
    return lines


def _needed(ev: Evaluation, o: Outlook) -> str:
    if ev.verdict != "inconclusive":
        return f"decided at {o.seeds}"
    if o.seeds_needed is None:
        return f"more than {o.max_seeds}"
    return str(o.seeds_needed)


def fdr_line(evaluations: Sequence[Evaluation], p_fdr: Sequence[float], alpha: float = ALPHA) -> str:
    """'Of the 9 supported verdicts, 7 survive a Benjamini–Hochberg correction across the 27 claims
    (false-discovery rate 0.05).'"""
    summary = fdr_summary(evaluations, p_fdr, alpha)
    return (
        f"Of the {summary['supported']} supported verdict{'' if summary['supported'] == 1 else 's'}, "
        f"{summary['surviving']} survive{'s' if summary['surviving'] == 1 else ''} a Benjamini–Hochberg "
        f"correction across the {summary['tested']} tested claims (false-discovery rate {alpha:g}; "
        "p (BH-adjusted) in the table)."
    )


def fdr_summary(
    evaluations: Sequence[Evaluation], p_fdr: Sequence[float], alpha: float = ALPHA
) -> dict[str, Any]:
    """How many supported verdicts keep an adjusted p below ``alpha``."""
    tested = [p for p in p_fdr if math.isfinite(p)]
    supported = [i for i, ev in enumerate(evaluations) if ev.verdict == "supported"]
    surviving = [i for i in supported if i < len(p_fdr) and math.isfinite(p_fdr[i]) and p_fdr[i] < alpha]
    return {
        "method": "Benjamini-Hochberg",
        "alpha": alpha,
        "tested": len(tested),
        "supported": len(supported),
        "surviving": len(surviving),
    }


def outlook_json(o: Outlook | None, p_fdr: float) -> dict[str, Any]:
    """The fields a claim gains in results.json (all new; the old ones are unchanged)."""
    if o is None:
        return {"p_fdr": p_fdr}
    return {
        "p_fdr": p_fdr,
        "decisive": o.g,
        "decisive_ci": list(o.g_ci),
        "detectable": o.detectable,
        "seeds": o.seeds,
        "seeds_needed": o.seeds_needed,
        "max_seeds": o.max_seeds,
        "margin": o.margin,
        "equivalence_bound": o.equivalence,
        "equivalence": o.statement,
    }


def claim_rows(
    evaluations: Sequence[Evaluation], looks: Sequence[Outlook | None], prefix: str = ""
) -> list[ClaimInterval]:
    """The rows of :func:`fashion_cnn.figures.plot_claim_intervals`, one per testable claim."""
    rows = []
    for i, (ev, o) in enumerate(zip(evaluations, looks, strict=False), 1):
        if o is None:
            continue
        label = ev.claim.text if len(ev.claim.text) <= 58 else ev.claim.text[:57] + "…"
        rows.append(
            ClaimInterval(
                label=f"{prefix}{i}. {label}",
                verdict=ev.verdict,
                value=o.g,
                low=o.g_ci[0],
                high=o.g_ci[1],
                detectable=o.detectable,
                margin_low=o.no_difference - o.margin,
                margin_high=o.no_difference + o.margin,
            )
        )
    return rows


def outlook_rule_lines(study: Study | None = None, max_seeds: int | None = None) -> list[str]:
    """How the table 'What these seeds can and cannot tell' is computed (for 'Decision rule')."""
    margins = (
        ", ".join(f"{k} {fmt(v)}" for k, v in study.margins.items())
        if study is not None and study.margins
        else f"{DEFAULT_MARGIN:g} for every metric"
    )
    return [
        "",
        "What the seeds can tell (statsmodels power analysis, one-sided t-tests at α, power "
        f"{POWER:g}; `fashion_cnn/study/power.py`):",
        "",
        "- *difference in the claim's favour*: A − B in the claimed direction less the claim's margin "
        "(within: the margin less |A − B|; between: the distance to the nearer bound; best/worst: "
        "against the closest rival), with its 95 % CI; positive favours the claim.",
        "- *detectable now*: the smallest true difference these seeds find with power "
        f"{POWER:g}; a claim whose true difference is smaller stays inconclusive most of the time.",
        "- *seeds to decide*: per variant, for power "
        f'{POWER:g} if the true difference is the observed one; "more than N" beyond the maximum '
        f"(`--max_seeds`, else {max_seeds or DEFAULT_MAX_SEEDS}).",
        "- *bounded*: where the (1 − 2α) interval of A − B (the one an equivalence test uses) lies "
        f"inside ± the practical margin ({margins}; `margins:` in the study file), the difference is "
        "stated as smaller than its bound.",
        "- *p (BH-adjusted)*: Benjamini–Hochberg over the study's claims (statsmodels "
        "`multipletests`); a supported verdict survives the false-discovery correction when it is "
        "below α.",
    ]


def document_outlooks(
    data: Mapping[str, Any], max_seeds: int | None = None
) -> list[tuple[Study, list[Evaluation], list[Outlook | None], list[float]]]:
    """Judge a combined report's claims again from its ``.json`` (per variant per seed values) and
    the packaged study files (for the claims' metrics and margins): verdicts, outlooks, BH p-values,
    per study. No tracking store is needed.

    Raises:
        StudyError: A study of the document is not a packaged study file.
    """
    from fashion_cnn.study.spec import load_study
    from fashion_cnn.study.verdicts import evaluate_claim

    out = []
    for entry in data["studies"]:
        study = load_study(f"studies/{entry['study']}")
        samples = entry["samples"]
        evaluations = [evaluate_claim(c, samples[c.metric], study.metric(c.metric)) for c in study.claims]
        looks, p_fdr = outlooks(study, samples, evaluations, max_seeds)
        out.append((study, evaluations, looks, p_fdr))
    return out
