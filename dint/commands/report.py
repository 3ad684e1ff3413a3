"""`dint report RUN_DIR [RUN_DIR ...]`: runs side by side, finished or still training.

Everything comes from what a run folder already holds: config.toml (teacher, steps),
metrics.jsonl (quality at evaluations, training seconds, the last step logged) and, once a
run has finished, summary.json. A run still training is read as far as it has logged; its
lock (.dint-lock, dint.train) says whether a process still holds it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import tomllib

from dint.core.errors import DintError, one_line, quoted, warn
from dint.core.files import RUN_LOCK, check_input, check_outside_inputs, held_by, is_dint_png, shown, staged
from dint.observe.plots import quality_vs_time
from dint.train.metrics import damaged_lines, quality_curve, read_metrics_lines, time_to_reach


@dataclasses.dataclass
class Run:
    folder: Path
    teacher: str
    steps: int  # the run's train.steps
    step: int  # the last step logged
    quality_key: str  # psnr, or iou for shapes
    quality: float | None  # final, or the latest evaluated
    train_seconds: float
    curve: list[tuple[float, float]]  # [(training seconds, quality)]
    state: str  # finished, training, or stopped (not finished, no process holds it)

    @property
    def label(self) -> str:
        return shown(self.folder)


# What `entry` checks a value to be.
NUMBER, POSITIVE, COUNT = "a number", "a positive number", "a whole number"
TEXT, NUMBERS = "a text", "a list of numbers"


def entry(data: Any, source: str, key: str, kind: str = NUMBER, required: bool = True) -> Any:
    """`data`'s value at `key` ("section.name" goes into tables), read from a file a run wrote
    (`source` names it, and the line), checked to be `kind`: a damaged or foreign file is one
    line naming the file and the key, not a traceback wherever the value is used. None where
    it is absent (or null) and not `required`."""
    value = data
    for part in key.split("."):
        if not isinstance(value, dict):
            raise DintError(f"{source}: holds {quoted(value)} where a table with '{key}' belongs (damaged?)")
        if part not in value:
            if required:
                raise DintError(f"{source}: '{key}' is missing (written by another version of dint, or damaged)")
            return None
        value = value[part]
    if value is None and not required:  # metrics.jsonl's null: not measured at that line
        return None

    def real(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

    fits = {
        NUMBER: real(value),
        POSITIVE: real(value) and math.isfinite(value) and value > 0,
        COUNT: real(value) and isinstance(value, int) and value >= 0,
        TEXT: isinstance(value, str),
        NUMBERS: isinstance(value, list) and bool(value) and all(real(v) and math.isfinite(v) for v in value),
    }[kind]
    if not fits:
        raise DintError(f"{source}: '{key}' = {quoted(value)} is not {kind}")
    return value


def read_run_files(folder: Path, finished: bool) -> tuple[dict, list[dict], dict | None]:
    """A run folder's config.toml, metrics.jsonl lines and summary.json (None while it trains;
    required when `finished`), each checked to be what dint writes there, so that `entry` can
    read them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DintError(f"{shown(folder)}: not a folder (a run folder: the run.dir of a training)")
    config = _read_config(folder / "config.toml")
    lines = _read_lines(folder / "metrics.jsonl")
    if not lines:
        raise DintError(f"{shown(folder / 'metrics.jsonl')}: no step logged yet")
    summary = _read_summary(folder / "summary.json")
    if summary is None and finished:
        raise DintError(f"{shown(folder / 'summary.json')}: not found: the run has not finished")
    return config, lines, summary


def checked_curve(lines: list[dict], path: Path, key: str) -> list[tuple[float, float]]:
    """quality_curve of metrics.jsonl lines read from `path`, each value checked first."""
    for number, line in enumerate(lines, 1):
        source = f"{shown(path)}, line {number}"
        if entry(line, source, key, required=False) is not None:
            entry(line, source, "train_seconds")
    return quality_curve(lines, key)


