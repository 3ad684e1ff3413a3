"""Data sharding: which chunks of a store each rank holds, and the rank's points.

Partition policy: the store's spatial chunk grid is walked in C order (last axis fastest),
and cut into `world_size` contiguous runs of chunks with as equal a number of points as
chunk boundaries allow (a chunk goes to the rank whose share holds the chunk's middle
point). Neighbouring chunks stay on one rank, the split is the same for every run with the
same store and world size, and ranks differ in size by at most about one chunk.

A rank keeps its values in the storage dtype, flattened chunk after chunk. A point is named
by its *local index* into that flat array; its global index (the C-order flat index into the
whole signal), coordinates and normalised target are computed from the local index when
needed, so no float copy of the shard and no coordinate grid is ever built.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np
import torch

from dint.store import SignalInfo, Store


def chunk_grid(info: SignalInfo) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(origin, shape) of every spatial chunk, in C order."""
    ranges = [range(0, size, step) for size, step in zip(info.shape, info.chunks)]
    return [
        (origin, tuple(min(step, size - o) for o, step, size in zip(origin, info.chunks, info.shape)))
        for origin in itertools.product(*ranges)
    ]


def partition_chunks(sizes: list[int], world_size: int) -> list[range]:
    """Contiguous runs of chunk indices, one per rank, balanced by point count."""
    total = sum(sizes)
    owners, before = [], 0
    for size in sizes:
        owners.append(min(world_size - 1, (2 * before + size) * world_size // (2 * total)) if total else 0)
        before += size
    return [
        range(owners.index(rank), len(owners) - owners[::-1].index(rank)) if rank in owners else range(0)
        for rank in range(world_size)
    ]


class CoordinateMap:
    """Integer positions to float coordinates: axis d spans info.domain[d] end to end."""

    def __init__(self, info: SignalInfo, device: torch.device):
        sizes = torch.tensor(info.shape, dtype=torch.float64)
        starts = torch.tensor([d[0] for d in info.domain], dtype=torch.float64)
        spans = torch.tensor([d[1] - d[0] for d in info.domain], dtype=torch.float64)
        # A one-sample axis sits at the middle of its interval.
        scale = torch.where(sizes > 1, spans / (sizes - 1).clamp(min=1), torch.zeros_like(spans))
        start = torch.where(sizes > 1, starts, starts + spans / 2)
        self.scale = scale.to(device=device, dtype=torch.float32)
        self.start = start.to(device=device, dtype=torch.float32)

    def __call__(self, multi_index: torch.Tensor) -> torch.Tensor:
        return self.start + multi_index.to(torch.float32) * self.scale


class Shard:
    """The points of one rank: storage-dtype values plus index arithmetic."""

    def __init__(self, store: Store, rank: int, world_size: int, device: torch.device,
                 info: SignalInfo | None = None):
        info = info or store.info  # the trainer may override the coordinate domain
        self.info = info
        self.device = device
        grid = chunk_grid(info)
        mine = partition_chunks([math.prod(shape) for _, shape in grid], world_size)[rank]
        self.chunk_ids = list(mine)  # positions in the store's C-order chunk grid
        self.chunks = [grid[i] for i in mine]
        ndim = info.ndim
        self._origins = torch.tensor([o for o, _ in self.chunks], dtype=torch.int64, device=device).reshape(-1, ndim)
        self._shapes = torch.tensor([s for _, s in self.chunks], dtype=torch.int64, device=device).reshape(-1, ndim)
        counts = self._shapes.prod(dim=1)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), counts.cumsum(0)])
        parts = [store.read_region(o, s).reshape(-1, info.channels) for o, s in self.chunks]
        flat = np.concatenate(parts) if parts else np.zeros((0, info.channels), dtype=info.dtype)
        self.values = torch.from_numpy(flat).to(device)
        self._strides = torch.tensor(
            [math.prod(info.shape[d + 1 :]) for d in range(ndim)], dtype=torch.int64, device=device
        )
        lo, hi = info.value_range
        self._value_lo, self._value_scale = lo, 2.0 / (hi - lo)
        self.coordinates = CoordinateMap(info, device)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def multi_index(self, local: torch.Tensor) -> torch.Tensor:
        """Integer position (n, ndim) in the whole signal of each local index."""
        chunk = torch.searchsorted(self._offsets[1:], local, right=True)
        rel = local - self._offsets[chunk]
        shapes = self._shapes[chunk]
        within = torch.empty_like(shapes)
        for d in range(self.info.ndim - 1, -1, -1):
            within[:, d] = rel % shapes[:, d]
            rel = rel // shapes[:, d]
        return self._origins[chunk] + within

    def global_index(self, local: torch.Tensor) -> torch.Tensor:
        return (self.multi_index(local) * self._strides).sum(dim=1)

    def coords(self, local: torch.Tensor) -> torch.Tensor:
        return self.coordinates(self.multi_index(local))

    def targets(self, local: torch.Tensor) -> torch.Tensor:
        """Values of the points, mapped from the store's value range to [-1, 1]."""
        return (self.values[local].to(torch.float32) - self._value_lo) * self._value_scale - 1.0

    def blocks(self, block_size: int) -> Iterator[torch.Tensor]:
        """Local indices in consecutive blocks of at most `block_size` points."""
        for start in range(0, len(self), block_size):
            yield torch.arange(start, min(start + block_size, len(self)), device=self.device)
