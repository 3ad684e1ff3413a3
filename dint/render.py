"""Rendering a trained model back onto a grid, and the per-modality files made from it.

A reconstruction is itself a dint store (`reconstruction.zarr`): the same modality, value
range, dtype and domain as the signal, on the signal's grid or any other shape. Each rank
renders and writes its own chunks, so it scales like training. Small signals also get the
file a person opens: PNG (images), WAV (audio), middle-slice PNG (volumes), PLY (shapes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

from dint.data import CoordinateMap
from dint.store import VALUES, SignalInfo, default_chunks, open_store

PREVIEW_MAX_POINTS = 1 << 26  # previews (PNG, WAV, PLY) are made on one process up to this size


def reconstruction_info(info: SignalInfo, shape: tuple[int, ...] | None = None, model_name: str = "model.pt") -> SignalInfo:
    """The description of a reconstruction of `info`, optionally on another grid shape."""
    shape = tuple(shape or info.shape)
    chunks = info.chunks if shape == info.shape else default_chunks(shape)
    # A shape's field is kept as floats: its surface lies between the stored 0 and 1.
    dtype = "float32" if info.modality == "shape" else info.dtype
    return dataclasses.replace(info, shape=shape, chunks=chunks, dtype=dtype, source_name=model_name,
                               source_sha256="", extra={**info.extra, "reconstruction_of": info.source_name})


@torch.no_grad()
def predict_region(model: torch.nn.Module, info: SignalInfo, device: torch.device, block_points: int,
                   origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Model output in [-1, 1] space over a box of the grid, shaped (*shape, channels)."""
    coordinates = CoordinateMap(info, device)
    offset = torch.tensor(origin, dtype=torch.int64, device=device)
    count = math.prod(shape)
    out = np.empty((count, info.channels), dtype=np.float32)
    for start in range(0, count, block_points):
        flat = torch.arange(start, min(start + block_points, count), device=device)
        multi = torch.stack(torch.unravel_index(flat, shape), dim=1) + offset
        out[start : start + flat.shape[0]] = model(coordinates(multi)).float().cpu().numpy()
    return out.reshape(*shape, info.channels)


def to_storage(values: np.ndarray, info: SignalInfo) -> np.ndarray:
    """[-1, 1] training space back to the store's units and dtype (clipped, rounded)."""
    lo, hi = info.value_range
    raw = lo + (values.astype(np.float64) + 1.0) * 0.5 * (hi - lo)
    dtype = np.dtype(info.dtype)
    if dtype.kind in "uib":
        limits = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        raw = np.clip(np.rint(raw), max(limits.min, lo), min(limits.max, hi))
    return raw.astype(dtype)


def to_unit(values: np.ndarray, info: SignalInfo) -> np.ndarray:
    """Store units to [0, 1] (the value range's ends), as float32."""
    lo, hi = info.value_range
    return ((np.asarray(values, dtype=np.float32) - lo) / (hi - lo)).clip(0.0, 1.0)


def staging_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp")


def create_store(info: SignalInfo, dest: Path) -> Path:
    """An empty store at `staging_path(dest)`; `publish` renames it into place when full."""
    tmp = staging_path(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.create_array(VALUES, shape=(*info.shape, info.channels), chunks=(*info.chunks, info.channels),
                       dtype=info.dtype, fill_value=0)
    group.attrs["dint"] = info.to_attrs()
    return tmp


def render_chunks(model: torch.nn.Module, info: SignalInfo, tmp: Path, chunks, device: torch.device,
                  block_points: int) -> None:
    """Render the given (origin, shape) chunks of `info`'s grid into the store at `tmp`."""
    array = zarr.open_array(str(tmp / VALUES), mode="r+")
    for origin, shape in chunks:
        region = tuple(slice(o, o + s) for o, s in zip(origin, shape))
        array[region] = to_storage(predict_region(model, info, device, block_points, origin, shape), info)


def publish(tmp: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def export_previews(store_path: Path) -> dict[str, str]:
    """The file a person opens, next to the store and named after it (X.zarr -> X.png, ...).

    Images give a PNG, audio a WAV, volumes a PNG of the middle slices, shapes a PLY mesh;
    signals larger than PREVIEW_MAX_POINTS get none (the store is the output).
    """
    store = open_store(store_path)
    info = store.info
    if info.num_points > PREVIEW_MAX_POINTS:
        return {}
    values = np.asarray(store.values[...])
    stem = store_path.with_suffix("")
    if info.modality == "image":
        return {"png": str(save_png(to_unit(values, info), stem.with_suffix(".png")))}
    if info.modality == "audio":
        return {"wav": str(save_wav(values, info, stem.with_suffix(".wav")))}
    if info.modality == "volume":
        path = stem.with_name(stem.name + "_slices.png")
        return {"slices_png": str(save_middle_slices(to_unit(values, info), path))}
    if info.modality == "shape":
        return {"mesh": str(save_mesh(values, info, stem.with_suffix(".ply")))}
    return {}


def save_png(unit_image: np.ndarray, path: Path) -> Path:
    """An image (H, W, C) with values in [0, 1] as an 8-bit PNG (grey, grey+alpha, RGB, RGBA)."""
    from PIL import Image

    pixels = np.round(unit_image * 255.0).astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)
    return path


def save_wav(values: np.ndarray, info: SignalInfo, path: Path) -> Path:
    from scipy.io import wavfile

    rate = int(info.extra.get("sample_rate", 16000))
    wavfile.write(path, rate, values[:, 0] if values.shape[1] == 1 else values)
    return path


def save_middle_slices(unit_volume: np.ndarray, path: Path) -> Path:
    """The three middle slices (Z, Y, X) of the first channel, side by side, as a PNG."""
    volume = unit_volume[..., 0]
    z, y, x = (s // 2 for s in volume.shape)
    slices = [volume[z], volume[:, y], volume[:, :, x]]
    height = max(s.shape[0] for s in slices)
    padded = [np.pad(s, ((0, height - s.shape[0]), (0, 2))) for s in slices]
    return save_png(np.concatenate(padded, axis=1)[:, :, None], path)


def inside_threshold(info: SignalInfo) -> tuple[float, bool]:
    """For a shape store: the value at the surface and whether inside is above it."""
    if info.extra.get("field", "occupancy") == "sdf":
        return 0.0, False  # signed distance: inside where sdf <= 0
    return 0.5, True  # occupancy: inside where the value is >= 0.5


def save_mesh(values: np.ndarray, info: SignalInfo, path: Path) -> Path:
    """The surface of a shape field by marching cubes, in the store's [-1, 1] coordinates."""
    import trimesh
    from skimage.measure import marching_cubes

    field = values[..., 0].astype(np.float32)
    level, _ = inside_threshold(info)
    if not field.min() < level < field.max():  # nothing to extract: an empty mesh says so
        trimesh.Trimesh().export(path)
        return path
    vertices, faces, _, _ = marching_cubes(field, level=level)
    # Grid index (z, y, x) to coordinates, then to (x, y, z) vertex order.
    starts = np.array([d[0] for d in info.domain])
    spans = np.array([d[1] - d[0] for d in info.domain])
    coords = starts + vertices * spans / (np.array(info.shape) - 1)
    trimesh.Trimesh(vertices=coords[:, ::-1], faces=faces[:, ::-1], process=False).export(path)
    return path
