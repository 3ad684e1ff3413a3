"""The dint store: one signal as a chunked zarr v3 group.

Layout (documented in docs/store-format.md):

    DEST.zarr/              zarr v3 group, attribute "dint" = SignalInfo below
      values                array (*spatial, C) in the source dtype, chunked over the
                            spatial axes only (a chunk holds every channel of its points)

Writing goes through dask so chunks are written in parallel and out of core, under a
staging name that is renamed into place only once complete (dint.core.files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import numbers
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from dint.core.errors import DintError, one_line, warn
from dint.core.errors import quoted as _short
from dint.core.files import (
    check_input,
    checked_files,
    exclusive,
    is_dint_store,
    lock_output,
    lock_path,
    require_output_folder,
    shown,
    staged,
)
from dint.core.packages import need
from dint.core.resources import require_disk, require_memory

FORMAT_VERSION = 1
# Set in the `values` array's attributes ({"dint": {"every_chunk_stored": true}}) by
# `create_values_array`: every chunk is a file (even one of fill values, which zarr leaves out
# by default), so a missing file is damage, which open_store and read_region report. Arrays
# without it (stores written before) read a missing chunk as fill values, as zarr does.
EVERY_CHUNK_STORED = "every_chunk_stored"
VALUES = "values"
MODALITIES = ("audio", "image", "volume", "shape")
# The spatial axes of each modality, as the readers make them: the code downstream (pictures,
# previews, sampling) indexes by them, so a store that says otherwise is refused when opened.
MODALITY_AXES = {"audio": 1, "image": 2, "volume": 3, "shape": 3}
SHAPE_FIELDS = ("occupancy", "sdf")
# Points per chunk aimed at by the default chunking: large enough for fast reads,
# small enough that a rank's shard is balanced to within a chunk.
_DEFAULT_CHUNK_SIDE = {1: 65536, 2: 256, 3: 64}
# A chunk read that fails (I/O error, undecodable bytes, file gone) is tried this many times
# in all, waiting READ_BACKOFF_S, then twice that, ... in between: a network file system's
# hiccup passes, a damaged chunk fails the run naming it.
READ_TRIES = 3
READ_BACKOFF_S = 0.5


@dataclasses.dataclass(frozen=True)
class SignalInfo:
    """What a store holds; saved as the group attribute "dint"."""

    modality: str
    shape: tuple[int, ...]  # spatial shape, e.g. (H, W)
    channels: int
    dtype: str  # storage dtype of `values`, e.g. "uint8"
    value_range: tuple[float, float]  # maps to [-1, 1] for training
    domain: tuple[tuple[float, float], ...]  # coordinate interval per spatial axis
    chunks: tuple[int, ...]  # spatial chunk shape
    source_name: str
    source_sha256: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # modality specifics
    format_version: int = FORMAT_VERSION

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_points(self) -> int:
        return math.prod(self.shape)

    def float32_problem(self) -> tuple[str, str] | None:
        """(key, problem) when value_range or domain cannot be used in float32, as training and
        rendering use them (endpoints beyond float32, a span that overflows or rounds to 0);
        None when both can."""
        for key, intervals in (("value_range", [self.value_range]), ("domain", list(self.domain))):
            for axis, (lo, hi) in enumerate(intervals):
                where = f" at axis {axis}" if key == "domain" else ""
                with np.errstate(over="ignore", invalid="ignore"):
                    lo32, hi32 = np.float32(lo), np.float32(hi)
                    span = np.float32(hi32 - lo32)
                if not (np.isfinite(lo32) and np.isfinite(hi32) and np.isfinite(span)):
                    return (
                        key,
                        f"overflows float32{where} (training computes in float32: |values| and their span "
                        f"must stay below {float(np.finfo(np.float32).max):.3g})",
                    )
                if not span >= np.finfo(np.float32).tiny:
                    return (
                        key,
                        f"is too narrow for float32{where} ([{lo:g}, {hi:g}] rounds to an empty or subnormal interval)",
                    )
        return None

    def to_attrs(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "modality": self.modality,
            "shape": list(self.shape),
            "channels": self.channels,
            "dtype": self.dtype,
            "value_range": list(self.value_range),
            "domain": [list(d) for d in self.domain],
            "chunks": list(self.chunks),
            "source": {"name": self.source_name, "sha256": self.source_sha256},
            "extra": self.extra,
        }

    @classmethod
    def from_attrs(cls, attrs: Any, where: str) -> SignalInfo:
        """Parse and check the "dint" attribute; any problem is a DintError naming `where` and the key."""
        if not isinstance(attrs, dict):
            raise DintError(f"{where}: store attribute 'dint' = {_short(attrs)} must be a JSON object")

        def bad(key: str, problem: str) -> DintError:
            return DintError(f"{where}: store attribute '{key}' = {_short(attrs[key])} {problem}")

        # The version first: a newer format may name or shape the other keys differently.
        if "format_version" not in attrs:
            raise DintError(f"{where}: store attribute 'format_version' is missing")
        version = attrs["format_version"]
        if not _is_int(version) or version < 1:
            raise bad("format_version", "is malformed (expected a positive integer)")
        if version > FORMAT_VERSION:
            raise DintError(
                f"{where}: store format version {version} is newer than this dint reads "
                f"({FORMAT_VERSION}); upgrade dint"
            )
        for key in ("modality", "shape", "channels", "dtype", "value_range", "domain", "chunks", "source"):
            if key not in attrs:
                raise DintError(f"{where}: store attribute '{key}' is missing")
        modality = attrs["modality"]
        if modality not in MODALITIES:
            raise DintError(f"{where}: unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
        shape = attrs["shape"]
        if not (isinstance(shape, (list, tuple)) and shape and all(_is_int(s) and s > 0 for s in shape)):
            raise bad("shape", "is malformed (expected a list of positive integers)")
        ndim = len(shape)
        if not (_is_int(attrs["channels"]) and attrs["channels"] > 0):
            raise bad("channels", "is malformed (expected a positive integer)")
        if not isinstance(attrs["dtype"], str):
            raise bad("dtype", 'is malformed (expected a dtype name such as "uint8")')
        value_range = attrs["value_range"]
        if not (isinstance(value_range, (list, tuple)) and len(value_range) == 2 and all(map(_is_finite, value_range))):
            raise bad("value_range", "is malformed (expected [lo, hi], two finite numbers)")
        if not value_range[0] < value_range[1]:
            raise bad("value_range", "is empty (needs lo < hi)")
        domain = attrs["domain"]
        if not (isinstance(domain, (list, tuple)) and len(domain) == ndim):
            raise bad("domain", f"must have one entry per axis of 'shape' ({ndim})")
        for axis, interval in enumerate(domain):
            if not (
                isinstance(interval, (list, tuple))
                and len(interval) == 2
                and all(map(_is_finite, interval))
                and interval[0] < interval[1]
            ):
                raise bad("domain", f"is malformed at axis {axis} (expected [lo, hi], finite numbers with lo < hi)")
        chunks = attrs["chunks"]
        if not (isinstance(chunks, (list, tuple)) and len(chunks) == ndim):
            raise bad("chunks", f"must have one entry per axis of 'shape' ({ndim})")
        if not all(_is_int(c) and c > 0 for c in chunks):
            raise bad("chunks", "is malformed (expected positive integers)")
        source = attrs["source"]
        if not (
            isinstance(source, dict) and isinstance(source.get("name"), str) and isinstance(source.get("sha256"), str)
        ):
            raise bad("source", 'is malformed (expected {"name": ..., "sha256": ...})')
        extra = attrs.get("extra", {})
        if not isinstance(extra, dict):
            raise bad("extra", "is malformed (expected a JSON object)")
        _check_consistency(attrs, where)
        info = cls(
            modality=modality,
            shape=tuple(int(s) for s in shape),
            channels=int(attrs["channels"]),
            dtype=attrs["dtype"],
            value_range=(float(value_range[0]), float(value_range[1])),
            domain=tuple((float(lo), float(hi)) for lo, hi in domain),
            chunks=tuple(int(c) for c in chunks),
            source_name=source["name"],
            source_sha256=source["sha256"],
            extra=dict(extra),
            format_version=int(version),
        )
        problem = info.float32_problem()
        if problem is not None:
            raise bad(*problem)
        return info


def _check_consistency(attrs: dict[str, Any], where: str) -> None:
    """The attributes agree with each other (each one's own form is checked already): the
    modality's number of axes, a dtype dint reads, and the modality specifics in 'extra' that
    dint uses (an audio sample rate, a shape's field, a crop)."""
    modality, shape, extra = attrs["modality"], attrs["shape"], attrs.get("extra", {})
    axes = MODALITY_AXES[modality]
    if len(shape) != axes:
        raise DintError(
            f"{where}: store attributes disagree: modality {modality!r} has {axes} axes, 'shape' = "
            f"{_short(shape)} has {len(shape)}"
        )
    try:
        kind = np.dtype(attrs["dtype"]).kind
    except (TypeError, ValueError):
        kind = None
    if kind is None or kind not in "biuf":
        raise DintError(
            f"{where}: store attribute 'dtype' = {_short(attrs['dtype'])} is not a type dint stores "
            "(integers, floats or booleans)"
        )
    if modality == "shape" and attrs["channels"] != 1:
        raise DintError(
            f"{where}: store attributes disagree: a shape is one field, 'channels' = {_short(attrs['channels'])}"
        )

    def bad_extra(key: str, expected: str) -> DintError:
        return DintError(f"{where}: store attribute 'extra.{key}' = {_short(extra[key])} is malformed ({expected})")

    if "sample_rate" in extra and not (_is_int(extra["sample_rate"]) and 0 < extra["sample_rate"] < 2**31):
        raise bad_extra("sample_rate", "expected a positive integer number of samples per second")
    if "field" in extra and extra["field"] not in SHAPE_FIELDS:
        raise bad_extra("field", f"expected one of {', '.join(SHAPE_FIELDS)}")
    crop = extra.get("crop")
    if crop is not None and not (
        isinstance(crop, list)
        and len(crop) == axes
        and all(isinstance(c, list) and len(c) == 2 and all(map(_is_int, c)) and 0 <= c[0] < c[1] for c in crop)
    ):
        raise bad_extra("crop", f"expected {axes} [start, stop] pairs of integers, one per axis")


def _is_int(value: Any) -> bool:  # numpy integers too (an info built in code, saved in a checkpoint)
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# Audio's time axis spans this many coordinate units per sample by default: a sine of the first
# layer (w0_first = 30, weights up to 1) then turns 0.02 rad a sample, as the SIREN paper's
# audio setting does (first-layer w0 = 3000 over [-1, 1]); over [-1, 1] speech does not train.
AUDIO_SPACING = 0.02 / 30.0


def default_domain(modality: str, shape: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """[-1, 1] on every axis; audio: centred, AUDIO_SPACING a sample (a 5 s clip at 16 kHz: +-26.7)."""
    if modality == "audio":
        half = max(1.0, (shape[0] - 1) * AUDIO_SPACING / 2)
        return ((-half, half),)
    return tuple((-1.0, 1.0) for _ in shape)


def default_chunks(shape: tuple[int, ...], side: int | None = None) -> tuple[int, ...]:
    side = side or _DEFAULT_CHUNK_SIDE.get(len(shape), 64)
    return tuple(max(1, min(side, s)) for s in shape)


MAX_CHUNKS = 1 << 24  # dask plans a task per chunk: beyond this the plan alone fills the memory
# What dask's plan to read, convert and write a chunk holds in memory (measured: about 12 KiB).
PLAN_BYTES_PER_CHUNK = 16 << 10


def check_chunk_count(shape: tuple[int, ...], chunks: tuple[int, ...], where: object = None) -> int:
    """The number of chunks of `shape`, refused (DintError, naming `where` when given) beyond
    MAX_CHUNKS or when dask's plan of them does not fit in the memory available."""
    count = math.prod(-(-n // c) for n, c in zip(shape, chunks))
    described = f"{'x'.join(map(str, shape))} points in chunks of {'x'.join(map(str, chunks))} make {count:,} chunks"
    described = f"{shown(where)}: {described}" if where is not None else described
    if count > MAX_CHUNKS:
        raise DintError(
            f"{described}, over the {MAX_CHUNKS:,} dask can plan on one machine; pass a larger "
            "--chunk (or, for a mesh, a smaller --resolution)"
        )
    require_memory(count * PLAN_BYTES_PER_CHUNK, f"{described}: dask's plan of them", hint="pass a larger --chunk")
    return count


def check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse early, before any reading, what write_store would refuse late: an existing DEST
    without --overwrite, and with it anything but a dint store."""
    if os.path.lexists(dest) and not overwrite:
        raise DintError(f"{shown(dest)}: already exists (pass --overwrite to replace it)")
    if os.path.lexists(dest) and not is_dint_store(dest):
        why = ""
        if dest.is_dir() and os.path.lexists(dest / "zarr.json"):
            try:  # what it holds there instead of dint's metadata, when that is what makes it not a store
                check_input(dest / "zarr.json", "zarr.json", holder=f"the store {shown(dest)}")
            except DintError as e:
                why = f" ({e})"
        raise DintError(
            f"{shown(dest)}: exists and is not a dint store{why}; --overwrite replaces only a dint store, "
            "so it is left as it is"
        )
    require_output_folder(dest)


def write_store(
    values,
    info: SignalInfo,
    dest: Path,
    overwrite: bool = False,
    scheduler: str | None = None,
    scheduler_timeout: float = 10.0,
) -> Path:
    """Write `values` (a dask array shaped (*info.shape, C)) as a store at `dest`, atomically.

    The store is built under a hidden temporary name and renamed into place, so a failure
    (bad chunk, full disk, Ctrl-C) leaves neither a partial store nor a damaged old one.
    `scheduler`: the address of a dask.distributed scheduler whose workers write the chunks
    (they must see `dest`'s folder at the same path: a shared filesystem); else this
    machine's threads; `scheduler_timeout`: seconds to wait for it to answer.
    """
    import dask.array as da

    dest = Path(dest)
    check_destination(dest, overwrite)
    expected = (*info.shape, info.channels)
    if tuple(values.shape) != expected:
        raise ValueError(f"values shape {values.shape} does not match the signal info {expected}")
    require_disk(
        store_bytes(info),
        f"{shown(dest)}: a store of {'x'.join(map(str, info.shape))} points x {info.channels} {info.dtype}",
        dest.parent,
    )
    with lock_output(dest), staged(dest, may_replace=is_dint_store if overwrite else None) as tmp:
        check_destination(dest, overwrite)  # again, under the lock: another writer may have finished meanwhile
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        array = create_values_array(group, info)
        # Aligning dask blocks with zarr chunks lets every task write whole chunks, lock-free
        # (one writer per chunk, on one machine or many).
        aligned = _whole_blocks(values, info).astype(info.dtype).rechunk((*info.chunks, info.channels))
        if scheduler:
            _store_on_cluster(da.store(aligned, array, lock=False, compute=False), scheduler, scheduler_timeout)
        else:
            # Our own pool: when a task fails dask re-raises at once while sibling tasks still
            # run; waiting for them means none writes into `tmp` after it is removed below.
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                try:
                    da.store(aligned, array, lock=False, compute=True, scheduler="threads", pool=pool)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        group.attrs["dint"] = info.to_attrs()
    return dest


def store_bytes(info: SignalInfo) -> int:
    """What a store of `info` takes on disk, at most but for a few KB: its values uncompressed
    (zstd adds a few bytes a chunk to values it cannot compress, the metadata a few KB; a disk
    that only those fill still fails in one line while the store is written)."""
    return info.num_points * info.channels * np.dtype(info.dtype).itemsize


def _whole_blocks(values, info: SignalInfo):
    """`values` with every block checked, as it is computed, to be exactly the block it stands
    for: a reader that returns fewer values (a short read, a row where a tile was due) would
    otherwise be broadcast or padded into the store silently. One check for every reader."""

    def check(block, block_info=None):
        where = block_info[None]
        expected = tuple(where["chunk-shape"])
        if not isinstance(block, np.ndarray) or block.shape != expected:
            shape = getattr(block, "shape", None)
            origin = tuple(start for start, _ in where["array-location"])
            raise DintError(
                f"{info.source_name}: the reader gave {type(block).__name__} of shape {shape} for the "
                f"block at {origin} of shape {expected}; stopping rather than write values it did not "
                "define"
            )
        return block

    return values.map_blocks(check, dtype=values.dtype, meta=np.empty((0,) * values.ndim, values.dtype))


def _store_on_cluster(stored, address: str, timeout: float) -> None:
    """Run the store graph on the cluster at `address`; on failure, wait until none of its
    tasks still runs (none may write into the staging folder once it is removed)."""
    Client = need("distributed", "distributed", "dint shard --scheduler (dask.distributed)").Client
    try:
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise DintError(f"--scheduler {address}: cannot reach the dask scheduler ({one_line(e)})") from None
    with client:
        future = client.compute(stored)
        try:
            future.result()
        except BaseException:
            keys = {str(k) for k in stored.__dask_graph__()}
            client.cancel(future, force=True)
            while any(str(k) in keys for tasks in client.processing().values() for k in tasks):
                time.sleep(0.1)
            raise


def create_values_array(group: zarr.Group, info: SignalInfo) -> zarr.Array:
    """The `values` array of a new store in `group`, opened for writing every chunk.

    Every chunk written is stored, even one equal to the fill value, and the array says so
    (EVERY_CHUNK_STORED): a missing chunk is then damage that open_store reports, not zeros
    read in silence. Chunks carry a zstd checksum, so a damaged one fails to decode rather
    than decoding to wrong values. A writer that opens the array again must write with
    `writable_values`, or chunks of fill values are left out.
    """
    return group.create_array(
        VALUES,
        shape=(*info.shape, info.channels),
        chunks=(*info.chunks, info.channels),
        dtype=info.dtype,
        fill_value=0,
        dimension_names=(*axis_names(info.ndim), "c"),
        compressors=ZstdCodec(level=0, checksum=True),
        attributes={"dint": {EVERY_CHUNK_STORED: True}},
        config={"write_empty_chunks": True},
    )


def writable_values(store: str | os.PathLike) -> zarr.Array:
    """The `values` array of the store at `store`, opened to write chunks that are all stored."""
    return zarr.open_array(str(Path(store) / VALUES), mode="r+").with_config({"write_empty_chunks": True})


def axis_names(ndim: int) -> tuple[str, ...]:
    """Names of the spatial axes, as zarr's dimension names and OME-Zarr's axes give them."""
    return {1: ("t",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(ndim, tuple(f"d{i}" for i in range(ndim)))


# --- Values: the store's units, the training range [-1, 1], the storage dtype ---------------


def to_training(values, value_range: tuple[float, float]):
    """Store units to the training range: value_range maps onto [-1, 1] (numpy or torch)."""
    lo, hi = value_range
    return (values - lo) * (2.0 / (hi - lo)) - 1.0


def from_training(values, value_range: tuple[float, float]):
    """The training range [-1, 1] back to store units (numpy or torch)."""
    lo, hi = value_range
    return lo + (values + 1.0) * 0.5 * (hi - lo)


def to_unit(values: np.ndarray, info: SignalInfo) -> np.ndarray:
    """Store units to [0, 1] (the value range's ends), as float32, for pictures."""
    lo, hi = info.value_range
    return ((np.asarray(values, dtype=np.float32) - lo) / (hi - lo)).clip(0.0, 1.0)


def to_dtype(values: np.ndarray, dtype: str, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Float values in store units to the storage dtype: integers rounded and clipped to the
    dtype (and to `value_range` when given), booleans true from 0.5."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind in "ui":
        limits = np.iinfo(dtype)
        lo, hi = value_range or (limits.min, limits.max)
        return np.clip(np.rint(values), max(limits.min, lo), min(limits.max, hi)).astype(dtype)
    return values.astype(dtype)


@dataclasses.dataclass
class Store:
    """An opened store: its description and its (lazy) zarr array.

    Read through `read_region`: it retries a failing chunk and turns what the storage or codec
    library raises into a DintError naming the store and the chunk. `values` itself reads
    with neither (and, in a version 1 store, reads a missing chunk as zeros).
    """

    path: Path
    info: SignalInfo
    values: zarr.Array
    # Set by open_store where the array says EVERY_CHUNK_STORED: every chunk is a file at
    # `chunk_key`, checked before each read. Other stores, and other arrays served as a Store
    # (e.g. a `dint render` pyramid level), get the retries without the file checks.
    chunk_files: bool = False
    # open_store(held_for=...): the shared lock that keeps writers from replacing the store
    # while it is read; `release` lets it go (so does the end of the process).
    held: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack, repr=False)

    def release(self) -> None:
        """Let go of the store: a writer may replace it again."""
        self.held.close()

    def read_region(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Values of the box at `origin` (spatial) of `shape`, all channels: (*shape, C)."""
        origin, shape = tuple(int(o) for o in origin), tuple(int(s) for s in shape)
        if (
            len(origin) != self.info.ndim
            or len(shape) != self.info.ndim
            or any(o < 0 or s < 0 or o + s > size for o, s, size in zip(origin, shape, self.info.shape))
        ):
            raise ValueError(f"region at {origin} of shape {shape} is outside the signal of shape {self.info.shape}")
        index = tuple(slice(o, o + s) for o, s in zip(origin, shape))
        if 0 in shape:
            return np.empty((*shape, self.info.channels), dtype=self.info.dtype)
        for attempt in range(1, READ_TRIES + 1):
            try:
                self._require_chunk_files(origin, shape)
                return np.asarray(self.values[index])
            except (MemoryError, DintError):  # a chunk that is a link or a pipe: no retry reads it
                raise
            except Exception as e:  # OSError, the codec's RuntimeError/ValueError, ...: all name no chunk
                reason = one_line(e)
            chunk = self.describe_chunk(self._failing_chunk(origin, shape))
            if attempt == READ_TRIES:
                raise DintError(f"{self.path}: {chunk} cannot be read ({reason}); gave up after {READ_TRIES} tries")
            delay = READ_BACKOFF_S * 2 ** (attempt - 1)
            warn(
                f"{self.path}: {chunk} cannot be read ({reason}); retrying in {delay:g} s "
                f"(try {attempt + 1} of {READ_TRIES})"
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def chunk_grid_shape(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) for s, c in zip(self.info.shape, self.info.chunks))

    def chunk_key(self, index: tuple[int, ...]) -> str:
        """The chunk's file under the store, e.g. "values/c/1/2/0" (the channel axis is one chunk)."""
        return f"{VALUES}/{self.values.metadata.encode_chunk_key((*index, 0))}"

    def describe_chunk(self, index: tuple[int, ...]) -> str:
        """How messages name a chunk: its grid index, first point and (when known) file."""
        origin = tuple(i * c for i, c in zip(index, self.info.chunks))
        where = f" ({self.chunk_key(index)})" if self.chunk_files else ""
        return f"chunk {_tuple(index)} at {_tuple(origin)}{where}"

    def verify(self) -> int:
        """Read every stored chunk once (as training would, with retries); the number of chunks
        read. A chunk that is not stored reads as fill values, which holds nothing to check (in a
        store whose every chunk is stored, open_store found none missing): the work is bounded
        by what is on disk, not by the grid a store declares."""
        stored = self.stored_chunks()
        for index in stored:
            origin = tuple(i * c for i, c in zip(index, self.info.chunks))
            self.read_region(
                origin, tuple(min(c, size - o) for o, c, size in zip(origin, self.info.chunks, self.info.shape))
            )
        return len(stored)

    def stored_chunks(self) -> list[tuple[int, ...]]:
        """Grid indices of the chunks whose files exist, in C order: one walk over the files
        present, however many chunks the store declares."""
        array = getattr(self.values, "array", self.values)  # a pyramid level: its (C, *spatial) array
        channel_axis = 0 if array is not self.values else len(self.info.shape)
        encoding = array.metadata.chunk_key_encoding
        prefix = f"c{encoding.separator}" if encoding.name == "default" else ""
        grid = list(self.chunk_grid_shape())
        grid.insert(channel_axis, 1)
        root = self.path / array.path
        found = set()
        for folder, _, files in os.walk(root):
            relative = Path(folder).relative_to(root).as_posix()
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                index = _grid_index(key.replace("/", encoding.separator), tuple(grid), prefix, encoding.separator)
                if index is not None:
                    found.add(index[:channel_axis] + index[channel_axis + 1 :])
        return sorted(found)

    def _chunks_of(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Grid indices of the chunks a region touches, in C order."""
        ranges = [range(o // c, max(o // c + 1, -(-(o + s) // c))) for o, s, c in zip(origin, shape, self.info.chunks)]
        return list(itertools.product(*ranges))

    def _require_chunk_files(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> None:
        # zarr reads a missing chunk as fill values; where every chunk was stored, one gone
        # since open_store (a file system failing, a file deleted) is an error.
        if not self.chunk_files:
            return
        for index in self._chunks_of(origin, shape):
            chunk = self.path / self.chunk_key(index)
            if not os.path.lexists(chunk):
                raise FileNotFoundError("the chunk file is missing")
            check_input(chunk, "chunk file", holder=f"the store {shown(self.path)}")

    def _failing_chunk(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        """The first chunk of a region that fails a read on its own (the first chunk if none does)."""
        chunks = self._chunks_of(origin, shape)
        if len(chunks) > 1:
            for index in chunks:
                lo = [i * c for i, c in zip(index, self.info.chunks)]
                box = tuple(slice(a, min(a + c, size)) for a, c, size in zip(lo, self.info.chunks, self.info.shape))
                try:
                    self._require_chunk_files(tuple(lo), tuple(b.stop - b.start for b in box))
                    np.asarray(self.values[box])
                except Exception:
                    return index
        return chunks[0]


def open_store(path: str | os.PathLike, held_for: str | None = None) -> Store:
    """Open and validate a store; any problem is a DintError naming the store.

    `held_for` (what reads it, e.g. "training run reading it"): the store is held until
    `Store.release`, by a shared lock on its writers' lock (lock_path), so that dint-shard
    --overwrite and dint render --out refuse to replace it meanwhile; a store being written
    is refused. A folder that takes no lock file (read-only) is read without one.

    Checks the metadata (valid JSON, zarr v3), the "dint" attribute (every key there, well
    formed, a known modality, a format this dint reads), that the array agrees with it (shape,
    dtype, chunks) and, where every chunk was stored, that every chunk's file exists. It reads no chunk:
    a damaged chunk is found when `Store.read_region` reads it.
    """
    path = Path(path)
    held = hold_for_reading(path, held_for) if held_for is not None else contextlib.ExitStack()
    try:
        store = _open_store(path)
    except BaseException:
        held.close()
        raise
    store.held = held
    return store


def hold_for_reading(path: Path, what: str) -> contextlib.ExitStack:
    """Share the lock of the dint store at `path` (lock_path) until the returned stack closes:
    its writers (dint-shard --overwrite, dint render --out) refuse to replace it meanwhile, and
    a store being written is refused. Nothing is held for a folder that takes no lock file
    (read-only), nor for what is not a folder."""
    held = contextlib.ExitStack()
    if Path(path).is_dir():
        held.enter_context(exclusive(lock_path(path), what, remove_after=True, shared=True, optional=True))
    return held


def _open_store(path: Path) -> Store:
    check_input(path, "store")
    if not path.is_dir():
        raise DintError(f"{path}: not a zarr v3 group (a file, not a folder)")
    store_files(path)  # every entry a plain file or folder, no link: checked before anything is opened
    _check_json(path / "zarr.json", path)
    if not (path / "zarr.json").is_file():
        if (path / ".zgroup").is_file() or (path / ".zarray").is_file():
            raise DintError(f"{path}: a zarr v2 store, not zarr v3 (make a dint store with dint-shard)")
        raise DintError(f"{path}: not a zarr v3 group (no zarr.json)")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as e:  # zarr raises several unrelated types for a non-store
        raise DintError(f"{path}: not a zarr v3 group ({type(e).__name__}: {one_line(e)})") from None
    if "dint" not in group.attrs:
        raise DintError(f"{path}: not a dint store (group attribute 'dint' is missing; make one with dint-shard)")
    info = SignalInfo.from_attrs(group.attrs["dint"], str(path))
    _check_json(path / VALUES / "zarr.json", path)
    try:
        values = group[VALUES]
    except KeyError:
        raise DintError(f"{path}: array '{VALUES}' is missing") from None
    except Exception as e:
        raise DintError(f"{path}: array '{VALUES}' cannot be opened ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(values, zarr.Array):
        raise DintError(f"{path}: '{VALUES}' is a group, not an array")
    expected = (*info.shape, info.channels)
    if tuple(values.shape) != expected:
        raise DintError(f"{path}: array '{VALUES}' has shape {tuple(values.shape)}, attributes say {expected}")
    if str(values.dtype) != info.dtype:
        raise DintError(f"{path}: array '{VALUES}' has dtype {values.dtype}, attributes say {info.dtype}")
    if tuple(values.chunks) != (*info.chunks, info.channels):
        raise DintError(
            f"{path}: array '{VALUES}' has chunks {tuple(values.chunks)}, attributes say "
            f"{info.chunks} (and all {info.channels} channels in each)"
        )
    if values.shards is not None:
        raise DintError(f"{path}: array '{VALUES}' is sharded (shards {values.shards}); dint stores are not")
    marker = values.attrs.get("dint")
    store = Store(
        path=path,
        info=info,
        values=values,
        chunk_files=isinstance(marker, dict) and marker.get(EVERY_CHUNK_STORED) is True,
    )
    if store.chunk_files:
        _check_chunk_files(store)
    return store


def store_files(path: Path) -> set[str]:
    """The files of the store at `path` ('/'-separated, relative to it), read by nothing yet:
    every entry is a plain file or folder (a named pipe would block zarr, a device never end)
    and none is a link (dint-shard writes none; one would feed the run another store's chunk)."""
    return checked_files(path, f"the store {shown(path)}")


def _check_chunk_files(store: Store) -> None:
    """Every chunk's file exists (one directory walk, no chunk read)."""
    present = set(store.stored_chunks())
    grid = store.chunk_grid_shape()
    total = math.prod(grid)
    # Bounded by the files on disk, not by the grid (a hostile store may declare billions of
    # chunks): look for the first missing one only among the first len(present) + 1 indices,
    # where it must be.
    found = len(present)
    if found == total:
        return
    first = next(
        index for index in itertools.islice(itertools.product(*map(range, grid)), found + 1) if index not in present
    )
    raise DintError(
        f"{store.path}: {store.describe_chunk(first)} is missing ({total - found} of {total} "
        "chunk files missing; the store is damaged: make it again with dint-shard)"
    )


def _grid_index(key: str, grid: tuple[int, ...], prefix: str, separator: str) -> tuple[int, ...] | None:
    """The chunk index of a key such as "c/i/j/0" (relative to its array) inside `grid`, or None
    for any other file."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split(separator)
    if len(parts) != len(grid):
        return None
    if not all(p.isascii() and p.isdigit() and p == str(int(p)) for p in parts):  # the one name of each chunk
        return None
    index = tuple(int(p) for p in parts)
    return index if all(i < n for i, n in zip(index, grid)) else None


def _check_json(file: Path, store: Path) -> None:
    """A metadata file that exists but is not JSON: zarr's own error names neither file nor store."""
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise DintError(f"{file}: cannot be read ({one_line(e)})") from None
    try:
        json.loads(text)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
        raise DintError(f"{file}: not valid JSON ({one_line(e)}); the store {store} is damaged") from None


def _tuple(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, values)) + ")"
