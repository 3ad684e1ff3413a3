"""Make large test signals (gigapixel images, 1024^3 volumes) from small real ones, out of core.

    .venv/bin/python tools/make_large_signal.py image --source ../shared/data/images/pluto/pluto_4408x4344_gray.jpg \\
        --size 32768 runs/pluto_32768.zarr
    .venv/bin/python tools/make_large_signal.py image --source ../shared/data/images/pluto/pluto_4408x4344_gray.jpg \\
        --size 32768 runs/pluto_32768.tif          # the same image as a tiled BigTIFF (tiles of 512)
    .venv/bin/python tools/make_large_signal.py volume --source ../shared/data/volumes/headsq_93x64x64_uint16.npy \\
        --size 1024 runs/headsq_1024.zarr

image: the source is tiled and mirrored (np.pad's "symmetric" mode, repeated): output pixel
(y, x) is source pixel (m(y, H), m(x, W)) where m(i, n) = i mod 2n if that is < n, else
2n - 1 - (i mod 2n). So the output's top-left H x W block is the source itself, the block to
its right is the source flipped left-right, the one below it flipped upside down, and so on.
volume: the source is resampled to the new size, corners to corners (output index i samples
source position i * (n_in - 1) / (n_out - 1)), trilinearly (default) or to the nearest voxel;
integer results are rounded to the nearest value.

The source is read with dint's own readers (any image or volume dint-shard reads). The output
is defined lazily, one dask task per output chunk, and written chunk by chunk, never whole:
- OUT.zarr: a dint store through dint.data.store.write_store (atomic), its source name saying how
  it was made, e.g. "pluto_4408x4344_gray.jpg tiled+mirrored to 32768x32768";
- OUT.tif / OUT.tiff (images): a tiled BigTIFF written tile by tile (--tile, --compression);
- OUT.npy: a .npy file written through a memory map (for memory-mapped input tests).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from dint.core.errors import DintError  # noqa: E402
from dint.core.files import sha256_of, staged  # noqa: E402
from dint.data.readers import ReadOptions, read_source  # noqa: E402
from dint.data.store import SignalInfo, check_destination, default_chunks, write_store  # noqa: E402

TIFF_COMPRESSIONS = {"none": None, "deflate": "zlib", "zstd": "zstd", "lzw": "lzw"}


# Index maps


def mirrored(index: np.ndarray, n: int) -> np.ndarray:
    """Tiled-and-mirrored source indices of output indices (np.pad "symmetric", repeated)."""
    i = np.asarray(index) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _sample_positions(start: int, stop: int, n_out: int, n_in: int) -> np.ndarray:
    """Source positions of output indices [start, stop): corners map to corners."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return np.arange(start, stop, dtype=np.float64) * scale


