"""`dint shard`, `dint-shard` and `dint info`: round trips per image format, one-line errors, real data.

Round trips run the typer app in-process (fast); everything about exit codes, stderr and
tracebacks runs the real CLI in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO, _env, run_cli, smooth_image, write_png
from PIL import Image
from typer.testing import CliRunner

from dint.commands.cli import app
from dint.data.store import FORMAT_VERSION, open_store


def shard(src, dest, *options) -> object:
    """`dint shard SRC DEST options...` in this process; asserts success."""
    result = CliRunner().invoke(app, ["shard", str(src), str(dest), *map(str, options)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def read_back(store: Path) -> tuple[np.ndarray, dict, tuple]:
    """Values, "dint" attributes and chunk shape, read with zarr directly."""
    group = zarr.open_group(str(store), mode="r")
    array = group["values"]
    return np.asarray(array[:]), dict(group.attrs["dint"]), tuple(array.chunks)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_attrs(src: Path, expected: np.ndarray, chunks) -> dict:
    dtype = np.dtype(expected.dtype)
    info = np.iinfo(dtype)
    return {
        "format_version": FORMAT_VERSION,
        "modality": "image",
        "shape": list(expected.shape[:2]),
        "channels": expected.shape[2],
        "dtype": dtype.name,
        "value_range": [float(info.min), float(info.max)],
        "domain": [[-1.0, 1.0], [-1.0, 1.0]],
        "chunks": list(chunks),
        "source": {"name": src.name, "sha256": sha256(src)},
        "extra": {},
    }


def assert_round_trip(src: Path, store: Path, expected: np.ndarray, chunks=None) -> None:
    """The store holds exactly `expected` (H, W, C), with complete and correct attributes."""
    assert expected.ndim == 3
    chunks = chunks or tuple(min(256, s) for s in expected.shape[:2])
    values, attrs, zarr_chunks = read_back(store)
    assert values.shape == expected.shape
    assert values.dtype == expected.dtype
    np.testing.assert_array_equal(values, expected)
    assert attrs == expected_attrs(src, expected, chunks)
    assert zarr_chunks == (*chunks, expected.shape[2])
    # And the store opens and validates.
    assert open_store(store).info.shape == expected.shape[:2]


def pillow_decode(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def one_error_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit code 2, exactly one non-empty stderr line naming every one of `names`, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stderr.strip() == lines[0]
    assert result.stdout.strip() == "", result.stdout
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def dint_shard_script() -> Path:
    for folder in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        if (folder / "dint-shard").is_file():
            return folder / "dint-shard"
    pytest.skip("the dint-shard console script is not installed (pip install -e .)")


def run_dint_shard(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(dint_shard_script()), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO, env=_env()
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Round trips, one per image flavour


def test_grey_uint8_png(tmp_path):
    image = smooth_image(20, 30, 1)
    src = write_png(tmp_path / "grey.png", image)
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image)


def test_rgb_uint8_png(tmp_path):
    image = smooth_image(21, 17, 3, seed=1)
    src = write_png(tmp_path / "rgb.png", image)
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_keeps_all_16_bits(tmp_path, channels):
    import imagecodecs

    image = smooth_image(19, 23, channels, dtype=np.uint16, seed=2)
    # Low bytes carry information that an 8-bit decode (high byte, or v // 257) would lose.
    assert ((image % 257) != 0).any() and (image.astype(np.int64) & 0xFF != image >> 8).any()
    src = tmp_path / "deep.png"
    src.write_bytes(imagecodecs.png_encode(image[:, :, 0] if channels == 1 else image))
    assert Path(src).read_bytes()[24] == 16  # really a 16-bit PNG
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image)


def test_16_bit_rgb_tiff(tmp_path):
    import tifffile

    image = smooth_image(18, 22, 3, dtype=np.uint16, seed=3)
    src = tmp_path / "deep.tiff"
    tifffile.imwrite(src, image, photometric="rgb")
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image)


@pytest.mark.parametrize("channels, suffix", [(3, ".jpg"), (1, ".jpeg")])
def test_jpeg_matches_pillows_decode(tmp_path, channels, suffix):
    image = smooth_image(24, 32, channels, seed=4)
    src = tmp_path / f"photo{suffix}"
    Image.fromarray(image[:, :, 0] if channels == 1 else image).save(src, quality=80)
    expected = pillow_decode(src)
    assert expected.shape == image.shape
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", expected)


def rgba_image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb = smooth_image(16, 20, 3, seed=5)
    alpha = smooth_image(16, 20, 1, seed=6)
    image = np.concatenate([rgb, alpha], axis=2)
    assert len(np.unique(alpha)) > 10  # a real alpha plane, not a constant
    return write_png(tmp_path / "rgba.png", image), image


def test_rgba_png_drops_alpha_by_default(tmp_path):
    src, image = rgba_image(tmp_path)
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image[:, :, :3])


def test_rgba_png_keeps_alpha_with_keep_alpha(tmp_path):
    src, image = rgba_image(tmp_path)
    shard(src, tmp_path / "s.zarr", "--keep-alpha")
    assert_round_trip(src, tmp_path / "s.zarr", image)


def test_grey_alpha_png_drops_alpha(tmp_path):
    grey, alpha = smooth_image(12, 14, 1, seed=7), smooth_image(12, 14, 1, seed=8)
    src = tmp_path / "la.png"
    Image.fromarray(np.concatenate([grey, alpha], axis=2), mode="LA").save(src)
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", grey)


def test_palette_png_becomes_rgb(tmp_path):
    src = tmp_path / "palette.png"
    Image.fromarray(smooth_image(15, 13, 3, seed=9)).quantize(colors=16).save(src)
    with Image.open(src) as image:
        assert image.mode == "P"
        expected = np.asarray(image.convert("RGB"))
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", expected)


# ---------------------------------------------------------------------------------------------
# Chunking


def test_default_chunks_are_256_clipped_to_the_image(tmp_path):
    image = smooth_image(300, 10, 1, seed=10)
    src = write_png(tmp_path / "tall.png", image)
    shard(src, tmp_path / "s.zarr")
    assert_round_trip(src, tmp_path / "s.zarr", image, chunks=(256, 10))


@pytest.mark.parametrize("chunk, expected", [(8, (8, 8)), (16, (16, 11)), (1000, (20, 11))])
def test_chunk_option(tmp_path, chunk, expected):
    image = smooth_image(20, 11, 3, seed=11)
    src = write_png(tmp_path / "small.png", image)
    shard(src, tmp_path / "s.zarr", "--chunk", chunk)
    assert_round_trip(src, tmp_path / "s.zarr", image, chunks=expected)


def test_overwrite_replaces_an_existing_store(tmp_path):
    first, second = smooth_image(10, 12, 1, seed=12), smooth_image(14, 9, 3, seed=13)
    dest = tmp_path / "s.zarr"
    shard(write_png(tmp_path / "first.png", first), dest)
    src = write_png(tmp_path / "second.png", second)
    shard(src, dest, "--overwrite")
    assert_round_trip(src, dest, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "s.zarr", "second.png"]


# ---------------------------------------------------------------------------------------------
# The real CLI in a subprocess


def test_shard_subprocess_writes_store_and_reports(tmp_path):
    image = smooth_image(26, 18, 3, seed=14)
    src = write_png(tmp_path / "rgb.png", image)
    dest = tmp_path / "s.zarr"
    result = run_cli("dint.commands.cli", "shard", src, dest, "--chunk", "16")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{dest}: image 26x18x3 uint8, chunks 16x16" in result.stdout
    assert_round_trip(src, dest, image, chunks=(16, 16))


def test_dint_shard_console_script(tmp_path):
    image = smooth_image(9, 13, 1, seed=15)
    src = write_png(tmp_path / "grey.png", image)
    result = run_dint_shard(src, tmp_path / "s.zarr")
    assert result.returncode == 0, result.stderr
    assert_round_trip(src, tmp_path / "s.zarr", image)


def bad_input(case: str, tmp_path: Path) -> tuple[list, list, Path]:
    """(CLI arguments, strings the error line must contain, DEST) for one bad-input case."""
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "s.zarr"
    good = write_png(tmp_path / "good.png", smooth_image(12, 12))
    if case == "missing file":
        src = tmp_path / "absent.png"
        return [src, dest], [src, "not found"], dest
    if case == "text named png":
        src = tmp_path / "notes.png"
        src.write_text("this is not an image\n")
        return [src, dest], [src, "not a readable image"], dest
    if case == "truncated png":
        real = Path(__import__("skimage").__file__).parent / "data" / "camera.png"
        data = real.read_bytes()
        src = tmp_path / "truncated.png"
        src.write_bytes(data[: len(data) // 2])
        return [src, dest], [src], dest
    if case == "unknown extension":
        src = tmp_path / "picture.bmp"
        Image.fromarray(smooth_image(8, 8)[:, :, 0]).save(src)
        return [src, dest], [src, ".bmp"], dest
    if case == "chunk 0":
        return [good, dest, "--chunk", "0"], ["--chunk 0"], dest
    if case == "unknown builtin":
        return ["builtin:nonesuch", dest], ["builtin:nonesuch"], dest
    if case == "missing output folder":
        dest = out / "absent" / "s.zarr"
        return [good, dest], [dest.parent, "does not exist"], dest
    raise AssertionError(case)


BAD_INPUTS = [
    "missing file",
    "text named png",
    "truncated png",
    "unknown extension",
    "chunk 0",
    "unknown builtin",
    "missing output folder",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    args, names, dest = bad_input(case, tmp_path)
    one_error_line(run_cli("dint.commands.cli", "shard", *args), *names)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no store, no .s.zarr.tmp-* either


@pytest.mark.parametrize("command", ["module", "script"])
def test_existing_destination_without_overwrite_is_refused_and_untouched(tmp_path, command):
    old = smooth_image(10, 10, 1, seed=16)
    dest = tmp_path / "s.zarr"
    shard(write_png(tmp_path / "old.png", old), dest)
    before = snapshot(dest)
    src = write_png(tmp_path / "new.png", smooth_image(12, 12, 3, seed=17))
    runner = (lambda *a: run_cli("dint.commands.cli", "shard", *a)) if command == "module" else run_dint_shard
    line = one_error_line(runner(src, dest), dest, "--overwrite")
    assert line.startswith("dint-shard: error:")
    assert snapshot(dest) == before
    np.testing.assert_array_equal(read_back(dest)[0], old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "old.png", "s.zarr"]


# ---------------------------------------------------------------------------------------------
# dint info


def test_info_prints_modality_shape_and_dtype(image_store):
    result = run_cli("dint.commands.cli", "info", image_store)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    assert rows["store"] == str(image_store)
    assert rows["modality"] == "image"
    assert rows["shape"].startswith("48 x 40")
    assert rows["channels"] == "1"
    assert rows["dtype"] == "uint8"
    assert rows["chunks"] == "16 x 16 (9 chunks)"  # 3 x 3 chunks; the last column 8 wide


def test_info_json_equals_the_attributes(tmp_path):
    src = write_png(tmp_path / "rgb.png", smooth_image(14, 22, 3, seed=18))
    dest = tmp_path / "s.zarr"
    shard(src, dest, "--chunk", "8")
    result = run_cli("dint.commands.cli", "info", dest, "--json")
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed == read_back(dest)[1]
    assert parsed == expected_attrs(src, smooth_image(14, 22, 3, seed=18), (8, 8))


def test_info_on_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a store")
    one_error_line(run_cli("dint.commands.cli", "info", folder), folder)


def test_info_on_a_missing_path(tmp_path):
    missing = tmp_path / "absent.zarr"
    one_error_line(run_cli("dint.commands.cli", "info", missing), missing, "not found")
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------
# Real data and the built-in signal


@pytest.mark.parametrize(
    "relative, shape",
    [
        ("images/kodak/kodim01.png", (512, 768, 3)),
        ("images/cameraman/cameraman.png", (512, 512, 1)),
    ],
)
def test_real_images(shared_data, tmp_path, relative, shape):
    src = shared_data / relative
    expected = pillow_decode(src)
    assert expected.shape == shape and expected.dtype == np.uint8
    dest = tmp_path / "s.zarr"
    shard(src, dest)
    assert_round_trip(src, dest, expected, chunks=(256, 256))
    assert read_back(dest)[1]["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_builtin_cameraman(tmp_path):
    import skimage

    camera = Path(skimage.__file__).parent / "data" / "camera.png"
    dest = tmp_path / "camera.zarr"
    result = run_cli("dint.commands.cli", "shard", "builtin:cameraman", dest)
    assert result.returncode == 0, result.stderr
    values, attrs, chunks = read_back(dest)
    assert values.shape == (512, 512, 1) and values.dtype == np.uint8
    assert attrs["shape"] == [512, 512] and attrs["channels"] == 1 and attrs["dtype"] == "uint8"
    np.testing.assert_array_equal(values[:, :, 0], skimage.data.camera())
    assert_round_trip(camera, dest, pillow_decode(camera), chunks=(256, 256))
