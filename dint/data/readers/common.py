"""What the readers share: the options they take, the `Source` they return, one-line error
messages, lazy dask arrays over files, and the decoding of one image file.

Every reader module (image, tiles, audio, volume, mesh) imports what it shares from here
(and from the lower layers dint.core.errors and dint.data.store), never from a sibling reader; the
package (dint.data.readers) imports the readers and picks one per file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dint.core.errors import DintError, one_line
from dint.core.packages import need
from dint.core.resources import check_decoded_size


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


def extension_of(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def error_message(path: Path, what: str, error: BaseException) -> str:
    """`path`: `what` (the error's type: what it says first), on one line: a name with a newline
    is escaped when printed, not cut there."""
    return f"{path}: {what} ({type(error).__name__}: {one_line(error)})"


# Lazy arrays over files


class Regions:
    """An array-like for dask.array.from_array that reads regions through `read(index)`.

    Any failure becomes a DintError naming the file: these reads run inside dask while the
    store is written, and dask re-raises the task's exception as it is, so the CLI still
    prints one line instead of a traceback. `base` is what is read (a np.memmap, a zarr
    array, nibabel's proxy, ...), kept for inspection.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, read: Callable[[tuple], Any], base: Any = None):
        self.path, self.shape, self.dtype, self._read = path, tuple(shape), np.dtype(dtype), read
        self.ndim = len(self.shape)
        self.base = base

    def __getitem__(self, index):
        try:
            block = self._read(index)
        except DintError:
            raise
        except EOFError as e:
            raise DintError(error_message(self.path, "truncated file", e)) from None
        except Exception as e:
            raise DintError(error_message(self.path, "corrupt or unreadable data", e)) from None
        return np.asarray(block, dtype=self.dtype)


def lazy_array(path: Path, source, chunks, kind: str):
    """A dask array over `source`: a np.memmap, an in-memory array or a `Regions`.

    Arrays go through `Regions` too: dask.array.from_array copies anything that has a
    .copy() method, which for a np.memmap means reading the whole file into memory. The
    blocks are counted first (dint.data.store.check_chunk_count): dask lays out a task per
    block as soon as the array is sliced, before any other check could refuse too many.
    """
    import dask.array as da
    from dask.base import tokenize

    from dint.data.store import check_chunk_count

    if isinstance(chunks, tuple) and 0 not in source.shape:
        check_chunk_count(tuple(source.shape), chunks, path)
    if isinstance(source, np.ndarray):
        source = Regions(path, source.shape, source.dtype, source.__getitem__, base=source)
    stat = os.stat(path) if path.is_file() else None
    name = f"dint-{kind}-" + tokenize(
        str(path.resolve()), stat and (stat.st_mtime_ns, stat.st_size), source.shape, str(source.dtype), chunks
    )
    return da.from_array(source, chunks=chunks, name=name, meta=np.empty((0,) * source.ndim, source.dtype))


def store_chunks(shape: tuple[int, ...], has_channels: bool, options: ReadOptions) -> tuple[int, ...]:
    from dint.data.store import default_chunks

    spatial = shape[:-1] if has_channels else shape
    return (*default_chunks(spatial, options.chunk), *shape[len(spatial) :])


def aligned_blocks(shape, source_chunks, store_chunks) -> tuple[int, ...]:
    """Dask blocks holding whole source chunks and, where cheap, whole store chunks."""
    blocks = []
    for n, s, t in zip(shape, source_chunks, store_chunks):
        s, t = max(1, int(s)), max(1, int(t))
        both = math.lcm(s, t)
        blocks.append(min(n, both if both <= 4 * max(s, t) else s * -(-t // s)))
    return tuple(blocks)


def check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DintError(f"{path}: holds Python objects (dtype {dtype}), not numbers")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise DintError(f"{path}: structured dtype {dtype} is not supported; save plain numbers")
    if dtype.kind not in "biuf":
        raise DintError(f"{path}: values of type {dtype} are not supported (integers, floats or booleans)")


def native_order(values):
    return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))


def float_audio_range(values) -> tuple[float, float] | None:
    """(-1, 1) if all |x| <= 1, else (-m, m), m = max |x|; None when not finite (read_source reports it)."""
    import dask.array as da

    peak = float(da.abs(values).max().compute())
    if not np.isfinite(peak):
        return None
    return (-1.0, 1.0) if peak <= 1.0 else (-peak, peak)


# One image file, decoded whole (the image reader's PNG and JPEG files, and each tile of a folder)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Each decoder's most memory in use while it decodes, a multiple of the decoded array (measured
# on 64 to 384 MiB images): tifffile decodes into the array it returns; imagecodecs holds its
# output and a copy of it.
TIFF_DECODE_PEAK = 1.1
PNG16_DECODE_PEAK = 2.1
OUT_OF_CORE_IMAGE = "cut it into a folder of tiles, or save it as a tiled TIFF: dint reads those out of core"
# Pillow holds its own image (1 byte a pixel for L, P and 1; 4 for every other mode), a
# converted one for P, 1, CMYK, YCbCr, LAB and HSV (4 bytes a pixel), and numpy's copy goes
# through a bytes object of the same size: e.g. 3 bytes a pixel for L, 10 for RGB, 11 for P
# (measured: 3.0, 10.0 and 11.0), and 5% for what else is in flight.
_PILLOW_CONVERTED = ("P", "1", "CMYK", "YCbCr", "LAB", "HSV")


def pillow_decode_bytes(mode: str, channels: int) -> float:
    """Bytes a pixel that Pillow and numpy hold at once while dint decodes an image of `mode`
    into `channels` samples of 1 byte."""
    own = 1 if mode in ("L", "P", "1") else 4
    return 1.05 * (own + (4 if mode in _PILLOW_CONVERTED else 0) + 2 * channels)


def png_header(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) from a PNG's IHDR chunk, without decoding it."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise DintError(f"{path}: not a PNG file")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(head[25], 4)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), channels


def png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def open_image(path: Path):
    """`path` opened with Pillow (its header read, nothing decoded). dint's own limit (declared
    bytes at the decoder's peak, every bit depth: check_decoded_size) replaces Pillow's pixel
    count, which spares 16-bit images, refuses gigapixel images that fit, and warns on stderr."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def image_array(path: Path, keep_alpha: bool) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_decoded_size(path, tuple(series.shape), series.dtype.itemsize, TIFF_DECODE_PEAK, OUT_OF_CORE_IMAGE)
            array, axes = series.asarray(), series.axes
        if array.ndim == 3 and axes[0] in "SC" and axes[1:] == "YX":  # planar colour: samples first
            array = np.moveaxis(array, 0, -1)
    elif suffix == ".png" and png_bit_depth(path) == 16:
        # Pillow truncates 16-bit colour PNGs to 8 bits; imagecodecs keeps all 16. Pillow's
        # pixel limit does not apply here: the declared size is checked before inflating.
        imagecodecs = need("imagecodecs", "imagecodecs", "reading 16-bit PNG images")

        width, height, channels = png_header(path)
        check_decoded_size(path, (height, width, channels), 2, PNG16_DECODE_PEAK, OUT_OF_CORE_IMAGE)
        array = imagecodecs.png_decode(path.read_bytes())
    else:
        with open_image(path) as image:
            palette = 4 if "transparency" in image.info else 3  # a palette image decodes to RGB(A)
            channels = max(palette if image.mode == "P" else 1, len(image.getbands()))
            peak = pillow_decode_bytes(image.mode, channels) / channels
            check_decoded_size(path, (image.height, image.width, channels), 1, peak, OUT_OF_CORE_IMAGE)
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("L" if mode == "1" else "RGB")
            array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DintError(f"{path}: image has {array.ndim} dimensions, expected 2 (grey) or 3 (colour)")
    if array.shape[2] in (2, 4) and not keep_alpha:
        array = array[:, :, :-1]
    return array
