"""Rule 4, in process: what cannot fit (memory, disk) is refused from what the input declares,
before anything is decoded, allocated or written. The machine's memory and free disk are
patched small (dint.core.resources), so nothing here allocates more than a few MB."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bombs import jpeg, metaimage, nifti_gz, npz, png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.core import resources
from dint.core.errors import DintError
from dint.data.readers import ReadOptions, read_source

MiB = 1 << 20
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def memory(monkeypatch):
    """Set the memory dint sees as available: memory(nbytes)."""

    def set_available(nbytes: int) -> None:
        monkeypatch.setattr(resources, "available_memory", lambda device=None: int(nbytes))

    return set_available


@pytest.fixture
def disk(monkeypatch):
    """Set the free disk dint sees at every destination: disk(nbytes)."""

    def set_free(nbytes: int) -> None:
        monkeypatch.setattr(resources, "free_disk", lambda path: int(nbytes))

    return set_free


def refused(call, *says: str) -> str:
    with pytest.raises(DintError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for part in says:
        assert part in message, message
    return message


# Each kind of input: (make it declaring a side of n samples, the name its decoder has in dint).
BOMBS = {
    "png-grey": lambda d, n: png(d / "b.png", n, n),
    "png-rgba": lambda d, n: png(d / "b.png", n, n, colour=6),
    "png-palette": lambda d, n: png(d / "b.png", n, n, colour=3),
    "png-16-bit": lambda d, n: png(d / "b.png", n, n, bit_depth=16, colour=2),
    "jpeg": lambda d, n: jpeg(d / "b.jpg", min(n, 65535), min(n, 65535)),  # its sides are 16-bit
    "npz": lambda d, n: npz(d / "b.npz", (n, n, 4)),
    "nii.gz": lambda d, n: nifti_gz(d / "b.nii.gz", (min(n, 32767), min(n, 32767), 4)),  # NIfTI-1: 16-bit
    "mha": lambda d, n: metaimage(d / "b.mha", (n, n, 4)),
}


@pytest.fixture
def decoders_must_not_run(monkeypatch):
    """Every decoder dint hands a compressed input to fails the test if it is called."""
    import imagecodecs
    import nibabel.arrayproxy
    import SimpleITK
    from PIL import ImageFile

    def ran(*args, **kwargs):
        pytest.fail("a decoder ran on an input that cannot fit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", ran)
    monkeypatch.setattr(imagecodecs, "png_decode", ran)
    monkeypatch.setattr(np.lib.format, "read_array", ran)
    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "__array__", ran)
    monkeypatch.setattr(SimpleITK, "ReadImage", ran)


@SETTINGS
@given(kind=st.sampled_from(sorted(BOMBS)), side=st.integers(4000, 100_000), memory_mib=st.integers(1, 40))
def test_a_compressed_input_that_cannot_fit_is_refused_before_its_decoder_runs(
    tmp_path_factory, monkeypatch, memory, decoders_must_not_run, kind, side, memory_mib
):
    source = BOMBS[kind](tmp_path_factory.mktemp(kind), side)
    monkeypatch.setenv("DINT_MAX_DECODE_BYTES", str(1 << 50))  # the memory decides here, not the cap
    memory(memory_mib * MiB)  # every input here needs 50 MB or more to decode
    message = refused(lambda: read_source(source), str(source), "declares", "of memory;")
    assert f"{memory_mib}.0 MiB is available" in message


@SETTINGS
@given(kind=st.sampled_from(sorted(BOMBS)), side=st.integers(10_000, 200_000))
def test_a_declared_size_over_the_decoding_cap_is_refused(
    tmp_path_factory, monkeypatch, decoders_must_not_run, kind, side
):
    source = BOMBS[kind](tmp_path_factory.mktemp(kind), side)
    monkeypatch.setenv("DINT_MAX_DECODE_BYTES", str(50 * MiB))
    refused(lambda: read_source(source), str(source), "declares", "DINT_MAX_DECODE_BYTES")


def test_a_folder_of_tiles_declaring_more_than_fits_is_refused_naming_the_tile(
    tmp_path, monkeypatch, memory, decoders_must_not_run
):
    """Pillow's own limit (a warning past 89 million pixels, an error past twice that) never
    speaks first: dint's check names the tile, in one line, whatever the size declared."""
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's, as a fresh process has it
    for column in (0, 1):
        png(tmp_path / f"tile_0_{column}.png", 12_000, 10_000)  # 120 million pixels each
    memory(64 * MiB)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(lambda: read_source(tmp_path), f"{tmp_path}/tile_0_", "declares 10000 x 12000 x 1 samples")
    assert [str(w.message) for w in caught] == []


