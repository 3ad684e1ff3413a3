"""`dint-shard --scheduler`: the conversion on a dask.distributed cluster (a LocalCluster of
worker processes here) gives the same store as on this machine, and still publishes atomically."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import run_cli, smooth_image, write_png

from dint.data.store import SignalInfo, open_store, write_store

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    ) as local:
        yield local.scheduler_address


def chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "values").rglob("*")) if p.is_file()}


def test_the_cluster_writes_the_store_this_machine_writes(tmp_path, cluster):
    png = write_png(tmp_path / "img.png", smooth_image(70, 90, channels=3, seed=8))
    here, there = tmp_path / "here.zarr", tmp_path / "there.zarr"
    assert run_cli("dint.commands.cli", "shard", png, here, "--chunk", "16").returncode == 0
    result = run_cli("dint.commands.cli", "shard", png, there, "--chunk", "16", "--scheduler", cluster)
    assert result.returncode == 0, result.stderr
    assert open_store(there).info == open_store(here).info
    files = chunk_files(there)
    assert len(files) > 30 and files == chunk_files(here)  # every chunk, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.zarr", "img.png", "there.zarr"]


def test_a_failing_chunk_on_the_cluster_leaves_nothing(tmp_path, cluster):
    def fail_one(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == (1, 1, 0):
            raise RuntimeError("injected failure in one block")
        return block

    values = da.from_array(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48, 1), chunks=(16, 16, 1))
    info = SignalInfo(
        modality="image",
        shape=(48, 48),
        channels=1,
        dtype="uint8",
        value_range=(0.0, 255.0),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        chunks=(16, 16),
        source_name="x",
        source_sha256="0" * 64,
        extra={},
    )
    dest = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="injected failure"):
        write_store(values.map_blocks(fail_one, dtype=np.uint8), info, dest, scheduler=cluster)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_scheduler_is_one_line(tmp_path):
    png = write_png(tmp_path / "img.png", smooth_image(20, 20, channels=1, seed=1))
    result = run_cli(
        "dint.commands.cli",
        "shard",
        png,
        tmp_path / "s.zarr",
        "--scheduler",
        "tcp://127.0.0.1:1",
        "--scheduler-timeout",
        "1",
        timeout=120,
    )
    assert result.returncode == 2
    assert "--scheduler tcp://127.0.0.1:1: cannot reach the dask scheduler" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]
