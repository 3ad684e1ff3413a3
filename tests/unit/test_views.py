"""What a run's pictures show (dint.observe.maps): points binned into a view of any signal, and
the means per bin, against numpy; the pictures of real runs: tests/integration/test_observability.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize(
    "shape, chunks, map_size",
    [((48, 40), (16, 16), 512), ((1000, 700), (128, 128), 64), ((9, 30, 20), (4, 8, 8), 8), ((100_000,), (4096,), 16)],
)
def test_views_bin_points_as_numpy_does(shape, chunks, map_size):
    """Bins of a picture of any signal, small or huge, against a plain numpy histogram; the
    picture never passes map_size (4x for audio's strip)."""
    from dint.data.store import SignalInfo
    from dint.observe.maps import AUDIO_LENGTH, FieldMaps, SignalView

    info = SignalInfo(
        modality={1: "audio", 2: "image", 3: "volume"}[len(shape)],
        shape=shape,
        channels=2,
        dtype="float32",
        chunks=chunks,
        domain=((-1.0, 1.0),) * len(shape),
        value_range=(-1.0, 1.0),
        source_name="test",
        source_sha256="",
        extra={},
    )
    view = SignalView(info, map_size)
    assert max(view.shape) <= map_size * (AUDIO_LENGTH if len(shape) == 1 else 1)
    rng = np.random.default_rng(0)
    points = np.stack([rng.integers(0, size, 5000) for size in shape], axis=1)
    if len(shape) == 3:
        points[::2, 0] = shape[0] // 2  # half in the middle slice
    in_view, flat = view.bins(torch.from_numpy(points))
    keep = np.all(points[:, : len(view.fixed)] == np.array(view.fixed, dtype=int), axis=1)
    assert np.array_equal(in_view.numpy(), keep)
    plane = points[keep][:, len(view.fixed) :] // view.factor
    assert np.array_equal(flat.numpy(), np.ravel_multi_index(tuple(plane.T), view.shape))
    assert view.area.sum() == np.prod(shape[len(view.fixed) :])
    # Means per bin, as FieldMaps keeps them, against numpy's.
    values = rng.normal(size=(5000, 2)).astype(np.float32)
    maps = FieldMaps(view, torch.device("cpu"))
    maps.add(torch.from_numpy(points), torch.from_numpy(values), torch.zeros(5000, 2))
    result = maps.result()
    counts = np.bincount(flat.numpy(), minlength=view.size)
    sums = np.zeros((view.size, 2))
    np.add.at(sums, flat.numpy(), values[keep])
    with np.errstate(invalid="ignore"):
        expected = (sums / counts[:, None]).reshape(*view.shape, 2)
    np.testing.assert_allclose(result["prediction"], expected, rtol=1e-6)
    assert np.array_equal(result["points"].ravel(), counts)
