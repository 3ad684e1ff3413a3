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
from dint.readers import read_source
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
    src: str = typer.Argument(..., help="Signal file (PNG, JPEG, TIFF), or builtin:cameraman."),
    dest: Path = typer.Argument(..., help="The zarr v3 store to write, e.g. signal.zarr."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Chunk side per spatial axis (default: 256 for images)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
    keep_alpha: bool = typer.Option(False, "--keep-alpha", help="Keep an image's alpha channel (dropped by default)."),
) -> None:
    """Convert a signal into a chunked zarr v3 store, in parallel and out of core (dask)."""
    started = time.perf_counter()
    path = resolve_source(src)
    check_destination(dest, overwrite)
    if chunk is not None and chunk <= 0:
        raise DintError(f"--chunk {chunk}: must be a positive number of samples")
    source = read_source(path, keep_alpha=keep_alpha)
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


app.command("shard")(shard)
app.command("info")(info)
shard_app.command()(shard)

if __name__ == "__main__":
    app()
