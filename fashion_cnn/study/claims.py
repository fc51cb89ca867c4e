"""The claim grammar: an expected outcome of a study in checkable form.

Six forms, each naming variants of the study and one of its metrics (the first by default)::

    A beats B on M                  A beats B on M by at least d      (B may be a number)
    A is the best of all variants on M                A is the worst of all variants on M
    A is within d of B on M                           A is between L and U on M

:func:`parse_claim` reads one and checks the names; :mod:`fashion_cnn.study.verdicts` judges it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fashion_cnn.errors import StudyError


@dataclass(frozen=True)
class Metric:
    """A metric to compare and whether higher or lower values are better."""

    name: str
    direction: Literal["higher", "lower"]

    @property
    def sign(self) -> int:
        """+1 if higher is better, -1 if lower is better."""
        return 1 if self.direction == "higher" else -1


@dataclass(frozen=True)
class Claim:
    """An expected outcome in checkable form (see the module docstring for the grammar)."""

    text: str
    kind: Literal["beats", "best", "worst", "within", "between"]
    a: str
    metric: str
    b: str | float | None = None
    margin: float = 0.0
    low: float | None = None
    high: float | None = None
    journal: str = ""


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ON = r"(?:\s+on\s+(?P<m>\S+))?"
_ALL = r"(?:\s+of\s+all(?:\s+variants)?)?"
_CLAIM_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (kind, re.compile(rf"^(?P<a>\S+)\s+{body}$", re.I))
    for kind, body in [
        ("beats", rf"beats\s+(?P<b>\S+){_ON}(?:\s+by\s+at\s+least\s+(?P<d>{_NUM}))?"),
        ("beats", rf"beats\s+(?P<b>\S+)\s+by\s+at\s+least\s+(?P<d>{_NUM}){_ON}"),
        ("best", rf"is\s+(?:the\s+)?best{_ALL}{_ON}"),
        ("worst", rf"is\s+(?:the\s+)?worst{_ALL}{_ON}"),
        ("within", rf"is\s+within\s+(?P<d>{_NUM})\s+of\s+(?P<b>\S+){_ON}"),
        ("between", rf"is\s+between\s+(?P<lo>{_NUM})\s+and\s+(?P<hi>{_NUM}){_ON}"),
    ]
]
CLAIM_FORMS = (
    "'A beats B on M', 'A beats B on M by at least d', 'A is the best of all variants on M', "
    "'A is the worst of all variants on M', 'A is within d of B on M', 'A is between L and U on M' "
    "(B may be a number; 'on M' defaults to the first metric)"
)


def parse_claim(
    text: str, variants: Sequence[str], metrics: Sequence[Metric], where: str = "claim", journal: str = ""
) -> Claim:
    """Parse one claim of the grammar in :data:`CLAIM_FORMS`, checking names against the study."""
    text = " ".join(text.split())
    for kind, pattern in _CLAIM_PATTERNS:  # noqa: B007 - kind is used after the loop
        match = pattern.match(text)
        if match:
            break
    else:
        raise StudyError(f"{where}: cannot read claim {text!r}; write one of {CLAIM_FORMS}")
    groups = match.groupdict()
    metric = groups.get("m") or metrics[0].name
    if metric not in {m.name for m in metrics}:
        raise StudyError(
            f"{where}: claim {text!r}: metric {metric!r} is not among the study's metrics "
            f"({', '.join(m.name for m in metrics)}); add it under metrics:"
        )
    a = groups["a"]
    if a not in variants:
        raise StudyError(f"{where}: claim {text!r}: {a!r} is not a variant ({', '.join(variants)})")
    b: str | float | None = groups.get("b")
    if isinstance(b, str):
        if is_number(b):
            b = float(b)
        elif b not in variants:
            raise StudyError(
                f"{where}: claim {text!r}: {b!r} is neither a variant ({', '.join(variants)}) nor a number"
            )
        elif b == a:
            raise StudyError(f"{where}: claim {text!r} compares {a} with itself; name another variant")
    margin = float(groups["d"]) if groups.get("d") else 0.0
    if margin < 0:
        raise StudyError(f"{where}: claim {text!r}: the margin {margin} must be >= 0")
    if kind in ("best", "worst") and len(variants) < 2:
        raise StudyError(f"{where}: claim {text!r} needs at least two variants")
    low = high = None
    if kind == "between":
        low, high = float(groups["lo"]), float(groups["hi"])
        if not low < high:
            raise StudyError(f"{where}: claim {text!r}: the lower bound {low} must be below {high}")
    # kind is one of the pattern table's kinds
    journal = " ".join(journal.split())
    return Claim(text, kind, a, metric, b, margin, low, high, journal)  # type: ignore[arg-type]


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
