"""Images: PNG, JPEG, TIFF; grey, grey+alpha, RGB(A), palette; 8 and 16 bits per sample.

A multi-page TIFF (a stack of slices) is a volume: read_source hands it to dint.data.readers.volume.
A 2D TIFF (grey or colour, plain or BigTIFF, striped or tiled, any compression tifffile
decodes; level 0 of a pyramid) is read out of core, whatever its size: memory-mapped when
uncompressed and contiguous, else region by region through tifffile's zarr interface, in
dask blocks that hold whole TIFF tiles (or strips). PNG and JPEG files are decoded whole:
cut a larger-than-memory image into a folder of tiles (dint.data.readers.tiles) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dint.core.errors import DintError
from dint.data.readers.common import (
    IMAGE_EXTENSIONS,
    ReadOptions,
    Regions,
    Source,
    aligned_blocks,
    check_dtype,
    error_message,
    image_array,
    lazy_array,
    native_order,
    store_chunks,
)

EXTENSIONS = IMAGE_EXTENSIONS


def read_image(path: Path, options: ReadOptions) -> Source:
    import dask.array as da

    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff_image(path, options)
    try:
        array = image_array(path, options.keep_alpha)
    except DintError:
        raise
    except Exception as e:  # Pillow, tifffile and imagecodecs each raise their own types
        raise DintError(error_message(path, "not a readable image", e)) from None
    return Source(values=da.from_array(np.ascontiguousarray(array)), modality="image")


def read_tiff_image(path: Path, options: ReadOptions) -> Source:
    """A 2D TIFF (Y, X[, samples]) as a lazy (H, W, C) image, read out of core."""
    try:
        return _read_tiff_image(path, options)
    except DintError:
        raise
    except MemoryError:
        raise DintError(f"{path}: out of memory while reading") from None
    except Exception as e:  # tifffile and zarr each raise their own types
        raise DintError(error_message(path, "not a readable image", e)) from None


def _read_tiff_image(path: Path, options: ReadOptions) -> Source:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]  # its first level: the full resolution of a pyramid
        axes, shape, dtype = series.axes, tuple(int(s) for s in series.shape), np.dtype(series.dtype)
    check_dtype(path, dtype)
    keep = [i for i, (axis, n) in enumerate(zip(axes, shape)) if n > 1 or axis in "YX"]
    kept = "".join(axes[i] for i in keep)
    channel = [a for a in kept if a in "SC"]
    if sorted(kept) != sorted("YX" + "".join(channel)) or len(channel) > 1:
        raise DintError(
            f"{path}: TIFF series with axes {axes} {shape}: dint reads 2D images (Y, X) with at most one channel axis"
        )
    order = [kept.index("Y"), kept.index("X"), *(kept.index(c) for c in channel)]  # to (Y, X[, C])
    final = tuple(shape[keep[i]] for i in order)
    store = store_chunks(final, bool(channel), options)
    try:  # uncompressed and contiguous: memory-mapped
        source, source_chunks = tifffile.memmap(path, series=0, mode="r"), None
        if source.shape != shape:
            raise ValueError(f"mapped shape {source.shape} differs from the series shape {shape}")
    except Exception:  # compressed, tiled or scattered strips: chunk by chunk through tifffile's zarr view
        import zarr

        node = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
        if isinstance(node, zarr.Group):  # defensive: a multiscale group, its full-resolution level
            node = node[sorted(node.array_keys())[0]]
        if tuple(node.shape) != shape:
            raise DintError(f"{path}: TIFF series reads as {tuple(node.shape)}, its pages say {shape}") from None
        source = Regions(path, node.shape, node.dtype, node.__getitem__, base=node)
        source_chunks = node.chunks
    # Blocks in the series' own axis order (whole TIFF tiles or strips), unit axes dropped, then (Y, X[, C]).
    by_axis = {keep[i]: store[position] for position, i in enumerate(order)}
    wanted = tuple(by_axis.get(i, 1) for i in range(len(shape)))
    chunks = wanted if source_chunks is None else aligned_blocks(shape, source_chunks, wanted)
    values = lazy_array(path, source, chunks, "tiff")
    values = values[tuple(slice(None) if i in keep else 0 for i in range(len(shape)))].transpose(order)
    values = native_order(values)
    if not channel:
        values = values[..., None]
    elif values.shape[-1] in (2, 4) and not options.keep_alpha:
        values = values[..., :-1]
    return Source(values=values, modality="image")
