"""How a study or sweep tells its user what is happening: a log, or one live progress display."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def now() -> str:
    """The time a report is generated, as reports show it: ``2026-12-05 13:20 UTC``."""
    import datetime

    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def shown_path(path: str | Path | None) -> str:
    """A path as reports show it: a packaged config as ``configs/<name>``, else relative to the
    working directory if inside it, else from a ``configs`` folder on; ``–`` for none."""
    from fashion_cnn.configs import packaged_root

    if path is None:
        return "–"
    full = Path(path).resolve()
    for root, prefix in ((packaged_root().resolve(), "configs/"), (Path.cwd(), "")):
        with contextlib.suppress(ValueError):
            return prefix + str(full.relative_to(root))
    parts = full.parts
    return str(Path(*parts[parts.index("configs") :])) if "configs" in parts else str(full)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Estimator:
    """Time left from the runs trained so far, summed and divided over the runs that go at once.

    A run is estimated by the runs of its (study, variant) seen so far; else by the seconds per
    unit of budget seen so far times its budget (or the mean run, without budgets); less what a
    continued run trained before it was stopped.

    Args:
        slots: Runs at once.
        budgets: A cost per (study, variant), e.g. training images per run; a 7-epoch variant not
            yet seen is then estimated at 7/3 of the 3-epoch runs' time, not at their mean.
    """

    def __init__(self, slots: int, budgets: Mapping[tuple[str, str], float] | None = None) -> None:
        self.slots = max(1, slots)
        self.budgets = dict(budgets or {})
        self.durations: dict[tuple[str, str], list[float]] = {}

    def record(self, key: tuple[str, str], seconds: float) -> None:
        """A run of ``key`` took ``seconds`` in all (a continued run: with its earlier part)."""
        self.durations.setdefault(key, []).append(seconds)

    def left(self, remaining: Iterable[tuple[tuple[str, str], float]]) -> float | None:
        """Seconds left for ``remaining``: (study, variant) and the seconds that run already trained
        (0 for a fresh run, more for one that continues from its checkpoint). None before any run
        has finished."""
        overall = [s for v in self.durations.values() for s in v]
        if not overall:
            return None
        mean = sum(overall) / len(overall)
        seen = [k for k in self.durations if self.budgets.get(k)]
        spent = sum(sum(self.durations[k]) for k in seen)
        rate = spent / sum(self.budgets[k] * len(self.durations[k]) for k in seen) if seen else None

        def one(key: tuple[str, str]) -> float:
            if key in self.durations:
                return sum(self.durations[key]) / len(self.durations[key])
            budget = self.budgets.get(key)
            return rate * budget if rate is not None and budget else mean

        return sum(max(0.0, one(key) - kept) for key, kept in remaining) / self.slots


class Progress:
    """Receives the events of a study or sweep run; this base class logs them.

    Args:
        prunes: Whether runs can be pruned (a sweep): the status then counts them.
    """

    def __init__(self, prunes: bool = False) -> None:
        self.prunes = prunes
        self.total: int | None = 0
        self.done = self.pruned = self.running = self.failed = 0
        self.estimator = Estimator(1)
        self._remaining: list[tuple[tuple[str, str], float]] = []

    def note(self, line: str) -> None:
        """A line of information (the plan, a reused run, a report written)."""
        log.info("%s", line)

    def begin(
        self,
        remaining: Sequence[tuple[str, str]] | None,
        slots: int,
        budgets: Mapping[tuple[str, str], float] | None = None,
        kept: Sequence[float] | None = None,
    ) -> None:
        """Training starts: ``remaining`` (study, variant) pairs, one per run (None: as many as
        fit in a time limit), ``slots`` runs at once, each pair's budget (training images per run)
        and, per run, the seconds it already trained before it was stopped (``kept``; 0 for a
        fresh run), for the time estimate."""
        runs = list(remaining or [])
        self.total = None if remaining is None else len(runs)
        self.done = self.pruned = self.running = self.failed = 0
        self._remaining = list(zip(runs, kept or [0.0] * len(runs), strict=True))
        self.estimator = Estimator(slots, budgets)
        self._open()

    def started(self, label: str) -> None:
        self.running += 1
        self._refresh()

    def finished(
        self,
        key: tuple[str, str],
        label: str,
        seconds: float,
        metrics: str,
        kept: float = 0.0,
        state: str = "done",
    ) -> None:
        """A run of ``key`` ended ``state`` (done, pruned or failed) after ``seconds``, and ``kept``
        seconds it trained before it was stopped and continued."""
        self.running = max(0, self.running - 1)
        if state == "pruned":
            self.pruned += 1
        elif state == "failed":
            self.failed += 1
        else:
            self.done += 1
        if state != "failed":
            self.estimator.record(key, seconds + kept)
        if (key, kept) in self._remaining:  # the runner passes the same kept seconds as to begin()
            self._remaining.remove((key, kept))
        took = duration(seconds) + (f" ({duration(seconds + kept)} with its earlier part)" if kept else "")
        self.note(f"{label} {state} in {took}  {metrics} | {self.status()}")
        self._refresh()

    def end(self) -> None:
        """Training is over (finished, stopped or interrupted)."""

    @property
    def ended(self) -> int:
        return self.done + self.pruned + self.failed

    def status(self) -> str:
        counts = [f"{self.done} done", *([f"{self.pruned} pruned"] if self.prunes else [])]
        text = ", ".join([*counts, f"{self.running} running", f"{self.failed} failed"])
        if self.total is None:
            return text
        left = max(0, self.total - self.ended)
        eta = self.estimator.left(self._remaining)
        return text + f", {left} left" + (f", ~{duration(eta)} to go" if eta is not None and left else "")

    def _open(self) -> None:
        """Training starts: open the display (the base class has none)."""

    def _refresh(self) -> None:
        pass


class ConsoleProgress(Progress):
    """One live tqdm bar on ``file`` (the console's stderr), lines printed above it.

    Args:
        file: Where it writes (the console's stderr).
        name: The command (``study``, ``sweep``): the bar's label and every line's prefix.
        prunes: As for :class:`Progress`.
    """

    def __init__(self, file: IO[str], name: str = "study", prunes: bool = False) -> None:
        super().__init__(prunes)
        self.file = file
        self.name = name
        self.bar: Any = None

    def note(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"{self.name}: {line}", file=self.file)  # above the bar, if there is one
        self.file.flush()

    def _open(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, file=self.file, unit="run", dynamic_ncols=True, desc=self.name)
        self._refresh()

    def end(self) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.close()
            self.bar = None

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.n = self.ended  # runs that ended, however they ended
            self.bar.set_postfix_str(self.status(), refresh=True)
