"""The mesh reader: occupancy and SDF grids of meshes, lazily by chunk, through the real CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_cli

from dint.core.errors import DintError
from dint.data.readers import ReadOptions, read_source
from dint.data.readers import mesh as mesh_reader
from dint.data.store import open_store


def grid_points(resolution: int) -> np.ndarray:
    """(R, R, R, 3) mesh coordinates (x, y, z) of the store's (z, y, x) grid."""
    x = -1 + 2 * np.arange(resolution) / (resolution - 1)
    z_, y_, x_ = np.meshgrid(x, x, x, indexing="ij")
    return np.stack([x_, y_, z_], axis=-1)


def grid_of(
    mesh: trimesh.Trimesh,
    tmp_path: Path,
    resolution: int,
    field: str = "occupancy",
    chunk=None,
    name: str = "shape.ply",
):
    path = tmp_path / name
    mesh.export(path)
    source = read_source(path, ReadOptions(resolution=resolution, field=field, chunk=chunk))
    return source, np.asarray(source.values.compute())[..., 0]


def test_sphere_occupancy_is_the_normalised_ball(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=4)  # radius 1, centred
    r = 48
    source, occ = grid_of(sphere, tmp_path, r)
    assert source.modality == "shape" and source.value_range == (0.0, 1.0) and occ.dtype == np.uint8
    scale = source.extra["normalisation"]["scale"]
    radius = scale  # the bounding box's longest side (about 2) maps to 1.8
    assert 0.9 <= radius <= 0.91
    cell = 2 / (r - 1)
    # Each grid point stands for one cell of volume: the count times cell^3 is the ball's volume.
    expected = 4 / 3 * math.pi * radius**3 / cell**3
    assert abs(occ.sum() - expected) < 0.01 * expected, (occ.sum(), expected)
    # Pointwise: every point clearly off the surface (the polyhedron is within 0.3% of the
    # sphere) is classified like the analytic ball.
    distance = np.linalg.norm(grid_points(r), axis=-1)
    clear = np.abs(distance - radius) > 0.01
    assert np.array_equal(occ[clear], (distance < radius)[clear].astype(np.uint8))
    assert source.extra["watertight"] is True and "warning" not in source.extra
    assert source.extra["vertices"] == len(sphere.vertices) and source.extra["faces"] == len(sphere.faces)


def test_off_centre_box_lands_where_the_normalisation_says(tmp_path):
    # A box 1.0 (x) by 0.5 (y) by 0.3 (z), centred at (3, -2, 5): x is the longest side.
    lo, hi = np.array([2.5, -2.25, 4.85]), np.array([3.5, -1.75, 5.15])
    box = trimesh.creation.box(bounds=[lo, hi])
    r = 40
    source, occ = grid_of(box, tmp_path, r)
    norm = source.extra["normalisation"]
    assert np.allclose(norm["center"], [3, -2, 5]) and math.isclose(norm["scale"], 1.8)
    half = (hi - lo) / 2 * 1.8  # normalised half extents: 0.9, 0.45, 0.27
    p = grid_points(r)
    inside = np.all(np.abs(p) < half, axis=-1)
    assert np.array_equal(occ, inside.astype(np.uint8))
    # The store's axes are (z, y, x): the longest extent is along the last array axis.
    filled = np.argwhere(occ)
    spans = filled.max(axis=0) - filled.min(axis=0)
    assert spans[2] > spans[1] > spans[0]
    # A corner maps back to the original coordinates with the stored center and scale.
    corner = p[tuple(filled.max(axis=0))]
    original = corner / norm["scale"] + np.array(norm["center"])
    assert np.all(original <= hi) and np.all(original > hi - 2 / (r - 1) / 1.8)


