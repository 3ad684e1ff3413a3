"""Bounded maps of a signal and of what the teacher selects: the numbers behind
selection.png and TensorBoard's pictures.

A SignalView is one picture of the signal: the whole image, the middle slice (along the
first axis) of a volume or of a shape's field, or the time axis of audio. Its points fall
into bins of `factor` points a side, one factor for the picture, chosen so that no side
passes metrics.map_size: a small signal is shown point by point, a gigapixel one as the
density of what falls in each bin. Every rank adds its own points into the bins and the
sums are all-reduced, so memory and traffic grow with the picture, never with the signal.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dint.core.files import write_outputs
from dint.data.store import SignalInfo
from dint.distributed.collectives import all_reduce_max, all_reduce_sum

AUDIO_LENGTH = 4  # an audio map is a strip AUDIO_LENGTH x map_size bins long


class SignalView:
    def __init__(self, info: SignalInfo, map_size: int):
        self.ndim, self.channels = info.ndim, info.channels
        plane = info.shape[-1:] if info.ndim == 1 else info.shape[-2:]
        # The leading axes of a volume are held at their middle: the picture is that slice.
        self.fixed = tuple(size // 2 for size in info.shape[: info.ndim - len(plane)])
        longest = map_size * AUDIO_LENGTH if info.ndim == 1 else map_size
        self.factor = max(1, math.ceil(max(plane) / longest))
        self.shape = tuple(math.ceil(size / self.factor) for size in plane)
        self.size = math.prod(self.shape)
        # Points of the signal in each bin (edge bins hold fewer).
        per_axis = [
            np.minimum(self.factor, size - np.arange(bins) * self.factor) for size, bins in zip(plane, self.shape)
        ]
        self.area = per_axis[0] if len(per_axis) == 1 else np.outer(per_axis[0], per_axis[1])

    def described(self) -> dict:
        return {
            "slice": {f"axis {axis}": index for axis, index in enumerate(self.fixed)},
            "points_per_bin": self.factor ** len(self.shape),
            "bins": list(self.shape),
        }

    def bins(self, multi_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(in_view, bin): which of these points (integer positions, (n, ndim)) lie in the
        picture, and the flat bin of each of those."""
        in_view = torch.ones(multi_index.shape[0], dtype=torch.bool, device=multi_index.device)
        for axis, index in enumerate(self.fixed):
            in_view &= multi_index[:, axis] == index
        position = multi_index[in_view][:, len(self.fixed) :] // self.factor
        flat = position[:, 0]
        for axis in range(1, position.shape[1]):
            flat = flat * self.shape[axis] + position[:, axis]
        return in_view, flat


def selection_counts(view: SignalView, selection) -> np.ndarray:
    """Points selected in each bin of the picture, summed over ranks (collective).

    `selection` is a dint.teaching.teacher.Selection (or a balanced one: its `source`, the points the
    teacher chose on this rank, before any moved)."""
    selection = getattr(selection, "source", selection)
    shard, local = selection.shard, selection.local
    counts = torch.zeros(view.size, dtype=torch.int64, device=local.device)
    if local.numel():
        in_view, flat = view.bins(shard.multi_index(local))
        counts.index_add_(0, flat, torch.ones_like(flat))
    return all_reduce_sum(counts).cpu().numpy().reshape(view.shape)


class FieldMaps:
    """Per bin of the picture: the mean target, mean prediction and mean |prediction - target|
    of the points evaluated there (and, for audio, the extremes of target and prediction: a
    waveform's envelope). Fed block by block during an evaluation, then `result()`."""

    def __init__(self, view: SignalView, device: torch.device):
        self.view = view
        c = view.channels
        # [points, target (c), prediction (c), |error|], float64 so huge bins sum exactly enough
        self.sums = torch.zeros(view.size, 2 * c + 2, dtype=torch.float64, device=device)
        self.highs = (
            torch.full((view.size, 4), -math.inf, dtype=torch.float64, device=device) if view.ndim == 1 else None
        )  # max target, max prediction, -min target, -min prediction

    def add(self, multi_index: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor) -> None:
        in_view, flat = self.view.bins(multi_index)
        if not flat.numel():
            return
        prediction, target = prediction[in_view].double(), target[in_view].double()
        error = (prediction - target).abs().mean(dim=1, keepdim=True)
        ones = torch.ones_like(error)
        self.sums.index_add_(0, flat, torch.cat([ones, target, prediction, error], dim=1))
        if self.highs is not None:
            first = lambda x: x[:, 0]  # noqa: E731  (audio: the first channel's envelope)
            for column, values in enumerate((first(target), first(prediction), -first(target), -first(prediction))):
                self.highs[:, column].scatter_reduce_(0, flat, values, reduce="amax")

    def result(self) -> dict[str, np.ndarray]:
        """Maps of the picture's shape (channels last), NaN where no point was evaluated (collective)."""
        sums = all_reduce_sum(self.sums).cpu().numpy()
        c, shape = self.view.channels, self.view.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums[:, 1:] / sums[:, :1]
        maps = {
            "points": sums[:, 0].reshape(shape),
            "target": mean[:, :c].reshape(*shape, c),
            "prediction": mean[:, c : 2 * c].reshape(*shape, c),
            "error": mean[:, 2 * c].reshape(shape),
        }
        if self.highs is not None:
            highs = all_reduce_max(self.highs).cpu().numpy()
            maps.update(
                target_high=highs[:, 0],
                prediction_high=highs[:, 1],
                target_low=-highs[:, 2],
                prediction_low=-highs[:, 3],
            )
        return maps


class SelectionMaps:
    """The teacher's selection at chosen steps (metrics.selection_maps), as counts per bin.

    Rank 0 keeps them in run.dir/selection.npz, rewritten (staged) at every capture, so a
    killed run leaves the maps made so far and a resumed run keeps those before its resume.
    """

    def __init__(self, view: SignalView, steps: list[int], path: Path, is_main: bool, resume_after: int = 0):
        self.view, self.steps, self.path, self.is_main = view, set(steps), path, is_main
        # step -> (ratio, points selected over the signal, counts per bin), on rank 0
        self.captured: dict[int, tuple[float, int, np.ndarray]] = {}
        if is_main and resume_after and path.exists():
            with np.load(path) as saved:
                for step, ratio, selected, counts in zip(
                    saved["steps"].tolist(), saved["ratios"].tolist(), saved["selected"].tolist(), saved["counts"]
                ):
                    if step <= resume_after and counts.shape == view.shape:
                        self.captured[step] = (ratio, selected, counts)

    def wants(self, step: int) -> bool:
        return step in self.steps

    def capture(self, step: int, selection) -> None:
        """Map what the teacher selected for `step` (collective)."""
        counts = selection_counts(self.view, selection)
        if not self.is_main:
            return
        self.captured[step] = (selection.ratio, selection.global_count, counts)
        steps = sorted(self.captured)
        arrays = {
            "steps": np.array(steps, dtype=np.int64),
            "ratios": np.array([self.captured[s][0] for s in steps], dtype=np.float64),
            "selected": np.array([self.captured[s][1] for s in steps], dtype=np.int64),
            "counts": np.stack([self.captured[s][2] for s in steps]).astype(np.int32),
            "points_per_bin": self.view.area.astype(np.int32),
        }
        write_outputs(self.path.parent, {self.path.name: lambda tmp: _save_npz(tmp, arrays)})


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as file:  # np.savez would add ".npz" to a staging name
        np.savez_compressed(file, **arrays)
