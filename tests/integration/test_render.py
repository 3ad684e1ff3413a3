"""`dint render`: any scale or region of a trained model, as an OME-Zarr 0.5 pyramid, on 1 or 2 ranks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import run_cli, smooth_image, torchrun, write_png
from test_train import write_config

from dint.data.store import SignalInfo, default_chunks

UDUNITS_SPACE = {
    "angstrom",
    "attometer",
    "centimeter",
    "decimeter",
    "exameter",
    "femtometer",
    "foot",
    "gigameter",
    "hectometer",
    "inch",
    "kilometer",
    "megameter",
    "meter",
    "micrometer",
    "mile",
    "millimeter",
    "nanometer",
    "parsec",
    "petameter",
    "picometer",
    "terameter",
    "yard",
    "yoctometer",
    "yottameter",
    "zeptometer",
    "zettameter",
}
UDUNITS_TIME = {
    "attosecond",
    "centisecond",
    "day",
    "decisecond",
    "exasecond",
    "femtosecond",
    "gigasecond",
    "hectosecond",
    "hour",
    "kilosecond",
    "megasecond",
    "microsecond",
    "millisecond",
    "minute",
    "nanosecond",
    "petasecond",
    "picosecond",
    "second",
    "terasecond",
    "yoctosecond",
    "yottasecond",
    "zeptosecond",
    "zettasecond",
}
TYPE_ORDER = {"time": 0, "channel": 1, "space": 2}


def validate_ome_05(path: Path) -> dict:
    """Check a pyramid against the OME-Zarr 0.5 image rules (ngff.openmicroscopy.org/0.5, "axes",
    "multiscales", "coordinateTransformations"), plus what dint promises: each level halves the one
    above (ceil), its scale doubles and its translation keeps sample centres aligned. Returns "ome"."""
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    multiscales = ome["multiscales"]
    assert isinstance(multiscales, list) and multiscales
    for multiscale in multiscales:
        # strict_image.schema: name, type and metadata are required too
        assert isinstance(multiscale["name"], str) and multiscale["type"] and isinstance(multiscale["metadata"], dict)
        axes = multiscale["axes"]
        assert 2 <= len(axes) <= 5
        names = [a["name"] for a in axes]
        assert len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
        types = [a.get("type") for a in axes]
        assert all(t in TYPE_ORDER for t in types), types
        assert types.count("space") in (2, 3) and types.count("time") <= 1 and types.count("channel") <= 1
        assert [TYPE_ORDER[t] for t in types] == sorted(TYPE_ORDER[t] for t in types), "time, channel, then space"
        for axis in axes:
            if "unit" in axis:
                assert axis["unit"] in (UDUNITS_SPACE if axis["type"] == "space" else UDUNITS_TIME), axis
        datasets = multiscale["datasets"]
        assert datasets
        previous = None
        for dataset in datasets:
            array = group[dataset["path"]]
            assert isinstance(array, zarr.Array) and array.ndim == len(axes)
            assert list(array.metadata.dimension_names) == names
            transforms = dataset["coordinateTransformations"]
            kinds = [t["type"] for t in transforms]
            assert kinds in (["scale"], ["scale", "translation"]), kinds
            scale = transforms[0]["scale"]
            translation = transforms[1]["translation"] if len(transforms) == 2 else [0.0] * len(axes)
            assert len(scale) == len(axes) and len(translation) == len(axes)
            assert all(isinstance(v, (int, float)) and v > 0 for v in scale)
            if previous is not None:  # ordered from largest to smallest, each level half the one above
                shape0, scale0, translation0 = previous
                for d, kind in enumerate(types):
                    if kind != "space":
                        assert array.shape[d] == shape0[d] and scale[d] == scale0[d]
                    elif shape0[d] > 1:
                        assert array.shape[d] == math.ceil(shape0[d] / 2)
                        assert scale[d] == pytest.approx(2 * scale0[d])
                        # a mean of two samples sits half a sample of the level above after its first
                        assert translation[d] == pytest.approx(translation0[d] + scale0[d] / 2)
            previous = (array.shape, scale, translation)
    if "omero" in ome:
        channel_axis = types.index("channel")
        channels = ome["omero"]["channels"]
        assert len(channels) == group[datasets[0]["path"]].shape[channel_axis]
        assert all(re.fullmatch(r"[0-9A-Fa-f]{6}", c["color"]) for c in channels)
    return ome


def level(path: Path, index: int) -> np.ndarray:
    """A pyramid level, channels last (as the store and the training reconstruction hold it)."""
    return np.moveaxis(zarr.open_group(str(path), mode="r")[str(index)][...], 0, -1)


def render(run_dir: Path, out: Path, *args: str):
    result = run_cli("dint.commands.cli", "render", run_dir, "--out", out, *args)
    assert result.returncode == 0, result.stderr
    return result


def save_tiny_model(run_dir: Path, info: SignalInfo, width: int = 8, hidden_layers: int = 1, seed: int = 0) -> Path:
    """A run folder holding an untrained (random) SIREN for `info`: rendering needs no training."""
    from dint.core.config import Config
    from dint.fields.siren import Siren
    from dint.train.checkpoint import save_model

    torch.manual_seed(seed)
    model = Siren(info.ndim, info.channels, width, hidden_layers, 30.0, 30.0)
    config = Config()
    config.model.width, config.model.hidden_layers = width, hidden_layers
    run_dir.mkdir(parents=True)
    save_model(run_dir / "model.pt", model, config, info)
    return run_dir


def signal_info(modality: str, shape: tuple[int, ...], channels: int, dtype: str, value_range, **extra) -> SignalInfo:
    return SignalInfo(
        modality=modality,
        shape=shape,
        channels=channels,
        dtype=dtype,
        value_range=value_range,
        domain=tuple((-1.0, 1.0) for _ in shape),
        chunks=default_chunks(shape),
        source_name="generated",
        source_sha256="0" * 64,
        extra=extra,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 48x40 RGB image (chunks 16x16) trained 20 steps on one process, with its reconstruction.zarr."""
    tmp = tmp_path_factory.mktemp("trained")
    png = write_png(tmp / "rgb.png", smooth_image(48, 40, channels=3, seed=2))
    store = tmp / "rgb.zarr"
    assert run_cli("dint.commands.cli", "shard", png, store, "--chunk", "16").returncode == 0
    config = write_config(
        tmp / "c.toml", store, tmp / "run", train={"steps": 20}, eval={"every": 0}, metrics={"log_every": 10}
    )
    result = run_cli("dint.train", "--config", config)
    assert result.returncode == 0, result.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def renders(trained_run, tmp_path_factory) -> dict[str, Path]:
    """The trained model rendered at 1x (whole store), and at 2x over a region on one and on two ranks."""
    tmp = tmp_path_factory.mktemp("renders")
    (tmp / "one").mkdir()
    (tmp / "two").mkdir()
    region_args = ("--scale", "2", "--region", "10:30,8:24", "--chunk", "8", "--pyramid-top", "8")
    render(trained_run, tmp / "full.zarr", "--scale", "1")
    render(trained_run, tmp / "one" / "region.zarr", *region_args)
    two = torchrun(
        2, "-m", "dint.commands.cli", "render", trained_run, "--out", tmp / "two" / "region.zarr", *region_args
    )
    assert two.returncode == 0, two.stderr
    assert "2 rank(s)" in two.stdout
    return {"full": tmp / "full.zarr", "region": tmp / "one" / "region.zarr", "region_2": tmp / "two" / "region.zarr"}


