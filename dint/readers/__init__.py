"""Source readers: a signal file to a lazy (dask) array shaped (*spatial, channels).

One module per kind of file (image, audio, volume, mesh). Each reader takes the path and
the `ReadOptions` and returns a `Source`; `read_source` picks the reader from the file name
(or `--modality`), then checks what every signal must satisfy (not empty, finite values)
and fills in the value range. Readers raise DintError naming the file for anything they
cannot read, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dint.errors import DintError

MODALITY_CHOICES = ("auto", "audio", "image", "volume", "shape")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    modality: str = "auto"  # auto: from the file
    keep_alpha: bool = False  # images
    shape: tuple[int, ...] | None = None  # raw binaries
    dtype: str | None = None  # raw binaries
    resolution: int = 256  # meshes: grid points per axis
    field: str = "occupancy"  # meshes: occupancy or sdf
    chunk: int | None = None  # chunk side per axis (None: the store's default), for aligned lazy reads


@dataclasses.dataclass
class Source:
    values: Any  # dask array (*spatial, C)
    modality: str
    value_range: tuple[float, float] | None = None  # None: the data's min and max (floats)
    finite: bool = False  # the reader vouches for finite values (so the NaN scan, a full pass, is skipped)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


Reader = Callable[[Path, ReadOptions], Source]


def _readers() -> dict[str, Reader]:
    from dint.readers import image

    readers: dict[str, Reader] = {ext: image.read_image for ext in image.EXTENSIONS}
    for name in ("audio", "volume", "mesh"):
        try:
            module = __import__(f"dint.readers.{name}", fromlist=["EXTENSIONS", "read"])
        except ImportError:  # a reader module not written yet
            continue
        readers.update({ext: module.read for ext in module.EXTENSIONS})
    return readers


def extension_of(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def integer_range(dtype: np.dtype) -> tuple[float, float] | None:
    """Integers map their full type range to [-1, 1]; None for other types."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    return None


def read_source(path: Path, options: ReadOptions = ReadOptions()) -> Source:
    path = Path(path)
    if not path.exists():
        raise DintError(f"{path}: file not found")
    readers = _readers()
    reader = readers.get(extension_of(path))
    if reader is None and path.is_dir():  # a folder of image tiles (dint.readers.tiles)
        from dint.readers import tiles

        reader = tiles.read
    if reader is None:
        known = ", ".join(sorted(readers))
        raise DintError(f"{path}: unknown file type {extension_of(path)!r} (known: {known})")
    source = reader(path, options)
    if options.modality not in ("auto", source.modality):
        raise DintError(f"{path}: holds {source.modality} data, not {options.modality}")
    return _checked(path, source)


def _checked(path: Path, source: Source) -> Source:
    values = source.values
    if values.ndim < 2 or 0 in values.shape:
        raise DintError(f"{path}: the signal is empty (shape {tuple(values.shape)})")
    if source.finite and source.value_range is not None:
        return source
    if np.dtype(values.dtype).kind == "f":
        import dask

        lo, hi, finite = dask.compute(values.min(), values.max(), (~np.isfinite(values)).sum())
        if int(finite):
            raise DintError(f"{path}: {int(finite)} values are NaN or Inf")
        if source.value_range is None:
            lo, hi = float(lo), float(hi)
            source.value_range = (lo, hi) if hi > lo else (lo, lo + 1.0)
    elif source.value_range is None:
        source.value_range = integer_range(values.dtype)
        if source.value_range is None:
            raise DintError(f"{path}: values of type {values.dtype} are not supported")
    return source