def read_run(folder: Path) -> Run:
    folder = Path(folder)
    config, lines, summary = read_run_files(folder, finished=False)
    metrics, last = folder / "metrics.jsonl", f"{shown(folder / 'metrics.jsonl')}, line {len(lines)}"
    key = "iou" if any("iou" in line for line in lines) else "psnr"
    curve = checked_curve(lines, metrics, key)
    if summary is not None:
        state = "finished"
        quality = entry(
            summary, shown(folder / "summary.json"), "iou" if key == "iou" else "final_psnr", required=False
        )
    else:
        state = "training" if held_by(folder / RUN_LOCK) else "stopped"
        quality = curve[-1][1] if curve else None
    config_file = shown(folder / "config.toml")
    return Run(
        folder,
        entry(config, config_file, "teacher.strategy", TEXT),
        entry(config, config_file, "train.steps", COUNT),
        entry(lines[-1], last, "step", COUNT),
        key,
        quality,
        entry(lines[-1], last, "train_seconds"),
        curve,
        state,
    )


def _read_text(path: Path, missing: str) -> str:
    if not os.path.lexists(path):
        raise DintError(f"{shown(path)}: {missing}")
    check_input(path, path.name)
    if path.is_dir():
        raise DintError(f"{shown(path)}: is a folder, not a file")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DintError(f"{shown(path)}: cannot read ({one_line(e)})") from None


def _read_config(path: Path) -> dict:
    try:
        return tomllib.loads(_read_text(path, "not found: not a dint run folder, or its run has not started"))
    except tomllib.TOMLDecodeError as e:
        raise DintError(f"{shown(path)}: not valid TOML ({one_line(e)})") from None


def _read_lines(path: Path) -> list[dict]:
    text = _read_text(path, "not found: the run has not logged a step yet")
    lines, damaged = read_metrics_lines(text)
    being_written = text.count("\n") + 1 if not text.endswith("\n") else None  # by a running training
    damaged = [number for number in damaged if number != being_written]
    if damaged:
        warn(damaged_lines(path, damaged, "skipped"))
    return lines


def _read_summary(path: Path) -> dict | None:
    if not os.path.lexists(path):
        return None
    try:
        summary = json.loads(_read_text(path, "not found"))
    except ValueError as e:
        raise DintError(f"{shown(path)}: cannot read ({one_line(e)})") from None
    if not isinstance(summary, dict):
        raise DintError(f"{shown(path)}: holds {quoted(summary)}, not a run's summary (a JSON object; damaged?)")
    return summary


def common_target(runs: list[Run]) -> float | None:
    """The highest quality every run has reached: the level whose time to reach is compared."""
    best = [max(q for _, q in run.curve) for run in runs if run.curve]
    return min(best) if len(best) == len(runs) and best else None


def report_table(runs: list[Run], target: float | None) -> str:
    key = runs[0].quality_key
    unit = " dB" if key == "psnr" else ""
    to = f"s to {target:.2f}{unit}" if target is not None else "s to target"
    lines = [f"| run | state | teacher | steps | {key} | train s | {to} |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        reached = time_to_reach(run.curve, target) if target is not None else None
        quality = f"{run.quality:.4g}" if run.quality is not None else "—"
        lines.append(
            f"| {run.label} | {run.state} | {run.teacher} | {run.step} of {run.steps} | {quality} | "
            f"{run.train_seconds:.1f} | {f'{reached:.1f}' if reached is not None else 'not reached'} |"
        )
    return "\n".join(lines)


def compare_runs(folders: list[Path], target: float | None, plot: Path | None) -> str:
    """The table of `folders`' runs (printed by the CLI); the comparison plot at `plot`."""
    for folder in folders if plot is not None else ():
        check_outside_inputs(plot, {"the run folder": folder}, f"--plot {shown(plot)}", holding=False)
    runs = [read_run(folder) for folder in folders]
    keys = {run.quality_key for run in runs}
    if len(keys) > 1:
        raise DintError("these runs measure different things (PSNR and IoU): report shapes apart from the rest")
    target = common_target(runs) if target is None else target
    if plot is not None:
        curves = [{"label": f"{run.label} ({run.teacher})", "curve": run.curve} for run in runs]
        line = (target, "target") if target is not None else None
        with staged(plot, may_replace=is_dint_png) as tmp:
            quality_vs_time(curves, tmp, runs[0].quality_key, line)
    return report_table(runs, target)
