"""Rendering a trained model back onto the store's grid (or a region of it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dint.data import CoordinateMap
from dint.store import SignalInfo


@torch.no_grad()
def predict_region(
    model: torch.nn.Module,
    info: SignalInfo,
    device: torch.device,
    block_points: int,
    origin: tuple[int, ...] | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Model output in [-1, 1] space over a box of the grid, shaped (*shape, channels)."""
    origin = origin or (0,) * info.ndim
    shape = shape or info.shape
    coordinates = CoordinateMap(info, device)
    offset = torch.tensor(origin, dtype=torch.int64, device=device)
    count = math.prod(shape)
    out = np.empty((count, info.channels), dtype=np.float32)
    for start in range(0, count, block_points):
        flat = torch.arange(start, min(start + block_points, count), device=device)
        multi = torch.stack(torch.unravel_index(flat, shape), dim=1) + offset
        out[start : start + flat.shape[0]] = model(coordinates(multi)).float().cpu().numpy()
    return out.reshape(*shape, info.channels)


def to_unit(values: np.ndarray) -> np.ndarray:
    """[-1, 1] training space to [0, 1], clipped."""
    return np.clip((values + 1.0) / 2.0, 0.0, 1.0)


def save_png(unit_image: np.ndarray, path: Path) -> Path:
    """An image (H, W, C) with values in [0, 1] as an 8-bit PNG (grey, grey+alpha, RGB, RGBA)."""
    from PIL import Image

    pixels = np.round(unit_image * 255.0).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    Image.fromarray(pixels).save(path)
    return path
