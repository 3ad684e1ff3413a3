"""The hash-grid field (dint.fields.hashgrid) against a direct per-point computation: level
resolutions, corner indices (direct and hashed), d-linear weights and the encoded features, in
1, 2 and 3 dimensions, on random points, cell borders and the domain's edges; its gradient
against finite differences; its Adam groups; the field chosen by model.field."""

from __future__ import annotations

import math

import pytest
import torch

from dint.core.config import ModelConfig
from dint.fields.hashgrid import PRIMES, HashGrid, level_resolutions
from dint.fields.model import build_model, parameter_count, structure, training_bytes


def reference_rows(point: list[float], domain, resolutions, capacity: int) -> list[list[tuple[int, float]]]:
    """Per level, (table row, weight) of each of the 2^d corners, computed point by point with
    Python's integers and floats: instant-ngp's encoding written out."""
    d = len(point)
    unit = [min(1.0, max(0.0, (x - lo) / (hi - lo))) for x, (lo, hi) in zip(point, domain)]
    levels, offset = [], 0
    for res in resolutions:
        vertices = math.prod(res)
        size = min(capacity, vertices)
        cells = [min(math.floor(u * (r - 1)), r - 2) for u, r in zip(unit, res)]
        fracs = [u * (r - 1) - c for u, r, c in zip(unit, res, cells)]
        corners = []
        for corner in range(1 << d):
            bits = [(corner >> axis) & 1 for axis in range(d)]
            vertex = [c + b for c, b in zip(cells, bits)]
            if vertices <= capacity:  # the grid fits: row-major with axis 0 fastest
                row = sum(v * math.prod(res[:axis]) for axis, v in enumerate(vertex))
            else:
                row = 0
                for axis, v in enumerate(vertex):
                    row ^= (v * PRIMES[axis]) & 0xFFFFFFFF  # instant-ngp's uint32 arithmetic
                row %= capacity
            weight = math.prod(f if b else 1.0 - f for f, b in zip(fracs, bits))
            corners.append((offset + row, weight))
        levels.append(corners)
        offset += size
    return levels


def points_for(domain, resolutions, count: int, seed: int) -> torch.Tensor:
    """Random points, points on the cell borders of every level, the domain's corners and edges,
    and two points outside the domain (clamped onto its edges)."""
    generator = torch.Generator().manual_seed(seed)
    lo = torch.tensor([a for a, _ in domain], dtype=torch.float64)
    span = torch.tensor([b - a for a, b in domain], dtype=torch.float64)
    units = [torch.rand(count, len(domain), generator=generator, dtype=torch.float64)]
    for res in resolutions:  # a vertex of the level along every axis: a border between two cells
        picks = torch.stack([torch.randint(0, r, (4,), generator=generator) / (r - 1) for r in res], dim=1)
        units.append(picks.to(torch.float64))
    corners = torch.tensor([[(c >> a) & 1 for a in range(len(domain))] for c in range(1 << len(domain))])
    units += [corners.to(torch.float64), torch.full((1, len(domain)), 0.5)]
    units += [torch.full((1, len(domain)), -0.25), torch.full((1, len(domain)), 1.25)]
    return (lo + torch.cat(units) * span).to(torch.float32)


CASES = [  # (domain, finest, levels, log2 table, base)
    (((-100.0, 100.0),), (5000,), 6, 10, 16),
    (((-1.0, 1.0), (-1.0, 1.0)), (300, 200), 5, 12, 8),
    (((-1.0, 1.0), (0.0, 3.0), (-2.0, 0.5)), (40, 33, 50), 4, 11, 4),
]


@pytest.mark.parametrize("domain, finest, levels, log2, base", CASES, ids=["1d", "2d", "3d"])
def test_indices_weights_and_features_equal_a_direct_computation(domain, finest, levels, log2, base):
    torch.manual_seed(0)
    grid = HashGrid(domain, 1, finest, levels=levels, table_size_log2=log2, features=3, base_resolution=base)
    resolutions = level_resolutions(levels, base, finest)
    vertices = [math.prod(r) for r in resolutions]
    assert any(v <= 1 << log2 for v in vertices) and any(v > 1 << log2 for v in vertices)  # both kinds of level
    points = points_for(domain, resolutions, 200, seed=len(domain))
    index, weights = grid.corner_indices_and_weights(points)
    assert index.shape == weights.shape == (points.shape[0], 1 << len(domain), levels)
    table = grid.table.detach().double()
    encoded = grid.encode(points).detach()
    for n, point in enumerate(points.double().tolist()):
        expected = reference_rows(point, domain, resolutions, 1 << log2)
        for level, corners in enumerate(expected):
            rows = [row for row, _ in corners]
            assert index[n, :, level].tolist() == rows, (n, level)
            assert weights[n, :, level].double().tolist() == pytest.approx([w for _, w in corners], abs=1e-6)
            feature = sum(w * table[row] for row, w in corners)
            torch.testing.assert_close(encoded[n, level * 3 : level * 3 + 3].double(), feature, atol=1e-9, rtol=1e-5)
    assert weights.sum(1).sub(1).abs().max() < 1e-5  # a partition of unity at every level


