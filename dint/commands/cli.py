"""Command line: `dint shard|info|train|render|bench|scale|report`, and `dint-shard` (the same as `dint shard`)."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import typer

from dint.core.errors import DintError, escaped, os_error_line, say, stop_on_sigterm, stopped_line
from dint.core.files import (
    check_input,
    check_outside_inputs,
    is_dint_store,
    is_plain_file,
    remove_unfinished,
    require_output_folder,
    sha256_of,
    shown,
)
from dint.core.packages import check_torch
from dint.data.readers import MODALITY_CHOICES, ReadOptions, read_source
from dint.data.store import (
    SignalInfo,
    check_chunk_count,
    check_destination,
    default_chunks,
    default_domain,
    hold_for_reading,
    open_store,
    write_store,
)

BUILTIN_SIGNALS = {
    # scikit-image ships this 512x512 grey photograph (CC0) in its wheel.
    "cameraman": lambda: Path(__import__("skimage").__file__).parent / "data" / "camera.png",
}

app = typer.Typer(
    help="dint: distributed Implicit Neural Teaching for neural fields.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
shard_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def one_line_errors(command: str):
    """Turn a DintError or an OS error (a read-only folder, a full disk) into one line on
    stderr and exit code 2, never a traceback; SIGTERM stops the command like Ctrl-C, its
    cleanups run, and it exits 143 (130 for Ctrl-C) with one line, which says whether anything
    half-written is left."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            stop_on_sigterm()
            try:
                check_torch()
                return fn(*args, **kwargs)
            except DintError as e:
                print(f"{command}: error: {escaped(str(e))}", file=sys.stderr)
                raise typer.Exit(e.exit_code) from None
            except OSError as e:
                print(f"{command}: error: {os_error_line(e)}", file=sys.stderr)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as e:
                line, code = stopped_line(e, remove_unfinished())
                print(f"{command}: {line}", file=sys.stderr)
                raise typer.Exit(code) from None
            finally:
                remove_unfinished()  # however it ended, no half-written output stays behind

        return run

    return wrap


def check_number(option: str, value: float | None, unit: str, positive: bool = False) -> None:
    """Refuse, before any work, a number option that is nan or infinite (typer takes both as
    floats), or not positive where it must be."""
    if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
        raise DintError(f"{option} {value:g}: must be a {'positive, ' if positive else ''}finite number of {unit}")


def resolve_source(src: str) -> Path:
    if src.startswith("builtin:"):
        name = src.removeprefix("builtin:")
        if name not in BUILTIN_SIGNALS:
            raise DintError(
                f"{src}: unknown built-in signal (known: {', '.join('builtin:' + n for n in BUILTIN_SIGNALS)})"
            )
        return BUILTIN_SIGNALS[name]()
    return Path(src)


