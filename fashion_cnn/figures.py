"""Every figure fashion_cnn draws, with matplotlib's object API (no pyplot, no global state).

Each ``plot_*`` function takes plain numbers and returns a ``matplotlib.figure.Figure``;
:func:`save_figure` writes one atomically. matplotlib is imported only when a figure is drawn, so
the package imports without it (callers check :func:`matplotlib_available` and log what is
skipped).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from fashion_cnn._io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class CalibrationBins(Protocol):
    """What :func:`plot_reliability` draws (``evaluation.CalibrationBins`` is one): per bin its
    edges, mean confidence, accuracy and count, n_bins + 1 entries each, and the ECE. A protocol,
    so this module needs nothing from the evaluation that calls it."""

    @property
    def lower(self) -> torch.Tensor: ...
    @property
    def upper(self) -> torch.Tensor: ...
    @property
    def confidence(self) -> torch.Tensor: ...
    @property
    def accuracy(self) -> torch.Tensor: ...
    @property
    def count(self) -> torch.Tensor: ...
    @property
    def ece(self) -> float: ...


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (it is a dependency, but may be missing in slim installs)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules (how tests hide it)
        return False


def _row_shares(confusion: torch.Tensor) -> torch.Tensor:
    counts = confusion.double()
    totals = counts.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, counts / totals.clamp(min=1), torch.zeros_like(counts))


# --------------------------------------------------------------------------------------------
# Evaluation report (fashion_cnn.evaluation)


def new_figure(width: float, height: float) -> Figure:
    """A bare ``Figure`` (inches): it renders with the Agg canvas on ``savefig``, so there is no
    pyplot state, GUI backend or global figure registry to leak into."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def plot_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """Counts in each cell; colour = share of the true class (row), so rare classes read alike."""
    counts = confusion.long().numpy()
    shares = _row_shares(confusion).numpy()
    fig = new_figure(7.5, 6.5)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    n = len(class_names)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    accuracy = counts.trace() / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix, {counts.sum()} test images, accuracy {accuracy:.4f}")
    return fig


def plot_reliability(bins: CalibrationBins) -> Figure:
    """Accuracy against confidence per bin; the gap to the diagonal is the miscalibration."""
    n = len(bins.count) - 1
    lower, upper = bins.lower[:n].numpy(), bins.upper[:n].numpy()
    filled = bins.count[:n].numpy() > 0
    fig = new_figure(6.5, 6.5)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = upper - lower
    ax.bar(
        lower[filled],
        bins.accuracy[:n].numpy()[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    # Hatched: from the bin's accuracy to its mean confidence; above the blue bar when the model
    # is overconfident there, inside it when underconfident.
    ax.bar(
        lower[filled],
        (bins.confidence[:n] - bins.accuracy[:n]).numpy()[filled],
        width=width[filled],
        bottom=bins.accuracy[:n].numpy()[filled],
        align="edge",
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        linewidth=0.5,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ones = int(bins.count[n])
    if ones:
        ax.plot(
            [1.0],
            [float(bins.accuracy[n])],
            "o",
            color="tab:purple",
            label=f"confidence = 1.0 ({ones}): accuracy {float(bins.accuracy[n]):.4f}",
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram, {n} bins: ECE = {bins.ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(
        lower,
        bins.count[:n].numpy(),
        width=width,
        align="edge",
        color="grey",
        edgecolor="black",
        linewidth=0.5,
    )
    if ones:
        hist.bar([1.0], [ones], width=0.012, color="tab:purple")
    hist.set_yscale("log")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("predictions")
    return fig


_TITLE_BAND = 0.25  # of an image's height: the white band above it that holds its title
_GRID_PADDING = 2  # pixels between the images of the grid of mistakes


def plot_mistakes(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    confidence: torch.Tensor,
    class_names: Sequence[str],
) -> Figure:
    """A grid of images (K, 1, H, W) in [0, 1], each titled with its true and predicted class.

    torchvision's ``make_grid`` tiles the images (each with a white band on top for its title)
    into one picture drawn by a single ``imshow``: a quarter of the time of one matplotlib axes
    per image for 25 images (``benchmarks/bench_torchvision.py``).
    """
    from torchvision.utils import make_grid

    count = len(images)
    if not count:
        fig = new_figure(2.0, 2.6)
        fig.add_subplot().set_axis_off()
        fig.suptitle("No misclassified test image")
        return fig
    cols = min(5, count)
    height, width = images.shape[-2:]
    band = math.ceil(height * _TITLE_BAND)  # white space above each image for its two-line title
    titled = torch.nn.functional.pad(images.float().clamp(0.0, 1.0), (0, 0, band, 0), value=1.0)
    grid = make_grid(titled, nrow=cols, padding=_GRID_PADDING, pad_value=1.0)[0]  # (H', W')
    inches_per_pixel = 2.0 / (width + _GRID_PADDING)  # 2 inches per image across, as before
    fig = new_figure(2.0 * cols, grid.shape[0] * inches_per_pixel + 0.3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    step_x, step_y = width + _GRID_PADDING, height + band + _GRID_PADDING
    for i in range(count):
        row, col = divmod(i, cols)
        ax.text(
            _GRID_PADDING + col * step_x + (width - 1) / 2,
            _GRID_PADDING + row * step_y + band - 1.5,
            f"true: {class_names[int(targets[i])]}\npred: {class_names[int(preds[i])]} "
            f"({float(confidence[i]):.2f})",
            fontsize=8,
            ha="center",
            va="bottom",
        )
    fig.suptitle("Most confidently misclassified test images")
    return fig


def plot_learning_curves(history: dict[str, list[tuple[float, float]]]) -> Figure:
    """Loss and accuracy per epoch, train and validation; ``history`` maps key -> [(epoch, value)]."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, quantity in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "o-"), ("val", "s--")):
            points = history.get(f"{split}/{quantity}") or []
            if points:
                ax.plot(*zip(*points, strict=True), style, label=f"{split}/{quantity}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if quantity == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    return fig


# --------------------------------------------------------------------------------------------
# Study reports (fashion_cnn.study.report)


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval (nan bounds for a single value) and the values behind it."""

    mean: float
    low: float
    high: float
    values: Sequence[float]


def plot_final_metrics(
    title: str,
    metrics: Sequence[tuple[str, str]],
    estimates: Mapping[str, Mapping[str, Estimate | None]],
    journal: Mapping[str, Mapping[str, float]],
) -> Figure:
    """One panel per metric: each variant's mean and 95 % CI, its seeds as dots, the journal's crosses.

    Args:
        title: Figure title (the study's).
        metrics: (name, "higher"|"lower") per panel.
        estimates: metric -> variant -> estimate (None: no finished run), variants in display order.
        journal: variant -> metric -> the journal's single-run figure.
    """
    names = list(next(iter(estimates.values()), {}))
    fig = new_figure(max(4.5, 1.1 * len(names) + 2) * len(metrics), 4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, direction) in zip(axes, metrics, strict=True):
        journal_labelled = False
        for x, name in enumerate(names):
            est = estimates[metric].get(name)
            if est is not None:
                err = None if math.isnan(est.low) else [[est.mean - est.low], [est.high - est.mean]]
                ax.errorbar(
                    [x],
                    [est.mean],
                    yerr=err,
                    fmt="o",
                    color="C0",
                    capsize=5,
                    label="ours: mean, 95 % CI" if x == 0 else None,
                )
                ax.scatter([x + 0.12] * len(est.values), list(est.values), s=10, color="C0", alpha=0.4)
            figure = journal.get(name, {}).get(metric)
            if figure is not None:
                ax.scatter(
                    [x],
                    [figure],
                    marker="x",
                    color="C3",
                    s=50,
                    label=None if journal_labelled else "journal (1 run)",
                )
                journal_labelled = True
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_title(f"{metric} ({direction} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


@dataclass(frozen=True)
class ClaimInterval:
    """One claim in :func:`plot_claim_intervals`, in its metric's units.

    Attributes:
        label: The row's label (the claim).
        verdict: "supported", "not supported" or "inconclusive" (its colour).
        value: The claim's decisive quantity: > 0 favours the claim, 0 is its test's threshold.
        low: Lower end of its 95 % interval (nan: none).
        high: Upper end.
        detectable: The smallest true value these seeds detect with power 0.8 (either sign).
        margin_low: Where "no difference less the practical margin" lies on this scale (nan: none).
        margin_high: Where "no difference plus the margin" lies.
    """

    label: str
    verdict: str
    value: float
    low: float
    high: float
    detectable: float
    margin_low: float = math.nan
    margin_high: float = math.nan


VERDICT_COLOURS = {"supported": "C2", "not supported": "C3", "inconclusive": "0.45"}


def plot_claim_intervals(title: str, rows: Sequence[ClaimInterval]) -> Figure:
    """Each claim's decisive quantity with its 95 % interval, coloured by verdict, over a grey band
    of ± the detectable difference (true values inside it go unnoticed at power 0.8) and with the
    practical margin around "no difference" marked by brackets. Symmetric-log x axis, so claims
    far from their threshold do not squeeze the rest.
    """
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = new_figure(9.5, 0.9 + 0.32 * max(len(rows), 1))
    ax = fig.subplots()
    # Linear within the typical detectable difference, logarithmic beyond: the decisions around 0
    # stay readable while a claim far from its threshold still fits.
    reach = sorted(r.detectable for r in rows if math.isfinite(r.detectable) and r.detectable > 0)
    ax.set_xscale("symlog", linthresh=reach[len(reach) // 2] if reach else 0.01, linscale=1.5)
    for y, row in enumerate(rows):
        if math.isfinite(row.detectable):
            ax.fill_betweenx([y - 0.38, y + 0.38], -row.detectable, row.detectable, color="0.88", lw=0)
        for x in (row.margin_low, row.margin_high):
            if math.isfinite(x):
                ax.plot([x, x], [y - 0.3, y + 0.3], color="C4", lw=1.5)
        colour = VERDICT_COLOURS.get(row.verdict, "0.45")
        err = None
        if math.isfinite(row.low) and math.isfinite(row.high):
            err = [[row.value - row.low], [row.high - row.value]]
        if math.isfinite(row.value):
            ax.errorbar([row.value], [y], xerr=err, fmt="o", color=colour, capsize=3, ms=4)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("difference in the claim's favour (metric units; 0 = the test's threshold; symlog)")
    ax.grid(axis="x", alpha=0.3)
    handles: list[Artist] = [
        Line2D([], [], marker="o", ls="", color=c, label=f"{v}: value, 95 % CI")
        for v, c in VERDICT_COLOURS.items()
    ]
    handles += [
        Patch(color="0.88", label="± detectable difference (power 0.8)"),
        Line2D([], [], color="C4", lw=1.5, label="no difference ± practical margin"),
    ]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_study_curves(title: str, curves: Mapping[str, Mapping[str, Sequence[Estimate]]]) -> Figure:
    """One panel per curve metric: per variant, the mean over seeds per epoch with its 95 % CI.

    Args:
        title: Figure title.
        curves: metric -> variant -> one estimate per epoch (variants without runs left out).
    """
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(6 * len(curves), 4)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (metric, per_variant) in zip(axes, curves.items(), strict=True):
        names = list(per_variant)
        for i, name in enumerate(names):
            stats = per_variant[name]
            epochs = len(stats)
            # One epoch has no band to draw: offset the variants a little and show error bars.
            shift = 0.0 if epochs > 1 else 0.06 * (i - (len(names) - 1) / 2)
            x = [e + 1 + shift for e in range(epochs)]
            ax.plot(x, [s.mean for s in stats], marker="o", color=f"C{i}", label=name)
            if all(not math.isnan(s.low) for s in stats):
                low, high = [s.low for s in stats], [s.high for s in stats]
                if epochs > 1:
                    ax.fill_between(x, low, high, color=f"C{i}", alpha=0.2)
                else:
                    err = [[stats[0].mean - low[0]], [high[0] - stats[0].mean]]
                    ax.errorbar(x, [stats[0].mean], yerr=err, color=f"C{i}", capsize=4)
        most = max((len(s) for s in per_variant.values()), default=1)
        if most <= 20:
            ax.set_xticks(range(1, most + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: learning curves (mean over seeds, 95 % CI)")
    return fig


# --------------------------------------------------------------------------------------------
# Sweep reports (fashion_cnn.sweep.report)


def plot_optimization_history(
    metric: str,
    higher_is_better: bool,
    complete: Sequence[tuple[int, float]],
    pruned: Sequence[tuple[int, float]] = (),
) -> Figure:
    """Each trial's objective by trial number, the best so far as a step line.

    Args:
        metric: The objective's name (the y label).
        higher_is_better: Its direction (for the best-so-far line).
        complete: (trial number, value) of the complete trials.
        pruned: (trial number, last value reported before the pruner stopped it).
    """
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if complete:
        numbers, values = zip(*sorted(complete), strict=True)
        ax.scatter(numbers, values, color="C0", s=30, zorder=3, label="complete trial")
        best, running = [], None
        for value in values:
            running = value if running is None else (max if higher_is_better else min)(running, value)
            best.append(running)
        ax.step(numbers, best, where="post", color="C3", linewidth=1.5, label="best so far")
    if pruned:
        numbers, values = zip(*sorted(pruned), strict=True)
        ax.scatter(numbers, values, marker="x", color="grey", s=30, zorder=3, label="pruned (last reported)")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(fontsize=8)
    ax.set_title(f"Optimisation history: {metric} ({'higher' if higher_is_better else 'lower'} is better)")
    return fig


def plot_param_importances(metric: str, importances: Mapping[str, float]) -> Figure:
    """Horizontal bars: each key's share of the variance of ``metric`` (Optuna's fANOVA), largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = new_figure(7, 0.5 * len(items) + 1.5)
    ax = fig.add_subplot()
    names = [k for k, _ in items]
    values = [v for _, v in items]
    ax.barh(range(len(items)), values, color="C0")
    ax.set_yticks(range(len(items)), names)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max([*values, 0.01]) * 1.15)
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