def test_scale_1_level_0_is_the_training_reconstruction(trained_run, renders):
    from PIL import Image

    full = renders["full"]
    reconstruction = zarr.open_group(str(trained_run / "reconstruction.zarr"), mode="r")["values"][...]
    assert level(full, 0).dtype == np.uint8
    assert np.array_equal(level(full, 0), reconstruction)  # same coordinates, same chunks: bit for bit
    ome = validate_ome_05(full)
    multiscale = ome["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert len(multiscale["datasets"]) == 1  # 48x40 is already small: one level
    assert multiscale["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0]},
    ]
    # The "dint" attribute describes level 0 (channels last, as a dint store).
    from dint.data.pyramid import open_pyramid

    store = open_pyramid(full)
    assert store.info.shape == (48, 40) and store.info.channels == 3 and store.info.dtype == "uint8"
    assert store.info.domain == ((-1.0, 1.0), (-1.0, 1.0))
    assert np.array_equal(store.read_region((4, 5), (10, 11)), reconstruction[4:14, 5:16])
    # The preview, named after the output, is level 0 and the same picture as training's.
    preview = np.asarray(Image.open(full.with_suffix(".png")))
    assert preview.shape == (48, 40, 3)
    assert np.array_equal(preview, np.asarray(Image.open(trained_run / "reconstruction.png")))


def test_scale_2_region_lands_on_and_between_the_training_samples(renders):
    full, region = level(renders["full"], 0), level(renders["region"], 0)
    # Store rows 10..29 and columns 8..23 at twice the density: 2 * 19 + 1 by 2 * 15 + 1 samples.
    assert region.shape == (39, 31, 3)
    assert np.array_equal(region[::2, ::2], full[10:30, 8:24])  # the training samples themselves
    between = region[1::2, 1::2].astype(int)
    assert not np.array_equal(between, full[10:29, 8:23]) and not np.array_equal(between, full[11:30, 9:24])
    # Between-sample values lie near their four neighbours (the model is smooth at this scale).
    corners = np.stack([full[10:29, 8:23], full[11:30, 9:24], full[10:29, 9:24], full[11:30, 8:23]]).astype(int)
    assert np.median(np.abs(between - corners.mean(axis=0))) < 8

    ome = validate_ome_05(renders["region"])
    datasets = ome["multiscales"][0]["datasets"]
    group = zarr.open_group(str(renders["region"]), mode="r")
    assert [group[d["path"]].shape for d in datasets] == [(3, 39, 31), (3, 20, 16), (3, 10, 8), (3, 5, 4)]
    # In store sample units: level 0 samples every half sample from (10, 8); level 1 is 2x2 means.
    assert datasets[0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.5]},
        {"type": "translation", "translation": [0.0, 10.0, 8.0]},
    ]
    assert datasets[1]["coordinateTransformations"][1]["translation"] == [0.0, 10.25, 8.25]
    # Level 1: means of 2x2 blocks of level 0 (the odd last row and column: blocks of 2 and 1), rounded.
    means = np.array(
        [[region[i : i + 2, j : j + 2].reshape(-1, 3).mean(axis=0) for j in range(0, 31, 2)] for i in range(0, 39, 2)]
    )
    assert np.array_equal(level(renders["region"], 1), np.rint(means).astype(np.uint8))
    info = json.loads((renders["region"] / "zarr.json").read_text())["attributes"]["dint"]
    assert info["shape"] == [39, 31] and info["chunks"] == [8, 8]
    assert info["extra"]["render"]["region"] == [[10, 30], [8, 24]]
    assert info["domain"][0] == pytest.approx([-1 + 10 * 2 / 47, -1 + 29 * 2 / 47])