@one_line_errors("dint-shard")
def shard(
    src: str = typer.Argument(
        ...,
        help="Signal file (audio, image, volume, mesh), a folder of image "
        "tiles named <prefix><row>_<col>.<ext> (e.g. tile_0_0.png), or builtin:cameraman.",
    ),
    dest: Path = typer.Argument(..., help="The zarr v3 store to write, e.g. signal.zarr."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file), audio, image, volume or shape."),
    chunk: int | None = typer.Option(
        None, "--chunk", help="Chunk side per spatial axis (default: 65536 audio, 256 images, 64 volumes)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
    keep_alpha: bool = typer.Option(False, "--keep-alpha", help="Keep an image's alpha channel (dropped by default)."),
    shape: str | None = typer.Option(None, "--shape", help="Raw binaries: spatial shape, e.g. 93,64,64."),
    dtype: str | None = typer.Option(None, "--dtype", help="Raw binaries: sample type, e.g. uint16, <f4."),
    resolution: int = typer.Option(256, "--resolution", help="Meshes: grid points per axis."),
    field: str = typer.Option("occupancy", "--field", help="Meshes: occupancy (inside = 1) or sdf."),
    crop: str | None = typer.Option(
        None,
        "--crop",
        help="Keep a box of the signal: start:stop per spatial "
        "axis, e.g. 1000:2024,1500:2524 (read lazily, out of core).",
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="A dask.distributed scheduler address, e.g. "
        "tcp://head:8786: its workers read and write the chunks (SRC and DEST "
        "on a filesystem they share).",
    ),
    scheduler_timeout: float = typer.Option(
        10.0, "--scheduler-timeout", help="Seconds to wait for --scheduler to answer before giving up."
    ),
) -> None:
    """Convert a signal into a chunked zarr v3 store, in parallel and out of core (dask)."""
    started = time.perf_counter()
    check_number("--scheduler-timeout", scheduler_timeout, "seconds", positive=True)
    path = resolve_source(src)
    check_input(path, "file")
    check_outside_inputs(dest, {"the source": path})
    check_destination(dest, overwrite)
    # A store converted again is not replaced while it is read (the hold ends with the command).
    reading = hold_for_reading(path, "dint-shard reading it") if is_dint_store(path) else None
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
        domain=default_domain(source.modality, shape),
        chunks=default_chunks(shape, chunk),
        source_name=path.name,
        source_sha256=sha256_of(path),
        extra=source.extra,
    )
    _check_shard_fits(info, chunk)
    problem = info.float32_problem()
    if problem is not None:
        key, what = problem
        raise DintError(f"{shown(src)}: its {key.replace('_', ' ')} {list(getattr(info, key))} {what}")
    write_store(
        source.values, info, dest, overwrite=overwrite, scheduler=scheduler, scheduler_timeout=scheduler_timeout
    )
    if reading is not None:
        reading.close()
    seconds = time.perf_counter() - started
    say(
        f"{dest}: {info.modality} {'x'.join(map(str, shape))}x{channels} {info.dtype}, "
        f"chunks {'x'.join(map(str, info.chunks))}, written in {seconds:.1f} s"
    )


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
    return ReadOptions(
        modality=modality,
        keep_alpha=keep_alpha,
        shape=parsed_shape,
        dtype=dtype,
        resolution=resolution,
        field=field,
        chunk=chunk,
    )


@one_line_errors("dint info")
def info(
    store: Path = typer.Argument(..., help="A store made by dint-shard."),
    as_json: bool = typer.Option(False, "--json", help="Print the attributes as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Also read every chunk, to find damaged ones."),
) -> None:
    """Describe what a store holds (a dint-shard store, or level 0 of a dint render pyramid)."""
    opened = _open_store_or_pyramid(store)
    signal = opened.info
    if verify:
        read, declared = opened.verify(), opened.values.nchunks
        unstored = f" stored chunks read; the other {declared - read:,} are not stored (read as zeros)"
        print(f"{shown(opened.path)}: all {read}{unstored if read < declared else ' chunks read'}", file=sys.stderr)
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
        say(f"{key:<{width}}  {value}")


def _open_store_or_pyramid(path: Path):
    import zarr

    from dint.data.pyramid import open_pyramid

    if is_plain_file(path / "zarr.json") and (path / "0").is_dir() and not (path / "values").exists():
        try:
            extra = dict(zarr.open_group(str(path), mode="r").attrs.get("dint", {})).get("extra", {})
        except Exception:  # open_store below names what is wrong
            extra = {}
        if "pyramid" in extra:
            return open_pyramid(path)
    return open_store(path)


