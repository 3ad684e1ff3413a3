"""The store format: atomic writes (dint.data.store.write_store) and validation (dint.data.store.open_store)."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from dint.core.errors import DintError
from dint.core.files import sha256_of
from dint.data.store import (
    FORMAT_VERSION,
    VALUES,
    SignalInfo,
    default_chunks,
    open_store,
    write_store,
)


def make_info(shape=(20, 24), channels=1, dtype="uint8", chunks=(8, 8), **overrides) -> SignalInfo:
    kind = np.dtype(dtype).kind
    top = float(np.iinfo(dtype).max) if kind in "ui" else 1.0
    fields = dict(
        modality="image",
        shape=tuple(shape),
        channels=channels,
        dtype=dtype,
        value_range=(0.0, top),
        domain=tuple((-1.0, 1.0) for _ in shape),
        chunks=tuple(chunks),
        source_name="test.png",
        source_sha256="ab" * 32,
    )
    fields.update(overrides)
    return SignalInfo(**fields)


def ramp(shape=(20, 24), channels=1, dtype=np.uint8, offset: int = 0) -> np.ndarray:
    """Distinct values everywhere (mod the dtype), so any misplaced chunk shows."""
    count = int(np.prod(shape)) * channels
    return (
        ((np.arange(count, dtype=np.int64) + offset) % (np.iinfo(dtype).max + 1))
        .astype(dtype)
        .reshape(*shape, channels)
    )


def leftovers(parent: Path, dest: Path) -> list[str]:
    """Hidden temporary or moved-aside folders that write_store may have left next to `dest`."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{dest.name}."))


