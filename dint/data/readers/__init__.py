"""Source readers: a signal file to a lazy (dask) array shaped (*spatial, channels).

One module per kind of file (image, tiles, audio, volume, mesh), each building only on
dint.data.readers.common (the options, the `Source`, lazy arrays, image decoding), never on a
sibling. Each reader takes the path and the `ReadOptions` and returns a `Source`;
`read_source` picks the reader from the file name (or `--modality`), then checks what every
signal must satisfy (not empty, finite values) and fills in the value range. Readers raise
DintError naming the file for anything they cannot read, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dint.core.errors import DintError
from dint.core.files import check_input
from dint.data.readers import audio, image, mesh, tiles, volume
from dint.data.readers.common import ReadOptions, Source, extension_of

MODALITY_CHOICES = ("auto", "audio", "image", "volume", "shape")

Reader = Callable[[Path, ReadOptions], Source]


def _read_tiff(path: Path, options: ReadOptions) -> Source:
    """A TIFF: several pages (Z, T, ...) make a volume, read out of core; else a 2D image."""
    if volume.is_tiff_stack(path):
        return volume.read_tiff_stack(path, options)
    return image.read_image(path, options)


def _readers() -> dict[str, Reader]:
    readers: dict[str, Reader] = {ext: image.read_image for ext in image.EXTENSIONS}
    readers.update({ext: _read_tiff for ext in (".tif", ".tiff")})
    for module in (audio, volume, mesh):
        readers.update({ext: module.read for ext in module.EXTENSIONS})
    return readers


def integer_range(dtype: np.dtype) -> tuple[float, float] | None:
    """Integers map their full type range to [-1, 1]; None for other types."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    return None


def read_source(path: Path, options: ReadOptions | None = None) -> Source:
    path, options = Path(path), options or ReadOptions()
    check_input(path, "file")
    readers = _readers()
    reader = readers.get(extension_of(path))
    if reader is None and path.is_dir():  # a folder of image tiles (dint.data.readers.tiles)
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
