"""Images: PNG, JPEG, TIFF; grey, grey+alpha, RGB(A), palette; 8 and 16 bits per sample.

A multi-page TIFF (a stack of slices) is a volume: it goes to dint.readers.volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dint.errors import DintError
from dint.readers import ReadOptions, Source

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _image_array(path: Path, keep_alpha: bool) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
        if array.ndim == 3 and axes[0] in "SC" and axes[1:] == "YX":  # planar colour: samples first
            array = np.moveaxis(array, 0, -1)
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


def read_image(path: Path, options: ReadOptions) -> Source:
    import dask.array as da

    if path.suffix.lower() in (".tif", ".tiff"):
        from dint.readers import volume

        if volume.is_tiff_stack(path):  # several pages (Z, T, ...): a volume, read out of core
            return volume.read_tiff_stack(path, options)
    try:
        array = _image_array(path, options.keep_alpha)
    except DintError:
        raise
    except Exception as e:  # Pillow, tifffile and imagecodecs each raise their own types
        raise DintError(f"{path}: not a readable image ({type(e).__name__}: {e})".splitlines()[0]) from None
    return Source(values=da.from_array(np.ascontiguousarray(array)), modality="image")