def test_sdf_sign_matches_occupancy_and_distance_matches_the_sphere(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=4)
    r = 40
    occ_source, occ = grid_of(sphere, tmp_path, r)
    source, sdf = grid_of(sphere, tmp_path, r, field="sdf")
    tau = mesh_reader.truncation(r)
    assert sdf.dtype == np.float32 and source.value_range == (-tau, tau)
    assert source.extra["sdf"]["truncation"] == tau
    assert np.array_equal(sdf < 0, occ == 1)
    radius = source.extra["normalisation"]["scale"]
    distance = np.abs(np.linalg.norm(grid_points(r), axis=-1) - radius)
    band = distance < tau - 0.01
    # The icosphere lies within 0.003 of the sphere: so does its distance field.
    assert np.abs(np.abs(sdf[band]) - distance[band]).max() < 0.004
    assert np.all(np.abs(sdf[distance > tau + 0.01]) == np.float32(tau))
    assert np.abs(sdf).max() <= tau


def test_open_mesh_is_flagged_and_still_mostly_right(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    # Cut a hole: drop the faces around the top.
    keep = sphere.triangles_center[:, 2] < 0.95
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[keep])
    assert not holed.is_watertight
    r = 32
    source, occ = grid_of(holed, tmp_path, r)
    assert source.extra["watertight"] is False and "not watertight" in source.extra["warning"]
    radius = source.extra["normalisation"]["scale"]
    distance = np.linalg.norm(grid_points(r), axis=-1)
    clear = np.abs(distance - radius) > 0.05
    agree = (occ[clear] == (distance < radius)[clear]).mean()
    assert agree > 0.995, agree


def test_scene_is_concatenated(tmp_path):
    scene = trimesh.Scene(
        [trimesh.creation.box(bounds=[[0, 0, 0], [1, 1, 1]]), trimesh.creation.box(bounds=[[2, 0, 0], [3, 1, 1]])]
    )
    path = tmp_path / "two.obj"
    scene.export(path)
    source = read_source(path, ReadOptions(resolution=31))
    occ = np.asarray(source.values.compute())[..., 0]
    assert source.extra["faces"] == 24
    # Two cubes along x with a gap between: two runs of filled points along the x axis.
    row = occ[15, 15, :]
    runs = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
    assert len(runs) == 4, row


