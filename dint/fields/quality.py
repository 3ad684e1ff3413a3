"""Quality measures of a fit."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dint.data.store import SignalInfo


def psnr(mse: float, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; inf for a perfect fit."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(reference: np.ndarray, prediction: np.ndarray, data_range: float) -> float:
    """Structural similarity of two images (H, W, C), averaged over channels (skimage)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, prediction, data_range=data_range, channel_axis=-1))


def iou(intersection: float, union: float) -> float:
    """Intersection over union of two occupancies; 1 when both are empty."""
    return 1.0 if union == 0 else intersection / union


def inside_threshold(info: SignalInfo) -> tuple[float, bool]:
    """For a shape store: the field's value at the surface (store units) and whether inside is above it."""
    if info.extra.get("field", "occupancy") == "sdf":
        return 0.0, False  # signed distance: inside where sdf <= 0
    return 0.5, True  # occupancy: inside where the value is >= 0.5
