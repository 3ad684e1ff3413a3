"""A multiresolution hash-grid field (Müller et al., instant-ngp, SIGGRAPH 2022), then a small MLP.

L levels of grids over the unit cube, from `base_resolution` vertices per axis to the finest
(by default the signal's own samples per axis, so the finest level's vertices sit on the
samples), growing geometrically. A level holds min(2^T, its vertex count) entries of F
features: a level whose grid fits its table is indexed directly, a finer one through
instant-ngp's spatial hash (the XOR of the vertex's coordinates times 1, 2654435761 and
805459861, modulo 2^T). A point's feature at a level is the d-linear interpolation of the
2^d vertices of its cell; the L levels' features, concatenated, go through the MLP.

All levels live in one table (levels one after another), so a forward is one gather of
n x 2^d x L rows; no Python loop runs over levels or corners (one runs over the 1 to 3 axes).
A point's gradient reaches only the 2^d entries of each level around it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dint.fields.siren import SineLayer

if TYPE_CHECKING:
    from dint.core.config import ModelConfig
    from dint.data.store import SignalInfo

PRIMES = (1, 2654435761, 805459861)  # instant-ngp's, one per axis
TABLE_INIT = 1e-4  # entries start uniform in (-1e-4, 1e-4), as instant-ngp's


def level_resolutions(levels: int, base: int, finest: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Vertices per axis of each level: from `base` to `finest[d]` along axis d, geometrically
    (rounded; the last level exactly the finest). An axis with fewer than `base` vertices at
    its finest keeps that count at every level; every axis has at least 2."""
    resolutions = []
    for level in range(levels):
        share = level / (levels - 1) if levels > 1 else 1.0
        per_axis = []
        for top in finest:
            top = max(2, top)
            low = min(base, top)
            per_axis.append(top if level == levels - 1 else max(2, round(low * (top / low) ** share)))
        resolutions.append(tuple(per_axis))
    return resolutions


