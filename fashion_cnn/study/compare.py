"""A combined report's ``.json`` twin, and which verdicts change against another one (``--compare_with``).

Giving another combined report's ``.md`` or ``.json`` as ``--compare_with`` adds a section to this
one: the claims whose verdict differs between the two (matched by study name and claim text), so a
reader sees which conclusions depend on the training budget (or the seeds, or the machine).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_cnn._io import atomic_write
from fashion_cnn.errors import StudyError
from fashion_cnn.study.verdicts import NOT_TESTED, fmt, fmt_p

KIND = "fashion-cnn combined report"
VERSION = 1


def load_comparison(path: str | Path) -> dict[str, Any]:
    """Read the results of another combined report: its ``.json``, or the ``.json`` beside its ``.md``."""
    given = Path(path)
    source = given if given.suffix == ".json" else given.with_suffix(".json")
    hint = (
        "give the .md or .json that `fashion-cnn study --combined_report` wrote (regenerate an "
        "older report with the same study command and --report_only)"
    )
    if not source.is_file():
        missing = source if source == given or given.is_file() else given
        raise StudyError(f"--compare_with {path}: {missing} does not exist; {hint}")
    try:
        data = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(f"--compare_with {path}: {source} is not readable JSON ({exc}); {hint}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("studies"), list):
        raise StudyError(f"--compare_with {path}: {source} is not a combined report's results; {hint}")
    if data.get("version", 0) > VERSION:
        raise StudyError(
            f"--compare_with {path}: {source} was written by a newer fashion-cnn (format "
            f"{data['version']}, this one reads {VERSION}); upgrade fashion-cnn"
        )
    data["source"], data["given"] = str(source), str(given)
    return data


def budget_text(studies: Sequence[Mapping[str, Any]]) -> str:
    """'1 epoch, 6,400 training images per run' or '3-7 epochs, 165,000-385,000 training images per run'."""
    epochs = sorted({int(b["epochs"] or 1) for s in studies for b in s["budget"].values()})
    images = sorted({int(b["train_images"]) for s in studies for b in s["budget"].values()})
    if not epochs:
        return "no runs"

    def span(values: list[int]) -> str:
        return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"

    unit = "epoch" if epochs == [1] else "epochs"
    return f"{span(epochs)} {unit}, {span(images)} training images per run"


def _claims(data: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for study in data["studies"]:
        for claim in study.get("claims", []):
            out[(study["study"], claim["claim"])] = {**claim, "part": study.get("part") or study["study"]}
    return out


@dataclass
class Changes:
    changed: list[tuple[dict[str, Any], dict[str, Any]]]  # (here, there) whose verdicts differ
    kept: int  # claims judged in both with the same verdict
    untested: list[str]  # in both, but one of them has too few finished seeds to test it
    only_here: list[str]
    only_there: list[str]


def verdict_changes(here: Mapping[str, Any], there: Mapping[str, Any]) -> Changes:
    mine, theirs = _claims(here), _claims(there)
    both = [k for k in mine if k in theirs]
    untested = [k for k in both if NOT_TESTED in (mine[k].get("test"), theirs[k].get("test"))]
    judged = [k for k in both if k not in untested]
    return Changes(
        changed=[(mine[k], theirs[k]) for k in judged if mine[k]["verdict"] != theirs[k]["verdict"]],
        kept=sum(mine[k]["verdict"] == theirs[k]["verdict"] for k in judged),
        untested=[f"{s}: {c}" for s, c in untested],
        only_here=[f"{s}: {c}" for s, c in mine if (s, c) not in theirs],
        only_there=[f"{s}: {c}" for s, c in theirs if (s, c) not in mine],
    )


def comparison_lines(here: Mapping[str, Any], there: Mapping[str, Any], label: str) -> list[str]:
    """The Markdown section of a combined report that sets its verdicts against another's."""
    changes = verdict_changes(here, there)
    changed = changes.changed
    lines = [
        f"## Verdicts that change against {label}",
        "",
        f"This document: {budget_text(here['studies'])}. {label}: {budget_text(there['studies'])} "
        f"(`{there.get('command') or 'command not recorded'}`).",
        "",
        f"Of the {changes.kept + len(changed)} claims judged in both, {changes.kept} keep their verdict "
        f"and {len(changed)} change" + (":" if changed else "."),
        "",
    ]
    if changed:
        lines += [
            f"| part | claim | {label} | p | difference (95 % CI) | here | p | difference (95 % CI) |",
            "|---|---|---|---:|---|---|---:|---|",
        ]
        lines += [
            f"| {a['part']} | {a['claim']} | {b['verdict']} | {fmt_p(_num(b['p']))} | {_diff(b)} | "
            f"**{a['verdict']}** | {fmt_p(_num(a['p']))} | {_diff(a)} |"
            for a, b in changed
        ]
        lines += [
            "",
            "From inconclusive to a verdict: the longer (or less noisy) runs settled it. Between "
            "supported and not supported: the conclusion depends on the regime. From a verdict to "
            "inconclusive: the difference the other runs showed is not there, or not at this many seeds.",
        ]
    for title, claims in (
        ("Not compared: too few finished seeds in one of the two", changes.untested),
        ("Only in this document", changes.only_here),
        (f"Only in {label}", changes.only_there),
    ):
        if claims:
            lines += ["", f"{title} ({len(claims)}):", "", *[f"- {c}" for c in claims]]
    return lines


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _diff(claim: Mapping[str, Any]) -> str:
    low, high = (claim.get("ci") or [math.nan, math.nan])[:2]
    diff, low, high = (fmt(_num(v), sign=True) for v in (claim.get("difference"), low, high))
    return "–" if diff == "–" else f"{diff} [{low}, {high}]"


def write_twin(report: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as the ``.json`` beside ``report``, atomically."""
    path = Path(report).with_suffix(".json")
    with atomic_write(path, "w") as f:
        json.dump({"kind": KIND, "version": VERSION, **data}, f, indent=2, default=str, allow_nan=True)
    return path