def tiled_block(source: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The (h, w, C) block `box` of the tiled-and-mirrored `source` (H, W, C)."""
    rows = mirrored(np.arange(box[0].start, box[0].stop), source.shape[0])
    cols = mirrored(np.arange(box[1].start, box[1].stop), source.shape[1])
    return source[rows[:, None], cols[None, :]]


def resampled_block(source: np.ndarray, box: tuple[slice, ...], out_shape: tuple[int, ...], method: str) -> np.ndarray:
    """The (bz, by, bx, C) block `box` of `source` (Z, Y, X, C) resampled to `out_shape` (Z, Y, X)."""
    dtype = source.dtype
    if method == "nearest":
        index = [
            np.floor(_sample_positions(b.start, b.stop, n, s) + 0.5).astype(np.intp)
            for b, n, s in zip(box, out_shape, source.shape)
        ]
        return source[np.ix_(*index, np.arange(source.shape[3]))]
    block = source
    for axis, (b, n, s) in enumerate(zip(box, out_shape, source.shape)):
        pos = _sample_positions(b.start, b.stop, n, s)
        lo = np.clip(np.floor(pos).astype(np.intp), 0, max(s - 2, 0))
        hi = np.minimum(lo + 1, s - 1)
        weight = pos - lo
        first = int(lo.min())  # only the source range this block needs
        part = np.take(block, np.arange(first, int(hi.max()) + 1), axis=axis).astype(np.float64, copy=False)
        shape = [1] * 4
        shape[axis] = len(weight)
        weight = weight.reshape(shape)
        block = np.take(part, lo - first, axis=axis) * (1 - weight) + np.take(part, hi - first, axis=axis) * weight
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        block = np.clip(np.rint(block), info.min, info.max)
    return block.astype(dtype)


# Lazy arrays


def lazy(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype, block: Callable[[tuple[slice, ...]], np.ndarray], name: str
):
    """A dask array whose every chunk is `block(box)`, computed only when that chunk is."""
    import dask.array as da
    from dask.array.core import normalize_chunks

    def task(block_info=None):
        location = block_info[None]["array-location"]
        return block(tuple(slice(a, b) for a, b in location))

    return da.map_blocks(
        task, chunks=normalize_chunks(chunks, shape), dtype=dtype, name=name, meta=np.empty((0,) * len(shape), dtype)
    )


# Writers


def write_tiff(values, out: Path, tile: int, compression: str, description: str) -> None:
    """A tiled BigTIFF, tile by tile (edge tiles zero-padded, as TIFF tiles are), atomically."""
    import tifffile

    height, width, channels = values.shape
    rows, cols = -(-height // tile), -(-width // tile)

    def tiles():
        for r in range(rows):
            # One row of tiles computed at a time (in parallel), then handed out tile by tile.
            strip = values[r * tile : (r + 1) * tile].compute(scheduler="threads")
            for c in range(cols):
                block = strip[:, c * tile : (c + 1) * tile]
                if block.shape[:2] != (tile, tile):
                    block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1]), (0, 0)))
                yield block if channels > 1 else block[..., 0]

    codec = TIFF_COMPRESSIONS[compression]
    with staged(out) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width, channels) if channels > 1 else (height, width),
            dtype=values.dtype,
            tile=(tile, tile),
            bigtiff=True,
            photometric="rgb" if channels == 3 else "minisblack",
            compression=codec,
            description=description,
            metadata=None,
        )


def write_npy(values, out: Path) -> None:
    """A .npy file written chunk by chunk through a memory map, atomically."""
    import dask.array as da

    squeezed = values[..., 0] if values.shape[-1] == 1 else values
    with staged(out) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=values.dtype, shape=squeezed.shape)
        da.store(squeezed, target, lock=False, scheduler="threads")
        target.flush()
        del target


# Commands


def _parse_size(text: str, ndim: int) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes *= ndim
    if len(sizes) != ndim or min(sizes) < 1:
        raise DintError(f"--size {text}: expected one positive size, or {ndim} separated by commas")
    return sizes


def build(args: argparse.Namespace):
    """(lazy values (*shape, C), SignalInfo) for the command line `args`."""
    from dask.base import tokenize

    src = Path(args.source)
    source = read_source(src, ReadOptions(modality=args.kind))
    array = np.ascontiguousarray(source.values.compute())  # the small source, in memory
    ndim = array.ndim - 1
    shape = _parse_size(args.size, ndim)
    chunks = default_chunks(shape, args.chunk)
    digest = sha256_of(src)
    size_text = "x".join(map(str, shape))
    if args.kind == "image":
        how = f"tiled+mirrored to {size_text}"
        block = lambda box: tiled_block(array, box)  # noqa: E731
    else:
        how = f"resampled ({args.method}) to {size_text}"
        block = lambda box: resampled_block(array, box, shape, args.method)  # noqa: E731
    name = "make-large-" + tokenize(args.kind, digest, shape, chunks, args.method)
    values = lazy((*shape, array.shape[-1]), (*chunks, array.shape[-1]), array.dtype, block, name)
    info = SignalInfo(
        modality=source.modality,
        shape=shape,
        channels=int(array.shape[-1]),
        dtype=str(array.dtype),
        value_range=source.value_range,
        domain=tuple((-1.0, 1.0) for _ in shape),
        chunks=chunks,
        source_name=f"{src.name} {how}",
        source_sha256=digest,
        extra={**source.extra, "made_by": "tools/make_large_signal.py " + shlex.join(args.argv)},
    )
    return values, info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, help_text in (("image", "tile and mirror an image"), ("volume", "resample a volume")):
        sub = kinds.add_parser(kind, help=help_text)
        sub.add_argument("--source", required=True, help="a small real signal dint-shard reads")
        sub.add_argument("--size", required=True, help="output side (one number), or one per axis (e.g. 1024,2048)")
        sub.add_argument("--chunk", type=int, default=None, help="store chunk side (default: dint-shard's)")
        sub.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        sub.add_argument(
            "out", type=Path, help="OUT.zarr (a dint store), OUT.npy" + (", OUT.tif" if kind == "image" else "")
        )
        if kind == "image":
            sub.add_argument("--tile", type=int, default=512, help="TIFF tile side (multiple of 16; default 512)")
            sub.add_argument(
                "--compression",
                choices=sorted(TIFF_COMPRESSIONS),
                default="deflate",
                help="TIFF compression (default deflate)",
            )
        else:
            sub.add_argument("--method", choices=("linear", "nearest"), default="linear")
    args = parser.parse_args(argv)
    args.argv = argv
    args.method = getattr(args, "method", None)
    try:
        started = time.perf_counter()
        out = args.out
        check_destination(out, args.overwrite)
        values, info = build(args)
        suffix = out.suffix.lower()
        if suffix in (".tif", ".tiff") and args.kind == "image":
            if args.tile <= 0 or args.tile % 16:
                raise DintError(f"--tile {args.tile}: TIFF tiles must be a positive multiple of 16")
            write_tiff(values, out, args.tile, args.compression, info.source_name)
        elif suffix == ".npy":
            write_npy(values, out)
        elif suffix == ".zarr":
            write_store(values, info, out, overwrite=args.overwrite)
        else:
            raise DintError(
                f"{out}: write OUT.zarr (a dint store), OUT.npy"
                + (" or OUT.tif (a tiled BigTIFF)" if args.kind == "image" else "")
            )
    except DintError as e:
        print(f"make_large_signal: error: {e}", file=sys.stderr)
        return 2
    raw = math.prod(values.shape) * values.dtype.itemsize
    print(
        f"{out}: {info.source_name}, {'x'.join(map(str, values.shape))} {info.dtype} "
        f"({raw / 1e9:.2f} GB raw), written in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