@dataclass(frozen=True)
class ParallelAxis:
    """One vertical axis of a parallel-coordinates figure.

    Attributes:
        name: The key.
        values: One value per trial; None where the trial did not sample the key.
        log: Numeric values on a log scale.
        choices: For a categorical key, its choices in display order (else None: numeric).
    """

    name: str
    values: Sequence[float | int | str | bool | None]
    log: bool = False
    choices: Sequence[float | int | str | bool | None] | None = None


def plot_parallel_coordinates(
    metric: str, higher_is_better: bool, objective: Sequence[float], axes: Sequence[ParallelAxis]
) -> Figure:
    """One line per trial across the keys' axes and the objective, coloured by the objective.

    Each axis is scaled to [0, 1] on its own (log where the key is sampled on a log scale);
    categorical axes place their choices evenly. A trial that did not sample a key (a conditional
    one) has a gap there.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    columns = [*axes, ParallelAxis(metric, list(objective))]
    fig = new_figure(max(7.0, 1.6 * len(columns) + 1.5), 5)
    ax = fig.add_subplot()
    scaled, labels = [], []
    for column in columns:
        rows, ticks = _parallel_axis(column)
        scaled.append(rows)
        labels.append(ticks)
    norm = Normalize(min(objective, default=0.0), max(objective, default=1.0))
    cmap = colormaps["viridis" if higher_is_better else "viridis_r"]
    order = sorted(range(len(objective)), key=lambda i: objective[i] if higher_is_better else -objective[i])
    for i in order:  # the best trials last, on top
        ys = [rows[i] for rows in scaled]
        ax.plot(
            range(len(columns)),
            [math.nan if y is None else y for y in ys],
            color=cmap(norm(objective[i])),
            alpha=0.8,
        )
    for x, ticks in enumerate(labels):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, text in ticks:
            ax.text(x + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(columns)), [c.name for c in columns], rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    ax.set_title(f"Parallel coordinates: {len(objective)} complete trials")
    return fig


def _parallel_axis(column: ParallelAxis) -> tuple[list[float | None], list[tuple[float, str]]]:
    """Values scaled to [0, 1] and (position, label) ticks for one axis."""
    if column.choices is not None:
        choices = list(column.choices)
        step = 1.0 / max(len(choices) - 1, 1)
        index = {repr(c): i for i, c in enumerate(choices)}
        rows = [None if v is None else index.get(repr(v), 0) * step for v in column.values]
        return rows, [(i * step, str(c)) for i, c in enumerate(choices)]
    numbers = [float(v) for v in column.values if v is not None]
    if not numbers:
        return [None] * len(column.values), []
    transform = math.log10 if column.log and min(numbers) > 0 else (lambda v: v)
    low, high = transform(min(numbers)), transform(max(numbers))
    span = high - low or 1.0
    rows = [None if v is None else (transform(float(v)) - low) / span for v in column.values]
    ticks = [(0.0, f"{min(numbers):.3g}"), (1.0, f"{max(numbers):.3g}")]
    if high == low:
        ticks = [(0.0, f"{min(numbers):.3g}")]
    return rows, ticks