def test_the_finest_level_has_a_vertex_on_every_sample_and_reproduces_it():
    """With the signal's own resolution (the default), a sample's coordinate (CoordinateMap:
    sample 0 at lo, sample n-1 at hi) falls on a vertex: its finest-level weight is one corner's."""
    domain, shape = ((-1.0, 1.0), (-1.0, 1.0)), (7, 5)
    grid = HashGrid(domain, 1, shape, levels=3, table_size_log2=8, base_resolution=2)
    ii, jj = torch.meshgrid(torch.arange(7), torch.arange(5), indexing="ij")
    coords = torch.stack([-1 + ii.flatten() * 2 / 6, -1 + jj.flatten() * 2 / 4], 1).float()
    _, weights = grid.corner_indices_and_weights(coords)
    assert torch.allclose(weights[:, :, -1].max(1).values, torch.ones(35), atol=1e-5)


def test_level_resolutions_grow_geometrically_from_base_to_finest():
    assert level_resolutions(5, 16, (256,)) == [(16,), (32,), (64,), (128,), (256,)]
    assert level_resolutions(1, 16, (100, 80)) == [(100, 80)]
    # An axis shorter than the base keeps its length at every level; none has fewer than 2 vertices.
    assert level_resolutions(3, 16, (1000, 8, 1)) == [(16, 8, 2), (126, 8, 2), (1000, 8, 2)]


@pytest.mark.parametrize("activation", ["relu", "sine"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradient_matches_finite_differences(ndim, activation):
    torch.manual_seed(1)
    domain = tuple((-1.0, 1.0) for _ in range(ndim))
    grid = HashGrid(
        domain, 2, (9,) * ndim, levels=3, table_size_log2=5, base_resolution=3, mlp_width=8, activation=activation
    )
    grid.mlp.double()
    coords = torch.rand(6, ndim) * 2 - 1
    table = (torch.randn_like(grid.table, dtype=torch.float64) * 0.5).requires_grad_()

    def output(table: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(grid, {"table": table}, (coords,))

    assert torch.autograd.gradcheck(output, (table,), eps=1e-6, atol=1e-7)
    # A point's gradient reaches only the rows of its cells: 2^d per level at most.
    output(table)[0].sum().backward()
    touched = (table.grad.abs().sum(1) > 0).sum().item()
    assert 0 < touched <= 3 * (1 << ndim)


def test_adam_settings_put_the_table_in_a_group_of_its_own():
    grid = HashGrid(((-1.0, 1.0),), 1, (64,), levels=2, table_size_log2=4, table_lr_factor=10.0)
    settings = grid.adam_settings(1e-3)
    optimizer = torch.optim.Adam(**{"params": grid.parameters(), "lr": 1e-3, **settings})
    mlp, table = optimizer.param_groups
    assert (mlp["lr"], table["lr"]) == (1e-3, pytest.approx(1e-2)) and table["params"] == [grid.table]
    assert mlp["fused"] and table["fused"]
    assert len(mlp["params"]) + 1 == len(list(grid.parameters()))
    assert grid.table.abs().max() <= 1e-4  # instant-ngp's initialisation


def test_model_field_chooses_the_model_and_its_size():
    info = type("Info", (), {"ndim": 2, "channels": 3, "shape": (512, 384), "domain": ((-1, 1), (-1, 1))})()
    info.modality = "image"
    siren = build_model(ModelConfig(width=32, hidden_layers=2), info)
    assert siren.__class__.__name__ == "Siren"
    config = ModelConfig(field="hashgrid", hash_levels=8, hash_table_size_log2=14, hash_features=4)
    grid = build_model(config, info)
    assert isinstance(grid, HashGrid)
    assert parameter_count(config, info) == sum(p.numel() for p in grid.parameters())
    assert sum(grid.level_sizes) * 4 == grid.table.numel() and max(grid.level_sizes) == 1 << 14
    # 16 bytes a parameter (weights, gradients, Adam's two moments) and the micro-batch's share.
    assert training_bytes(config, info, 0) == 16 * parameter_count(config, info)
    assert training_bytes(config, info, 1000) > training_bytes(config, info, 0)
    assert structure(config, info)["hash_activation"] == "relu"
    assert structure(config, info) != structure(ModelConfig(field="hashgrid", hash_features=4), info)
    info.modality = "audio"
    assert structure(config, info)["hash_activation"] == "sine"
    # State dicts hold the table and the MLP only: the index arithmetic is rebuilt from the config.
    assert set(grid.state_dict()) == {"table"} | {f"mlp.{k}" for k in grid.mlp.state_dict()}


def test_the_field_compiles_whole_and_gives_the_eager_values():
    """model.compile = auto compiles on CUDA: the forward traces as one graph (no break), whatever
    the number of points (dynamic shapes), and computes what the eager forward does."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    grid = HashGrid(((-1.0, 1.0), (0.0, 2.0)), 3, (64, 48), levels=6, table_size_log2=10)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(grid, backend="aot_eager", dynamic=True)
    for n in (100, 1000, 333):
        coords = torch.rand(n, 2) * torch.tensor([2.0, 2.0]) - torch.tensor([1.0, 0.0])
        torch.testing.assert_close(compiled(coords), grid(coords), rtol=0, atol=0)
    assert not counters["graph_break"], dict(counters["graph_break"])
