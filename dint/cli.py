"""Command line: `dint shard|info` and `dint-shard` (the same as `dint shard`)."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from dint.errors import DintError
from dint.readers import MODALITY_CHOICES, ReadOptions, read_source
from dint.store import SignalInfo, check_destination, default_chunks, open_store, sha256_of, write_store

BUILTIN_SIGNALS = {
    # scikit-image ships this 512x512 grey photograph (CC0) in its wheel.
    "cameraman": lambda: Path(__import__("skimage").__file__).parent / "data" / "camera.png",
}

app = typer.Typer(help="dint: distributed Implicit Neural Teaching for neural fields.", add_completion=False,
                  no_args_is_help=True, pretty_exceptions_enable=False)
shard_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def one_line_errors(command: str):
    """Turn a DintError into one line on stderr and exit code 2, never a traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except DintError as e:
                print(f"{command}: error: {e}", file=sys.stderr)
                raise typer.Exit(e.exit_code) from None

        return run

    return wrap


def resolve_source(src: str) -> Path:
    if src.startswith("builtin:"):
        name = src.removeprefix("builtin:")
        if name not in BUILTIN_SIGNALS:
            raise DintError(f"{src}: unknown built-in signal (known: {', '.join('builtin:' + n for n in BUILTIN_SIGNALS)})")
        return BUILTIN_SIGNALS[name]()
    return Path(src)


@one_line_errors("dint-shard")
def shard(
    src: str = typer.Argument(..., help="Signal file (audio, image, volume, mesh), or builtin:cameraman."),
    dest: Path = typer.Argument(..., help="The zarr v3 store to write, e.g. signal.zarr."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file), audio, image, volume or shape."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Chunk side per spatial axis (default: 65536 audio, 256 images, 64 volumes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
    keep_alpha: bool = typer.Option(False, "--keep-alpha", help="Keep an image's alpha channel (dropped by default)."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Raw binaries: spatial shape, e.g. 93,64,64."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Raw binaries: sample type, e.g. uint16, <f4."),
    resolution: int = typer.Option(256, "--resolution", help="Meshes: grid points per axis."),
    field: str = typer.Option("occupancy", "--field", help="Meshes: occupancy (inside = 1) or sdf."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Keep a box of the signal: start:stop per spatial "
                                       "axis, e.g. 1000:2024,1500:2524 (read lazily, out of core)."),
) -> None:
    """Convert a signal into a chunked zarr v3 store, in parallel and out of core (dask)."""
    started = time.perf_counter()
    path = resolve_source(src)
    check_destination(dest, overwrite)
    options = _read_options(modality, chunk, keep_alpha, shape, dtype, resolution, field)
    source = read_source(path, options)
    if crop is not None:
        box = _parse_crop(crop, source.values.shape[:-1])
        source.values = source.values[box]
        source.extra["crop"] = [[b.start, b.stop] for b in box]  # in the source's sample indices
    shape, channels = tuple(source.values.shape[:-1]), int(source.values.shape[-1])
    info = SignalInfo(
        modality=source.modality,
        shape=shape,
        channels=channels,
        dtype=str(source.values.dtype),
        value_range=source.value_range,
        domain=tuple((-1.0, 1.0) for _ in shape),
        chunks=default_chunks(shape, chunk),
        source_name=path.name,
        source_sha256=sha256_of(path),
        extra=source.extra,
    )
    write_store(source.values, info, dest, overwrite=overwrite)
    seconds = time.perf_counter() - started
    print(f"{dest}: {info.modality} {'x'.join(map(str, shape))}x{channels} {info.dtype}, "
          f"chunks {'x'.join(map(str, info.chunks))}, written in {seconds:.1f} s")


def _parse_crop(text: str, shape: tuple[int, ...]) -> tuple[slice, ...]:
    parts = text.split(",")
    if len(parts) != len(shape):
        raise DintError(f"--crop {text}: give start:stop for each of the {len(shape)} axes of shape {shape}")
    box = []
    for part, size in zip(parts, shape):
        try:
            start, stop = (int(v) for v in part.split(":"))
        except ValueError:
            raise DintError(f"--crop {text}: {part!r} is not start:stop") from None
        if not 0 <= start < stop <= size:
            raise DintError(f"--crop {text}: {part} is outside the axis of size {size}")
        box.append(slice(start, stop))
    return tuple(box)


