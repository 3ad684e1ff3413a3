"""A folder of image tiles: one image assembled lazily from its tiles, each read when needed.

Naming. Every tile is named `<prefix><row>_<col>.<ext>`, e.g. tile_0_0.png, tile_0_1.png, ...:
`row` and `col` are the tile's grid position (decimal, zero padding allowed), numbered from 0
(or from 1 on both axes, as gdal_retile writes them), row 0 at the top and column 0 on the
left. All tiles share one prefix (any text, e.g. "tile_" or "scan_r") and one extension
(.png, .jpg, .jpeg, .tif, .tiff); other files in the folder (a README, hidden files) are
ignored. Every grid position must be present.

Sizes. All tiles have the same size, except that the tiles of the last row may be shorter
and those of the last column narrower (the image's edges); all tiles share one pixel format
(grey, RGB, ...; bit depth). Each tile decodes as dint-shard decodes an image of its own
(alpha dropped unless --keep-alpha). These checks read only the tiles' headers; a tile that
breaks them stops dint-shard before anything is written, with one line naming it. Each tile
is then decoded when its block of the image is written, so memory stays bounded by a few
tiles whatever the image size (keep tiles modest: up to a few thousand pixels a side).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import numpy as np

from dint.core.errors import DintError
from dint.core.files import shown
from dint.data.readers.common import (
    IMAGE_EXTENSIONS,
    ReadOptions,
    Source,
    error_message,
    image_array,
    open_image,
    png_bit_depth,
)

EXTENSIONS: tuple[str, ...] = ()  # folders are picked by read_source, not by extension
TILE_NAME = re.compile(r"^(?P<prefix>.*?)(?P<row>\d+)_(?P<col>\d+)(?P<ext>\.[A-Za-z]+)$")
NAMING = "<prefix><row>_<col>.<ext>, e.g. tile_0_0.png"


def read(path: Path, options: ReadOptions) -> Source:
    """The image a folder of tiles makes, as a lazy (H, W, C) array."""
    grid = _grid(path)
    headers = {position: _header(tile) for position, tile in grid.items()}
    rows, cols = 1 + max(r for r, _ in grid), 1 + max(c for _, c in grid)
    heights, widths = _sizes(path, grid, headers, rows, cols)
    reference = _same_format(grid, headers)
    channels, dtype = _decoded_format(grid[reference], headers[reference], options)
    return Source(
        values=_assemble(path, grid, heights, widths, channels, dtype, options),
        modality="image",
        extra={"tiles": {"grid": [rows, cols], "size": [heights[0], widths[0]]}},
    )


def _grid(path: Path) -> dict[tuple[int, int], Path]:
    """{(row, col): tile file}, numbered from 0, for a complete grid; DintError otherwise."""
    found: dict[tuple[str, str], dict[tuple[int, int], Path]] = collections.defaultdict(dict)
    folder = path.resolve()
    for file in sorted(path.iterdir()):
        match = TILE_NAME.match(file.name)
        if file.name.startswith(".") or not file.is_file() or not match:
            continue
        if match["ext"].lower() not in IMAGE_EXTENSIONS:
            continue
        if file.resolve().parent != folder:  # a link out of the folder: read only what was given
            raise DintError(
                f"{shown(file)}: links to {shown(file.resolve())}, outside the tile folder; dint reads "
                "only the tiles in it"
            )
        group = found[match["prefix"], match["ext"].lower()]
        position = (int(match["row"]), int(match["col"]))
        if position in group:
            raise DintError(f"{file}: tile row {position[0]}, column {position[1]} is also {group[position].name}")
        group[position] = file
    if not found:
        raise DintError(
            f"{path}: is a folder but holds no image tiles named {NAMING} "
            f"(a zarr array's folder name must end in .zarr)"
        )
    if len(found) > 1:
        kinds = ", ".join(f"{prefix}<row>_<col>{ext} ({len(tiles)})" for (prefix, ext), tiles in sorted(found.items()))
        raise DintError(f"{path}: holds tiles of several names or types: {kinds}; keep one kind per folder")
    (prefix, ext), tiles = next(iter(found.items()))
    first_row, first_col = min(r for r, _ in tiles), min(c for _, c in tiles)
    if (first_row, first_col) not in ((0, 0), (1, 1)):
        raise DintError(
            f"{path}: tile numbering starts at row {first_row}, column {first_col}; "
            f"number rows and columns from 0 (or both from 1)"
        )
    grid = {(r - first_row, c - first_col): file for (r, c), file in tiles.items()}
    rows, cols = 1 + max(r for r, _ in grid), 1 + max(c for _, c in grid)
    for r in range(rows):
        for c in range(cols):
            if (r, c) not in grid:
                some = next(iter(tiles.values())).name
                raise DintError(
                    f"{path}: tile row {r + first_row}, column {c + first_col} is missing "
                    f"(the tiles, named like {some}, make a {rows}x{cols} grid)"
                )
    return grid


def _header(tile: Path) -> tuple[int, int, tuple[Any, ...]]:
    """(height, width, format) from the tile's header, without decoding its pixels."""
    try:
        if tile.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(tile) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
                if "Y" not in axes or "X" not in axes:
                    raise ValueError(f"series axes {axes} have no Y and X")
                height, width = shape[axes.index("Y")], shape[axes.index("X")]
                rest = tuple((a, n) for a, n in zip(axes, shape) if a not in "YX")
                page = tif.pages.first
                return height, width, ("tiff", str(series.dtype), rest, int(page.photometric))
        with open_image(tile) as image:
            width, height = image.size
            bits = png_bit_depth(tile) if tile.suffix.lower() == ".png" else 8
            return height, width, (image.format, image.mode, bits, image.mode == "P" and "transparency" in image.info)
    except Exception as e:  # Pillow and tifffile each raise their own types
        raise DintError(error_message(tile, "not a readable image tile", e)) from None


