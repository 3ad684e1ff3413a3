"""The quality functions against cases worked out by hand."""

import math

import numpy as np
import pytest

from dint.fields.quality import iou, psnr, ssim


def test_psnr_hand_checked():
    assert psnr(0.01, 1.0) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert psnr(1e-4, 2.0) == pytest.approx(10 * math.log10(4 / 1e-4))
    assert psnr(0.0, 1.0) == math.inf
    # A constant error of 0.1 on [0, 1] data: MSE 0.01, 20 dB.
    a = np.zeros(100)
    assert psnr(float(np.mean((a - (a + 0.1)) ** 2)), 1.0) == pytest.approx(20.0)


def test_iou_hand_checked():
    predicted = np.array([1, 1, 0, 0, 1], dtype=bool)
    truth = np.array([1, 0, 0, 1, 1], dtype=bool)
    # intersection {0, 4} = 2, union {0, 1, 3, 4} = 4
    assert iou((predicted & truth).sum(), (predicted | truth).sum()) == pytest.approx(0.5)
    assert iou(0, 0) == 1.0
    assert iou(3, 3) == 1.0


def test_ssim_identical_and_degraded():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 1))
    assert ssim(image, image, data_range=1.0) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1)
    assert ssim(image, noisy, data_range=1.0) < 0.9
