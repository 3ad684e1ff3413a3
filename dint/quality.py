"""Quality measures of a fit."""

from __future__ import annotations

import math

import numpy as np


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
