"""Small inputs whose headers declare a size: a few bytes that claim gigabytes (decompression
bombs), for the tests of rule 4 (refuse before starting what cannot fit)."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(path: Path, width: int, height: int, bit_depth: int = 8, colour: int = 0) -> Path:
    """A PNG whose header declares width x height (colour type `colour`) over a few bytes of data."""
    chunks = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))
    if colour == 3:
        chunks += _png_chunk(b"PLTE", bytes(3))
    chunks += _png_chunk(b"IDAT", zlib.compress(bytes(1000))) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def jpeg(path: Path, width: int, height: int) -> Path:
    """A baseline JPEG frame header declaring width x height grey pixels, and no image data."""

    def segment(marker: int, data: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data

    frame = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    path.write_bytes(
        b"\xff\xd8"
        + segment(0xDB, bytes(65))
        + segment(0xC0, frame)
        + segment(0xC4, bytes(17))
        + segment(0xDA, bytes([1, 1, 0, 0, 63, 0]))
        + bytes(100)
        + b"\xff\xd9"
    )
    return path


def npz(path: Path, shape: tuple[int, ...], dtype: str = "<f4", data: bytes | None = None) -> Path:
    """A compressed .npz whose member's array header declares `shape`; its data is `data`
    (default: a few KB of zeros, far less than declared)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("values.npy", header.getvalue() + (bytes(4096) if data is None else data))
    return path


def nifti_gz(path: Path, shape: tuple[int, ...], dtype=np.uint8, slope: float | None = None) -> Path:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    if slope is not None:
        header.set_slope_inter(slope, 1.0)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + bytes(4) + bytes(4096))
    return path


def metaimage(path: Path, size: tuple[int, int, int], element: str = "MET_FLOAT") -> Path:
    """A compressed .mha declaring `size` (X, Y, Z) over a few bytes of zlib data."""
    data = zlib.compress(bytes(1000))
    header = (
        f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, size))}\nElementType = {element}\n"
        f"CompressedData = True\nCompressedDataSize = {len(data)}\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + data)
    return path
