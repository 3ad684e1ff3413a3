"""Inputs larger than memory: tiled TIFFs, .npy memory maps, folders of tiles, and the large-signal tool.

The out-of-core tests run the real dint-shard in a subprocess whose data segment is capped
(RLIMIT_DATA: heap and private anonymous memory, what reading an array whole needs) below
the input's size, show in the same test that reading the input whole under that cap fails,
and compare the store with the input block by block, so the test's own memory stays small.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr
from conftest import REPO, _env
from PIL import Image
from typer.testing import CliRunner

from dint.commands.cli import app
from dint.data.store import open_store

sys.path.insert(0, str(REPO / "tools"))
import make_large_signal  # noqa: E402

# The capped processes' data segment: dint-shard of these inputs runs in ~224 MiB (Python, numpy, dask,
# zarr, their threads' stacks and the blocks in flight), so this leaves a margin; the inputs exceed it.
CAP = 288 << 20
TILE = 512


def capped(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python args...` in a fresh process whose data segment is capped at CAP."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=_env(),
        preexec_fn=limit,
    )


def pattern(rows: slice, cols: slice, channels: int, dtype) -> np.ndarray:
    """A deterministic, not too regular test image, computed region by region."""
    y = np.arange(rows.start, rows.stop, dtype=np.int64)[:, None, None]
    x = np.arange(cols.start, cols.stop, dtype=np.int64)[None, :, None]
    c = np.arange(channels, dtype=np.int64)[None, None, :]
    top = np.iinfo(dtype).max
    return ((y * 31 + x * 7 + c * 101 + (x * y >> 5)) % (top + 1)).astype(dtype)


def assert_same_blocks(store: Path, read, shape: tuple[int, ...], rows: int = 1024) -> None:
    """The store holds exactly what `read(row_slice)` gives, compared in strips of `rows` rows."""
    values = open_store(store).values
    assert values.shape == shape
    for start in range(0, shape[0], rows):
        strip = slice(start, min(start + rows, shape[0]))
        np.testing.assert_array_equal(values[strip], read(strip))


def shard_in_process(src, dest, *options) -> None:
    result = CliRunner().invoke(app, ["shard", str(src), str(dest), *map(str, options)])
    assert result.exit_code == 0, (result.output, result.exception)


# Out of core, under a memory cap


def test_tiled_rgb_tiff_larger_than_the_memory_cap(tmp_path):
    import tifffile

    height, width, channels = 10000, 11000, 3  # 330 MB of RGB pixels, edge tiles partial
    src = tmp_path / "big.tif"

    noise = np.random.default_rng(0).integers(0, 256, size=(TILE, TILE, channels), dtype=np.uint8)

    def tiles():  # edge tiles run past the image: TIFF tiles are whole, the excess is cut on reading
        for r in range(0, height, TILE):
            for c in range(0, width, TILE):
                yield noise + np.uint8((r * 17 + c * 29) % 256)  # a different tile at every position

    tifffile.imwrite(
        src,
        tiles(),
        shape=(height, width, channels),
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        bigtiff=True,
    )
    assert src.stat().st_size > CAP
    whole = capped("-c", f"import tifffile; tifffile.imread({str(src)!r})")
    assert whole.returncode != 0 and "MemoryError" in whole.stderr  # the cap bites

    dest = tmp_path / "big.zarr"
    result = capped("-m", "dint.commands.cli", "shard", src, dest)
    assert result.returncode == 0, result.stderr
    assert open_store(dest).info.modality == "image"
    source = zarr.open(tifffile.imread(src, aszarr=True), mode="r")
    assert_same_blocks(dest, lambda rows: source[rows], (height, width, channels))


def test_npy_memory_map_image_larger_than_the_memory_cap(tmp_path):
    height, width = 12000, 13000  # 312 MB of uint16
    src = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(src, mode="w+", dtype=np.uint16, shape=(height, width))
    noise = np.random.default_rng(0).integers(0, 65536, size=(1000, width), dtype=np.uint16)
    for start in range(0, height, 1000):
        array[start : start + 1000] = noise + np.uint16(start * 3)  # a different strip at every position
    array.flush()
    del array
    assert src.stat().st_size > CAP
    whole = capped("-c", f"import numpy; numpy.load({str(src)!r})")
    assert whole.returncode != 0 and "MemoryError" in whole.stderr  # the cap bites

    dest = tmp_path / "big.zarr"
    result = capped("-m", "dint.commands.cli", "shard", src, dest, "--modality", "image", "--chunk", "512")
    assert result.returncode == 0, result.stderr
    info = open_store(dest).info
    assert (info.modality, info.shape, info.channels, info.dtype, info.chunks) == (
        "image",
        (height, width),
        1,
        "uint16",
        (512, 512),
    )
    source = np.load(src, mmap_mode="r")
    assert_same_blocks(dest, lambda rows: source[rows][..., None], (height, width, 1))


def test_pyramidal_tiff_reads_its_full_resolution_level_in_tile_aligned_blocks(tmp_path):
    import tifffile

    from dint.data.readers import read_source

    image = pattern(slice(0, 700), slice(0, 900), 3, np.uint8)
    with tifffile.TiffWriter(tmp_path / "pyramid.tif", bigtiff=True) as tif:
        tif.write(image, tile=(128, 128), photometric="rgb", compression="zlib", subifds=2)
        tif.write(image[::2, ::2], tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1)
        tif.write(image[::4, ::4], tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1)
    with tifffile.TiffFile(tmp_path / "pyramid.tif") as tif:
        assert len(tif.series[0].levels) == 3
    values = read_source(tmp_path / "pyramid.tif").values
    assert values.shape == (700, 900, 3) and values.chunks[0][:2] == (256, 256)  # whole TIFF tiles per block
    shard_in_process(tmp_path / "pyramid.tif", tmp_path / "pyramid.zarr")
    np.testing.assert_array_equal(open_store(tmp_path / "pyramid.zarr").values[:], image)


# Folders of tiles


def write_tiles(
    folder: Path, image: np.ndarray, tile: tuple[int, int], name: str = "tile_{r}_{c}.png", start: int = 0
) -> None:
    folder.mkdir()
    for r, top in enumerate(range(0, image.shape[0], tile[0]), start):
        for c, left in enumerate(range(0, image.shape[1], tile[1]), start):
            block = image[top : top + tile[0], left : left + tile[1]]
            path = folder / name.format(r=r, c=c)
            if path.suffix == ".tif":
                import tifffile

                tifffile.imwrite(path, block)
            else:
                Image.fromarray(block[..., 0] if block.shape[2] == 1 else block).save(path)


def test_tile_folder_round_trip(tmp_path):
    image = pattern(slice(0, 300), slice(0, 410), 3, np.uint8)
    write_tiles(tmp_path / "rgb", image, (128, 96))  # 3x5 tiles, the last row 44 high, the last column 26 wide
    (tmp_path / "rgb" / "README.txt").write_text("not a tile: ignored")
    shard_in_process(tmp_path / "rgb", tmp_path / "rgb.zarr", "--chunk", "100")
    store = open_store(tmp_path / "rgb.zarr")
    np.testing.assert_array_equal(store.values[:], image)
    assert store.info.modality == "image" and store.info.extra["tiles"] == {"grid": [3, 5], "size": [128, 96]}

    # 16-bit grey TIFF tiles, zero-padded numbers from 1 (as gdal_retile writes them), another prefix.
    grey = pattern(slice(0, 200), slice(0, 256), 1, np.uint16)
    write_tiles(tmp_path / "grey", grey, (64, 128), name="scan_r{r:03d}_{c:03d}.tif", start=1)
    shard_in_process(tmp_path / "grey", tmp_path / "grey.zarr")
    store = open_store(tmp_path / "grey.zarr")
    assert store.info.dtype == "uint16" and store.info.value_range == (0.0, 65535.0)
    np.testing.assert_array_equal(store.values[:], grey)


def test_bad_tiles_exit_2_with_one_line_naming_the_tile(tmp_path):
    image = pattern(slice(0, 256), slice(0, 384), 1, np.uint8)
    cases = {}

    def case(name: str, bad_tile: str, spoil) -> None:
        write_tiles(tmp_path / name, image, (128, 128))
        spoil(tmp_path / name / bad_tile)
        cases[name] = bad_tile

    case("size", "tile_1_1.png", lambda p: Image.fromarray(image[:100, :128, 0]).save(p))
    case("format", "tile_0_2.png", lambda p: Image.fromarray(np.repeat(image[:128, :128], 3, axis=2)).save(p))
    case("missing", "tile_1_0.png", lambda p: p.unlink())
    # A truncated tile passes the header checks and fails only when its block is written.
    case("truncated", "tile_1_2.png", lambda p: p.write_bytes(p.read_bytes()[:200]))
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dint.commands.cli", "shard", tmp_path / name, tmp_path / f"{name}.zarr"],
            cwd=REPO,
            env=_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in cases
    }
    errors = {}
    for name, process in processes.items():
        _, stderr = errors[name] = process.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert process.returncode == 2, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("dint-shard: error: "), (name, stderr)
        if name == "missing":
            assert "row 1, column 0 is missing" in lines[0]
        else:
            assert str(tmp_path / name / cases[name]) in lines[0], (name, lines[0])
        assert not (tmp_path / f"{name}.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary store left
    assert "tile is 100x128 pixels (height x width), expected 128x128" in errors["size"][1]
    assert "pixel format PNG RGB 8-bit differs from the other tiles' PNG L 8-bit" in errors["format"][1]


# tools/make_large_signal.py


def test_make_large_signal_tiles_and_mirrors_an_image(tmp_path):
    source = pattern(slice(0, 100), slice(0, 70), 3, np.uint8)
    Image.fromarray(source).save(tmp_path / "small.png")
    dest = tmp_path / "large.zarr"
    assert make_large_signal.main(["image", "--source", str(tmp_path / "small.png"), "--size", "1024", str(dest)]) == 0
    store = open_store(dest)
    info = store.info
    assert (info.modality, info.shape, info.channels, info.dtype) == ("image", (1024, 1024), 3, "uint8")
    assert info.source_name == "small.png tiled+mirrored to 1024x1024"
    expected = {
        (0, 0): source,
        (0, 1): source[:, ::-1],
        (1, 0): source[::-1],
        (1, 1): source[::-1, ::-1],
        (4, 7): source[:, ::-1],
        (5, 13): source[::-1, ::-1],
        (10, 14): source[:24, :44],
    }
    for (i, j), tile in expected.items():  # whole tiles in every mirroring, and the bottom-right corner
        np.testing.assert_array_equal(store.values[i * 100 : (i + 1) * 100, j * 70 : (j + 1) * 70], tile)
    # All of it: np.pad's "symmetric" mode reflects again and again past the source's size.
    np.testing.assert_array_equal(store.values[:], np.pad(source, ((0, 924), (0, 954), (0, 0)), mode="symmetric"))

    # The same image as a tiled BigTIFF (edge tiles partial): dint-shard reads it back to the same content.
    tif = tmp_path / "large.tif"
    assert (
        make_large_signal.main(
            ["image", "--source", str(tmp_path / "small.png"), "--size", "1024", "--tile", "384", str(tif)]
        )
        == 0
    )
    import tifffile

    with tifffile.TiffFile(tif) as opened:
        assert opened.is_bigtiff and opened.pages.first.is_tiled and opened.pages.first.tilelength == 384
    shard_in_process(tif, tmp_path / "from_tif.zarr")
    np.testing.assert_array_equal(open_store(tmp_path / "from_tif.zarr").values[:], store.values[:])


def test_make_large_signal_from_pluto(shared_data, tmp_path):
    pluto = shared_data / "images" / "pluto" / "pluto_4408x4344_gray.jpg"
    dest = tmp_path / "pluto.zarr"
    assert make_large_signal.main(["image", "--source", str(pluto), "--size", "1024,5000", str(dest)]) == 0
    store = open_store(dest)
    assert store.info.source_name == "pluto_4408x4344_gray.jpg tiled+mirrored to 1024x5000"
    original = np.asarray(Image.open(pluto))  # 4344 x 4408
    np.testing.assert_array_equal(store.values[:, :4408, 0], original[:1024])
    np.testing.assert_array_equal(store.values[:, 4408:, 0], original[:1024, ::-1][:, :592])


def test_make_large_signal_resamples_a_volume(tmp_path):
    from scipy.ndimage import map_coordinates

    source = np.random.default_rng(0).integers(0, 65535, size=(9, 7, 5), dtype=np.uint16)
    np.save(tmp_path / "small.npy", source)
    shape = (40, 33, 64)
    grid = np.meshgrid(*(np.arange(n) * (s - 1) / (n - 1) for n, s in zip(shape, source.shape)), indexing="ij")
    for method, order in (("linear", 1), ("nearest", None)):
        dest = tmp_path / f"{method}.zarr"
        assert (
            make_large_signal.main(
                [
                    "volume",
                    "--source",
                    str(tmp_path / "small.npy"),
                    "--size",
                    "40,33,64",
                    "--chunk",
                    "16",
                    "--method",
                    method,
                    str(dest),
                ]
            )
            == 0
        )
        store = open_store(dest)
        assert store.info.shape == shape and store.info.dtype == "uint16"
        assert store.info.source_name == f"small.npy resampled ({method}) to 40x33x64"
        values = store.values[..., 0].astype(np.float64)
        if order is None:
            index = tuple(np.floor(g + 0.5).astype(int) for g in grid)
            np.testing.assert_array_equal(values, source[index])
        else:
            reference = map_coordinates(source.astype(np.float64), grid, order=1)
            assert np.abs(values - reference).max() <= 0.5 + 1e-3  # rounded to the nearest integer
        assert values[0, 0, 0] == source[0, 0, 0] and values[-1, -1, -1] == source[-1, -1, -1]
