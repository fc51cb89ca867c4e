"""How a sweep tells its user what is happening: log lines, or one live tqdm bar on the console.

The runner reports each finished trial (from whichever worker ran it) as a :class:`TrialEvent`;
:class:`SweepProgress` logs it, :class:`ConsoleSweepProgress` prints it above a bar of trials done,
pruned and failed with an estimate of the time left.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from fashion_cnn.study.progress import duration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialEvent:
    """A finished trial: its number, Optuna state, value, sampled values and seconds."""

    number: int
    state: str
    value: float | None
    params: Mapping[str, Any]
    seconds: float | None
    note: str = ""

    def line(self, metric: str, best: float | None) -> str:
        shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in self.params.items())
        value = f"{metric} {self.value:.4f}" if self.value is not None else ""
        took = f" in {duration(self.seconds)}" if self.seconds is not None else ""
        best_text = f" (best so far {best:.4f})" if best is not None else ""
        state = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed"}.get(self.state, self.state.lower())
        tail = f": {self.note}" if self.note else ""
        return f"trial {self.number} {state}{took}  {value}{best_text}  [{shown}]{tail}"


class SweepProgress:
    """Receives a sweep's events; this base class logs them."""

    def __init__(self) -> None:
        self.metric = "value"
        self.higher_is_better = True
        self.total: int | None = None
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: float | None = None
        self._seconds: list[float] = []
        self.slots = 1

    def note(self, line: str) -> None:
        log.info("%s", line)

    def begin(self, total: int | None, metric: str, higher_is_better: bool, slots: int) -> None:
        """Training starts: ``total`` trials to run (None: until the timeout)."""
        self.total, self.metric, self.higher_is_better, self.slots = total, metric, higher_is_better, slots

    def trial_done(self, event: TrialEvent) -> None:
        self.counts[event.state] = self.counts.get(event.state, 0) + 1
        if event.seconds is not None:
            self._seconds.append(event.seconds)
        if event.state == "COMPLETE" and event.value is not None:
            better = self.best is None or (
                event.value > self.best if self.higher_is_better else event.value < self.best
            )
            if better:
                self.best = event.value
        self.note(f"{event.line(self.metric, self.best)} | {self.status()}")

    def end(self) -> None:
        """Training is over (finished, stopped or interrupted)."""

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def status(self) -> str:
        c = self.counts
        text = f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed"
        if self.total is not None:
            left = max(0, self.total - self.done)
            text += f", {left} left"
            if left and self._seconds:
                text += f", ~{duration(sum(self._seconds) / len(self._seconds) * left / self.slots)} to go"
        return text


class ConsoleSweepProgress(SweepProgress):
    """One live tqdm bar on ``file`` (the console's stderr), a line above it per finished trial."""

    def __init__(self, file: IO[str]) -> None:
        super().__init__()
        self.file = file
        self.bar: Any = None

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"sweep: {line}", file=self.file)
        else:
            self.file.write(f"sweep: {line}\n")
            self.file.flush()

    def begin(self, total: int | None, metric: str, higher_is_better: bool, slots: int) -> None:
        from tqdm import tqdm

        super().begin(total, metric, higher_is_better, slots)
        self.bar = tqdm(total=total, file=self.file, unit="trial", dynamic_ncols=True, desc="sweep")

    def trial_done(self, event: TrialEvent) -> None:
        super().trial_done(event)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.status(), refresh=True)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


__all__ = ["ConsoleSweepProgress", "SweepProgress", "TrialEvent"]