class HashGrid(nn.Module):
    """Coordinates in `domain` (per axis [lo, hi]) to `out_features` values."""

    def __init__(
        self,
        domain: tuple[tuple[float, float], ...],
        out_features: int,
        finest: tuple[int, ...],
        levels: int = 16,
        table_size_log2: int = 19,
        features: int = 2,
        base_resolution: int = 16,
        mlp_width: int = 64,
        mlp_layers: int = 2,
        activation: str = "relu",
        w0: float = 30.0,
        table_lr_factor: float = 1.0,
    ):
        super().__init__()
        ndim = len(domain)
        if not 1 <= ndim <= len(PRIMES):
            raise ValueError(f"a hash grid has 1 to {len(PRIMES)} axes, not {ndim}")
        self.ndim, self.levels, self.features = ndim, levels, features
        self.table_lr_factor = table_lr_factor
        resolutions = level_resolutions(levels, base_resolution, finest)
        capacity = 1 << table_size_log2
        vertices = [math.prod(r) for r in resolutions]
        sizes = [min(capacity, v) for v in vertices]
        self.level_sizes = sizes
        self.table = nn.Parameter(torch.empty(sum(sizes), features).uniform_(-TABLE_INIT, TABLE_INIT))

        # Index arithmetic, derived from the sizes above: buffers that move with the model but are
        # not saved (the config rebuilds them).
        def buffer(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value, persistent=False)

        res = torch.tensor(resolutions, dtype=torch.int64)  # (L, d)
        # Resolutions grow with the level, so the directly indexed levels come first.
        self.direct_levels = sum(v <= capacity for v in vertices)
        # Positions in float64: a float32 position in a grid of 32768 cells would be off by up to
        # a thousandth of a cell.
        buffer("lo", torch.tensor([lo for lo, _ in domain], dtype=torch.float64))
        buffer("span", torch.tensor([hi - lo for lo, hi in domain], dtype=torch.float64))
        buffer("cells", (res - 1).T.to(torch.float64))  # (d, L) cells per axis
        buffer("last_cell", res.T - 2)  # a point on the upper edge lies in the last cell, at weight 1
        strides = torch.cumprod(torch.cat([torch.ones(levels, 1, dtype=torch.int64), res[:, :-1]], dim=1), dim=1)
        buffer("strides", strides.T.contiguous())  # (d, L): direct indexing, axis 0 fastest
        buffer("primes", torch.tensor(PRIMES[:ndim], dtype=torch.int64))
        buffer("hash_mask", torch.tensor(capacity - 1, dtype=torch.int64))
        buffer("offsets", torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0))  # (L,)

        act = nn.ReLU if activation == "relu" else None
        layers: list[nn.Module] = []
        fan_in = levels * features
        for _ in range(mlp_layers):
            layers.append(
                nn.Sequential(nn.Linear(fan_in, mlp_width), act()) if act else SineLayer(fan_in, mlp_width, w0, False)
            )
            fan_in = mlp_width
        self.mlp = nn.Sequential(*layers, nn.Linear(fan_in, out_features))

    def corner_indices_and_weights(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the table (n, 2^d, L) around each point and their d-linear weights (n, 2^d, L).

        Corner c has bit d set when it is the upper vertex along axis d. Everything is built
        per axis on (n, L) and combined over axes by broadcasting, a fraction of the work on
        all (n, 2^d, L, d) vertex coordinates; corners come before levels so that the
        interpolation sums whole rows of L features."""
        unit = ((coords.to(torch.float64) - self.lo) / self.span).clamp(0.0, 1.0)  # render may ask past the edges
        position = unit[:, :, None] * self.cells  # (n, d, L)
        cell = torch.minimum(position.floor().to(torch.int64), self.last_cell)
        frac = (position - cell).to(self.table.dtype)  # in [0, 1]: 1 only on the upper edge
        k = self.direct_levels
        direct = (cell[..., :k] * self.strides[:, :k]).sum(1)  # corner 0's row; corner c adds the strides of its bits
        steps = torch.stack([torch.zeros_like(self.strides[0, :k]), self.strides[0, :k]])  # (2, k)
        mixed = cell[..., k:] * self.primes[:, None]  # (n, d, L - k)
        hashed = torch.stack([mixed[:, 0], mixed[:, 0] + self.primes[0]], 1)  # (n, 2, L - k)
        weights = torch.stack([1.0 - frac[:, 0], frac[:, 0]], 1)  # (n, 2, L)
        for axis in range(1, self.ndim):  # the 2^axis corners so far, times the two along `axis`
            lower = mixed[:, axis, None, None]  # (n, 1, 1, L - k)
            hashed = (hashed[:, None] ^ torch.cat([lower, lower + self.primes[axis]], 1)).flatten(1, 2)
            pair = torch.stack([1.0 - frac[:, axis], frac[:, axis]], 1)[:, :, None]  # (n, 2, 1, L)
            weights = (weights[:, None] * pair).flatten(1, 2)
            step = torch.stack([torch.zeros_like(self.strides[axis, :k]), self.strides[axis, :k]])[:, None]
            steps = (steps[None] + step).flatten(0, 1)
        index = torch.empty(coords.shape[0], 1 << self.ndim, self.levels, dtype=torch.int64, device=coords.device)
        index[..., :k] = direct[:, None] + (steps + self.offsets[:k])
        index[..., k:] = (hashed & self.hash_mask) + self.offsets[k:]
        return index, weights

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """The concatenated level features (n, L F): one gather for every level and corner."""
        with torch.no_grad():  # coordinates are data: no gradient flows to them
            index, weights = self.corner_indices_and_weights(coords)
        rows = self.table.index_select(0, index.flatten()).view(*index.shape, self.features)
        return (rows * weights[..., None]).sum(1).flatten(1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(coords))

    def adam_settings(self, lr: float) -> dict:
        """Adam's groups and options (dint.train.engine): the MLP first, at the run's learning rate,
        then the table at lr x model.hash_table_lr_factor (a table at the MLP's rate fits far less
        in as many steps). Adam's own epsilon: instant-ngp's 1e-15 made no measurable difference.
        Fused: one pass over the whole table instead of one per tensor and operation, faster on a
        CPU for tables of millions of entries (benchmarks/2026-12-07-hash-grid.md)."""
        return {
            "params": [
                {"params": list(self.mlp.parameters()), "lr": lr},
                {"params": [self.table], "lr": lr * self.table_lr_factor},
            ],
            "fused": True,
        }


def finest_of(config: ModelConfig, info: SignalInfo) -> tuple[int, ...]:
    """model.hash_finest_resolution, or (0) the signal's samples per axis."""
    return tuple(config.hash_finest_resolution or n for n in info.shape)


def hashgrid_table_entries(config: ModelConfig, info: SignalInfo) -> int:
    resolutions = level_resolutions(config.hash_levels, config.hash_base_resolution, finest_of(config, info))
    return sum(min(1 << config.hash_table_size_log2, math.prod(r)) for r in resolutions)


def mlp_params(config: ModelConfig, info: SignalInfo) -> int:
    fan_in, total = config.hash_levels * config.hash_features, 0
    for _ in range(config.hash_mlp_layers):
        total += fan_in * config.hash_mlp_width + config.hash_mlp_width
        fan_in = config.hash_mlp_width
    return total + fan_in * info.channels + info.channels


def hashgrid_params(config: ModelConfig, info: SignalInfo) -> int:
    return hashgrid_table_entries(config, info) * config.hash_features + mlp_params(config, info)


def hashgrid_training_bytes(config: ModelConfig, info: SignalInfo, micro_batch: int) -> int:
    """Weights, gradients and Adam's two moments (4 floats a parameter: the table's gradient is
    dense), and per point of a micro-batch what the backward keeps: per level and corner an
    index, a weight and the F gathered features (8 + 4 + 4 F bytes), twice for the indexing's
    temporaries, and the MLP's activations (3 floats a neuron)."""
    corners = config.hash_levels * (1 << info.ndim)
    per_point = 2 * corners * (12 + 4 * config.hash_features) + 12 * config.hash_mlp_width * config.hash_mlp_layers
    return 16 * hashgrid_params(config, info) + micro_batch * per_point


def resolved_activation(config: ModelConfig, info: SignalInfo) -> str:
    """model.hash_activation, with auto resolved by modality: sine fitted audio best, ReLU the
    rest (benchmarks/2026-12-07-hash-grid.md)."""
    if config.hash_activation != "auto":
        return config.hash_activation
    return "sine" if info.modality == "audio" else "relu"


def build_hashgrid(config: ModelConfig, info: SignalInfo) -> HashGrid:
    return HashGrid(
        info.domain,
        info.channels,
        finest_of(config, info),
        levels=config.hash_levels,
        table_size_log2=config.hash_table_size_log2,
        features=config.hash_features,
        base_resolution=config.hash_base_resolution,
        mlp_width=config.hash_mlp_width,
        mlp_layers=config.hash_mlp_layers,
        activation=resolved_activation(config, info),
        w0=config.w0,
        table_lr_factor=config.hash_table_lr_factor,
    )
