"""Plots of runs (matplotlib, no screen): a run's quality.png, and quality against training
time for several runs (dint bench's quality_vs_time.png, dint report's comparison)."""

from __future__ import annotations

import textwrap
from pathlib import Path

UNITS = {"psnr": "PSNR (dB)", "iou": "IoU"}
TIME_AXIS = "training seconds (selection + update)"
DENSE_RUN = 100  # a run of more selections than this is marked as a band, not step by step


def save_figure(figure, path: Path) -> None:
    """As a PNG marked as dint's (its Software text), so dint may later replace it."""
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100, metadata={"Software": "dint"})


def quality_figure(lines: list[dict], selection_runs: list[list[int]], key: str):
    """A run's quality.png (a matplotlib Figure) from its metrics.jsonl lines: quality and loss,
    each against steps and against training seconds; on the quality-by-step panel the teacher's
    ratio (second axis) and its selection steps (along the bottom)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(13, 8))
    (by_step, by_time), (loss_by_step, loss_by_time) = figure.subplots(2, 2)
    evaluated = [line for line in lines if line.get(key) is not None]
    for axes, x, lines_of, y, colour in (
        (by_step, "step", evaluated, key, "C0"),
        (by_time, "train_seconds", evaluated, key, "C0"),
        (loss_by_step, "step", lines, "loss", "C2"),
        (loss_by_time, "train_seconds", lines, "loss", "C2"),
    ):
        axes.plot(
            [line[x] for line in lines_of],
            [line[y] for line in lines_of],
            "o-" if y == key else "-",
            color=colour,
            markersize=3,
        )
        axes.set_xlabel("step" if x == "step" else TIME_AXIS)
        axes.set_ylabel(UNITS[key] if y == key else "loss (mean squared error)")
        what = key.upper() if y == key else "loss"
        axes.set_title(f"{what} against {'steps' if x == 'step' else 'training time'}")
        if y == "loss":
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
    ratio = by_step.twinx()
    ratio.step(
        [line["step"] for line in lines],
        [line["ratio"] for line in lines],
        where="post",
        color="C1",
        alpha=0.7,
        linewidth=1,
    )
    ratio.set_ylabel("ratio selected", color="C1")
    ratio.set_ylim(0, 1.05)
    _mark_selections(by_step, selection_runs)
    return figure


def _mark_selections(axes, runs: list[list[int]]) -> None:
    """Selection steps along the bottom of `axes` (runs [first, last, every]): a tick each, or,
    for a run of more than DENSE_RUN selections, a band labelled with its interval."""
    transform = axes.get_xaxis_transform()  # x in steps, y in axes fractions
    labels = set()
    for first, last, every in runs:
        if (last - first) // every + 1 > DENSE_RUN:
            label = "selection at every step" if every == 1 else f"selection every {every} steps"
            axes.axvspan(
                first,
                last,
                ymin=0,
                ymax=0.04,
                color="black",
                alpha=0.3 if every > 1 else 0.5,
                label=None if label in labels else label,
            )
        else:
            label = "selection steps"
            axes.vlines(
                range(first, last + 1, every),
                0,
                0.04,
                transform=transform,
                color="black",
                linewidth=0.6,
                label=None if label in labels else label,
            )
        labels.add(label)
    if labels:
        axes.legend(loc="lower right", fontsize="small")


def quality_vs_time(curves: list[dict], path: Path, key: str, line: tuple[float, str] | None = None) -> None:
    """Quality against training seconds, one line per entry of `curves` ({"label", "curve":
    [(seconds, quality)], optional "colour" and "alpha"}); `line`: a level to draw and its
    label. The legend goes under the plot, long labels wrapped, so the plot keeps its size."""
    labelled = sum(1 for entry in curves if entry.get("label")) + (line is not None)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5 + 0.22 * labelled))
    axes = figure.subplots()
    for entry in curves:
        curve = entry["curve"]
        label = entry.get("label")
        axes.plot(
            [t for t, _ in curve],
            [q for _, q in curve],
            color=entry.get("colour"),
            alpha=entry.get("alpha", 0.9),
            label=textwrap.fill(label, 90) if label else None,
        )
    if line is not None:
        axes.axhline(line[0], color="grey", linestyle=":", linewidth=1, label=line[1])
    axes.set_xlabel(TIME_AXIS)
    axes.set_ylabel(UNITS[key])
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize="small", frameon=False)
    save_figure(figure, path)