@one_line_errors("dint render")
def render(
    run_dir: Path = typer.Argument(..., help="A training run folder (holding model.pt)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Pyramid to write, e.g. render.zarr (default: "
        "RUN_DIR/reconstruction_<shape>.zarr). Replaced if it exists.",
    ),
    scale: str | None = typer.Option(
        None,
        "--scale",
        help="Samples per store sample: one factor for every "
        "axis or one per axis, e.g. 2, 0.25, 1/3 or 2,2,1 (default 1).",
    ),
    resolution: str | None = typer.Option(
        None,
        "--resolution",
        help="Samples per axis instead of --scale: one number for every axis, or one per axis (e.g. 1024,768).",
    ),
    region: str | None = typer.Option(
        None,
        "--region",
        help="A window of the store in its own sample indices, "
        "start:stop per axis (e.g. 1000:2000,0:512; an empty end is the axis end), "
        "rendered at the chosen scale.",
    ),
    chunk: int | None = typer.Option(
        None,
        "--chunk",
        help="Chunk side per spatial axis of the output (default: the store's at 1x, else 256 images / 64 volumes).",
    ),
    pyramid_top: int = typer.Option(
        512, "--pyramid-top", help="Add 2x-downsampled levels until the largest side is at most this."
    ),
    block_points: int = typer.Option(65536, "--block-points", help="Points per forward block."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Render a trained model at any scale or region into an OME-Zarr 0.5 pyramid (+ PNG/WAV/slices/PLY).

    Run under torchrun to split the work: every rank renders and writes its own chunks.
    """
    from dint.core.files import hold_folder_of
    from dint.distributed.collectives import destroy_distributed, init_distributed, on_rank0
    from dint.fields.render import plan_grid, render_pyramid
    from dint.train.checkpoint import load_trained

    started = time.perf_counter()
    if not run_dir.is_dir():
        raise DintError(f"{run_dir}: run folder not found")
    model, signal, trained_with = load_trained(run_dir / "model.pt")
    if scale is not None and resolution is not None:
        raise DintError("--scale and --resolution both given: choose one")
    if device not in ("auto", "cpu", "cuda"):
        raise DintError(f"--device {device}: must be auto, cpu or cuda")
    for option, value, least in (
        ("--chunk", chunk, 1),
        ("--pyramid-top", pyramid_top, 1),
        ("--block-points", block_points, 1),
    ):
        if value is not None and value < least:
            raise DintError(f"{option} {value}: must be at least {least}")
    box = _parse_region(region, signal.shape) if region is not None else None
    grid = plan_grid(
        signal,
        scale=_parse_scale(scale, signal.ndim) if scale is not None else None,
        resolution=_parse_resolution(resolution, signal.ndim) if resolution is not None else None,
        region=box,
    )
    dest = out or run_dir / _default_render_name(grid, signal.shape)
    previews_replaceable = _check_render_destination(dest, run_dir, trained_with)
    chunks = tuple(min(chunk, n) for n in grid.shape) if chunk else None
    _check_render_fits(grid.shape, chunks)

    dist = init_distributed(device)
    held = None
    try:
        # A run folder (any folder dint claimed) has one writer at a time: not while it trains.
        held = on_rank0(lambda: hold_folder_of(dest, "dint render writing in this folder"), dist.device)
        model.to(dist.device)
        outputs = render_pyramid(
            model,
            signal,
            grid,
            dest,
            device=dist.device,
            rank=dist.rank,
            world_size=dist.world_size,
            block_points=block_points,
            chunks=chunks,
            top_side=pyramid_top,
            previews_replaceable=previews_replaceable,
        )
    finally:
        if held is not None:
            held.close()
        destroy_distributed()
    if dist.is_main:
        from dint.data.pyramid import open_pyramid

        levels = open_pyramid(dest).info.extra["pyramid"]["paths"]
        say(
            f"{dest}: {signal.modality} {'x'.join(map(str, grid.shape))} "
            f"(scale {','.join(f'{s:g}' for s in grid.scale)} of {'x'.join(map(str, signal.shape))}), "
            f"{len(levels)} levels, {dist.world_size} rank(s), {time.perf_counter() - started:.1f} s; "
            f"wrote {', '.join(outputs.values())}"
        )


def _check_render_fits(shape: tuple[int, ...], chunks: tuple[int, ...] | None) -> None:
    """Refuse, before rendering, a grid too large to plan (--scale 1000000); whether its pyramid
    fits on the disk is checked where it is written (dint.fields.render.build_together)."""
    check_chunk_count(shape, chunks or default_chunks(shape))


def _parse_scale(text: str, ndim: int) -> tuple:
    from fractions import Fraction

    try:
        factors = tuple(Fraction(v.strip()) for v in text.split(","))
    except (ValueError, ZeroDivisionError):
        factors = ()
    if len(factors) == 1:
        factors = factors * ndim
    if len(factors) != ndim or min(factors) <= 0:
        raise DintError(
            f"--scale {text}: expected one positive factor (e.g. 2, 0.25, 1/3), or {ndim} separated by commas"
        )
    return factors


def _parse_region(text: str, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    parts = text.split(",")
    if len(parts) != len(shape):
        raise DintError(
            f"--region {text}: give start:stop for each of the {len(shape)} axes of the store's "
            f"shape {'x'.join(map(str, shape))}"
        )
    box = []
    for part, size in zip(parts, shape):
        try:
            start, stop = part.split(":")
            box.append((int(start) if start.strip() else 0, int(stop) if stop.strip() else size))
        except ValueError:
            raise DintError(f"--region {text}: {part!r} is not start:stop") from None
        if not 0 <= box[-1][0] < box[-1][1] <= size:
            raise DintError(f"--region {text}: {part} is empty or outside the axis of size {size}")
    return tuple(box)


def _default_render_name(grid, store_shape: tuple[int, ...]) -> str:
    name = "reconstruction_" + "x".join(map(str, grid.shape))
    if grid.region != tuple((0, n) for n in store_shape):
        name += "_at_" + "_".join(f"{a}-{b}" for a, b in grid.region)
    return name + ".zarr"


def _check_render_destination(dest: Path, run_dir: Path, trained_with: dict) -> bool:
    """Refuse a destination dint render would have to write over something not its own, or
    over or inside its inputs (the model, the run's checkpoints, the store the model was
    trained on: `trained_with`, its config); whether the previews beside it may be replaced
    (they belong to a dint store being replaced, or live in a folder dint claimed)."""
    from dint.core.files import is_marked
    from dint.fields.render import preview_names

    require_output_folder(dest)
    inputs = {"the model": run_dir / "model.pt", "the run's checkpoints": run_dir / "checkpoints"}
    store = trained_with.get("data", {}).get("store") if isinstance(trained_with.get("data"), dict) else None
    if isinstance(store, str) and store:
        inputs["the model's training store"] = Path(store)
    for output in (dest, *preview_names(dest).values()):
        check_outside_inputs(output, inputs, f"--out {shown(dest)}" if output == dest else None)
    if os.path.lexists(dest) and not is_dint_store(dest):
        raise DintError(f"--out {shown(dest)}: exists and is not a dint store or pyramid; refusing to replace it")
    companions = is_dint_store(dest) or is_marked(dest.parent)
    if not companions:
        for preview in preview_names(dest).values():
            if os.path.lexists(preview):
                raise DintError(
                    f"--out {shown(dest)}: its preview {shown(preview)} exists and was not made by dint; "
                    "refusing to replace it (choose another --out)"
                )
    return companions


def _check_shard_fits(info: SignalInfo, chunk: int | None) -> None:
    """Refuse, before reading, a conversion whose chunks cannot be planned or held: too many
    chunks for dask's task graph, or chunks too large for the threads writing them at once."""
    import math

    from dint.core.resources import human, require_memory

    count = check_chunk_count(info.shape, info.chunks)
    point = info.channels * np.dtype(info.dtype).itemsize + 8  # a value, and a float64 working copy per point
    per_chunk = math.prod(info.chunks) * point * 3  # read, converted, compressed
    threads = min(os.cpu_count() or 1, count)
    require_memory(
        per_chunk * threads,
        f"--chunk {chunk or 'default'}: {threads} chunk(s) of "
        f"{'x'.join(map(str, info.chunks))} points written at once ({human(per_chunk)} each)",
    )


def _parse_resolution(text: str, ndim: int) -> tuple[int, ...]:
    sizes = _int_list("--resolution", text)
    if len(sizes) == 1:
        sizes = sizes * ndim
    if len(sizes) != ndim:
        raise DintError(f"--resolution {text}: expected one positive size, or {ndim} separated by commas")
    return tuple(sizes)


@one_line_errors("dint bench")
def bench(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="The training config (TOML) every teacher runs."),
    teachers: str = typer.Option(
        "full,uniform,int,default",
        "--teachers",
        help="Comma-separated teachers: "
        "presets (full, uniform, int = the paper's INT, default = dint's default teacher), "
        "each optionally with settings, e.g. default:model.init_scale=1;teacher.ratio=0.3.",
    ),
    repeats: int = typer.Option(
        1, "--repeats", help="Runs per teacher (the seed is the same: repeats show timing noise)."
    ),
    out: Path = typer.Option(
        Path("runs/bench"), "--out", help="Folder for bench.json, bench.md, quality_vs_time.png and the runs."
    ),
    eval_every: int = typer.Option(50, "--eval-every", help="Steps between quality measurements (outside the clock)."),
    from_benches: list[Path] | None = typer.Option(
        None,
        "--from",
        help="Instead of training: one table over "
        "finished benches (one per signal, repeatable), written to "
        "OUT/summary.md.",
    ),
    margin: float = typer.Option(
        0.5, "--margin", help="With --from: a column for the time to full's final quality less this much."
    ),
    uniform: str = typer.Option(
        "uniform",
        "--uniform",
        help="With --from: the row the '/ uniform's' columns divide "
        "by, e.g. a uniform teacher with the settings of the teacher compared.",
    ),
) -> None:
    """Time to quality: train the same signal with each teacher in turn and compare them.

    Any further --section.key value is a config override for every run. Under torchrun every
    run uses all the ranks.
    """
    from dint.commands.bench import bench as run_bench
    from dint.core.config import parse_cli
    from dint.distributed.collectives import destroy_distributed

    if from_benches:
        from dint.commands.bench import read_bench, summary_table
        from dint.core.files import hold_folder, write_outputs

        check_number("--margin", margin, "dB")
        for folder in from_benches:
            check_outside_inputs(out, {"the bench": folder}, f"--out {shown(out)}", holding=False)
        text = summary_table([read_bench(folder) for folder in from_benches], margin, uniform)
        with hold_folder(out, "dint bench's outputs", "dint bench writing in this folder"):
            write_outputs(out, {"summary.md": lambda tmp: tmp.write_text(text + "\n")})
        say(*text.split("\n"))
        say(f"dint bench: wrote {out / 'summary.md'}")
        return
    if repeats < 1 or eval_every < 1:
        raise DintError("--repeats and --eval-every must be at least 1")
    _, overrides = parse_cli(list(ctx.args))
    names = [t.strip() for t in teachers.split(",") if t.strip()]
    rank = int(os.environ.get("RANK", 0))
    try:
        result = run_bench(str(config) if config else None, overrides, names, repeats, out, eval_every, rank == 0)
    finally:
        destroy_distributed()
    if rank == 0:
        from dint.commands.bench import bench_table

        say(*bench_table(result).split("\n"))
        say(f"dint bench: wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'quality_vs_time.png'}")


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise DintError(f"{option} {text}: expected positive whole numbers separated by commas")
    return values


@one_line_errors("dint scale")
def scale(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="The training config (TOML) every size runs."),
    ranks: str = typer.Option("1,2", "--ranks", help="Comma-separated numbers of ranks, e.g. 1,2,4,8."),
    nodes: str = typer.Option(
        "1",
        "--nodes",
        help="Nodes per size: one number for every size, or one per size; "
        "more than 1 starts that many torchrun agents on this machine (c10d on 127.0.0.1).",
    ),
    mode: str = typer.Option(
        "strong",
        "--mode",
        help="strong: the same signal at every size; weak: --data.store "
        "with {ranks} in it names a signal per size that grows with the ranks.",
    ),
    steps: int | None = typer.Option(None, "--steps", help="Steps per run (train.steps); default: the config's."),
    out: Path = typer.Option(
        Path("runs/scale"), "--out", help="Folder for scaling.json, scaling.md, the plots and the runs."
    ),
    threads: int = typer.Option(1, "--threads", help="OMP_NUM_THREADS of each rank."),
    target_psnr: float | None = typer.Option(
        None,
        "--target-psnr",
        help="PSNR whose time to reach is reported; default: the smallest size's final PSNR less 0.5 dB.",
    ),
    eval_every: int = typer.Option(
        0,
        "--eval-every",
        help="Steps between evaluations (outside the clock) for the time to target; default: a tenth of the steps.",
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds a size may take before it counts as failed."),
    from_runs: list[Path] | None = typer.Option(
        None,
        "--from",
        help="Build the report from finished run folders instead of training (e.g. a cluster's sweep); repeatable.",
    ),
) -> None:
    """Scaling study: train the config at each number of ranks; throughput, efficiency, the
    step's time split, bytes, imbalance and time to a PSNR, as scaling.json, scaling.md and plots.

    Any further --section.key value is a config override for every size.
    """
    from dint.commands import scale as scaling
    from dint.core.config import load_config, parse_cli

    if mode not in ("strong", "weak"):
        raise DintError(f"--mode {mode}: expected strong or weak")
    check_number("--target-psnr", target_psnr, "dB")
    check_number("--timeout", timeout, "seconds", positive=True)
    if from_runs:
        result = scaling.from_runs(from_runs, mode, out, target_psnr)
    else:
        _, overrides = parse_cli(list(ctx.args))
        sizes = _int_list("--ranks", ranks)
        node_counts = _int_list("--nodes", nodes)
        if len(node_counts) not in (1, len(sizes)):
            raise DintError(f"--nodes {nodes}: give one number, or one per size of --ranks {ranks}")
        node_counts = node_counts * len(sizes) if len(node_counts) == 1 else node_counts
        for size, count in zip(sizes, node_counts):
            if size % count:
                raise DintError(f"--ranks {size} is not a multiple of --nodes {count}")
        if steps is not None:
            overrides["train.steps"] = str(steps)
        # Check the config once, here, so a bad key is one line rather than a failure per rank.
        checked = load_config(
            str(config) if config else None,
            {
                **overrides,
                **(
                    {"data.store": overrides.get("data.store", "").format(ranks=sizes[0])}
                    if mode == "weak" and "data.store" in overrides
                    else {}
                ),
            },
        )
        if "eval.every" not in overrides:
            overrides["eval.every"] = str(eval_every or max(1, checked.train.steps // 10))
        if threads < 1:
            raise DintError(f"--threads {threads}: must be at least 1")
        from dint.core.resources import require_ranks

        require_ranks(max(sizes), threads, f"--ranks {ranks}")
        result = scaling.scale(
            str(config) if config else None,
            overrides,
            list(zip(sizes, node_counts)),
            mode,
            out,
            threads,
            target_psnr,
            timeout,
        )
    say(*scaling.scaling_table(result).split("\n"))
    say(
        f"dint scale: wrote {out / 'scaling.json'}, {out / 'scaling.md'}, {out / 'scaling.png'}, "
        f"{out / 'step_split.png'}"
    )


@one_line_errors("dint report")
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders (run.dir of trainings), finished or still training."),
    target: float | None = typer.Option(
        None,
        "--target",
        help="Quality (PSNR in dB, IoU for shapes) whose time "
        "to reach is compared; default: the highest every run has reached.",
    ),
    plot: Path = typer.Option(
        Path("report.png"),
        "--plot",
        help="Where to write the plot of quality against training time (replaces only a PNG dint wrote).",
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Print the table only."),
) -> None:
    """Compare runs: state, teacher, steps, quality, training seconds and time to a quality,
    as a table, and their quality against training time as a plot."""
    from dint.commands.report import compare_runs

    check_number("--target", target, "dB (or IoU)")
    say(*compare_runs(runs, target, None if no_plot else plot).split("\n"))
    if not no_plot:
        say(f"dint report: wrote {plot}")


def train(ctx: typer.Context) -> None:
    """Train a field on a store: --config C.toml [--section.key value ...] (--help lists every key).

    One process here; under torchrun, `torchrun --nproc_per_node N -m dint.train ...` runs the same code.
    """
    from dint.commands.train import main

    raise typer.Exit(main(list(ctx.args)))


app.command("shard")(shard)
app.command("info")(info)
app.command("render")(render)
app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(bench)
app.command("scale", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(scale)
app.command("report")(report)
app.command(
    "train", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)(train)
shard_app.command()(shard)

if __name__ == "__main__":
    app()
