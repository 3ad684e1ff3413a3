"""Rendering a trained model back onto a grid, and the files made from it.

Two outputs:

* The training run's reconstruction (`render_reconstruction`, reconstruction.zarr): a plain
  dint store, the same modality, value range, dtype and domain as the signal, on the signal's
  grid. Each rank renders its own chunks.
* `dint render` (`render_pyramid`): the model on any grid (`RenderGrid`: a scale, explicit sizes,
  a region of the store) as a multiscale pyramid with OME-Zarr 0.5 metadata (layout in
  dint/data/pyramid.py), every level split across ranks chunk by chunk, published atomically.

Both are made the same way (`build_together`: staged, filled by every rank, published by rank
0) and give the file a person opens when small enough: PNG (images), WAV (audio), middle-slice
PNG (volumes), PLY (shapes), named after the store (X.zarr -> X.png, X_slices.png, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import zarr

from dint.core.errors import DintError
from dint.core.files import (
    anything,
    discard,
    is_dint_store,
    lock_output,
    publish_all,
    remove_stale,
    shown,
    staging_path,
)
from dint.core.packages import need
from dint.core.resources import require_disk
from dint.data.sharding import CoordinateMap, chunk_grid, partition_chunks
from dint.data.store import (
    SignalInfo,
    create_values_array,
    default_chunks,
    from_training,
    open_store,
    store_bytes,
    to_dtype,
    to_training,
    to_unit,
    writable_values,
)
from dint.distributed.collectives import DistInfo
from dint.fields.quality import inside_threshold

PREVIEW_MAX_POINTS = 1 << 26  # previews (PNG, WAV, PLY) are made on one process up to this size
PREVIEW_MAX_SIDE = 1024  # pyramid previews (image PNG, volume slices) come from the finest level this small
PYRAMID_TOP_SIDE = 512  # pyramids get levels until the largest side is at most this


def reconstruction_info(
    info: SignalInfo, shape: tuple[int, ...] | None = None, model_name: str = "model.pt"
) -> SignalInfo:
    """The description of a reconstruction of `info`, optionally on another grid shape."""
    shape = tuple(shape or info.shape)
    chunks = info.chunks if shape == info.shape else default_chunks(shape)
    # A shape's field is kept as floats: its surface lies between the stored 0 and 1.
    dtype = "float32" if info.modality == "shape" else info.dtype
    return dataclasses.replace(
        info,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        source_name=model_name,
        source_sha256="",
        extra={**info.extra, "reconstruction_of": info.source_name},
    )


@torch.no_grad()
def predict_box(
    model: torch.nn.Module,
    channels: int,
    device: torch.device,
    block_points: int,
    shape: tuple[int, ...],
    coordinates_of: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """Model output in [-1, 1] space over a box, shaped (*shape, channels).

    `coordinates_of` maps box-local integer positions (n, ndim) to model coordinates; the box is
    evaluated in C order, `block_points` points per forward pass.
    """
    count = math.prod(shape)
    out = np.empty((count, channels), dtype=np.float32)
    for start in range(0, count, block_points):
        flat = torch.arange(start, min(start + block_points, count), device=device)
        multi = torch.stack(torch.unravel_index(flat, shape), dim=1)
        out[start : start + flat.shape[0]] = model(coordinates_of(multi)).float().cpu().numpy()
    return out.reshape(*shape, channels)


def predict_region(
    model: torch.nn.Module,
    info: SignalInfo,
    device: torch.device,
    block_points: int,
    origin: tuple[int, ...],
    shape: tuple[int, ...],
) -> np.ndarray:
    """Model output in [-1, 1] space over a box of `info`'s grid, shaped (*shape, channels)."""
    coordinates = CoordinateMap(info, device)
    offset = torch.tensor(origin, dtype=torch.int64, device=device)
    return predict_box(model, info.channels, device, block_points, shape, lambda multi: coordinates(multi + offset))


def to_storage(values: np.ndarray, info: SignalInfo) -> np.ndarray:
    """[-1, 1] training space back to the store's units and dtype (clipped, rounded)."""
    return to_dtype(from_training(values.astype(np.float64), info.value_range), info.dtype, info.value_range)


