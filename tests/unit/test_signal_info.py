"""A store's description (dint.data.store.SignalInfo) in one process: what its attributes may
hold, and that whatever it accepts trains in float32."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_image_info
from hypothesis import given, settings
from hypothesis import strategies as st

from dint.core.errors import DintError
from dint.data.store import SignalInfo, from_training, to_training


def attributes() -> dict:
    """The "dint" attribute of a 48x40 grey image store chunked 16x16, as dint-shard writes it."""
    return smooth_image_info("ab" * 32).to_attrs()


def test_the_attributes_round_trip():
    attrs = attributes()
    assert attrs["shape"] == [48, 40] and attrs["source"] == {"name": "smooth.png", "sha256": "ab" * 32}
    info = SignalInfo.from_attrs(attrs, "S.zarr")
    assert info.to_attrs() == attrs and info.ndim == 2 and info.num_points == 48 * 40
    attrs["shape"] = [np.int64(48), 40]  # numpy integers, as an info built in code holds them
    assert SignalInfo.from_attrs(attrs, "S.zarr").shape == (48, 40)
    for bad in ([1, 2], None, "dint"):
        with pytest.raises(DintError, match="S.zarr: store attribute 'dint' = .* must be a JSON object"):
            SignalInfo.from_attrs(bad, "S.zarr")


@pytest.mark.parametrize("value_range", [(0.0, 255.0), (-1.0, 1.0), (-32768.0, 32767.0), (1e-3, 2e-3)])
def test_values_map_onto_minus_one_one_and_back(value_range):
    lo, hi = value_range
    values = np.array([lo, (lo + hi) / 2, hi])
    np.testing.assert_allclose(to_training(values, value_range), [-1.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(from_training(to_training(values, value_range), value_range), values, rtol=1e-12)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_ATTRIBUTE_KEYS = [
    "format_version",
    "modality",
    "shape",
    "channels",
    "dtype",
    "value_range",
    "domain",
    "chunks",
    "source",
    "extra",
]


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(allow_nan=False, allow_infinity=False),
    width=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
)
def test_float32_problem_holds_exactly_when_float32_fails(lo, width):
    hi = lo + width
    if not lo < hi:
        return
    info = SignalInfo(
        modality="audio",
        shape=(4,),
        channels=1,
        dtype="float64",
        value_range=(lo, hi),
        domain=((-1.0, 1.0),),
        chunks=(4,),
        source_name="x",
        source_sha256="0",
    )
    with np.errstate(over="ignore", invalid="ignore"):
        lo32, hi32 = np.float32(lo), np.float32(hi)
        usable = bool(np.isfinite(np.float32(hi32 - lo32)) and np.float32(hi32 - lo32) >= np.finfo(np.float32).tiny)
    assert (info.float32_problem() is None) == usable
    if usable:  # the mapping to [-1, 1] is finite at both ends
        ends = to_training(np.array([lo32, hi32], dtype=np.float32), info.value_range)
        assert np.isfinite(ends).all()


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(_ATTRIBUTE_KEYS), value=_json)
def test_any_store_attribute_value_is_accepted_or_refused_naming_it(key, value):
    attrs = attributes()
    attrs[key] = value
    try:
        info = SignalInfo.from_attrs(attrs, "S.zarr")
    except DintError as e:
        message = str(e)
        assert message.startswith("S.zarr: ") and "\n" not in message
        assert key in message or "modality" in message or "format version" in message
        return
    assert info.float32_problem() is None  # what is accepted can be trained in float32
