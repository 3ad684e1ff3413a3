"""Rule 4, as the commands behave: what cannot fit in memory or on disk is refused in one line
(exit 2) before anything is decoded, allocated or written, from what the input or the options
declare. Each command runs in a process whose data segment is capped (ulimit -d), which dint
counts as the memory available: a refusal never depends on this machine's size, and a command
that would not refuse could not take the machine's memory either."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bombs import metaimage, nifti_gz, npz, png
from conftest import REPO, _env, cube_obj, make_image_store, run_cli, smooth_image, write_png

CAP = 1 << 30  # the data segment of every command here: dint-shard needs about 250 MiB of it for itself


def capped(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m args...` with its data segment capped at CAP; a command that runs past `timeout`
    fails the test (it did not refuse at once)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    try:
        return subprocess.run(
            [sys.executable, "-m", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=_env(),
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, args[:2]))} still ran after {timeout} s: it did not refuse at once")


def one_line(result: subprocess.CompletedProcess, *says: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in says:
        assert part in lines[0], lines[0]
    return lines[0]


# --- Decompression bombs: the inputs, a few KB to a few MB each ------------------------

BOMBS = {
    "a PNG declaring 100k x 100k 8-bit pixels": lambda d: png(d / "b.png", 100_000, 100_000),
    "an .npz whose member header claims 4 GB": lambda d: npz(d / "b.npz", (1000, 1000, 1000)),
    "a .nii.gz of 1250^3": lambda d: nifti_gz(d / "b.nii.gz", (1250, 1250, 1250)),
    "a compressed .mha": lambda d: metaimage(d / "b.mha", (2000, 2000, 1000), "MET_UCHAR"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path, bomb):
    source = BOMBS[bomb](tmp_path)
    started = time.monotonic()
    line = one_line(
        capped("dint.commands.cli", "shard", source, tmp_path / "b.zarr"),
        f"dint-shard: error: {source}: declares",
        "; decoding it needs",
        "of memory;",
    )
    assert "is available on this machine" in line
    assert time.monotonic() - started < 30 and sorted(p.name for p in tmp_path.iterdir()) == [source.name]


# --- Sizes taken from options ------------------------------------------------------------------


def test_too_many_chunks_of_a_raw_file_are_refused_before_any_is_planned(tmp_path):
    raw = tmp_path / "sparse.raw"
    with open(raw, "wb") as f:
        f.truncate(100_000 * 100_000)  # sparse: 10 GB declared, no disk used
    one_line(
        capped(
            "dint.commands.cli",
            "shard",
            raw,
            tmp_path / "s.zarr",
            "--shape",
            "100000,100000",
            "--dtype",
            "uint8",
            "--chunk",
            "1",
            "--modality",
            "image",
        ),
        f"{raw}: 100000x100000 points in chunks of 1x1 make 10,000,000,000 chunks",
    )
    one_line(
        capped(
            "dint.commands.cli",
            "shard",
            raw,
            tmp_path / "s.zarr",
            "--shape",
            "100000,100000",
            "--dtype",
            "uint8",
            "--chunk",
            "100",
            "--modality",
            "image",
        ),
        "make 1,000,000 chunks: dask's plan of them needs 15.3 GiB of memory;",
        "pass a larger --chunk",
    )
    assert not (tmp_path / "s.zarr").exists()


def test_ranks_this_machine_cannot_run_are_refused_before_any_starts(tmp_path, sharded_smooth_image):
    one_line(
        capped(
            "dint.commands.cli",
            "scale",
            "--ranks",
            "1,100",
            "--steps",
            "5",
            "--out",
            tmp_path / "out",
            "--data.store",
            sharded_smooth_image,
        ),
        "dint scale: error: --ranks 1,100: 100 rank(s)",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, says",
    [
        (["--train.seed", str(10**30)], f"--train.seed: train.seed = {10**30} is out of range (a 64-bit integer"),
        (
            ["--eval.sample", str(10**9)],
            "--eval.sample: eval.sample = 1000000000 is more than the 1,920 points of the store",
        ),
        (["--eval.sample", str(10**30)], "--eval.sample: eval.sample = 10000000000000000000000000000"),
    ],
)
def test_training_refuses_sizes_from_options_that_cannot_be(tmp_path, sharded_smooth_image, option, says):
    one_line(
        capped("dint.train", "--data.store", sharded_smooth_image, "--run.dir", tmp_path / "run", *option),
        f"dint.train: error: {says}",
    )
    assert not (tmp_path / "run").exists()


# --- A store that declares far more chunks than it stores -----------------------------------


@pytest.fixture
def declares_a_trillion_points(tmp_path) -> Path:
    """The 48x40 store of make_image_store, declaring 10^6 x 10^6 points in chunks of 16x16 (3.9
    billion chunks, 9 stored) without the every-chunk-stored mark: missing chunks read as zeros."""
    store = make_image_store(tmp_path)
    group = json.loads((store / "zarr.json").read_text())
    group["attributes"]["dint"]["shape"] = [10**6, 10**6]
    (store / "zarr.json").write_text(json.dumps(group))
    array = json.loads((store / "values" / "zarr.json").read_text())
    array["shape"] = [10**6, 10**6, 1]
    array["attributes"] = {}
    (store / "values" / "zarr.json").write_text(json.dumps(array))
    return store


def test_verify_reads_the_chunks_a_store_holds_not_the_grid_it_declares(declares_a_trillion_points):
    result = capped("dint.commands.cli", "info", declares_a_trillion_points, "--verify")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"{declares_a_trillion_points}: all 9 stored chunks read; the other "
        "3,906,249,991 are not stored (read as zeros)"
    )


def test_training_refuses_at_once_the_tables_of_a_chunk_grid_that_cannot_fit(tmp_path, declares_a_trillion_points):
    one_line(
        capped("dint.train", "--data.store", declares_a_trillion_points, "--run.dir", tmp_path / "run"),
        f"dint.train: error: {declares_a_trillion_points}: 1000000x1000000 points in chunks of 16x16 make "
        "3,906,250,000 chunks: training's tables of them needs 3.6 TiB of memory;",
        "shard the signal again with a larger --chunk",
    )
    assert not (tmp_path / "run").exists()


# --- Disk ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root and mount permission needed, else the test is skipped)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], capture_output=True)


@pytest.mark.parametrize(
    "source, options, size",
    [
        ("cube.obj", ["--resolution", "128"], "2.0 MiB"),  # 128^3 occupancy: the issue's --resolution 5000, smaller
        ("photo.png", [], "1.1 MiB"),  # 640x600 RGB
    ],
)
def test_a_store_larger_than_the_free_disk_is_refused_before_writing(tmp_path, small_disk, source, options, size):
    path = (
        cube_obj(tmp_path / source)
        if source.endswith(".obj")
        else write_png(tmp_path / source, smooth_image(600, 640, 3))
    )
    one_line(
        capped("dint.commands.cli", "shard", path, small_disk / "s.zarr", *options),
        f"dint-shard: error: {small_disk / 's.zarr'}: a store of ",
        f"would write {size}; 1.0 MiB is free on the disk of {small_disk}",
    )
    assert list(small_disk.iterdir()) == []


def test_a_mesh_grid_larger_than_the_disk_is_refused_at_once(tmp_path):
    """The issue's case: 5000^3 occupancy points are 116 GiB, more than this disk holds. Not
    capped: under the cap, dask's plan of its 493,039 chunks (7.5 GiB) is refused first."""
    if shutil.disk_usage(tmp_path).free >= 5000**3:
        pytest.skip("this disk could hold the store: dint-shard would write it")
    started = time.monotonic()
    result = run_cli(
        "dint.commands.cli",
        "shard",
        cube_obj(tmp_path / "cube.obj"),
        tmp_path / "m.zarr",
        "--resolution",
        "5000",
        timeout=60,
    )
    line = one_line(result, "dint-shard: error: ")
    assert (
        f"{tmp_path / 'm.zarr'}: a store of 5000x5000x5000 points x 1 uint8 would write 116.4 GiB;" in line
        or f"{tmp_path / 'cube.obj'}: 5000x5000x5000 points in chunks of 64x64x64 make 493,039 chunks: dask's "
        "plan of them needs 7.5 GiB of memory"
        in line
    ), line
    assert time.monotonic() - started < 30 and not (tmp_path / "m.zarr").exists()


def test_dint_shard_fits_what_fits(tmp_path):
    """The checks refuse only what cannot fit: the capped commands above shard an ordinary image."""
    source = write_png(tmp_path / "photo.png", smooth_image(600, 640, 3))
    result = capped("dint.commands.cli", "shard", source, tmp_path / "s.zarr")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.zarr" / "zarr.json").is_file()