def test_telling_a_png_dint_wrote_decodes_nothing(tmp_path, monkeypatch, decoders_must_not_run):
    from PIL import Image

    from dint.core.files import is_dint_png
    from dint.observe.pictures import save_dint_png

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's, as a fresh `dint report` has it

    assert not is_dint_png(png(tmp_path / "bomb.png", 100_000, 100_000))  # Pillow's limit: refused unread
    assert not is_dint_png(png(tmp_path / "large.png", 10_000, 10_000))  # under it: its header alone
    save_dint_png(Image.new("L", (8, 8)), tmp_path / "ours.png")
    assert is_dint_png(tmp_path / "ours.png")


def smooth(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    index = np.indices(shape).sum(axis=0)
    return (index * 7 % 251).astype(dtype)


def real_png(path: Path, mode: str) -> Path:
    from PIL import Image

    image = Image.fromarray(smooth((120, 100, 3)) if mode == "RGB" else smooth((120, 100)))
    (image.convert(mode) if mode != "RGB" else image).save(path)
    return path


# Real small inputs, each with its decoded array's bytes and its decoder's peak multiple.
def _cases():
    from dint.data.readers import common, volume

    def pillow(mode: str, channels: int):
        return lambda d: (
            real_png(d / "x.png", mode),
            120 * 100 * channels,
            common.pillow_decode_bytes(mode, channels) / channels,
        )

    def png16(d):
        import imagecodecs

        (d / "x.png").write_bytes(imagecodecs.png_encode(smooth((120, 100, 3), np.uint16)))
        return d / "x.png", 120 * 100 * 3 * 2, common.PNG16_DECODE_PEAK

    def npz_file(d):
        np.savez_compressed(d / "x.npz", values=smooth((10, 40, 30), np.float32))
        return d / "x.npz", 10 * 40 * 30 * 4, volume.NPZ_DECODE_PEAK

    def nii(scaled: bool):
        def make(d):
            import nibabel as nib

            image = nib.Nifti1Image(smooth((30, 40, 10), np.int16), np.eye(4))
            if scaled:
                image.header.set_slope_inter(0.5, 1.0)
            nib.save(image, d / "x.nii.gz")
            return d / "x.nii.gz", 30 * 40 * 10 * (8 if scaled else 2), volume.NIFTI_GZ_DECODE_PEAK

        return make

    def mha(d):
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(smooth((10, 40, 30), np.float32)), str(d / "x.mha"), True)
        return d / "x.mha", 10 * 40 * 30 * 4, volume.METAIMAGE_DECODE_PEAK

    return {
        "png-grey": pillow("L", 1),
        "png-rgb": pillow("RGB", 3),
        "png-palette": pillow("P", 3),
        "png-16-bit": png16,
        "npz": npz_file,
        "nii.gz": nii(False),
        "nii.gz-scaled": nii(True),
        "mha": mha,
    }


