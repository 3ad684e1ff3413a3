"""Each modality trains with 2 real ranks, reports its metric, and writes its outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, torchrun
from test_train import write_config

from dint.core.config import MetricsConfig
from dint.data.store import SignalInfo, default_chunks, write_store


def make_store(path: Path, values: np.ndarray, modality: str, value_range, extra=None, chunk=None) -> Path:
    import dask.array as da

    shape = values.shape[:-1]
    info = SignalInfo(
        modality=modality,
        shape=shape,
        channels=values.shape[-1],
        dtype=str(values.dtype),
        value_range=value_range,
        domain=tuple((-1.0, 1.0) for _ in shape),
        chunks=default_chunks(shape, chunk),
        source_name="generated",
        source_sha256="0" * 64,
        extra=extra or {},
    )
    return write_store(da.from_array(values), info, path)


def audio_signal() -> np.ndarray:
    t = np.arange(4000) / 8000.0
    wave = 0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 530 * t + 1.0)
    return np.round(wave * 32767).astype(np.int16)[:, None]


def volume_signal() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 24, 24)), indexing="ij")
    return (np.sin(2 * x + y) * np.cos(3 * z - y) + 0.5 * x * z).astype(np.float32)[..., None]


def sphere_occupancy(r: int = 24) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, r),) * 3, indexing="ij")
    return ((x - 0.1) ** 2 + y**2 + (z + 0.1) ** 2 <= 0.55**2).astype(np.uint8)[..., None]


def train_two_ranks(tmp_path: Path, store: Path, steps: int, **sections) -> tuple[dict, list[dict]]:
    run_dir = tmp_path / "run"
    sections.setdefault("eval", {"every": steps // 4})
    sections.setdefault("metrics", {**dataclasses.asdict(MetricsConfig()), "log_every": steps // 4})  # every view
    config = write_config(tmp_path / "c.toml", store, run_dir, train={"steps": steps}, **sections)
    result = torchrun(2, "-m", "dint.train", "--config", config)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if r["psnr"] is not None]


def test_audio_trains_and_writes_a_wav(tmp_path):
    from scipy.io import wavfile

    store = make_store(
        tmp_path / "a.zarr", audio_signal(), "audio", (-32768.0, 32767.0), {"sample_rate": 8000}, chunk=1000
    )
    summary, evals = train_two_ranks(
        tmp_path, store, 200, data={"domain": [[-20.0, 20.0]]}, model={"width": 64, "hidden_layers": 3}
    )
    assert summary["modality"] == "audio"
    assert evals[-1]["psnr"] > evals[0]["psnr"] + 10, [e["psnr"] for e in evals]
    rate, wave = wavfile.read(tmp_path / "run" / "reconstruction.wav")
    assert rate == 8000 and wave.dtype == np.int16 and wave.shape == (4000,)
    reference = audio_signal()[:, 0] / 32768.0
    assert 10 * np.log10(4 / np.mean((wave / 32768.0 - reference) ** 2)) > 25
    # selection.png: the waveform above each strip of selected samples (2 samples a column here).
    layout = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert layout["bins"] == [2000] and layout["points_per_bin"] == 2
    maps = np.load(tmp_path / "run" / "selection.npz")
    for panel, counts in zip([p for p in layout["panels"] if p["kind"] == "selection"], maps["counts"]):
        assert panel["selected"] == panel["shown"] == counts.sum() == 800 and panel["mask_top"] > 0


def test_volume_trains_and_writes_store_and_slices(tmp_path):
    from PIL import Image

    values = volume_signal()
    store = make_store(
        tmp_path / "v.zarr",
        values,
        "volume",
        (float(values.min()), float(values.max())),
        {"spacing": [1.0, 1.0, 1.0]},
        chunk=8,
    )
    summary, evals = train_two_ranks(tmp_path, store, 120, model={"width": 32, "hidden_layers": 3})
    assert evals[-1]["psnr"] > evals[0]["psnr"] + 6, [e["psnr"] for e in evals]
    reconstruction = run_cli("dint.commands.cli", "info", tmp_path / "run" / "reconstruction.zarr", "--json")
    attrs = json.loads(reconstruction.stdout)
    assert attrs["modality"] == "volume" and attrs["shape"] == [20, 24, 24] and attrs["dtype"] == "float32"
    slices = np.asarray(Image.open(tmp_path / "run" / "reconstruction_slices.png"))
    assert slices.shape[0] == 24 and slices.std() > 10  # three slices side by side, not blank
    # selection.png shows the middle slice (z = 10 of 20): the selected points that lie in it.
    layout = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert layout["slice"] == {"axis 0": 10} and layout["bins"] == [24, 24]
    for panel in (p for p in layout["panels"] if p["kind"] == "selection"):
        assert 0 < panel["shown"] < panel["selected"]

    # Rendered again at twice the resolution, from model.pt alone.
    rendered = run_cli("dint.commands.cli", "render", tmp_path / "run", "--resolution", "40,48,48")
    assert rendered.returncode == 0, rendered.stderr
    import zarr

    # `dint render` writes an OME-Zarr pyramid: level 0 is array "0", channels first.
    again = np.moveaxis(
        zarr.open_group(str(tmp_path / "run" / "reconstruction_40x48x48.zarr"), mode="r")["0"][...], 0, -1
    )
    assert again.shape == (40, 48, 48, 1)
    native = zarr.open_group(str(tmp_path / "run" / "reconstruction.zarr"), mode="r")["values"][...]
    # Grid points shared by both grids (every other one of the finer grid in y, x) agree.
    coarse_y = np.linspace(-1, 1, 24)
    fine_y = np.linspace(-1, 1, 48)
    assert np.allclose(coarse_y[[0, -1]], fine_y[[0, -1]])
    assert np.allclose(again[0, 0, 0], native[0, 0, 0], atol=1e-5)
    assert np.allclose(again[-1, -1, -1], native[-1, -1, -1], atol=1e-5)


@pytest.mark.parametrize("field", ["occupancy", "sdf"])
def test_shape_trains_and_reports_iou(tmp_path, field):
    import trimesh

    occupancy = sphere_occupancy()
    if field == "occupancy":
        store = make_store(tmp_path / "s.zarr", occupancy, "shape", (0.0, 1.0), {"field": "occupancy"}, chunk=12)
    else:
        z, y, x = np.meshgrid(*(np.linspace(-1, 1, 24),) * 3, indexing="ij")
        sdf = (np.sqrt((x - 0.1) ** 2 + y**2 + (z + 0.1) ** 2) - 0.55).astype(np.float32)[..., None]
        store = make_store(
            tmp_path / "s.zarr", sdf, "shape", (float(sdf.min()), float(sdf.max())), {"field": "sdf"}, chunk=12
        )
    summary, evals = train_two_ranks(tmp_path, store, 120, model={"width": 32, "hidden_layers": 3}, eval={"every": 10})
    assert "iou" in summary and summary["iou"] == evals[-1]["iou"]
    # Boundary voxels are most of a 24^3 sphere, so an SDF fit's IoU is lower than occupancy's.
    assert summary["iou"] > (0.9 if field == "occupancy" else 0.7), [e["iou"] for e in evals]
    assert summary["iou"] > evals[0]["iou"] + 0.2, [e["iou"] for e in evals]
    # TensorBoard pictures the middle slice of the field at every evaluation.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    board.Reload()
    assert [e.step for e in board.Images("pictures/selection")] == list(range(10, 121, 10))
    assert [s.step for s in board.Scalars("quality/iou")] == list(range(10, 121, 10))
    mesh = trimesh.load(tmp_path / "run" / "reconstruction.ply")
    assert len(mesh.faces) > 100
    # The sphere of radius 0.55 centred at (0.1, 0, -0.1) in (x, y, z): the mesh sits there.
    assert np.allclose(mesh.vertices.mean(axis=0), [0.1, 0.0, -0.1], atol=0.05)
    assert np.allclose(np.linalg.norm(mesh.vertices - [0.1, 0.0, -0.1], axis=1).mean(), 0.55, atol=0.05)
