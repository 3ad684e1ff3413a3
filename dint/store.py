"""The dint store: one signal as a chunked zarr v3 group.

Layout (documented in README, "Store format"):

    DEST.zarr/              zarr v3 group, attribute "dint" = SignalInfo below
      values                array (*spatial, C) in the source dtype, chunked over the
                            spatial axes only (a chunk holds every channel of its points)

Writing goes through dask so chunks are written in parallel and out of core, under a
temporary name that is renamed into place only once complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dint.errors import DintError

FORMAT_VERSION = 1
VALUES = "values"
MODALITIES = ("audio", "image", "volume", "shape")
# Points per chunk aimed at by the default chunking: large enough for fast reads,
# small enough that a rank's shard is balanced to within a chunk.
_DEFAULT_CHUNK_SIDE = {1: 65536, 2: 256, 3: 64}


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
    def from_attrs(cls, attrs: dict[str, Any], where: str) -> "SignalInfo":
        try:
            version = int(attrs["format_version"])
            if version > FORMAT_VERSION:
                raise DintError(
                    f"{where}: store format version {version} is newer than this dint "
                    f"reads ({FORMAT_VERSION}); upgrade dint"
                )
            info = cls(
                modality=str(attrs["modality"]),
                shape=tuple(int(s) for s in attrs["shape"]),
                channels=int(attrs["channels"]),
                dtype=str(attrs["dtype"]),
                value_range=tuple(float(v) for v in attrs["value_range"]),
                domain=tuple(tuple(float(v) for v in d) for d in attrs["domain"]),
                chunks=tuple(int(c) for c in attrs["chunks"]),
                source_name=str(attrs["source"]["name"]),
                source_sha256=str(attrs["source"]["sha256"]),
                extra=dict(attrs.get("extra", {})),
                format_version=version,
            )
        except DintError:
            raise
        except KeyError as e:
            raise DintError(f"{where}: store attribute {e} is missing") from None
        except (TypeError, ValueError) as e:
            raise DintError(f"{where}: store attributes are malformed ({e})") from None
        if info.modality not in MODALITIES:
            raise DintError(f"{where}: unknown modality {info.modality!r} (known: {', '.join(MODALITIES)})")
        if len(info.domain) != info.ndim or len(info.chunks) != info.ndim:
            raise DintError(f"{where}: attributes 'domain' and 'chunks' must have one entry per axis of 'shape'")
        if not info.value_range[1] > info.value_range[0]:
            raise DintError(f"{where}: value_range {list(info.value_range)} is empty")
        return info


def default_chunks(shape: tuple[int, ...], side: int | None = None) -> tuple[int, ...]:
    side = side or _DEFAULT_CHUNK_SIDE.get(len(shape), 64)
    return tuple(max(1, min(side, s)) for s in shape)


def sha256_of(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 of a file; of a folder (a zarr source), over its files' relative names and contents, sorted."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    return digest.hexdigest()


def check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse early, before any reading, what write_store would refuse late."""
    if dest.exists() and not overwrite:
        raise DintError(f"{dest}: already exists (pass --overwrite to replace it)")
    if not dest.parent.exists():
        raise DintError(f"{dest.parent}: output folder does not exist")


def write_store(values, info: SignalInfo, dest: Path, overwrite: bool = False) -> Path:
    """Write `values` (a dask array shaped (*info.shape, C)) as a store at `dest`, atomically.

    The store is built under a hidden temporary name and renamed into place, so a failure
    (bad chunk, full disk, Ctrl-C) leaves neither a partial store nor a damaged old one.
    """
    import dask.array as da

    dest = Path(dest)
    check_destination(dest, overwrite)
    expected = (*info.shape, info.channels)
    if tuple(values.shape) != expected:
        raise ValueError(f"values shape {values.shape} does not match the signal info {expected}")
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        array = group.create_array(
            VALUES,
            shape=expected,
            chunks=(*info.chunks, info.channels),
            dtype=info.dtype,
            fill_value=0,
            dimension_names=(*_axis_names(info), "c"),
        )
        # Aligning dask blocks with zarr chunks lets every task write whole chunks, lock-free.
        aligned = values.astype(info.dtype).rechunk((*info.chunks, info.channels))
        # Our own pool: when a task fails dask re-raises at once while sibling tasks still
        # run; waiting for them means none writes into `tmp` after it is removed below.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            try:
                da.store(aligned, array, lock=False, compute=True, scheduler="threads", pool=pool)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        group.attrs["dint"] = info.to_attrs()
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _axis_names(info: SignalInfo) -> tuple[str, ...]:
    return {1: ("t",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(info.ndim, tuple(f"d{i}" for i in range(info.ndim)))


def _replace(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    # Move the old store aside first: a directory cannot be atomically swapped for another.
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclasses.dataclass
class Store:
    """An opened store: its description and its (lazy) zarr array."""

    path: Path
    info: SignalInfo
    values: zarr.Array

    def read_region(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        index = tuple(slice(o, o + s) for o, s in zip(origin, shape))
        return np.asarray(self.values[index])


def open_store(path: str | os.PathLike) -> Store:
    """Open and validate a store; any problem is a DintError naming the store."""
    path = Path(path)
    if not path.exists():
        raise DintError(f"{path}: store not found")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises several unrelated types for a non-store
        raise DintError(f"{path}: not a zarr v3 group ({type(e).__name__})") from None
    if "dint" not in group.attrs:
        raise DintError(f"{path}: not a dint store (group attribute 'dint' is missing; make one with dint-shard)")
    info = SignalInfo.from_attrs(dict(group.attrs["dint"]), str(path))
    try:
        values = group[VALUES]
    except KeyError:
        raise DintError(f"{path}: array '{VALUES}' is missing") from None
    expected = (*info.shape, info.channels)
    if tuple(values.shape) != expected:
        raise DintError(f"{path}: array '{VALUES}' has shape {tuple(values.shape)}, attributes say {expected}")
    if str(values.dtype) != info.dtype:
        raise DintError(f"{path}: array '{VALUES}' has dtype {values.dtype}, attributes say {info.dtype}")
    if tuple(values.chunks[:-1]) != info.chunks:
        raise DintError(f"{path}: array '{VALUES}' has chunks {tuple(values.chunks)}, attributes say {info.chunks}")
    return Store(path=path, info=info, values=values)