def build_together(
    dest: Path,
    rank: int,
    device: torch.device,
    create: Callable[[Path], None],
    fill: Callable[[Path], None],
    finish: Callable[[Path], dict[str, Path]],
    name: str = "store",
    previews_replaceable: bool = True,
    nbytes: int = 0,
) -> dict[str, str]:
    """How every store that ranks write together is made: rank 0 takes the lock beside `dest`
    (lock_output: one writer, and none while a command reads it) and creates the store under a
    staging name (the same on every rank), every rank fills in its own chunks, rank 0 finishes
    it (metadata, previews staged beside `dest`: {kind: staged file}) and publishes the store
    and its previews as one. A failure leaves `dest` and its previews as they were. Returns
    {kind: path} of what was written (rank 0; {} on the others). `dest` is replaced only if it
    is a dint store; an existing preview only if `previews_replaceable`. Refused first, on
    every rank alike, when the disk of `dest` has less free than the `nbytes` it will hold."""
    from dint.distributed.collectives import barrier, on_rank0, shared_token

    try:
        require_disk(nbytes, f"{shown(dest)}: the {name}", dest.parent)
    except DintError as e:
        raise DintError(str(e), shared=True) from None
    held = on_rank0(lambda: lock_output(dest), device)  # every rank stops when rank 0 cannot have it
    if rank == 0:
        remove_stale(dest.parent)
    tmp = staging_path(dest, shared_token(device), mine=rank == 0)
    previews: dict[str, Path] = {}
    try:
        if rank == 0:
            create(tmp)
        barrier()
        fill(tmp)
        barrier()
        if rank != 0:
            return {}
        previews = finish(tmp)
        final_names, replace_preview = preview_names(dest), anything if previews_replaceable else None
        companions = [(file, final_names[kind], replace_preview) for kind, file in previews.items()]
        publish_all([(tmp, dest, is_dint_store), *companions])
        return {name: str(dest), **{kind: str(final_names[kind]) for kind in previews}}
    except BaseException as e:
        if rank == 0:
            discard(tmp, e)
            for staged_file in previews.values():
                discard(staged_file, e)
        raise
    finally:
        if held is not None:
            held.close()


def render_reconstruction(
    model: torch.nn.Module, info: SignalInfo, dest: Path, dist: DistInfo, block_points: int = 65536
) -> dict[str, str]:
    """The model on the training grid as a plain dint store at `dest` (same modality, value range,
    dtype and domain as `info`), each rank of `dist` rendering its own chunks (training's
    partition), with the previews a person opens. Every rank calls this."""
    device, rank, world_size = dist.device, dist.rank, dist.world_size
    target = reconstruction_info(info)

    def create(tmp: Path) -> None:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        create_values_array(group, target)  # every chunk stored, so open_store can tell a missing one
        group.attrs["dint"] = target.to_attrs()

    def fill(tmp: Path) -> None:
        array = writable_values(tmp)  # writes chunks of fill values too
        for origin, shape in _my_chunks(target, rank, world_size):
            region = tuple(slice(o, o + s) for o, s in zip(origin, shape))
            array[region] = to_storage(predict_region(model, info, device, block_points, origin, shape), target)

    def finish(tmp: Path) -> dict[str, Path]:
        if info.num_points > PREVIEW_MAX_POINTS:
            return {}
        return _previews(open_store(tmp).values, target, dest)

    return build_together(dest, rank, device, create, fill, finish, name="reconstruction", nbytes=store_bytes(target))


def _previews(values, info: SignalInfo, dest: Path) -> dict[str, Path]:
    """The file a person opens for a store of `info` whose (*spatial, C) array is `values` (read
    here, lazily where it can be), staged beside `dest` and named after it (X.zarr -> X.png, ...):
    a PNG for images, a WAV for audio, a PNG of the middle slices for volumes, a PLY mesh for
    shapes. {kind: staged file}."""
    staged_names = {kind: staging_path(final) for kind, final in preview_names(dest).items()}
    if info.modality == "image":
        return {"png": save_preview_png(to_unit(values[...], info), staged_names["png"])}
    if info.modality == "audio":
        return {"wav": save_wav(values[...], info, staged_names["wav"])}
    if info.modality == "volume":
        return {"slices_png": save_middle_slices(values, info, staged_names["slices_png"])}
    if info.modality == "shape":
        return {"mesh": save_mesh(values[...], info, staged_names["mesh"])}
    return {}


def preview_names(store_path: Path) -> dict[str, Path]:
    """Preview files named after a store: X.zarr (or X.ome.zarr) -> X.png, X.wav, X_slices.png, X.ply."""
    name = store_path.name
    for suffix in (".zarr", ".ome"):
        name = name.removesuffix(suffix) or name
    return {
        "png": store_path.with_name(name + ".png"),
        "wav": store_path.with_name(name + ".wav"),
        "slices_png": store_path.with_name(name + "_slices.png"),
        "mesh": store_path.with_name(name + ".ply"),
    }