def test_grid_is_lazy_and_chunked(tmp_path, monkeypatch):
    path = tmp_path / "ball.ply"
    trimesh.creation.icosphere(subdivisions=3).export(path)
    calls = []
    block = mesh_reader.MeshGrid.block

    def counting(self, index):
        calls.append((*(s.start // 16 for s in index[:3]), 0))
        return block(self, index)

    monkeypatch.setattr(mesh_reader.MeshGrid, "block", counting)
    source = read_source(path, ReadOptions(resolution=40, chunk=16))
    values = source.values
    assert calls == []  # reading built a graph, computed nothing
    assert values.shape == (40, 40, 40, 1) and values.numblocks == (3, 3, 3, 1)
    assert values.chunks[:3] == ((16, 16, 8),) * 3
    one = np.asarray(values.blocks[1, 2, 0, 0].compute())
    assert calls == [(1, 2, 0, 0)]
    whole = np.asarray(values.compute())
    assert len(calls) == 1 + 27
    assert np.array_equal(one, whole[16:32, 32:40, 0:16])


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl", ".off"])
def test_cli_round_trip(tmp_path, suffix):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    src = tmp_path / f"ball{suffix}"
    sphere.export(src)
    dest = tmp_path / "ball.zarr"
    result = run_cli("dint.commands.cli", "shard", src, dest, "--resolution", "32")
    assert result.returncode == 0, result.stderr
    store = open_store(dest)
    info = store.info
    assert info.modality == "shape" and info.shape == (32, 32, 32) and info.channels == 1
    assert info.dtype == "uint8" and info.value_range == (0.0, 1.0)
    assert info.domain == ((-1.0, 1.0),) * 3 and info.chunks == (32, 32, 32)
    extra = info.extra
    assert extra["field"] == "occupancy" and extra["resolution"] == 32 and extra["watertight"] is True
    assert extra["vertices"] == len(sphere.vertices) and extra["faces"] == len(sphere.faces)
    assert set(extra["normalisation"]) >= {"center", "scale"}
    values = np.asarray(store.values[...])
    assert values.shape == (32, 32, 32, 1)
    radius = extra["normalisation"]["scale"]
    distance = np.linalg.norm(grid_points(32), axis=-1)
    clear = np.abs(distance - radius) > 0.03
    assert np.array_equal(values[..., 0][clear], (distance < radius)[clear].astype(np.uint8))


def test_cli_sdf(tmp_path):
    src = tmp_path / "ball.off"
    trimesh.creation.icosphere(subdivisions=3).export(src)
    dest = tmp_path / "sdf.zarr"
    result = run_cli("dint.commands.cli", "shard", src, dest, "--resolution", "24", "--field", "sdf")
    assert result.returncode == 0, result.stderr
    store = open_store(dest)
    tau = mesh_reader.truncation(24)
    assert store.info.dtype == "float32" and store.info.value_range == (-tau, tau)
    assert store.info.extra["field"] == "sdf" and store.info.extra["sdf"]["truncation"] == tau
    values = np.asarray(store.values[...])
    assert values.min() < 0 < values.max() and np.abs(values).max() <= tau


def _point_cloud(path: Path) -> None:
    trimesh.PointCloud(np.random.default_rng(0).uniform(size=(50, 3))).export(path)


def _text_obj(path: Path) -> None:
    path.write_text("this is not a mesh\njust some words\n")


def _truncated_binary_ply(path: Path) -> None:
    data = trimesh.exchange.ply.export_ply(trimesh.creation.icosphere(2), encoding="binary")
    path.write_bytes(data[: len(data) * 2 // 3])


def _empty_stl(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "name, make, says",
    [
        ("cloud.ply", _point_cloud, "no faces"),
        ("words.obj", _text_obj, "no vertices and no faces"),
        ("cut.ply", _truncated_binary_ply, "PLY"),
        ("empty.stl", _empty_stl, "empty"),
    ],
)
def test_cli_bad_mesh_is_one_line(tmp_path, name, make, says):
    src = tmp_path / name
    make(src)
    dest = tmp_path / "out.zarr"
    result = run_cli("dint.commands.cli", "shard", src, dest, "--resolution", "16")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(src) in lines[0] and says in lines[0] and "Traceback" not in result.stderr
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary store left


def test_truncated_text_formats_are_caught(tmp_path):
    ply = tmp_path / "cut.ply"
    text = trimesh.exchange.ply.export_ply(trimesh.creation.icosphere(2), encoding="ascii")
    ply.write_bytes(text[: int(len(text) * 0.95)])
    with pytest.raises(DintError, match=r"cut\.ply: truncated or corrupt: the header promises 320 faces"):
        mesh_reader.load_mesh(ply)
    stl = tmp_path / "cut.stl"
    data = trimesh.exchange.stl.export_stl(trimesh.creation.icosphere(2))
    stl.write_bytes(data[:-20])
    with pytest.raises(DintError, match=r"cut\.stl: not a valid STL"):
        mesh_reader.load_mesh(stl)


def test_armadillo_matches_trimesh_contains(shared_data):
    pytest.importorskip("rtree", reason="trimesh's contains needs rtree")
    path = shared_data / "meshes" / "armadillo.obj"
    r = 64
    source = read_source(path, ReadOptions(resolution=r))
    occ = np.asarray(source.values.compute())[..., 0]
    assert source.extra["watertight"] is True
    fraction = occ.mean()
    assert 0.02 < fraction < 0.15, fraction
    mesh = trimesh.load(path, force="mesh")
    norm = source.extra["normalisation"]
    # trimesh's contains takes ~15 ms a point here: 300 points, half of them inside, and the
    # outside half from the occupied bounding box (where the shape's concavities are).
    rng = np.random.default_rng(0)
    filled = np.argwhere(occ == 1)
    lo, hi = filled.min(axis=0), filled.max(axis=0) + 1
    box = np.argwhere(occ[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] == 0) + lo
    index = np.concatenate(
        [filled[rng.choice(len(filled), 150, replace=False)], box[rng.choice(len(box), 150, replace=False)]]
    )
    points = grid_points(r)[tuple(index.T)] / norm["scale"] + np.array(norm["center"])
    agree = (mesh.contains(points) == occ[tuple(index.T)].astype(bool)).mean()
    assert agree >= 0.99, agree