@pytest.mark.parametrize("kind", sorted(_cases()))
def test_each_decoder_is_held_to_its_peak(tmp_path, memory, kind):
    """The memory a decode needs is its decoded size times its decoder's peak: one byte less is
    refused, exactly that decodes (the inputs are larger than dask's plan of their one chunk)."""
    source, decoded, peak = _cases()[kind](tmp_path)
    need = decoded * peak
    memory(math.ceil(need) - 1)
    refused(lambda: read_source(source), str(source), "declares", "decoding it needs")
    memory(math.ceil(need))
    assert read_source(source).values.nbytes == decoded


def test_an_npz_member_whose_array_header_lies_is_refused(tmp_path):
    source = npz(tmp_path / "lie.npz", (64, 64, 64), dtype="|u1", data=bytes(1000))  # declares 262144 bytes
    refused(
        lambda: read_source(source),
        str(source),
        "declares (64, 64, 64) uint8 (262144 bytes)",
        "holds 1000 bytes of data; the archive is damaged",
    )


# --- The memory available: cgroups and ulimits count ------------------------------------------


def test_a_control_groups_limit_counts_as_the_memory_available(tmp_path):
    root = tmp_path / "cgroup"
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{3 << 30}\n")  # the job's limit binds
    (root / "job" / "memory.current").write_text(f"{1 << 30}\n")
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "step" / "memory.current").write_text(f"{1 << 29}\n")
    (tmp_path / "self").write_text("0::/job/step\n")
    assert resources._cgroup_room(root, tmp_path / "self") == 2 << 30
    (tmp_path / "self").write_text("4:memory:/job\n3:cpu:/job\n")  # cgroup v1
    (root / "memory" / "job").mkdir(parents=True)
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{5 << 30}\n")
    (root / "memory" / "job" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    assert resources._cgroup_room(root, tmp_path / "self") == 4 << 30
    (tmp_path / "self").write_text("0::/\n")
    assert resources._cgroup_room(root, tmp_path / "self") == math.inf


# --- Sizes taken from options ------------------------------------------------------------------

_INT_KEYS = ["train.seed", "train.steps", "eval.sample", "teacher.minibatch", "data.block_points", "model.width"]


@settings(max_examples=50, deadline=None)
@given(key=st.sampled_from(_INT_KEYS), value=st.integers(2**63, 10**40) | st.integers(-(10**40), -(2**63) - 1))
def test_an_integer_beyond_64_bits_is_refused_naming_the_key(key, value):
    from dint.core.config import load_config

    refused(
        lambda: load_config(None, {"data.store": "S.zarr", key: str(value)}),
        f"--{key}: {key} = {value}",
        "is out of range (a 64-bit integer",
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(-(2**63), 2**63 - 1))
def test_every_seed_accepted_seeds_torch(seed):
    from dint.core.config import load_config

    config = load_config(None, {"data.store": "S.zarr", "train.seed": str(seed)})
    torch.manual_seed(config.train.seed)
    torch.Generator().manual_seed(config.train.seed + 1)  # the evaluation sample's


def signal(shape: tuple[int, ...], chunks: tuple[int, ...]):
    from dint.data.store import SignalInfo

    return SignalInfo(
        "image" if len(shape) == 2 else "volume",
        shape,
        1,
        "uint8",
        (0.0, 255.0),
        tuple((-1.0, 1.0) for _ in shape),
        chunks,
        "x.png",
        "0" * 64,
    )


@settings(max_examples=50, deadline=None)
@given(points=st.integers(1, 10**6), sample=st.integers(1, 10**12))
def test_an_evaluation_sample_larger_than_the_signal_is_refused(points, sample):
    from dint.core.config import check_against_store, load_config

    config = load_config(None, {"data.store": "S.zarr", "eval.sample": str(sample)})
    info = signal((points, 1), (64, 1))
    if sample <= points:
        assert check_against_store(config, info) is info
    else:
        refused(
            lambda: check_against_store(config, info),
            f"--eval.sample: eval.sample = {sample} is more than the {points:,} points of the store",
        )


def test_an_evaluation_sample_that_cannot_fit_is_refused_before_drawing(memory, monkeypatch):
    from dint.core.config import EvalConfig
    from dint.train.evaluation import Evaluator

    monkeypatch.setattr(torch, "randint", lambda *a, **k: pytest.fail("drew the sample"))
    memory(64 * MiB)
    refused(
        lambda: Evaluator(
            EvalConfig(sample=10**9), signal((10**6, 10**6), (256, 256)), [], torch.device("cpu"), 1024, 0
        ),
        "eval.sample = 1000000000: the sample needs",
        "64.0 MiB is available",
    )


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 10**4), min_size=2, max_size=3),
    chunk=st.integers(1, 64),
    memory_mib=st.integers(1, 64),
)
def test_a_source_cut_into_more_chunks_than_memory_can_plan_is_refused_before_slicing(
    tmp_path_factory, memory, shape, chunk, memory_mib
):
    """--shape and --chunk of a raw file: dask's plan of its chunks is counted before it is laid out."""
    from dint.data.store import MAX_CHUNKS, PLAN_BYTES_PER_CHUNK

    raw = tmp_path_factory.mktemp("raw") / "sparse.raw"
    with open(raw, "wb") as f:
        f.truncate(math.prod(shape))  # sparse: no disk used
    memory(memory_mib * MiB)
    count = math.prod(-(-n // min(chunk, n)) for n in shape)
    modality = "image" if len(shape) == 2 else "volume"
    options = ReadOptions(modality=modality, shape=tuple(shape), dtype="uint8", chunk=chunk)
    if count > MAX_CHUNKS or count * PLAN_BYTES_PER_CHUNK > memory_mib * MiB:
        refused(lambda: read_source(raw, options), str(raw), f"make {count:,} chunks")
    else:
        assert read_source(raw, options).values.shape == (*shape, 1)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranks=st.integers(1, 1000), threads=st.integers(1, 8), cores=st.integers(1, 64), memory_gib=st.integers(1, 256))
def test_ranks_the_machine_cannot_run_are_refused(monkeypatch, ranks, threads, cores, memory_gib):
    monkeypatch.setattr(resources, "usable_cores", lambda: cores)
    monkeypatch.setattr(resources, "available_memory", lambda device=None: memory_gib << 30)
    fits_cores = ranks * threads <= resources.RANKS_PER_CORE * cores
    fits_memory = ranks * resources.RANK_PROCESS_BYTES <= memory_gib << 30
    if fits_cores and fits_memory:
        resources.require_ranks(ranks, threads, "--ranks X")
    else:
        refused(
            lambda: resources.require_ranks(ranks, threads, "--ranks X"),
            "--ranks X: ",
            "core(s)" if not fits_cores else "of memory",
        )


# --- A store that declares more chunks than it stores ----------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 10**7), min_size=1, max_size=3), chunk=st.integers(1, 4096))
def test_training_refuses_a_chunk_grid_its_tables_cannot_hold_before_building_them(monkeypatch, shape, chunk):
    from dint.data import sharding

    monkeypatch.setattr(resources, "available_memory", lambda device=None: 16 * MiB)
    info = signal(tuple(shape), tuple(min(chunk, n) for n in shape))
    count = math.prod(-(-n // c) for n, c in zip(info.shape, info.chunks))
    if count * sharding.TABLE_BYTES_PER_CHUNK > 16 * MiB:
        with monkeypatch.context() as patched:
            patched.setattr(sharding, "chunk_grid", lambda info: pytest.fail("built the chunk grid"))
            refused(
                lambda: sharding.rank_chunk_ids(info, 0, 1, "S.zarr"),
                f"S.zarr: {'x'.join(map(str, shape))} points",
                f"make {count:,} chunks: training's tables of them needs",
                "larger --chunk",
            )
    else:
        assert sharding.rank_chunk_ids(info, 0, 1, "S.zarr") == list(range(count))


# --- Disk: every writer checks its destination first ----------------------------------------


def stores_nothing(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.name != "in") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    channels=st.sampled_from([1, 3]),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    short=st.integers(1, 4096),
)
def test_a_store_is_refused_before_writing_when_the_disk_cannot_hold_it(
    tmp_path_factory, disk, height, width, channels, dtype, short
):
    import dask.array as da

    from dint.data.store import write_store

    folder = tmp_path_factory.mktemp("disk")
    info = signal((height, width), (16, 16))
    info = type(info)(**{**info.__dict__, "channels": channels, "dtype": dtype})
    nbytes = height * width * channels * np.dtype(dtype).itemsize
    disk(max(0, nbytes - short))
    values = da.zeros((height, width, channels), dtype=dtype, chunks=(16, 16, channels))
    refused(
        lambda: write_store(values, info, folder / "s.zarr"),
        f"{folder / 's.zarr'}: a store of {height}x{width}",
        f"is free on the disk of {folder}",
    )
    stores_nothing(folder)
    disk(nbytes)
    write_store(values, info, folder / "s.zarr")


def tiny_config():
    from dint.core.config import load_config

    return load_config(None, {"data.store": "S.zarr", "model.width": "8", "model.hidden_layers": "1"})


def tiny_model(info):
    from dint.fields.model import build_model

    return build_model(tiny_config().model, info)


def test_the_reconstruction_is_refused_before_writing_when_the_disk_cannot_hold_it(tmp_path, disk):
    from dint.distributed.collectives import DistInfo
    from dint.fields.render import render_reconstruction

    info = signal((48, 40), (16, 16))
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    disk(48 * 40 - 1)
    refused(
        lambda: render_reconstruction(tiny_model(info), info, tmp_path / "r.zarr", dist),
        f"{tmp_path / 'r.zarr'}: the reconstruction would write 1.9 KiB; 1.9 KiB is free",
    )
    assert list(tmp_path.iterdir()) == []
    disk(48 * 40)
    render_reconstruction(tiny_model(info), info, tmp_path / "r.zarr", dist)
    assert (tmp_path / "r.zarr").is_dir()


def test_a_render_is_refused_before_writing_when_the_disk_cannot_hold_its_pyramid(tmp_path, disk):
    from typer.testing import CliRunner

    from dint.commands.cli import app
    from dint.train.checkpoint import save_model

    info = signal((48, 40), (16, 16))
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "model.pt", tiny_model(info), tiny_config(), info)
    render = ["render", str(tmp_path / "run"), "--scale", "2", "--pyramid-top", "64", "--out", str(tmp_path / "r.zarr")]
    pyramid = 95 * 79 + 48 * 40  # --scale 2 of 48x40 is 95x79 (the end samples kept), then half that
    disk(pyramid - 1)
    result = CliRunner().invoke(app, render)
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'r.zarr'}: the render would write 9.2 KiB; 9.2 KiB is free" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    disk(pyramid)
    assert CliRunner().invoke(app, render).exit_code == 0


def test_a_checkpoint_and_the_model_are_refused_before_writing_when_the_disk_cannot_hold_them(tmp_path, disk):
    from dint.train.checkpoint import save_checkpoint, save_model

    state = {"format": 2, "step": 3, "parts": {"weights": torch.zeros(1000)}}
    disk(1 << 30)
    older = save_checkpoint(tmp_path, 2, state, keep=3)
    disk(3000)
    refused(
        lambda: save_checkpoint(tmp_path, 3, state, keep=3),
        f"{tmp_path / 'checkpoints'}: the checkpoint of step 3 would write",
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [older.name]
    info = signal((48, 40), (16, 16))
    refused(
        lambda: save_model(tmp_path / "model.pt", tiny_model(info), tiny_config(), info),
        f"{tmp_path / 'model.pt'}: the model would write",
    )
    assert not (tmp_path / "model.pt").exists()