def save_preview_png(unit_image: np.ndarray, path: Path) -> Path:
    """An image (H, W, C) with values in [0, 1] as an 8-bit PNG (grey, grey+alpha, RGB, RGBA)."""
    from PIL import Image

    pixels = np.round(unit_image * 255.0).astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)
    return path


def save_wav(values: np.ndarray, info: SignalInfo, path: Path) -> Path:
    from scipy.io import wavfile

    rate = int(info.extra.get("sample_rate", 16000))
    if values.dtype.name not in _WAV_TYPES:  # e.g. uint16, bool: as float samples, the value range to [-1, 1]
        values = to_training(values.astype(np.float64), info.value_range).astype(np.float32)
    wavfile.write(path, rate, values[:, 0] if values.shape[1] == 1 else values)
    return path


_WAV_TYPES = ("float32", "float64", "uint8", "int16", "int32", "int64")  # what scipy's wavfile writes


def save_middle_slices(values, info: SignalInfo, path: Path) -> Path:
    """The three middle slices (Z, Y, X) of the first channel of a volume's (Z, Y, X, C) array,
    side by side, as a PNG; only those planes are read."""
    z, y, x = (s // 2 for s in values.shape[:3])
    planes = [values[z, :, :, 0], values[:, y, :, 0], values[:, :, x, 0]]
    return save_slices([to_unit(np.asarray(p), info) for p in planes], path)


def save_slices(slices: list[np.ndarray], path: Path) -> Path:
    """2-D planes with values in [0, 1], top-aligned side by side with a 2-pixel gap, as a grey PNG."""
    height = max(s.shape[0] for s in slices)
    padded = [np.pad(s, ((0, height - s.shape[0]), (0, 2))) for s in slices]
    return save_preview_png(np.concatenate(padded, axis=1)[:, :, None], path)


def save_mesh(values: np.ndarray, info: SignalInfo, path: Path) -> Path:
    """The surface of a shape field by marching cubes, in the store's [-1, 1] coordinates."""
    from skimage.measure import marching_cubes

    trimesh = need("trimesh", "trimesh", "the surface mesh (PLY) of a shape")

    field = values[..., 0].astype(np.float32)
    level, _ = inside_threshold(info)
    if not field.min() < level < field.max():  # nothing to extract: an empty mesh says so
        trimesh.Trimesh().export(path)
        return path
    vertices, faces, _, _ = marching_cubes(field, level=level)
    # Grid index (z, y, x) to coordinates, then to (x, y, z) vertex order.
    coords = CoordinateMap(info, torch.device("cpu")).exact(vertices)
    trimesh.Trimesh(vertices=coords[:, ::-1], faces=faces[:, ::-1], process=False).export(path)
    return path


# --- dint render: any grid, as an OME-Zarr pyramid -------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenderGrid:
    """The samples of a render, placed at (fractional) sample indices of the store.

    Sample k along axis d lies at store position origin[d] + k * step[d]; its coordinate is the
    one training gave that position (the store's domain mapping, which puts sample 0 and sample
    n - 1 at the ends of the axis's domain, continued to fractional positions). So a grid with
    step 1/2 holds every training point at its even samples and points between them at its odd
    ones, and a 1x grid is the training grid itself.
    """

    shape: tuple[int, ...]
    origin: tuple[float, ...]
    step: tuple[float, ...]
    region: tuple[tuple[int, int], ...]  # the window of the store covered: [start, stop) per axis

    @property
    def scale(self) -> tuple[float, ...]:
        """Samples of this grid per store sample, per axis."""
        return tuple(1.0 / s if s else 0.0 for s in self.step)


def plan_grid(
    info: SignalInfo,
    scale: Sequence[Fraction | float] | None = None,
    resolution: Sequence[int] | None = None,
    region: Sequence[tuple[int, int]] | None = None,
) -> RenderGrid:
    """The grid to render for `info` (the store the model was trained on).

    region: [start, stop) per axis in the store's sample indices (default: the whole store).
    scale S per axis (default 1): samples every 1/S store samples from the region's first
    sample, up to its last: floor((n - 1) S) + 1 samples for a region of n (so 2x of a
    48-sample axis is 95 samples, every other one a training sample; 0.25x of 1000 is 250).
    resolution m per axis instead: m samples from the region's first to its last sample
    (one sample: the middle). Bad values are a DintError.
    """
    ndim = info.ndim
    if scale is not None and resolution is not None:
        raise DintError("--scale and --resolution both given: choose one")
    box = tuple((int(a), int(b)) for a, b in region) if region is not None else tuple((0, n) for n in info.shape)
    if len(box) != ndim:
        raise DintError(f"region: {len(box)} axes given, the model's signal has {ndim}")
    for (a, b), n in zip(box, info.shape):
        if not 0 <= a < b <= n:
            raise DintError(f"region {a}:{b} is outside the axis of size {n} (or empty)")
    sizes = [b - a for a, b in box]
    shape, origin, step = [], [], []
    if resolution is not None:
        if len(resolution) != ndim or min(resolution) < 1:
            raise DintError(f"resolution {list(resolution)}: expected {ndim} positive sizes")
        for (a, _), n, m in zip(box, sizes, resolution):
            shape.append(int(m))
            origin.append(float(a) if m > 1 else a + (n - 1) / 2)
            step.append((n - 1) / (m - 1) if m > 1 else float(n))
    else:
        factors = [Fraction(1)] * ndim if scale is None else [Fraction(s) for s in scale]
        if len(factors) != ndim or min(factors) <= 0:
            raise DintError(f"scale {[str(f) for f in factors]}: expected {ndim} positive factors")
        for (a, _), n, f in zip(box, sizes, factors):
            shape.append(math.floor((n - 1) * f) + 1)
            origin.append(float(a))
            step.append(float(1 / f))
    return RenderGrid(shape=tuple(shape), origin=tuple(origin), step=tuple(step), region=box)


def render_axis_coordinates(info: SignalInfo, grid: RenderGrid, device: torch.device) -> list[torch.Tensor]:
    """Per axis, the model coordinate of every sample of the grid (float32, as in training:
    start + position * scale in float32, so whole positions give training's coordinates bit for bit)."""
    coordinates = CoordinateMap(info, device)
    axes = []
    for d, (m, o, s) in enumerate(zip(grid.shape, grid.origin, grid.step)):
        position = (o + torch.arange(m, dtype=torch.float64, device=device) * s).to(torch.float32)
        axes.append(coordinates.start[d] + position * coordinates.scale[d])
    return axes


def predict_grid_box(
    model: torch.nn.Module,
    channels: int,
    axes: list[torch.Tensor],
    device: torch.device,
    block_points: int,
    origin: tuple[int, ...],
    shape: tuple[int, ...],
) -> np.ndarray:
    """Model output in [-1, 1] space over a box of a render grid, shaped (*shape, channels)."""
    offset = torch.tensor(origin, dtype=torch.int64, device=device)

    def coordinates_of(multi: torch.Tensor) -> torch.Tensor:
        at = multi + offset
        return torch.stack([axis[at[:, d]] for d, axis in enumerate(axes)], dim=1)

    return predict_box(model, channels, device, block_points, shape, coordinates_of)


def pyramid_info(info: SignalInfo, grid: RenderGrid, levels) -> SignalInfo:
    """The "dint" attribute of a pyramid: level 0's description, and how it was rendered."""
    base = reconstruction_info(info, grid.shape)
    last = [o + (m - 1) * s for o, m, s in zip(grid.origin, grid.shape, grid.step)]
    coordinates = CoordinateMap(info, torch.device("cpu"))
    domain = tuple((float(lo), float(hi)) for lo, hi in zip(coordinates.exact(grid.origin), coordinates.exact(last)))
    render = {
        "store_shape": list(info.shape),
        "region": [list(r) for r in grid.region],
        "origin": list(grid.origin),
        "step": list(grid.step),
        "scale": list(grid.scale),
    }
    pyramid = {
        "paths": [level.path for level in levels],
        "shapes": [list(level.shape) for level in levels],
        "method": "mean",
    }
    return dataclasses.replace(
        base, chunks=levels[0].chunks, domain=domain, extra={**base.extra, "render": render, "pyramid": pyramid}
    )


def physical_transform(info: SignalInfo, grid: RenderGrid) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Level 0's (scale, translation) per spatial axis, in the store's sample units times its
    extra["spacing"] where it has one, offset by a --crop's start: renders at any scale and region
    of one store (and of its crops) overlay each other."""
    spacing = info.extra.get("spacing")
    if not (
        isinstance(spacing, (list, tuple))
        and len(spacing) == info.ndim
        and all(isinstance(v, (int, float)) and v > 0 for v in spacing)
    ):
        spacing = [1.0] * info.ndim
    crop = info.extra.get("crop")
    starts = [c[0] for c in crop] if isinstance(crop, list) and len(crop) == info.ndim else [0] * info.ndim
    scale = tuple(float(s * sp) for s, sp in zip(grid.step, spacing))
    translation = tuple(float((c + o) * sp) for c, o, sp in zip(starts, grid.origin, spacing))
    return scale, translation


def _my_chunks(level, rank: int, world_size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (origin, shape) chunks of a pyramid level that `rank` writes: its share of the level's
    C-order chunk grid by partition_chunks (contiguous, balanced by points), as training shards."""
    grid = chunk_grid(level)  # uses .shape and .chunks only
    share = partition_chunks([math.prod(s) for _, s in grid], world_size)[rank]
    return [grid[i] for i in share]


def render_pyramid(
    model: torch.nn.Module,
    info: SignalInfo,
    grid: RenderGrid,
    dest: Path,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    block_points: int = 65536,
    chunks: tuple[int, ...] | None = None,
    top_side: int = PYRAMID_TOP_SIDE,
    name: str | None = None,
    previews_replaceable: bool = True,
) -> dict[str, str]:
    """Render `model` (trained on `info`) on `grid` into an OME-Zarr pyramid at `dest`.

    Every rank calls this (in a process group, or alone): rank 0 creates the group under a
    hidden staging name, each rank renders its share of level 0's chunks (partition_chunks),
    then of each coarser level (means of the level above), with a barrier between levels;
    rank 0 writes the OME metadata last, makes the previews and renames everything into place.
    A failure leaves `dest` as it was. Returns {kind: path} of what was written (rank 0).
    """
    from dint.data.pyramid import (
        create_pyramid,
        downsample_chunk,
        is_ome,
        ome_metadata,
        plan_levels,
        write_ome_metadata,
    )
    from dint.distributed.collectives import barrier

    chunks = chunks or reconstruction_info(info, grid.shape).chunks
    levels = plan_levels(grid.shape, chunks, top_side)
    target = pyramid_info(info, grid, levels)

    def fill(tmp: Path) -> None:
        # Level 0: the model on the grid; the next chunk is computed while the last is written.
        axes = render_axis_coordinates(info, grid, device)
        array = zarr.open_array(str(tmp / levels[0].path), mode="r+")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dint-render-write") as writer:
            pending = None
            for origin, shape in _my_chunks(levels[0], rank, world_size):
                values = to_storage(
                    predict_grid_box(model, info.channels, axes, device, block_points, origin, shape), target
                )
                box = (slice(None), *(slice(o, o + s) for o, s in zip(origin, shape)))
                if pending is not None:
                    pending.result()
                pending = writer.submit(array.__setitem__, box, np.moveaxis(values, -1, 0))
            if pending is not None:
                pending.result()
        # Coarser levels: means of 2-sample blocks of the level above, chunk by chunk.
        for above, level in zip(levels, levels[1:]):
            barrier()
            source = zarr.open_array(str(tmp / above.path), mode="r")
            destination = zarr.open_array(str(tmp / level.path), mode="r+")
            for origin, shape in _my_chunks(level, rank, world_size):
                downsample_chunk(source, destination, level, origin, shape, level.halves(above))

    def finish(tmp: Path) -> dict[str, Path]:
        if is_ome(info.ndim):
            scale, translation = physical_transform(info, grid)
            write_ome_metadata(tmp, ome_metadata(target, levels, scale, translation, name or _stem(dest)))
        return _pyramid_previews(tmp, dest, target, levels)

    return build_together(
        dest,
        rank,
        device,
        lambda tmp: create_pyramid(tmp, target, levels),
        fill,
        finish,
        name="render",
        previews_replaceable=previews_replaceable,
        nbytes=sum(
            store_bytes(dataclasses.replace(target, shape=level.shape, chunks=level.chunks)) for level in levels
        ),
    )


def _stem(path: Path) -> str:
    return preview_names(path)["png"].stem


def _pyramid_previews(tmp: Path, dest: Path, info: SignalInfo, levels) -> dict[str, Path]:
    """Previews of the pyramid being built at `tmp`, written under hidden names beside `dest`:
    {kind: (staged file, final name)}. Images: a PNG of the finest level whose largest side is at
    most PREVIEW_MAX_SIDE; volumes: its three middle slices; audio (WAV) and shapes (PLY mesh):
    from level 0, up to PREVIEW_MAX_POINTS."""
    from dint.data.pyramid import finest_level_within, open_pyramid

    if info.modality in ("image", "volume"):
        level = finest_level_within(levels, PREVIEW_MAX_SIDE)
        if level is None:
            return {}
        return _previews(open_pyramid(tmp, levels.index(level)).values, info, dest)
    if info.num_points > PREVIEW_MAX_POINTS:
        return {}
    return _previews(open_pyramid(tmp, 0).values, info, dest)
