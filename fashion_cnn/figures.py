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
from typing import TYPE_CHECKING

import torch

from fashion_cnn._io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fashion_cnn.evaluation import CalibrationBins


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


def plot_mistakes(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    confidence: torch.Tensor,
    class_names: Sequence[str],
) -> Figure:
    """A grid of images (K, 1, H, W) in [0, 1], each titled with its true and predicted class."""
    count = len(images)
    cols = min(5, max(count, 1))
    rows = max(math.ceil(count / cols), 1)
    fig = new_figure(2.0 * cols, 2.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(
            f"true: {class_names[int(targets[i])]}\npred: {class_names[int(preds[i])]} "
            f"({float(confidence[i]):.2f})",
            fontsize=8,
        )
    title = "Most confidently misclassified test images" if count else "No misclassified test image"
    fig.suptitle(title)
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