def test_two_ranks_write_the_same_pyramid_as_one(renders):
    one, two = renders["region"], renders["region_2"]
    a, b = zarr.open_group(str(one), mode="r"), zarr.open_group(str(two), mode="r")
    assert dict(a.attrs) == dict(b.attrs)
    for path in ("0", "1", "2", "3"):
        assert a[path].shape == b[path].shape and a[path].dtype == b[path].dtype
        assert np.array_equal(a[path][...], b[path][...]), path
    assert one.with_suffix(".png").read_bytes() == two.with_suffix(".png").read_bytes()
    assert not list(two.parent.glob(".*")), "no staging left behind"


def test_the_pyramid_validates_with_ome_zarr_models(renders):
    image = pytest.importorskip("ome_zarr_models.v05.image")
    for path in (renders["full"], renders["region"]):
        model = image.Image.from_zarr(zarr.open_group(str(path), mode="r"))
        assert [d.path for d in model.ome_attributes.multiscales[0].datasets] == zarr.open_group(
            str(path), mode="r"
        ).attrs["dint"]["extra"]["pyramid"]["paths"]


def test_scale_half_and_resolution_match_the_training_grid(trained_run, renders, tmp_path):
    full = level(renders["full"], 0)
    render(trained_run, tmp_path / "half.zarr", "--scale", "0.5")
    assert np.array_equal(level(tmp_path / "half.zarr", 0), full[::2, ::2])  # 24x20: every other sample
    # Explicit sizes span first to last sample: 95x79 is the 2x grid, whose even samples are the store's.
    render(trained_run, tmp_path / "sized.zarr", "--resolution", "95,79", "--region", "0:48,:")
    assert np.array_equal(level(tmp_path / "sized.zarr", 0)[::2, ::2], full)


