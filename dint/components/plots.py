"""Plots of runs (matplotlib, no screen): a run's quality.png, and quality against training
time for several runs (dint bench's quality_vs_time.png, dint report's comparison)."""

from __future__ import annotations

import textwrap
from pathlib import Path

UNITS = {"psnr": "PSNR (dB)", "iou": "IoU"}
TIME_AXIS = "training seconds (selection + update)"
DENSE_RUN = 100  # a run of more selections than this is marked as a band, not step by step


def _figure(width: float, height: float, columns: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def save_figure(figure, path: Path) -> None:
    """As a PNG marked as dint's (its Software text), so dint may later replace it."""
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100, metadata={"Software": "dint"})


def quality_figure(lines: list[dict], selection_runs: list[list[int]], key: str):
    """A run's quality.png (a matplotlib Figure) from its metrics.jsonl lines: quality against steps (the teacher's
    ratio on a second axis, its selection steps marked under the curve), quality against
    training seconds, and the loss against steps."""
    figure, (by_step, by_time, loss) = _figure(15, 4.2, 3)
    evaluated = [line for line in lines if line.get(key) is not None]
    steps = [line["step"] for line in evaluated]
    values = [line[key] for line in evaluated]
    by_step.plot(steps, values, "o-", color="C0", markersize=3)
    by_step.set_xlabel("step")
    by_step.set_ylabel(UNITS[key])
    by_step.set_title(f"{key.upper()} against steps")
    ratio = by_step.twinx()
    ratio.step([line["step"] for line in lines], [line["ratio"] for line in lines], where="post", color="C1",
               alpha=0.7, linewidth=1)
    ratio.set_ylabel("ratio selected", color="C1")
    ratio.set_ylim(0, 1.05)
    _mark_selections(by_step, selection_runs)
    by_time.plot([line["train_seconds"] for line in evaluated], values, "o-", color="C0", markersize=3)
    by_time.set_xlabel(TIME_AXIS)
    by_time.set_ylabel(UNITS[key])
    by_time.set_title(f"{key.upper()} against training time")
    loss.plot([line["step"] for line in lines], [line["loss"] for line in lines], color="C2")
    loss.set_yscale("log")
    loss.set_xlabel("step")
    loss.set_ylabel("loss (mean squared error)")
    loss.set_title("loss against steps")
    for axes in (by_step, by_time, loss):
        axes.grid(alpha=0.3)
    return figure


def _mark_selections(axes, runs: list[list[int]]) -> None:
    """Selection steps along the bottom of `axes` (runs [first, last, every]): a tick each, or,
    for a run of more than DENSE_RUN selections, a band labelled with its interval."""
    transform = axes.get_xaxis_transform()  # x in steps, y in axes fractions
    labels = set()
    for first, last, every in runs:
        if (last - first) // every + 1 > DENSE_RUN:
            label = "selection at every step" if every == 1 else f"selection every {every} steps"
            axes.axvspan(first, last, ymin=0, ymax=0.04, color="black", alpha=0.3 if every > 1 else 0.5,
                         label=None if label in labels else label)
        else:
            label = "selection steps"
            axes.vlines(range(first, last + 1, every), 0, 0.04, transform=transform, color="black", linewidth=0.6,
                        label=None if label in labels else label)
        labels.add(label)
    if labels:
        axes.legend(loc="lower right", fontsize="small")


def quality_vs_time(curves: list[dict], path: Path, key: str, line: tuple[float, str] | None = None) -> None:
    """Quality against training seconds, one line per entry of `curves` ({"label", "curve":
    [(seconds, quality)], optional "colour" and "alpha"}); `line`: a level to draw and its
    label. The legend goes under the plot, long labels wrapped, so the plot keeps its size."""
    labelled = sum(1 for entry in curves if entry.get("label")) + (line is not None)
    figure, (axes,) = _figure(8, 4.5 + 0.22 * labelled)
    for entry in curves:
        curve = entry["curve"]
        label = entry.get("label")
        axes.plot([t for t, _ in curve], [q for _, q in curve], color=entry.get("colour"),
                  alpha=entry.get("alpha", 0.9), label=textwrap.fill(label, 90) if label else None)
    if line is not None:
        axes.axhline(line[0], color="grey", linestyle=":", linewidth=1, label=line[1])
    axes.set_xlabel(TIME_AXIS)
    axes.set_ylabel(UNITS[key])
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize="small", frameon=False)
    save_figure(figure, path)