def _most_common(values: list[int], prefer: int | None = None) -> int:
    """The most common value; ties go to `prefer`, then to the largest value."""
    counts = collections.Counter(values)
    return max(counts, key=lambda v: (counts[v], v == prefer, v))


def _sizes(path: Path, grid, headers, rows: int, cols: int) -> tuple[list[int], list[int]]:
    """Row heights and column widths; DintError naming the first tile that does not fit them."""
    inner_rows = [r for r in range(rows - 1)] or [0]
    inner_cols = [c for c in range(cols - 1)] or [0]
    height = _most_common([headers[r, c][0] for r in inner_rows for c in range(cols)])
    width = _most_common([headers[r, c][1] for r in range(rows) for c in inner_cols])
    last_height = _most_common([headers[rows - 1, c][0] for c in range(cols)], prefer=height)
    last_width = _most_common([headers[r, cols - 1][1] for r in range(rows)], prefer=width)
    heights = [height] * (rows - 1) + [last_height]
    widths = [width] * (cols - 1) + [last_width]
    for r in range(rows):
        for c in range(cols):
            h, w, _ = headers[r, c]
            if (h, w) != (heights[r], widths[c]):
                raise DintError(
                    f"{grid[r, c]}: tile is {h}x{w} pixels (height x width), expected "
                    f"{heights[r]}x{widths[c]} like the other tiles of its row and column"
                )
    if last_height > height:
        raise DintError(
            f"{grid[rows - 1, 0]}: the tiles of the last row are {last_height} pixels high, more than "
            f"the {height} of the others (only the last row and column may be smaller)"
        )
    if last_width > width:
        raise DintError(
            f"{grid[0, cols - 1]}: the tiles of the last column are {last_width} pixels wide, more "
            f"than the {width} of the others (only the last row and column may be smaller)"
        )
    return heights, widths


def _same_format(grid, headers) -> tuple[int, int]:
    """The position of a tile in the most common pixel format; DintError naming a tile in another."""
    formats = collections.Counter(header[2] for header in headers.values())
    common = max(formats, key=lambda f: (formats[f], f == headers[0, 0][2]))
    for position in sorted(grid):
        fmt = headers[position][2]
        if fmt != common:
            reference = next(p for p in sorted(grid) if headers[p][2] == common)
            raise DintError(
                f"{grid[position]}: pixel format {_describe(fmt)} differs from the other tiles' "
                f"{_describe(common)} (e.g. {grid[reference].name})"
            )
    return next(p for p in sorted(grid) if headers[p][2] == common)


def _describe(fmt: tuple) -> str:
    if fmt[0] == "tiff":
        _, dtype, rest, _photometric = fmt
        samples = "x".join(str(n) for _, n in rest) or "1"
        return f"TIFF {dtype} with {samples} samples"
    image_format, mode, bits, transparency = fmt
    return f"{image_format} {mode} {bits}-bit" + (" with transparency" if transparency else "")


def _decoded_format(tile: Path, header, options: ReadOptions) -> tuple[int, np.dtype]:
    """(channels, dtype) of a decoded tile, from decoding one tile."""
    array = _decode(tile, header[:2], None, None, options)
    return array.shape[2], array.dtype


def _decode(tile: Path, size, channels: int | None, dtype, options: ReadOptions) -> np.ndarray:
    """One tile as dint decodes an image, checked against the size (and format) expected of it."""
    try:
        array = image_array(tile, options.keep_alpha)
    except DintError:
        raise
    except MemoryError:
        raise DintError(f"{tile}: out of memory while decoding the tile") from None
    except Exception as e:
        raise DintError(error_message(tile, "not a readable image tile", e)) from None
    expected = (*size, channels if channels is not None else array.shape[2])
    if array.shape != expected or (dtype is not None and array.dtype != dtype):
        raise DintError(
            f"{tile}: decodes to {'x'.join(map(str, array.shape))} {array.dtype}, "
            f"expected {'x'.join(map(str, expected))} {dtype or array.dtype} like the other tiles"
        )
    return array


def _assemble(path: Path, grid, heights: list[int], widths: list[int], channels: int, dtype, options: ReadOptions):
    """The lazy image: one dask block per tile, decoded when that block is computed."""
    import dask.array as da
    from dask.base import tokenize

    def block(block_info=None):
        r, c, _ = block_info[None]["chunk-location"]
        return _decode(grid[r, c], (heights[r], widths[c]), channels, dtype, options)

    stats = [(str(file.resolve()), file.stat().st_mtime_ns, file.stat().st_size) for _, file in sorted(grid.items())]
    name = "dint-tiles-" + tokenize(stats, heights, widths, channels, str(dtype), options.keep_alpha)
    return da.map_blocks(
        block,
        chunks=(tuple(heights), tuple(widths), (channels,)),
        dtype=dtype,
        name=name,
        meta=np.empty((0, 0, 0), dtype),
    )
