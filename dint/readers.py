"""Source readers: a file on disk to a (lazy) array shaped (*spatial, channels).

Each reader returns a `Source`; `dint shard` turns it into a store. Readers raise DintError,
naming the file, for anything they cannot read, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dint.errors import DintError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclasses.dataclass
class Source:
    values: Any  # dask array (*spatial, C)
    modality: str
    value_range: tuple[float, float]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def value_range_of(dtype: np.dtype, values=None) -> tuple[float, float]:
    """Integers map their full type range to [-1, 1]; floats their data range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    lo, hi = float(values.min()), float(values.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("values contain NaN or Inf")
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _image_array(path: Path, keep_alpha: bool) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
    elif suffix == ".png" and _png_bit_depth(path) == 16:
        # Pillow truncates 16-bit colour PNGs to 8 bits; imagecodecs keeps all 16.
        import imagecodecs

        array = imagecodecs.png_decode(path.read_bytes())
    else:
        from PIL import Image

        with Image.open(path) as image:
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


def read_image(path: Path, keep_alpha: bool = False, **_: Any) -> Source:
    import dask.array as da

    try:
        array = _image_array(path, keep_alpha)
    except DintError:
        raise
    except Exception as e:  # Pillow, tifffile and imagecodecs each raise their own types
        raise DintError(f"{path}: not a readable image ({type(e).__name__}: {e})".splitlines()[0]) from None
    if array.size == 0:
        raise DintError(f"{path}: image is empty")
    try:
        value_range = value_range_of(array.dtype, array)
    except ValueError as e:
        raise DintError(f"{path}: {e}") from None
    return Source(values=da.from_array(np.ascontiguousarray(array)), modality="image", value_range=value_range)


READERS: dict[str, Callable[..., Source]] = {ext: read_image for ext in IMAGE_EXTENSIONS}


def read_source(path: Path, **options: Any) -> Source:
    path = Path(path)
    if not path.exists():
        raise DintError(f"{path}: file not found")
    if path.is_dir():
        raise DintError(f"{path}: is a folder, expected a signal file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted(READERS))
        raise DintError(f"{path}: unknown file type {path.suffix!r} (known: {known})")
    return reader(path, **options)