def _read_options(modality, chunk, keep_alpha, shape, dtype, resolution, field) -> ReadOptions:
    if modality not in MODALITY_CHOICES:
        raise DintError(f"--modality {modality}: must be one of {', '.join(MODALITY_CHOICES)}")
    if chunk is not None and chunk <= 0:
        raise DintError(f"--chunk {chunk}: must be a positive number of samples")
    if resolution < 2:
        raise DintError(f"--resolution {resolution}: must be at least 2")
    if field not in ("occupancy", "sdf"):
        raise DintError(f"--field {field}: must be occupancy or sdf")
    parsed_shape = None
    if shape is not None:
        try:
            parsed_shape = tuple(int(s) for s in shape.split(","))
            if not parsed_shape or min(parsed_shape) <= 0:
                raise ValueError
        except ValueError:
            raise DintError(f"--shape {shape}: expected positive integers separated by commas, e.g. 93,64,64") from None
    return ReadOptions(modality=modality, keep_alpha=keep_alpha, shape=parsed_shape, dtype=dtype,
                       resolution=resolution, field=field, chunk=chunk)


@one_line_errors("dint info")
def info(
    store: Path = typer.Argument(..., help="A store made by dint-shard."),
    as_json: bool = typer.Option(False, "--json", help="Print the attributes as JSON."),
) -> None:
    """Describe what a store holds."""
    opened = open_store(store)
    signal = opened.info
    if as_json:
        print(json.dumps(signal.to_attrs(), indent=2))
        return
    values = opened.values
    chunk_count = values.nchunks
    stored = sum(f.stat().st_size for f in opened.path.rglob("*") if f.is_file())
    rows = [
        ("store", str(opened.path)),
        ("format version", signal.format_version),
        ("modality", signal.modality),
        ("shape", " x ".join(map(str, signal.shape)) + f" ({signal.num_points:,} points)"),
        ("channels", signal.channels),
        ("dtype", signal.dtype),
        ("value range", f"[{signal.value_range[0]:g}, {signal.value_range[1]:g}] -> [-1, 1]"),
        ("domain", " x ".join(f"[{lo:g}, {hi:g}]" for lo, hi in signal.domain)),
        ("chunks", " x ".join(map(str, signal.chunks)) + f" ({chunk_count} chunks)"),
        ("bytes", f"{values.nbytes:,} raw, {stored:,} on disk"),
        ("source", f"{signal.source_name} (sha256 {signal.source_sha256[:16]}...)"),
    ]
    rows += [(key, value) for key, value in signal.extra.items()]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


@one_line_errors("dint render")
def render(
    run_dir: Path = typer.Argument(..., help="A training run folder (holding model.pt)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Store to write (default: RUN_DIR/reconstruction.zarr, "
                                       "or RUN_DIR/reconstruction_<shape>.zarr with --resolution)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Grid points per axis: one number for "
                                             "every axis, or one per axis (e.g. 1024,768)."),
    block_points: int = typer.Option(65536, "--block-points", help="Points per forward block."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Render a trained model again (store + PNG/WAV/slices/PLY), at another resolution if asked."""
    import torch

    from dint.components.checkpoint import load_trained
    from dint.data import chunk_grid
    from dint.distributed.utils import pick_device
    from dint.render import create_store, export_previews, publish, reconstruction_info, render_chunks

    model, signal, _ = load_trained(run_dir / "model.pt")
    shape = _parse_resolution(resolution, signal.ndim) if resolution else signal.shape
    target = reconstruction_info(signal, shape)
    dest = out or run_dir / ("reconstruction.zarr" if resolution is None else
                             f"reconstruction_{'x'.join(map(str, shape))}.zarr")
    if not dest.parent.is_dir():
        raise DintError(f"{dest.parent}: output folder does not exist")
    chosen = pick_device(device, 0)
    model.to(chosen)
    started = time.perf_counter()
    tmp = create_store(target, dest)
    with torch.no_grad():
        render_chunks(model, target, tmp, chunk_grid(target), chosen, block_points)
    publish(tmp, dest)
    files = [str(dest), *export_previews(dest).values()]
    print(f"{dest}: {target.modality} {'x'.join(map(str, shape))}, rendered in {time.perf_counter() - started:.1f} s; "
          f"wrote {', '.join(files)}")


def _parse_resolution(text: str, ndim: int) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * ndim
    if len(sizes) != ndim or min(sizes) < 1:
        raise DintError(f"--resolution {text}: expected one positive size, or {ndim} separated by commas")
    return sizes


app.command("shard")(shard)
app.command("info")(info)
app.command("render")(render)
shard_app.command()(shard)

if __name__ == "__main__":
    app()