def test_large_render_previews_a_coarser_level(tmp_path):
    from PIL import Image

    run = save_tiny_model(tmp_path / "run", signal_info("image", (103, 110), 3, "uint8", (0.0, 255.0)))
    out = tmp_path / "big.ome.zarr"
    render(run, out, "--scale", "10")  # 1021 x 1091
    ome = validate_ome_05(out)
    shapes = [zarr.open_group(str(out), mode="r")[d["path"]].shape for d in ome["multiscales"][0]["datasets"]]
    assert shapes == [(3, 1021, 1091), (3, 511, 546), (3, 256, 273)]
    preview = np.asarray(Image.open(tmp_path / "big.png"))  # X.ome.zarr -> X.png
    assert preview.shape == (511, 546, 3)  # the finest level whose largest side is <= 1024
    assert np.array_equal(preview, level(out, 1))


def test_volume_pyramid_has_zyx_axes_spacing_and_middle_slices(tmp_path):
    from PIL import Image

    info = signal_info("volume", (12, 16, 20), 1, "float32", (-1.0, 1.0), spacing=[2.0, 1.0, 0.5])
    run = save_tiny_model(tmp_path / "run", info)
    out = tmp_path / "vol.zarr"
    render(run, out, "--scale", "2", "--pyramid-top", "20", "--chunk", "8")
    ome = validate_ome_05(out)
    multiscale = ome["multiscales"][0]
    assert [(a["name"], a["type"]) for a in multiscale["axes"]] == [
        ("c", "channel"),
        ("z", "space"),
        ("y", "space"),
        ("x", "space"),
    ]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.5, 0.25]
    group = zarr.open_group(str(out), mode="r")
    assert [group[d["path"]].shape for d in multiscale["datasets"]] == [(1, 23, 31, 39), (1, 12, 16, 20)]
    assert group["0"].dtype == np.float32
    slices = np.asarray(Image.open(tmp_path / "vol_slices.png"))
    # (y, x), (z, x) and (z, y) middle planes of level 0 side by side, 2-pixel gaps.
    assert slices.shape == (31, 39 + 2 + 39 + 2 + 31 + 2)


def test_audio_gets_the_pyramid_without_ome_and_a_wav(tmp_path):
    from scipy.io import wavfile

    info = signal_info("audio", (1500,), 1, "int16", (-32768.0, 32767.0), sample_rate=8000)
    run = save_tiny_model(tmp_path / "run", info)
    out = tmp_path / "a.zarr"
    render(run, out)
    group = zarr.open_group(str(out), mode="r")
    assert "ome" not in group.attrs  # OME-Zarr images need 2 or 3 space axes
    assert [group[p].shape for p in group.attrs["dint"]["extra"]["pyramid"]["paths"]] == [(1, 1500), (1, 750), (1, 375)]
    rate, wave = wavfile.read(tmp_path / "a.wav")
    assert rate == 8000 and wave.dtype == np.int16 and np.array_equal(wave, group["0"][0])


def test_shape_gets_a_mesh(tmp_path):
    info = signal_info("shape", (12, 12, 12), 1, "uint8", (0.0, 1.0), field="occupancy")
    run = save_tiny_model(tmp_path / "run", info)
    render(run, tmp_path / "s.zarr")
    validate_ome_05(tmp_path / "s.zarr")
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["0"].dtype == np.float32
    assert (tmp_path / "s.ply").is_file()


