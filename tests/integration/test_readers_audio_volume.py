"""Audio and volume readers: round trips per format, out-of-core reads, one-line errors, real data.

Round trips run the `dint shard` typer app in-process (the CLI's own code, fast); one of
them, and everything about exit codes, stderr and tracebacks, runs the real CLI in
subprocesses (the error cases all at once, a few at a time, to keep the file fast).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO, _env, run_cli
from scipy.io import wavfile
from typer.testing import CliRunner

from dint.commands.cli import app
from dint.data.readers import read_source
from dint.data.readers.volume import Regions


def shard(src, dest, *options) -> None:
    """`dint shard SRC DEST options...` in this process; asserts success."""
    result = CliRunner().invoke(app, ["shard", str(src), str(dest), *map(str, options)])
    assert result.exit_code == 0, (result.output, result.exception)


def read_back(store: Path) -> tuple[np.ndarray, dict]:
    group = zarr.open_group(str(store), mode="r")
    return np.asarray(group["values"][:]), dict(group.attrs["dint"])


def check_store(store: Path, expected: np.ndarray, modality: str, value_range=None, extra=None) -> dict:
    """The store holds exactly `expected` (*spatial, C) with the right attributes."""
    values, attrs = read_back(store)
    assert values.dtype == expected.dtype.newbyteorder("=")
    assert values.shape == expected.shape
    np.testing.assert_array_equal(values, expected)
    assert attrs["modality"] == modality
    assert attrs["shape"] == list(expected.shape[:-1])
    assert attrs["channels"] == expected.shape[-1]
    assert attrs["dtype"] == values.dtype.name
    if value_range is not None:
        assert attrs["value_range"] == pytest.approx(list(value_range))
    if extra is not None:
        assert attrs["extra"] == extra
    return attrs


def int_range(dtype) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def volume(shape=(5, 6, 7), dtype=np.uint16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype.newbyteorder("=")).astype(dtype)


def write_wav_24bit(path: Path, samples: np.ndarray, rate: int) -> Path:
    """24-bit PCM (scipy writes none): samples are int32 values in [-2**23, 2**23)."""
    frames = samples.reshape(len(samples), -1)
    data = b"".join(struct.pack("<i", int(v))[:3] for v in frames.ravel())
    channels = frames.shape[1]
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 3 * channels, 3 * channels, 24)
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    return path


# Audio


@pytest.mark.parametrize("dtype, channels", [("int16", 1), ("int16", 2), ("int32", 3), ("uint8", 1)])
def test_integer_wav(tmp_path, dtype, channels):
    samples = volume((1000, channels), dtype, seed=1)
    src = tmp_path / "a.wav"
    wavfile.write(src, 22050, samples[:, 0] if channels == 1 else samples)
    shard(src, tmp_path / "s.zarr", "--chunk", "256")
    attrs = check_store(tmp_path / "s.zarr", samples, "audio", int_range(dtype), {"sample_rate": 22050})
    assert attrs["chunks"] == [256]


def test_24_bit_wav_is_int32_full_range(tmp_path):
    samples = volume((300, 2), np.int32, seed=2) >> 8  # 24-bit values
    src = write_wav_24bit(tmp_path / "a24.wav", samples, 48000)
    shard(src, tmp_path / "s.zarr")
    # scipy puts 24-bit samples in the top bits of an int32: the int32 range is the right one.
    check_store(tmp_path / "s.zarr", samples << 8, "audio", int_range(np.int32), {"sample_rate": 48000})


@pytest.mark.parametrize("peak, expected_range", [(0.5, (-1.0, 1.0)), (1.0, (-1.0, 1.0)), (2.5, (-2.5, 2.5))])
def test_float_wav_range_keeps_silence_at_zero(tmp_path, peak, expected_range):
    samples = np.linspace(0.0, 1.0, 800, dtype=np.float32)[:, None] * np.float32([1.0, -0.25])
    samples *= np.float32(peak)
    src = tmp_path / "f.wav"
    wavfile.write(src, 8000, samples)
    shard(src, tmp_path / "s.zarr")
    check_store(tmp_path / "s.zarr", samples, "audio", expected_range, {"sample_rate": 8000})


def test_multichannel_wav_through_the_real_cli(tmp_path):
    samples = volume((2000, 4), np.int16, seed=3)
    src = tmp_path / "quad.wav"
    wavfile.write(src, 16000, samples)
    result = run_cli("dint.commands.cli", "shard", src, tmp_path / "s.zarr")
    assert result.returncode == 0, result.stderr
    check_store(tmp_path / "s.zarr", samples, "audio", int_range(np.int16), {"sample_rate": 16000})


def test_wav_as_image_is_refused(tmp_path):
    src = tmp_path / "a.wav"
    wavfile.write(src, 8000, volume((100,), np.int16))
    result = CliRunner().invoke(app, ["shard", str(src), str(tmp_path / "s.zarr"), "--modality", "image"])
    assert result.exit_code == 2 and "holds audio data, not image" in result.output


# Plain arrays: .npy, .npz, raw, zarr


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", ">u2", "<f8"])
def test_npy_volume(tmp_path, dtype):
    data = volume((9, 6, 7), dtype, seed=4)
    np.save(tmp_path / "v.npy", data)
    shard(tmp_path / "v.npy", tmp_path / "s.zarr", "--chunk", "4")
    value_range = (float(data.min()), float(data.max())) if data.dtype.kind == "f" else int_range(data.dtype)
    attrs = check_store(tmp_path / "s.zarr", data[..., None], "volume", value_range, {})
    assert attrs["chunks"] == [4, 4, 4]


def test_npy_fortran_order_and_channels(tmp_path):
    data = np.asfortranarray(volume((4, 5, 6, 3), np.int16, seed=5))
    np.save(tmp_path / "v.npy", data)
    shard(tmp_path / "v.npy", tmp_path / "s.zarr")
    check_store(tmp_path / "s.zarr", np.ascontiguousarray(data), "volume", int_range(np.int16))


def test_npy_2d_with_modality_image(tmp_path):
    data = volume((12, 10), np.uint8, seed=6)
    np.save(tmp_path / "i.npy", data)
    shard(tmp_path / "i.npy", tmp_path / "s.zarr", "--modality", "image")
    check_store(tmp_path / "s.zarr", data[..., None], "image", (0.0, 255.0))


def test_npy_1d_float_with_modality_audio(tmp_path):
    data = np.sin(np.linspace(0, 20, 500)).astype(np.float32) * 3
    np.save(tmp_path / "a.npy", data)
    shard(tmp_path / "a.npy", tmp_path / "s.zarr", "--modality", "audio")
    peak = float(np.abs(data).max())
    check_store(tmp_path / "s.zarr", data[:, None], "audio", (-peak, peak))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_single_array(tmp_path, save):
    data = volume((5, 4, 6), np.float32, seed=7)
    save(tmp_path / "v.npz", only=data)
    shard(tmp_path / "v.npz", tmp_path / "s.zarr")
    check_store(tmp_path / "s.zarr", data[..., None], "volume", (float(data.min()), float(data.max())))


def test_raw_binary_with_shape_and_dtype(tmp_path):
    data = volume((6, 5, 4), ">u2", seed=8)
    (tmp_path / "v.raw").write_bytes(data.tobytes())
    shard(tmp_path / "v.raw", tmp_path / "s.zarr", "--shape", "6,5,4", "--dtype", ">u2")
    check_store(tmp_path / "s.zarr", data[..., None], "volume", int_range(np.uint16))


def test_raw_binary_with_channels(tmp_path):
    data = volume((3, 4, 5, 2), np.float32, seed=9)
    (tmp_path / "v.bin").write_bytes(data.tobytes())
    shard(tmp_path / "v.bin", tmp_path / "s.zarr", "--shape", "3,4,5,2", "--dtype", "float32")
    check_store(tmp_path / "s.zarr", data, "volume")


def test_zarr_array_folder(tmp_path):
    data = volume((10, 9, 8), np.int16, seed=10)
    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=(3, 4, 8), dtype=data.dtype)
    array[:] = data
    shard(tmp_path / "in.zarr", tmp_path / "s.zarr", "--chunk", "5")
    attrs = check_store(tmp_path / "s.zarr", data[..., None], "volume", int_range(np.int16))
    assert attrs["chunks"] == [5, 5, 5]


def test_zarr_group_with_one_array_as_image(tmp_path):
    data = volume((20, 30), np.uint8, seed=11)
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    group.create_array("picture", shape=data.shape, chunks=(7, 7), dtype=data.dtype)[:] = data
    shard(tmp_path / "in.zarr", tmp_path / "s.zarr", "--modality", "image")
    check_store(tmp_path / "s.zarr", data[..., None], "image", (0.0, 255.0))


def test_a_dint_store_shards_again_with_new_chunks(tmp_path):
    data = volume((6, 7, 8), np.uint16, seed=12)
    np.save(tmp_path / "v.npy", data)
    shard(tmp_path / "v.npy", tmp_path / "a.zarr")
    shard(tmp_path / "a.zarr", tmp_path / "b.zarr", "--chunk", "3")
    attrs = check_store(tmp_path / "b.zarr", data[..., None], "volume", int_range(np.uint16))
    assert attrs["chunks"] == [3, 3, 3]


# Medical formats and TIFF stacks


def test_nifti_axes_become_z_y_x_and_spacing_is_kept(tmp_path):
    import nibabel as nib

    xyz = volume((7, 6, 5), np.int16, seed=13)  # nibabel's axes: (X, Y, Z)
    for name in ("v.nii", "v.nii.gz"):
        image = nib.Nifti1Image(xyz, np.eye(4))
        image.header.set_zooms((1.5, 2.0, 3.0))
        nib.save(image, tmp_path / name)
        shard(tmp_path / name, tmp_path / f"{name}.zarr", "--chunk", "4")
        check_store(
            tmp_path / f"{name}.zarr",
            xyz.transpose(2, 1, 0)[..., None],
            "volume",
            int_range(np.int16),
            {"spacing": [3.0, 2.0, 1.5]},
        )


def test_nifti_fourth_axis_is_channels_and_scaling_applies(tmp_path):
    import nibabel as nib

    xyzc = volume((4, 5, 6, 2), np.int16, seed=14)
    image = nib.Nifti1Image(xyzc, np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "v.nii.gz")
    expected = np.asarray(nib.load(tmp_path / "v.nii.gz").dataobj)  # scaled, as nibabel gives it
    assert expected.dtype.kind == "f"
    shard(tmp_path / "v.nii.gz", tmp_path / "s.zarr")
    check_store(tmp_path / "s.zarr", expected.transpose(2, 1, 0, 3), "volume")


@pytest.mark.parametrize("name, compress, channels", [("v.mhd", False, 1), ("v.mha", False, 2), ("c.mhd", True, 1)])
def test_metaimage(tmp_path, name, compress, channels):
    import SimpleITK as sitk

    zyx = volume((5, 6, 7, channels) if channels > 1 else (5, 6, 7), np.float32, seed=15)
    image = sitk.GetImageFromArray(zyx, isVector=channels > 1)
    image.SetSpacing((0.5, 0.75, 2.0))  # (X, Y, Z)
    sitk.WriteImage(image, str(tmp_path / name), useCompression=compress)
    shard(tmp_path / name, tmp_path / "s.zarr", "--chunk", "3")
    expected = zyx if channels > 1 else zyx[..., None]
    check_store(
        tmp_path / "s.zarr", expected, "volume", (float(zyx.min()), float(zyx.max())), {"spacing": [2.0, 0.75, 0.5]}
    )


@pytest.mark.parametrize("compression, samples", [(None, 1), ("zlib", 3)])
def test_multi_page_tiff_is_a_volume(tmp_path, compression, samples):
    import tifffile

    shape = (6, 20, 18, samples) if samples > 1 else (6, 20, 18)
    data = volume(shape, np.uint16, seed=16)
    tifffile.imwrite(
        tmp_path / "stack.tif", data, compression=compression, photometric="rgb" if samples > 1 else "minisblack"
    )
    # Uncompressed stacks are memory-mapped, compressed ones read through tifffile's zarr view.
    source = read_source(tmp_path / "stack.tif")
    bases = [task.base for task in dict(source.values.__dask_graph__()).values() if isinstance(task, Regions)]
    assert [type(base) for base in bases] == [np.memmap if compression is None else zarr.Array]
    shard(tmp_path / "stack.tif", tmp_path / "s.zarr", "--chunk", "8")
    expected = data if samples > 1 else data[..., None]
    attrs = check_store(tmp_path / "s.zarr", expected, "volume", int_range(np.uint16))
    assert attrs["chunks"] == [6, 8, 8]


def test_single_page_tiffs_stay_images(tmp_path):
    import tifffile

    grey = volume((10, 12), np.uint8, seed=17)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    shard(tmp_path / "grey.tif", tmp_path / "g.zarr")
    check_store(tmp_path / "g.zarr", grey[..., None], "image")
    rgb = volume((10, 12, 3), np.uint8, seed=18)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert tifffile.TiffFile(tmp_path / "planar.tif").series[0].axes == "SYX"  # samples first
    shard(tmp_path / "planar.tif", tmp_path / "p.zarr")
    check_store(tmp_path / "p.zarr", rgb, "image")


# Out of core: a file far bigger than the memory the process may allocate


def test_npy_and_wav_are_mapped_not_loaded(tmp_path):
    """1 GiB files (sparse: no disk used) are read without being loaded.

    .npy: under RLIMIT_DATA of 512 MiB, reading works while np.load of the same file fails
    (read-only file mappings do not count against RLIMIT_DATA, heap copies do).
    .wav: scipy maps it copy-on-write, which RLIMIT_DATA does count, so there the check is
    that the process's anonymous memory (RssAnon, where any copy would land) barely grows.
    A reader that loads the file, or lets dask copy the mapping, fails either check.
    """
    size = 1 << 30
    npy = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(1024, 1024, 1024))
    big[-1, -1, -1] = 7
    del big
    wav = tmp_path / "big.wav"
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 2, 16000, 64000, 4, 16)
        + b"data"
        + struct.pack("<I", size)
    )
    with open(wav, "wb") as f:
        f.write(header)
        f.truncate(len(header) + size)
    script = textwrap.dedent(f"""
        import json, resource
        import numpy as np
        from dint.data.readers import read_source

        def anon_mib():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024

        out = {{}}
        cap = 512 << 20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
        npy = read_source({str(npy)!r})
        out["npy"] = [list(npy.values.shape), int(npy.values[-2:, -2:, -2:].sum().compute())]
        try:
            np.load({str(npy)!r})
            out["np.load"] = "loaded"
        except MemoryError:
            out["np.load"] = "MemoryError"
        del npy
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        before = anon_mib()
        wav = read_source({str(wav)!r})
        out["wav"] = [list(wav.values.shape), int(wav.values[-3:].sum().compute())]
        out["wav_anon_mib"] = anon_mib() - before
        print(json.dumps(out))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, env=_env()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["np.load"] == "MemoryError"  # the cap does bite
    assert out["npy"] == [[1024, 1024, 1024, 1], 7]
    assert out["wav"] == [[size // 4, 2], 0]
    assert out["wav_anon_mib"] < 100, out


def test_npy_graph_reads_from_the_mapping(tmp_path):
    data = volume((8, 8, 8), np.uint16)
    np.save(tmp_path / "v.npy", data)
    source = read_source(tmp_path / "v.npy")
    bases = [task.base for task in dict(source.values.__dask_graph__()).values() if isinstance(task, Regions)]
    assert len(bases) == 1 and isinstance(bases[0], np.memmap)
    assert bases[0]._mmap is not None and Path(bases[0].filename) == (tmp_path / "v.npy").resolve()


# Bad inputs: the real CLI, exit code 2, one stderr line naming the file, no store left


def _write_bad_inputs(folder: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (source, extra CLI options, a fragment the error line must contain)."""
    import nibabel as nib

    cases: dict[str, tuple[Path, list[str], str]] = {}

    wav = folder / "truncated.wav"
    wavfile.write(wav, 8000, volume((4000, 2), np.int16))
    wav.write_bytes(wav.read_bytes()[:-1000])
    cases["truncated wav"] = (wav, [], "truncated")

    text = folder / "notes.wav"
    text.write_text("this is not audio\n")
    cases["text named .wav"] = (text, [], "not a readable WAV")

    inf_wav = folder / "inf.wav"
    samples = np.zeros((100, 1), np.float32)
    samples[50] = np.inf
    wavfile.write(inf_wav, 8000, samples)
    cases["inf in float wav"] = (inf_wav, [], "NaN or Inf")

    npy = folder / "truncated.npy"
    np.save(npy, volume((8, 8, 8), np.uint16))
    npy.write_bytes(npy.read_bytes()[:-100])
    cases["truncated npy"] = (npy, [], "truncated")

    nan = folder / "nan.npy"
    values = volume((4, 4, 4), np.float32)
    values[1, 2, 3] = np.nan
    np.save(nan, values)
    cases["nan in float npy"] = (nan, [], "NaN or Inf")

    empty = folder / "empty.npy"
    np.save(empty, np.zeros((0,), np.float32))
    cases["empty npy"] = (empty, [], "empty")

    flat = folder / "flat.npy"
    np.save(flat, volume((4, 5), np.uint8))
    cases["2-D npy without --modality"] = (flat, [], "--modality image")

    npz = folder / "two.npz"
    np.savez(npz, first=np.zeros((2, 2, 2)), second=np.ones((2, 2, 2)))
    cases["npz with two arrays"] = (npz, [], "first, second")

    raw = folder / "wrong.raw"
    raw.write_bytes(bytes(1000))
    cases["raw of the wrong size"] = (raw, ["--shape", "10,10,10", "--dtype", "uint16"], "1000 bytes")
    cases["raw without --shape"] = (raw, ["--dtype", "uint8"], "--shape")
    cases["raw with a bad --dtype"] = (raw, ["--shape", "10,10,10", "--dtype", "nonsense"], "--dtype nonsense")

    gz = folder / "cut.nii.gz"
    nib.save(nib.Nifti1Image(volume((16, 16, 16), np.int16), np.eye(4)), gz)
    gz.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])  # header intact, data cut
    cases["truncated nii.gz"] = (gz, [], "truncated")  # found when it is inflated, before writing
    garbage = folder / "garbage.nii.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    cases["corrupt nii.gz"] = (garbage, [], "NIfTI")

    import SimpleITK as sitk

    mhd = folder / "short.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(volume((4, 5, 6), np.int16)), str(mhd))
    data_file = folder / "short.raw"
    data_file.write_bytes(data_file.read_bytes()[:-10])
    cases["metaimage with truncated data"] = (mhd, [], "truncated")

    group = zarr.open_group(str(folder / "two.zarr"), mode="w")
    group.create_array("a", shape=(2, 2, 2), dtype="uint8")
    group.create_array("b", shape=(2, 2, 2), dtype="uint8")
    cases["zarr group with two arrays"] = (folder / "two.zarr", [], "(a, b)")
    return cases


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory) -> dict[str, tuple[Path, Path, str, subprocess.CompletedProcess]]:
    """Every bad input through the real CLI, three processes at a time."""
    folder = tmp_path_factory.mktemp("bad")
    cases = _write_bad_inputs(folder)
    pending = list(cases.items())
    running: list = []
    results = {}
    while pending or running:
        while pending and len(running) < 3:
            name, (src, options, fragment) = pending.pop(0)
            dest = folder / "out" / name.replace(" ", "_") / "s.zarr"
            dest.parent.mkdir(parents=True)
            command = [sys.executable, "-m", "dint.commands.cli", "shard", str(src), str(dest), *options]
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env()
            )
            running.append((name, src, dest, fragment, command, process))
        name, src, dest, fragment, command, process = running.pop(0)
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (src, dest, fragment, subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


BAD_INPUTS = [
    "truncated wav",
    "text named .wav",
    "inf in float wav",
    "truncated npy",
    "nan in float npy",
    "empty npy",
    "2-D npy without --modality",
    "npz with two arrays",
    "raw of the wrong size",
    "raw without --shape",
    "raw with a bad --dtype",
    "truncated nii.gz",
    "corrupt nii.gz",
    "metaimage with truncated data",
    "zarr group with two arrays",
]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_no_store(bad_input_results, name):
    src, dest, fragment, result = bad_input_results[name]
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(src) in lines[0] and fragment in lines[0], lines[0]
    assert list(dest.parent.iterdir()) == []  # neither the store nor its temporary folder


def test_every_bad_input_is_tested(bad_input_results):
    assert sorted(bad_input_results) == sorted(BAD_INPUTS)


# Real data: each file shards and reads back as its own library reads it


def test_real_audio(shared_data, tmp_path):
    speech = shared_data / "audio" / "librispeech_1272-128104-0000.wav"
    shard(speech, tmp_path / "speech.zarr")
    rate, samples = wavfile.read(speech)
    check_store(tmp_path / "speech.zarr", samples[:, None], "audio", int_range(np.int16), {"sample_rate": rate})
    assert rate == 16000 and samples.dtype == np.int16

    bach = shared_data / "audio" / "gt_bach.wav"
    shard(bach, tmp_path / "bach.zarr")
    rate, samples = wavfile.read(bach)
    assert samples.dtype == np.float32 and np.abs(samples).max() <= 1
    check_store(tmp_path / "bach.zarr", samples[:, None], "audio", (-1.0, 1.0), {"sample_rate": 44100})


def test_real_tiff_and_npy_volumes(shared_data, tmp_path):
    import tifffile

    brain = shared_data / "volumes" / "brain_mri_10x256x256_uint16.tiff"
    shard(brain, tmp_path / "brain.zarr")
    check_store(tmp_path / "brain.zarr", tifffile.imread(brain)[..., None], "volume", int_range(np.uint16))

    head = shared_data / "volumes" / "headsq_93x64x64_uint16.npy"
    shard(head, tmp_path / "head.zarr")
    check_store(tmp_path / "head.zarr", np.load(head)[..., None], "volume", int_range(np.uint16))


def test_real_metaimage_and_its_raw_file(shared_data, tmp_path):
    import SimpleITK as sitk

    mhd = shared_data / "volumes" / "HeadMRVolume.mhd"
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(mhd)))  # (Z, Y, X)
    assert expected.shape == (42, 62, 48)
    shard(mhd, tmp_path / "mhd.zarr")
    check_store(tmp_path / "mhd.zarr", expected[..., None], "volume", (0.0, 255.0), {"spacing": [4.0, 4.0, 4.0]})
    raw = shared_data / "volumes" / "HeadMRVolume.raw"
    shard(raw, tmp_path / "raw.zarr", "--shape", "42,62,48", "--dtype", "uint8")
    check_store(tmp_path / "raw.zarr", expected[..., None], "volume", (0.0, 255.0), {})


def test_real_nifti(shared_data, tmp_path):
    import nibabel as nib

    nii = shared_data / "volumes" / "avg152T1_RL_nifti.nii.gz"
    image = nib.load(nii)
    xyz = np.asarray(image.dataobj)
    assert xyz.shape == (91, 109, 91)
    shard(nii, tmp_path / "nii.zarr")
    spacing = [float(z) for z in image.header.get_zooms()[2::-1]]
    check_store(
        tmp_path / "nii.zarr", xyz.transpose(2, 1, 0)[..., None], "volume", int_range(xyz.dtype), {"spacing": spacing}
    )
