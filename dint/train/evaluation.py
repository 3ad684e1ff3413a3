"""How good a fit is: PSNR over the training range, and IoU for shapes.

Targets and predictions live in the training range [-1, 1] (the store's value_range mapped
onto it, dint.data.store.to_training), so PSNR is taken over a range of 2 whatever the signal's
units. A shape's field is inside where it is past the surface level: at or above 0.5 for
occupancy, at or below 0 for a signed distance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from dint.core.config import EvalConfig
from dint.core.resources import local_ranks, require_memory
from dint.data.sharding import Shard
from dint.data.store import SignalInfo, Store, to_training, to_unit
from dint.distributed.collectives import all_reduce_sum
from dint.fields.quality import inside_threshold, iou, psnr, ssim
from dint.observe.maps import FieldMaps

TRAINING_RANGE = 2.0  # targets live in [-1, 1]; PSNR is taken over that range


class Evaluator:
    """PSNR (and IoU for shapes) of a model over every point of the signal, or over a fixed
    random sample of eval.sample points; each rank evaluates its own, the sums are all-reduced.
    It owns the evaluation cadence ([eval] every) of a run of `steps` steps."""

    def __init__(
        self,
        config: EvalConfig,
        info: SignalInfo,
        shards: Iterable[Shard],
        device: torch.device,
        block_points: int,
        seed: int,
        steps: int = 0,
    ):
        self.info, self.shards, self.device, self.block_points = info, shards, device, block_points
        self.every, self.steps = config.every, steps
        self.sample = self._sample(config.sample, seed) if config.sample else None
        # What the summary reports: over every point, or over a fixed random sample of them.
        self.described = {"sampled": self.sample is not None, "points": config.sample or info.num_points}

    def due(self, step: int) -> bool:
        """An evaluation on the way (the last step's is the final one, made anyway)."""
        return self.every > 0 and step % self.every == 0 and step != self.steps

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, maps: FieldMaps | None = None) -> dict:
        """{"psnr": dB} (and "iou" for shapes); `maps`, when given, are fed the same forwards
        (dint.observe.maps), so pictures of the fit cost no second pass (collective)."""
        shape = self.info.modality == "shape"
        if shape:
            surface, above = inside_threshold(self.info)
            level = to_training(surface, self.info.value_range)
        # [squared error, points, intersection, union], in float64 so large signals sum exactly enough
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for prediction, target, where in self._batches(model):
            if maps is not None:
                maps.add(where(), prediction, target)
            sums[0] += (prediction - target).double().square().sum()
            sums[1] += target.shape[0]
            if shape:
                inside_p = prediction[:, 0] >= level if above else prediction[:, 0] <= level
                inside_t = target[:, 0] >= level if above else target[:, 0] <= level
                sums[2] += (inside_p & inside_t).sum()
                sums[3] += (inside_p | inside_t).sum()
        all_reduce_sum(sums)
        result = {"psnr": psnr(sums[0].item() / (sums[1].item() * self.info.channels), TRAINING_RANGE)}
        if shape:
            result["iou"] = iou(sums[2].item(), sums[3].item())
        return result

    def _batches(self, model: torch.nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor, Callable]]:
        """(prediction, target, where) by blocks; where() gives the points' integer positions."""
        block = self.block_points
        if self.sample is not None:
            coords, targets, positions = self.sample
            for start in range(0, coords.shape[0], block):
                end = start + block
                yield model(coords[start:end]), targets[start:end], lambda s=start, e=end: positions[s:e]
            return
        for shard in self.shards:
            for local in shard.blocks(block):
                yield model(shard.coords(local)), shard.targets(local), lambda s=shard, i=local: s.multi_index(i)

    def _sample(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coordinates, targets and positions of this rank's part of a fixed random sample of points."""
        # Per drawn point: the draw, its sorted copy and unique value, its lookup in the shards
        # (about 32 bytes an axis), its coordinates, position and target.
        point_bytes = 24 + 72 * self.info.ndim + 8 * self.info.channels
        require_memory(size * point_bytes, f"eval.sample = {size}: the sample", share=local_ranks())
        generator = torch.Generator().manual_seed(seed + 1)
        wanted = torch.randint(0, self.info.num_points, (size,), generator=generator).unique().to(self.device)
        coords, targets, positions = [], [], []
        for shard in self.shards:
            _, local = shard.local_index(wanted)
            coords.append(shard.coords(local))
            targets.append(shard.targets(local))
            positions.append(shard.multi_index(local))
        return torch.cat(coords), torch.cat(targets), torch.cat(positions)


def reconstruction_ssim(store: Store, reconstruction: Store, info: SignalInfo) -> float:
    """SSIM of a whole image's reconstruction against its store (an image small enough to preview)."""
    whole = ((0,) * info.ndim, info.shape)  # read_region: retries, and one line if it fails
    return ssim(
        to_unit(store.read_region(*whole), info), to_unit(reconstruction.read_region(*whole), info), data_range=1.0
    )