def test_render_uses_the_training_domain_mapping(tmp_path):
    """A model trained with data.domain set (here anisotropic, off-centre) is evaluated where training
    put each store sample: the 2x grid's even samples are predict_region's (the trainer's) values."""
    import dataclasses

    from dint.fields.render import plan_grid, predict_region, render_pyramid, to_storage
    from dint.train.checkpoint import load_trained

    info = dataclasses.replace(
        signal_info("image", (30, 20), 2, "float32", (-2.0, 2.0)), domain=((-20.0, 4.0), (0.5, 1.5))
    )
    run = save_tiny_model(tmp_path / "run", info, width=16, hidden_layers=2)
    model, saved, _ = load_trained(run / "model.pt")
    assert saved.domain == info.domain
    grid = plan_grid(saved, scale=[2, 2], region=[(4, 19), (3, 20)])
    render_pyramid(model, saved, grid, tmp_path / "r.zarr", device=torch.device("cpu"), chunks=(7, 9))
    trained = to_storage(predict_region(model, saved, torch.device("cpu"), 4096, (4, 3), (15, 17)), saved)
    rendered = level(tmp_path / "r.zarr", 0)
    assert rendered.shape == (29, 33, 2)
    np.testing.assert_allclose(rendered[::2, ::2], trained, rtol=0, atol=1e-6)
    attrs = zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["dint"]
    assert attrs["domain"] == [
        pytest.approx([-20 + 4 * 24 / 29, -20 + 18 * 24 / 29]),
        pytest.approx([0.5 + 3 / 19, 0.5 + 19 / 19]),
    ]


def test_a_failed_render_leaves_the_previous_output_whole(tmp_path):
    from dint.fields.render import plan_grid, render_pyramid
    from dint.train.checkpoint import load_trained

    run = save_tiny_model(tmp_path / "run", signal_info("image", (40, 40), 1, "uint8", (0.0, 255.0)))
    model, info, _ = load_trained(run / "model.pt")
    dest = tmp_path / "out.zarr"
    grid = plan_grid(info, scale=[2, 2])
    render_pyramid(model, info, grid, dest, device=torch.device("cpu"), chunks=(16, 16), top_side=16)
    before = level(dest, 0)
    listing = sorted(p.name for p in tmp_path.iterdir())

    class Failing(torch.nn.Module):
        calls = 0

        def forward(self, coords):
            Failing.calls += 1
            if Failing.calls > 2:
                raise RuntimeError("device lost")
            return model(coords)

    with pytest.raises(RuntimeError, match="device lost"):
        render_pyramid(Failing(), info, grid, dest, device=torch.device("cpu"), chunks=(16, 16), top_side=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging, no half-written preview
    assert np.array_equal(level(dest, 0), before)


BAD_INPUTS = {
    "scale zero": ["--scale", "0"],
    "scale negative": ["--scale", "-2"],
    "scale not a number": ["--scale", "big"],
    "scale wrong axes": ["--scale", "1,2,3"],
    "scale and resolution": ["--scale", "2", "--resolution", "64"],
    "resolution zero": ["--resolution", "0"],
    "resolution wrong axes": ["--resolution", "5,5,5"],
    "region outside": ["--region", "0:49,0:40"],
    "region wrong axes": ["--region", "0:10"],
    "region empty": ["--region", "5:5,0:10"],
    "region malformed": ["--region", "a:b,0:10"],
    "chunk zero": ["--chunk", "0"],
    "pyramid top zero": ["--pyramid-top", "0"],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny") / "run", signal_info("image", (48, 40), 1, "uint8", (0.0, 255.0))
    )


@pytest.mark.parametrize("args", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_options_are_one_line_exit_2_and_write_nothing(tiny_run, tmp_path, args):
    from typer.testing import CliRunner

    from dint.commands.cli import app

    result = CliRunner().invoke(app, ["render", str(tiny_run), "--out", str(tmp_path / "out.zarr"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dint render: error: "), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_run_dir_and_out_are_one_line_exit_2(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("keep me")
    cases = [
        (tmp_path / "missing", tmp_path / "a.zarr", "run folder not found"),
        (tmp_path / "empty", tmp_path / "a.zarr", "no saved model"),
        (tiny_run, tmp_path / "no" / "a.zarr", "output folder does not exist"),
        (tiny_run, tmp_path / "notes.txt", "exists and is not a dint store or pyramid"),
        (tiny_run, tiny_run, "contains the model"),
    ]
    from typer.testing import CliRunner

    from dint.commands.cli import app

    for run_dir, out, message in cases:
        result = CliRunner().invoke(app, ["render", str(run_dir), "--out", str(out)])
        assert result.exit_code == 2, (message, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    # The same from a real process: exit status 2 and one line, no traceback.
    result = run_cli("dint.commands.cli", "render", tmp_path / "empty", "--out", tmp_path / "a.zarr")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tiny_run.iterdir()) == ["model.pt"]