def failing_values(array: np.ndarray, chunks, bad_block=(1, 1, 0)) -> da.Array:
    """A dask array equal to `array` except that computing block `bad_block` raises."""

    def compute(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == bad_block:
            raise RuntimeError("injected failure in one block")
        return block

    return da.from_array(array, chunks=chunks).map_blocks(compute, dtype=array.dtype)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def valid_store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    values = ramp((20, 24), 3)
    dest = write_store(da.from_array(values, chunks=(7, 9, 3)), make_info(channels=3), tmp_path / "valid.zarr")
    return dest, values


def edit_attrs(store: Path, **changes) -> None:
    group = zarr.open_group(str(store), mode="r+")
    attrs = dict(group.attrs["dint"])
    attrs.update(changes)
    group.attrs["dint"] = attrs


# ---------------------------------------------------------------------------------------------
# Writing and reading back


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_write_then_open_round_trips_values_and_info(tmp_path, dtype):
    values = ramp((20, 24), 3, np.uint16).astype(dtype)
    if dtype == "float32":
        values = values / 7.0 - 3.0
    info = make_info(channels=3, dtype=dtype, value_range=(-3.0, 100.0))
    # Dask blocks deliberately misaligned with the zarr chunks: write_store must rechunk.
    dest = write_store(da.from_array(values, chunks=(7, 9, 2)), info, tmp_path / "s.zarr")
    assert dest == tmp_path / "s.zarr"
    store = open_store(dest)
    assert store.info == info
    assert store.values.shape == (20, 24, 3)
    assert str(store.values.dtype) == dtype
    assert store.values.chunks == (8, 8, 3)
    np.testing.assert_array_equal(np.asarray(store.values[:]), values)
    np.testing.assert_array_equal(store.read_region((5, 17), (9, 7)), values[5:14, 17:24])
    assert leftovers(tmp_path, dest) == []


def test_attributes_layout(valid_store):
    dest, _ = valid_store
    attrs = dict(zarr.open_group(str(dest), mode="r").attrs["dint"])
    assert attrs == {
        "format_version": FORMAT_VERSION,
        "modality": "image",
        "shape": [20, 24],
        "channels": 3,
        "dtype": "uint8",
        "value_range": [0.0, 255.0],
        "domain": [[-1.0, 1.0], [-1.0, 1.0]],
        "chunks": [8, 8],
        "source": {"name": "test.png", "sha256": "ab" * 32},
        "extra": {},
    }
    assert SignalInfo.from_attrs(attrs, "x") == make_info(channels=3)


def test_write_store_rejects_values_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        write_store(da.zeros((20, 24, 2), dtype=np.uint8), make_info(channels=3), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    assert leftovers(tmp_path, tmp_path / "s.zarr") == []


def test_write_store_refuses_existing_destination_without_overwrite(valid_store):
    dest, values = valid_store
    before = snapshot(dest)
    with pytest.raises(DintError, match="already exists") as caught:
        write_store(da.from_array(ramp((20, 24), 3, offset=1)), make_info(channels=3), dest)
    assert str(dest) in str(caught.value)
    assert snapshot(dest) == before


def test_overwrite_replaces_the_old_store(valid_store):
    dest, values = valid_store
    new = ramp((10, 6), 1, offset=5)
    write_store(da.from_array(new), make_info(shape=(10, 6), chunks=(4, 4)), dest, overwrite=True)
    store = open_store(dest)
    assert store.info.shape == (10, 6) and store.info.channels == 1
    np.testing.assert_array_equal(np.asarray(store.values[:]), new)
    assert leftovers(dest.parent, dest) == []


# ---------------------------------------------------------------------------------------------
# A failing write leaves nothing behind, and never damages an old store


# write_store runs its own thread pool; these also hold with dask's synchronous scheduler set.
def synchronous():
    return dask.config.set(scheduler="synchronous")  # applies on creation: make one per use


def test_failing_write_leaves_no_store_and_no_temporary(tmp_path):
    dest = tmp_path / "s.zarr"
    values = failing_values(ramp((20, 24), 1), chunks=(8, 8, 1))
    with synchronous(), pytest.raises(RuntimeError, match="injected failure"):
        write_store(values, make_info(), dest)
    assert not dest.exists()
    assert leftovers(tmp_path, dest) == []
    assert list(tmp_path.iterdir()) == []


def test_failing_write_with_overwrite_keeps_the_old_store(valid_store):
    dest, old_values = valid_store
    before = snapshot(dest)
    new = failing_values(ramp((20, 24), 3, offset=3), chunks=(8, 8, 3))
    with synchronous(), pytest.raises(RuntimeError, match="injected failure"):
        write_store(new, make_info(channels=3), dest, overwrite=True)
    assert snapshot(dest) == before
    store = open_store(dest)
    assert store.info == make_info(channels=3)
    np.testing.assert_array_equal(np.asarray(store.values[:]), old_values)
    assert leftovers(dest.parent, dest) == []


def test_failing_threaded_write_with_overwrite_keeps_the_old_store(valid_store):
    dest, old_values = valid_store
    before = snapshot(dest)
    new = failing_values(ramp((20, 24), 3, offset=3), chunks=(8, 8, 3))
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(RuntimeError, match="injected"):
        write_store(new, make_info(channels=3), dest, overwrite=True)
    assert snapshot(dest) == before
    np.testing.assert_array_equal(np.asarray(open_store(dest).values[:]), old_values)


# When one dask task fails, dask re-raises at once while sibling tasks still run; write_store
# must wait for them before removing its temporary folder, or a late chunk recreates it.
def test_failing_write_leaves_no_temporary_even_when_other_blocks_are_still_running(tmp_path, monkeypatch):
    dest = tmp_path / "s.zarr"
    started = threading.Semaphore(0)
    cleaned = threading.Event()
    real_rmtree = shutil.rmtree

    def rmtree(*args, **kwargs):
        try:
            return real_rmtree(*args, **kwargs)
        finally:
            cleaned.set()

    monkeypatch.setattr(shutil, "rmtree", rmtree)

    def compute(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == (0, 0, 0):
            started.acquire(timeout=5)  # fail while a sibling block is in flight
            raise RuntimeError("injected failure in one block")
        started.release()
        cleaned.wait(timeout=5)  # a slow sibling: done only once write_store has cleaned up
        return block

    values = da.from_array(ramp((16, 16), 1), chunks=(8, 8, 1)).map_blocks(compute, dtype=np.uint8)
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(RuntimeError, match="injected failure"):
        write_store(values, make_info(shape=(16, 16)), dest)
    deadline = time.monotonic() + 3  # give late writes the time to land
    while time.monotonic() < deadline and not leftovers(tmp_path, dest):
        time.sleep(0.05)
    assert not dest.exists()
    assert leftovers(tmp_path, dest) == []


# ---------------------------------------------------------------------------------------------
# open_store refuses what is not a valid store, naming it


def refused(path: Path, match: str) -> DintError:
    with pytest.raises(DintError, match=match) as caught:
        open_store(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    return caught.value


def test_open_store_accepts_the_valid_store(valid_store):
    dest, values = valid_store
    np.testing.assert_array_equal(np.asarray(open_store(dest).values[:]), values)


def test_open_store_refuses_missing_path(tmp_path):
    refused(tmp_path / "absent.zarr", "not found")


def test_open_store_refuses_a_folder_that_is_not_a_zarr_group(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "note.txt").write_text("hello")
    refused(folder, "not a zarr v3 group")


def test_open_store_refuses_missing_dint_attribute(valid_store):
    dest, _ = valid_store
    group = zarr.open_group(str(dest), mode="r+")
    del group.attrs["dint"]
    refused(dest, "'dint' is missing")


def test_open_store_refuses_newer_format_version(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, format_version=FORMAT_VERSION + 1)
    refused(dest, f"version {FORMAT_VERSION + 1} is newer")


def test_open_store_refuses_shape_contradicting_the_array(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, shape=[21, 24])
    refused(dest, r"has shape \(20, 24, 3\), attributes say \(21, 24, 3\)")


def test_open_store_refuses_channels_contradicting_the_array(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, channels=1)
    refused(dest, "has shape")


def test_open_store_refuses_dtype_contradicting_the_array(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, dtype="uint16")
    refused(dest, "dtype uint8, attributes say uint16")


def test_open_store_refuses_chunks_contradicting_the_array(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, chunks=[4, 8])
    refused(dest, "chunks")


def test_open_store_refuses_missing_values_array(valid_store):
    dest, _ = valid_store
    group = zarr.open_group(str(dest), mode="r+")
    del group[VALUES]
    refused(dest, f"array '{VALUES}' is missing")


def test_open_store_refuses_unknown_modality(valid_store):
    dest, _ = valid_store
    edit_attrs(dest, modality="hologram")
    refused(dest, "unknown modality 'hologram'")


def test_open_store_refuses_missing_attribute_key(valid_store):
    dest, _ = valid_store
    group = zarr.open_group(str(dest), mode="r+")
    attrs = dict(group.attrs["dint"])
    del attrs["value_range"]
    group.attrs["dint"] = attrs
    refused(dest, "'value_range' is missing")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"shape": "abc"}, "malformed"),
        ({"domain": [[-1, 1]]}, "one entry per axis"),
        ({"value_range": [5, 5]}, "is empty"),
    ],
)
def test_open_store_refuses_malformed_attributes(valid_store, changes, match):
    dest, _ = valid_store
    edit_attrs(dest, **changes)
    refused(dest, match)


# ---------------------------------------------------------------------------------------------
# Helpers


def test_default_chunks():
    assert default_chunks((1000, 300)) == (256, 256)
    assert default_chunks((20, 300)) == (20, 256)
    assert default_chunks((20, 30), side=8) == (8, 8)
    assert default_chunks((100, 50, 70)) == (64, 50, 64)
    assert default_chunks((200000,)) == (65536,)


def test_sha256_of_matches_hashlib(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=100_003, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_of(path, block=4096) == hashlib.sha256(data).hexdigest()
