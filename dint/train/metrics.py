"""Run logging: when to log, what a metrics.jsonl line holds, and the step's timers.

Rank 0 writes metrics.jsonl (and a progress bar on a terminal); every rank keeps timers,
since the summary reports them. Steps count from 1, as in metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dint.core.config import MetricsConfig
from dint.core.errors import warn
from dint.core.files import naming, open_staged, read_own, shown
from dint.core.resources import local_ranks
from dint.distributed.collectives import TRAFFIC, all_gather_varlen, all_reduce_sum, gather_counts


class Timer:
    """Seconds spent in one part of the step, summed over steps.

    On CUDA a span is a pair of events, so timing adds no host-device synchronisation to the
    step: the events are resolved (synchronising once) only when `seconds` is read.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._seconds, self._spans = 0.0, []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.cuda:
            started = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - started
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._spans.append((start, end))

    @property
    def seconds(self) -> float:
        if self._spans:
            self._spans[-1][1].synchronize()
            self._seconds += sum(start.elapsed_time(end) for start, end in self._spans) / 1000.0
            self._spans = []
        return self._seconds

    @seconds.setter
    def seconds(self, value: float) -> None:
        self._seconds, self._spans = value, []


class Timers(dict):
    """The step's timers by name, saved with checkpoints: select (scoring forwards in `score`),
    balance, update (the gradient all-reduce in `allreduce`, the optimizer in `optimizer`;
    DDP only), eval."""

    NAMES = ("select", "score", "balance", "update", "allreduce", "optimizer", "eval")

    def __init__(self, device: torch.device):
        super().__init__({name: Timer(device) for name in self.NAMES})

    def state_dict(self) -> dict:
        return {name: timer.seconds for name, timer in self.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, timer in self.items():
            timer.seconds = state.get(name, 0.0)  # some timers are newer than some checkpoints

    def summary(self) -> dict[str, float]:
        """The run summary's seconds: train_seconds is selection and update steps only (no store
        reading, no evaluation); score is part of select, allreduce and optimizer of update."""
        seconds = self.state_dict()
        return {
            "train_seconds": seconds["select"] + seconds["balance"] + seconds["update"],
            **{f"{name}_seconds": seconds[name] for name in self.NAMES},
        }


class MetricsLogger:
    """Decides which steps are logged ([metrics] log_every), and writes their lines (rank 0)."""

    def __init__(
        self,
        config: MetricsConfig,
        steps: int,
        run_dir: Path,
        enabled: bool,
        timers: Timers,
        steps_per_pass: int = 1,
        resume_after: int | None = None,
        shape: bool = False,
    ):
        """A fresh run_dir/metrics.jsonl for a run of `steps` steps, or (`resume_after` = the step
        resumed from) the lines up to that step kept. Lines show `timers`, and with mini-batches
        (`steps_per_pass` > 1) the pass and mini-batch of each step; `shape`: an IoU too."""
        self.total_steps, self.log_every = steps, config.log_every
        self.timers, self.steps_per_pass = timers, steps_per_pass
        self.enabled, self.shape = enabled, shape
        self.history: list[dict[str, Any]] = []  # this run's lines, on every rank (dint bench reads them)
        self.path = run_dir / "metrics.jsonl"
        self._file = None
        if enabled:
            self._rewrite(resume_after or 0)
        show_bar = enabled and sys.stderr.isatty()
        self._bar = (
            tqdm(total=self.total_steps, initial=resume_after or 0, unit="step", dynamic_ncols=True)
            if show_bar
            else None
        )

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def record(self, step: int, loss: torch.Tensor, selection, lr: float, wall_seconds: float) -> dict[str, Any]:
        """The line of `step` (collective: the loss is averaged over ranks, the bytes gathered);
        quality is filled in by evaluations. `selection` is what the step trained (a
        dint.teaching.teacher.Selection, or a dint.teaching.balance.BalancedSelection)."""
        world_size = len(selection.rank_counts)
        trained = selection.trained_counts
        return {
            "step": step,
            "wall_seconds": round(wall_seconds, 4),
            "loss": float((all_reduce_sum(loss.reshape(1).double()) / world_size).item()),
            "psnr": None,
            **({"iou": None} if self.shape else {}),
            "ratio": selection.ratio,
            "selected": selection.global_count,
            "selected_per_rank": selection.rank_counts,
            # What each rank trained this step, and how far the slowest is above the mean (DDP waits for it).
            "trained_per_rank": trained,
            "imbalance": round(max(trained) * world_size / max(1, sum(trained)), 4),
            # Bytes each rank handed to the step's collectives (dint.distributed.collectives.Traffic).
            **bytes_per_rank(TRAFFIC.step, loss.device),
            "selected_at": selection.step + 1,  # step, or pass with mini-batches
            **(
                {"pass": (step - 1) // self.steps_per_pass + 1, "minibatch": (step - 1) % self.steps_per_pass + 1}
                if self.steps_per_pass > 1
                else {}
            ),
            "select_seconds": round(self.timers["select"].seconds, 4),
            "balance_seconds": round(self.timers["balance"].seconds, 4),
            "update_seconds": round(self.timers["update"].seconds, 4),
            "allreduce_seconds": round(self.timers["allreduce"].seconds, 4),  # the gradient exchange's (DDP)
            # What dint bench and dint report measure time to quality in: selection + update, no evaluation.
            "train_seconds": round(sum(self.timers[name].seconds for name in ("select", "balance", "update")), 4),
            "lr": lr,
        }

    def rewind(self, step: int) -> None:
        """Forget the lines after `step` (a rollback to it): they will be logged again."""
        self.history = [record for record in self.history if record["step"] <= step]
        if self._file is not None:
            self._rewrite(step)

    def _rewrite(self, up_to: int) -> None:
        """Make metrics.jsonl afresh (staged, in place of what is there, never through a link) with
        its good lines up to step `up_to` kept (none for 0): those of this run's own file, or at a
        resume those the run folder holds, damaged lines dropped with a warning; keep it open for
        the lines to come (closed by `close`)."""
        if self._file is not None:
            self._file.seek(0)
            text = self._file.read()
            self._file.close()
        else:
            text = (read_own(self.path) or "") if up_to else ""
        lines, damaged = read_metrics_lines(text)
        kept = [line for line in lines if line["step"] <= up_to]
        if damaged:
            warn(damaged_lines(self.path, damaged, "dropped"))
        with naming(self.path):
            self._file = open_staged(self.path, "".join(json.dumps(line) + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        with naming(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._bar is not None:
            shown = {k: record[k] for k in ("loss", "psnr", "ratio") if record.get(k) is not None}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            with naming(self.path):
                self._file.close()


def read_metrics_lines(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a metrics.jsonl's `text` (JSON objects with a step), and the numbers of
    its damaged lines: one cut short by a kill, NUL bytes a crash left where data was lost,
    anything that is not a record. NUL bytes beside a whole record lost nothing of it."""
    records, damaged = [], []
    for number, row in enumerate(text.split("\n"), 1):
        if not row.strip():
            continue
        try:
            record = json.loads(row.strip("\0 \t\r"))
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 1:
            records.append(record)
        else:
            damaged.append(number)
    return records, damaged


def damaged_lines(path: Path, numbers: list[int], done: str) -> str:
    """The warning for metrics lines `done` with (dropped, skipped) because read_metrics_lines found them damaged."""
    shown_numbers = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
    return (
        f"{shown(path)}: {done} {len(numbers)} damaged line(s) ({shown_numbers}): cut short, NUL bytes, "
        "or not a metrics record"
    )


def run_summary(trainer, quality: dict, wall_seconds: float) -> dict:
    """summary.json of a dint.train.trainer.Trainer's run: what it did, what it reached and where its
    time went (collective: per-rank counts)."""
    c, dist = trainer.config, trainer.dist
    return {
        "final_psnr": quality["psnr"],
        **({"iou": quality["iou"]} if "iou" in quality else {}),
        "steps": trainer.step,  # train.steps, unless a resume found more already trained
        "world_size": dist.world_size,
        "nodes": dist.world_size // local_ranks(),
        "teacher": c.teacher.strategy,
        "engine": c.train.engine,
        "device": str(dist.device),
        "compiled_with": c.model.compile_backend if trainer.compiled else None,
        "store": str(trainer.store.path),
        "modality": trainer.info.modality,
        "points": trainer.info.num_points,
        "ndim": trainer.info.ndim,
        "channels": trainer.info.channels,
        "params": sum(p.numel() for p in trainer.engine.module.parameters()),
        "evaluation": trainer.evaluator.described,
        "streamed": trainer.plan.streamed,
        **trainer.timers.summary(),
        "points_trained": trainer.points_trained,
        # Points through each rank's scoring forwards since this process started (not saved in checkpoints).
        "points_scored_per_rank": gather_counts(trainer.teacher.points_scored, dist.device),
        **bytes_per_rank(TRAFFIC.total, dist.device),
        "load_seconds": trainer.load_seconds,
        "wall_seconds": wall_seconds,
        "peak_rss_mb_per_rank": peak_rss_mb_per_rank(dist.device),
        "optimizer_state_bytes_per_rank": gather_counts(trainer.engine.optimizer_state_bytes(), dist.device),
        "outputs": {},
    }


TRAFFIC_PURPOSES = ("select", "balance", "gradients")


def bytes_per_rank(counted: dict[str, int], device: torch.device) -> dict[str, list[int]]:
    """`select_bytes_per_rank`, `balance_bytes_per_rank` and `gradients_bytes_per_rank` (the
    gradient exchange, dint.train.engine) from each rank's counts; collective."""
    mine = torch.tensor([[counted[purpose] for purpose in TRAFFIC_PURPOSES]], dtype=torch.int64, device=device)
    (every,) = all_gather_varlen(mine)
    return {f"{purpose}_bytes_per_rank": every[:, i].tolist() for i, purpose in enumerate(TRAFFIC_PURPOSES)}


def peak_rss_mb_per_rank(device: torch.device) -> list[float]:
    """Each rank's peak resident memory so far, in MB (Linux reports ru_maxrss in KiB); collective."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    (peaks,) = all_gather_varlen(torch.tensor([peak], dtype=torch.float64, device=device))
    return [round(p, 1) for p in peaks.tolist()]


def quality_curve(lines: list[dict], key: str, by: str = "train_seconds") -> list[tuple[float, float]]:
    """[(training seconds, quality)] at the evaluated lines of a metrics.jsonl; with by="step",
    [(step, quality)]: the same curve against steps, which do not depend on the machine's speed."""
    return [(line[by], line[key]) for line in lines if line.get(key) is not None]


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The training time at which `curve` ([(seconds, quality)], in time order) first reaches
    `target`, interpolated linearly between evaluations; None if it never does. Given a curve
    against steps ([(step, quality)]), the step."""
    previous = None
    for seconds, quality in curve:
        if quality >= target:
            if previous is None or previous[1] >= target or math.isinf(quality):  # an exact fit: no line to it
                return seconds
            (t0, q0) = previous
            return t0 + (seconds - t0) * (target - q0) / (quality - q0)
        previous = (seconds, quality)
    return None


class StepRuns:
    """A set of steps (where the teacher selected) kept as runs [first, last, every]: a
    schedule's selection steps are a few arithmetic runs, however long the training."""

    def __init__(self, runs: list[list[int]] | None = None):
        runs = runs or []
        if not isinstance(runs, (list, tuple)) or not all(
            isinstance(run, (list, tuple)) and len(run) == 3 and all(type(v) is int for v in run) for run in runs
        ):
            raise ValueError("selection steps are not [first, last, every] runs of whole numbers")
        self.runs = [list(run) for run in runs]

    def add(self, step: int) -> None:
        if self.runs:
            first, last, every = self.runs[-1]
            if first == last and step > last:
                self.runs[-1] = [first, step, step - last]
                return
            if step == last + every:
                self.runs[-1][1] = step
                return
        self.runs.append([step, step, 1])

    def steps(self) -> list[int]:
        return [step for first, last, every in self.runs for step in range(first, last + 1, every)]
