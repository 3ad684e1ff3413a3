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
from collections.abc import Iterator

import numpy as np
import torch

from dint.core.resources import local_ranks, require_memory
from dint.data.store import SignalInfo, Store, to_training


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
        self._scale64, self._start64 = scale.numpy(), start.numpy()

    def __call__(self, multi_index: torch.Tensor) -> torch.Tensor:
        """Training's float32 coordinates of integer positions (n, ndim)."""
        return self.start + multi_index.to(torch.float32) * self.scale

    def exact(self, positions: np.ndarray) -> np.ndarray:
        """Float64 coordinates of (fractional) positions (..., ndim): metadata, meshes."""
        return self._start64 + np.asarray(positions, dtype=np.float64) * self._scale64


def hashed_uniform(ids: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """A uniform [0, 1) draw per id that depends only on (id, seed, step) (splitmix64)."""
    mask = (1 << 64) - 1

    def signed(value: int) -> int:  # a 64-bit constant as torch's int64
        value &= mask
        return value - (1 << 64) if value >= 1 << 63 else value

    def shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:  # logical, on int64
        return (x >> bits) & ((1 << (64 - bits)) - 1)

    x = ids.to(torch.int64) + signed(0x9E3779B97F4A7C15 * (1 + seed * 1_000_003 + step))
    x = (x ^ shift_right(x, 30)) * signed(0xBF58476D1CE4E5B9)
    x = (x ^ shift_right(x, 27)) * signed(0x94D049BB133111EB)
    x = x ^ shift_right(x, 31)
    return shift_right(x, 11).to(torch.float64) / float(1 << 53)


class MiniBatches:
    """A pass over a shard split into `count` mini-batches, each spread over every chunk.

    Within a chunk of n points, position j of an affine permutation q = (a j + s) mod n
    (a coprime to n) belongs to mini-batch (j + r) mod count: every mini-batch takes about
    n / count points of every chunk, scattered over it, and the points of one mini-batch
    are enumerated by arithmetic alone (no per-point table). a, s and r come from
    (seed, chunk), so a mini-batch holds the same points whatever the number of ranks.
    """

    def __init__(self, shard: Shard, count: int, seed: int):
        self.shard, self.count = shard, count
        device = shard.device
        sizes = [math.prod(shape) for _, shape in shard.chunks]
        draws = (
            hashed_uniform(
                torch.tensor(shard.chunk_ids, dtype=torch.int64).repeat_interleave(3) * 3
                + torch.arange(3).repeat(len(sizes)),
                seed,
                -1,
            )
            .reshape(-1, 3)
            .tolist()
        )
        multipliers, shifts, rotations = [], [], []
        for n, (u_a, u_s, u_r) in zip(sizes, draws):
            a = max(1, int(n * (0.5 + 0.3 * u_a))) | 1
            while math.gcd(a, n) != 1:
                a += 1
            multipliers.append(a % n if n > 1 else 0)
            shifts.append(int(u_s * n))
            rotations.append(int(u_r * count))
        self._n = torch.tensor(sizes, dtype=torch.int64, device=device)
        self._a = torch.tensor(multipliers, dtype=torch.int64, device=device)
        self._s = torch.tensor(shifts, dtype=torch.int64, device=device)
        self._r = torch.tensor(rotations, dtype=torch.int64, device=device)
        self._offsets = shard._offsets[:-1]

    def points(self, index: int) -> torch.Tensor:
        """Local indices of mini-batch `index` on this shard."""
        first = (index - self._r) % self.count
        per_chunk = torch.clamp((self._n - first + self.count - 1) // self.count, min=0)
        chunk = torch.repeat_interleave(torch.arange(len(per_chunk), device=self._n.device), per_chunk)
        starts = torch.cumsum(per_chunk, 0) - per_chunk
        j = first[chunk] + self.count * (torch.arange(chunk.shape[0], device=self._n.device) - starts[chunk])
        return self._offsets[chunk] + (self._a[chunk] * j + self._s[chunk]) % self._n[chunk]


# What training's tables of a store's chunks hold in memory at start-up, a chunk (the chunk grid,
# the rank's share, its offsets and groups; measured: about 800 bytes).
TABLE_BYTES_PER_CHUNK = 1 << 10


def rank_chunk_ids(info: SignalInfo, rank: int, world_size: int, where: object = "the store") -> list[int]:
    """The positions in the C-order chunk grid of the chunks `rank` holds; refused (DintError
    naming `where`) before any table is built when the tables of the store's chunks do not fit
    in memory (a store may declare billions of chunks without storing them)."""
    count = math.prod(-(-n // c) for n, c in zip(info.shape, info.chunks))
    require_memory(
        count * TABLE_BYTES_PER_CHUNK,
        f"{where}: {'x'.join(map(str, info.shape))} points in chunks of {'x'.join(map(str, info.chunks))} make "
        f"{count:,} chunks: training's tables of them",
        share=local_ranks(),
        hint="shard the signal again with a larger --chunk",
    )
    grid = chunk_grid(info)
    return list(partition_chunks([math.prod(shape) for _, shape in grid], world_size)[rank])


class Shard:
    """Some chunks of a store in memory: storage-dtype values plus index arithmetic.

    A rank's whole share when it fits (`rank_chunk_ids`), or one group of it at a time
    when streaming (`ShardStream`).
    """

    def __init__(
        self,
        store: Store,
        chunk_ids: list[int],
        device: torch.device,
        info: SignalInfo | None = None,
        read: bool = True,
    ):
        info = info or store.info  # the trainer may override the coordinate domain
        self.info = info
        self.device = device
        grid = chunk_grid(info)
        self.chunk_ids = list(chunk_ids)  # positions in the store's C-order chunk grid
        self.chunks = [grid[i] for i in self.chunk_ids]
        ndim = info.ndim
        self._origins = torch.tensor([o for o, _ in self.chunks], dtype=torch.int64, device=device).reshape(-1, ndim)
        self._shapes = torch.tensor([s for _, s in self.chunks], dtype=torch.int64, device=device).reshape(-1, ndim)
        counts = self._shapes.prod(dim=1)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), counts.cumsum(0)])
        self._count = int(self._offsets[-1])
        self.values = None  # read=False: index arithmetic only (where a group's points are)
        if read:
            # Filled chunk by chunk, so loading never holds the shard twice.
            flat = np.empty((self._count, info.channels), dtype=info.dtype)
            for (origin, shape), start, stop in zip(
                self.chunks, self._offsets[:-1].tolist(), self._offsets[1:].tolist()
            ):
                flat[start:stop] = store.read_region(origin, shape).reshape(-1, info.channels)
            self.values = torch.from_numpy(flat).to(device)
        self._strides = torch.tensor(
            [math.prod(info.shape[d + 1 :]) for d in range(ndim)], dtype=torch.int64, device=device
        )
        self._chunk_side = torch.tensor(info.chunks, dtype=torch.int64, device=device)
        grid_shape = [math.ceil(size / side) for size, side in zip(info.shape, info.chunks)]
        self._grid_strides = torch.tensor(
            [math.prod(grid_shape[d + 1 :]) for d in range(ndim)], dtype=torch.int64, device=device
        )
        # chunk grid position -> this shard's chunk number (or -1), for global-to-local lookups
        self._slot_of_chunk = torch.full((math.prod(grid_shape),), -1, dtype=torch.int64, device=device)
        self._slot_of_chunk[torch.tensor(self.chunk_ids, dtype=torch.int64, device=device)] = torch.arange(
            len(self.chunk_ids), device=device
        )
        self.coordinates = CoordinateMap(info, device)
        self._ids: torch.Tensor | None = None  # every point's global index and coordinates, when cached
        self._coords: torch.Tensor | None = None

    def cache_points(self, max_bytes: int) -> bool:
        """Compute every point's global index and coordinates once, if they fit in `max_bytes`
        (8 + 4 x ndim bytes a point): selections and updates then look them up instead of
        rebuilding them from local indices at every step. The values are the same either way."""
        if self._count * (8 + 4 * self.info.ndim) > max_bytes or self._ids is not None:
            return self._ids is not None
        everything = torch.arange(self._count, device=self.device)
        self._ids, self._coords = self.global_index(everything), self.coords(everything)
        return True

    def __len__(self) -> int:
        return self._count

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
        if self._ids is not None:
            return self._ids[local]
        return (self.multi_index(local) * self._strides).sum(dim=1)

    def local_index(self, global_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(held, local): which of these global indices this shard holds, and where."""
        multi = torch.stack(
            [(global_index // stride) % size for stride, size in zip(self._strides.tolist(), self.info.shape)], dim=1
        )
        chunk_pos = multi // self._chunk_side
        slot = self._slot_of_chunk[(chunk_pos * self._grid_strides).sum(dim=1)]
        held = slot >= 0
        slot, multi = slot[held], multi[held]
        within = multi - self._origins[slot]
        shapes = self._shapes[slot]
        rel = torch.zeros_like(slot)
        for d in range(self.info.ndim):
            rel = rel * shapes[:, d] + within[:, d]
        return held, self._offsets[slot] + rel

    def coords(self, local: torch.Tensor) -> torch.Tensor:
        if self._coords is not None:
            return self._coords[local]
        return self.coordinates(self.multi_index(local))

    def targets(self, local: torch.Tensor) -> torch.Tensor:
        """Values of the points, mapped from the store's value range to [-1, 1]."""
        return to_training(self.values[local].to(torch.float32), self.info.value_range)

    def blocks(self, block_size: int) -> Iterator[torch.Tensor]:
        """Local indices in consecutive blocks of at most `block_size` points."""
        for start in range(0, len(self), block_size):
            yield torch.arange(start, min(start + block_size, len(self)), device=self.device)


def group_chunks(chunk_ids: list[int], info: SignalInfo, group_bytes: int) -> list[list[int]]:
    """Consecutive runs of chunks whose values fit `group_bytes` (at least one chunk each)."""
    grid = chunk_grid(info)
    point_bytes = info.channels * np.dtype(info.dtype).itemsize
    groups, current, size = [], [], 0
    for chunk_id in chunk_ids:
        chunk_bytes = math.prod(grid[chunk_id][1]) * point_bytes
        if current and size + chunk_bytes > group_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(chunk_id)
        size += chunk_bytes
    if current:
        groups.append(current)
    return groups


class ShardStream:
    """A rank's share read one group of chunks at a time, the next read in the background.

    At most three groups are in memory at once (the one the caller just let go, the one in
    use and the one being read), so the trainer sizes a group at a third of its budget.
    Iterating gives every group once, in order: a pass over the rank's points.
    """

    def __init__(self, store: Store, chunk_ids: list[int], device: torch.device, info: SignalInfo, group_bytes: int):
        self.store, self.device, self.info = store, device, info
        self.groups = group_chunks(chunk_ids, info, max(1, group_bytes))
        grid = chunk_grid(info)
        self.num_points = sum(math.prod(grid[i][1]) for i in chunk_ids)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[Shard]:
        return self.iter_from(0)

    def iter_from(self, first: int) -> Iterator[Shard]:
        """The groups from `first` on (a pass resumed in its middle starts there)."""
        from concurrent.futures import ThreadPoolExecutor

        if first >= len(self.groups):
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dint-prefetch") as reader:
            pending = reader.submit(Shard, self.store, self.groups[first], self.device, self.info)
            for index in range(first, len(self.groups)):
                current = pending.result()
                if index + 1 < len(self.groups):
                    pending = reader.submit(Shard, self.store, self.groups[index + 1], self.device, self.info)
                yield current
                del current
