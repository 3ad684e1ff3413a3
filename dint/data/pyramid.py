"""Multiscale pyramids with OME-Zarr 0.5 metadata: the layout `dint render` writes.

    OUT.zarr/                zarr v3 group
      zarr.json              attributes:
                               "ome":  OME-Zarr 0.5 "multiscales" (+ "omero" display hints)
                               "dint": the SignalInfo of level 0 (shape, dtype, value range,
                                       domain, chunks; extra["render"] says how it was rendered
                                       and extra["pyramid"] lists the level paths)
      0/ 1/ ... L/           arrays shaped (C, *spatial): channel first, then (y, x) or (z, y, x)
                             as OME-Zarr orders axes; dimension_names ("c", "y", "x") match the
                             axes; a chunk holds every channel of its points

Level 0 is the model evaluated on the render grid. Level l+1 halves every spatial axis longer
than one sample (ceil), each sample the mean of a 2x2 (2x2x2) block of level l (a partial
block at an odd edge averages what it has), rounded back to the storage dtype; levels are
added until the largest side is at most `top_side`. Averaging the level below is the standard
pyramid filter and costs a read of one level per level instead of a model pass over a grid
that is later thrown away; the model's own value at a coarse grid point would instead be a
point sample and alias.

Coordinates: a level's "scale" is the distance between its samples and "translation" the
position of its first sample, in the store's sample units (multiplied by the store's
extra["spacing"] where it has one, e.g. a volume's voxel size; a `--crop`ped store adds the
crop's start), so renders at any scale and region overlay each other and the original. The
mean of a 2^l block is centred (2^l - 1) / 2 samples after the block's first sample; the
translation says so, so pixel centres line up across levels.

OME-Zarr images have 2 or 3 space axes: audio (one time axis) gets the same arrays and "dint"
attribute but no "ome" attribute, as OME-Zarr has no way to describe it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dint.core.errors import DintError
from dint.core.files import check_input
from dint.data.store import SignalInfo, Store, axis_names, store_files, to_dtype

OME_VERSION = "0.5"
CHANNEL_AXIS = "c"
METHOD = "mean"


@dataclasses.dataclass(frozen=True)
class Level:
    """One resolution of a pyramid."""

    path: str  # array name in the group: "0", "1", ...
    shape: tuple[int, ...]  # spatial
    chunks: tuple[int, ...]  # spatial
    factor: tuple[int, ...]  # level-0 samples per sample of this level, per spatial axis

    def halves(self, above: Level) -> tuple[bool, ...]:
        """Per spatial axis: whether this level halved `above` (the level before it)."""
        return tuple(f > g for f, g in zip(self.factor, above.factor))


def plan_levels(shape: tuple[int, ...], chunks: tuple[int, ...], top_side: int = 512) -> list[Level]:
    """Level 0 at `shape`, then each level halving (ceil) every axis longer than one sample
    until the largest side is at most `top_side`."""
    if top_side < 1:
        raise ValueError("top_side must be at least 1")
    levels = [Level("0", tuple(shape), tuple(min(c, s) for c, s in zip(chunks, shape)), (1,) * len(shape))]
    while max(levels[-1].shape) > top_side:
        above = levels[-1]
        halve = [s > 1 for s in above.shape]
        new_shape = tuple(-(-s // 2) if h else s for s, h in zip(above.shape, halve))
        factor = tuple(f * 2 if h else f for f, h in zip(above.factor, halve))
        levels.append(Level(str(len(levels)), new_shape, tuple(min(c, s) for c, s in zip(chunks, new_shape)), factor))
    return levels


def is_ome(ndim: int) -> bool:
    """OME-Zarr images have 2 or 3 space axes."""
    return ndim in (2, 3)


def dimension_names(ndim: int) -> tuple[str, ...]:
    return (CHANNEL_AXIS, *axis_names(ndim))


def create_pyramid(path: Path, info: SignalInfo, levels: list[Level]) -> zarr.Group:
    """An empty pyramid group at `path` (replacing whatever is there), "dint" attribute set,
    "ome" attribute not yet: `write_ome_metadata` adds it once every level is written."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for level in levels:
        group.create_array(
            level.path,
            shape=(info.channels, *level.shape),
            chunks=(info.channels, *level.chunks),
            dtype=info.dtype,
            fill_value=0,
            dimension_names=dimension_names(info.ndim),
        )
    group.attrs["dint"] = info.to_attrs()
    return group


def level_transforms(level: Level, base_scale: tuple[float, ...], base_translation: tuple[float, ...]) -> list[dict]:
    """The level's scale then translation, channel axis first (1 and 0)."""
    scale = [1.0] + [float(b * f) for b, f in zip(base_scale, level.factor)]
    translation = [0.0] + [float(t + (f - 1) / 2 * b) for t, b, f in zip(base_translation, base_scale, level.factor)]
    return [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]


CHANNEL_COLOURS = {
    1: ["FFFFFF"],
    2: ["FFFFFF", "808080"],
    3: ["FF0000", "00FF00", "0000FF"],
    4: ["FF0000", "00FF00", "0000FF", "808080"],
}
CHANNEL_LABELS = {3: ["red", "green", "blue"], 4: ["red", "green", "blue", "alpha"], 2: ["grey", "alpha"]}


def ome_metadata(
    info: SignalInfo,
    levels: list[Level],
    base_scale: tuple[float, ...],
    base_translation: tuple[float, ...],
    name: str,
    unit: str | None = None,
) -> dict[str, Any]:
    """The value of the group attribute "ome" (OME-Zarr 0.5) for a pyramid of `info`."""
    if not is_ome(info.ndim):
        raise ValueError(f"OME-Zarr images have 2 or 3 space axes, not {info.ndim}")
    space = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in axis_names(info.ndim)]
    axes = [{"name": CHANNEL_AXIS, "type": "channel"}, *space]
    datasets = [
        {"path": level.path, "coordinateTransformations": level_transforms(level, base_scale, base_translation)}
        for level in levels
    ]
    lo, hi = info.value_range
    colours = CHANNEL_COLOURS.get(info.channels, ["FFFFFF"] * info.channels)
    labels = CHANNEL_LABELS.get(info.channels, [f"channel {i}" for i in range(info.channels)])
    channels = [
        {
            "label": label,
            "color": colour,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"min": float(lo), "max": float(hi), "start": float(lo), "end": float(hi)},
        }
        for label, colour in zip(labels, colours)
    ]
    rdefs: dict[str, Any] = {"model": "color" if info.channels >= 3 else "greyscale", "defaultT": 0}
    if info.ndim == 3:
        rdefs["defaultZ"] = levels[0].shape[0] // 2
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": METHOD,
                "metadata": {
                    "description": "level 0: the trained model evaluated on the grid; level l+1: the mean of each "
                    "2-sample block (per halved axis) of level l, rounded to the storage dtype",
                    "method": "dint.data.pyramid.block_mean",
                    "version": _dint_version(),
                },
            }
        ],
        "omero": {"name": name, "channels": channels, "rdefs": rdefs},
    }


def _dint_version() -> str:
    from dint import __version__

    return __version__


def write_ome_metadata(path: Path, metadata: dict[str, Any] | None) -> None:
    group = zarr.open_group(str(path), mode="r+")
    if metadata is not None:
        group.attrs["ome"] = metadata


def block_mean(block: np.ndarray, halve: tuple[bool, ...]) -> np.ndarray:
    """Mean over 2-sample blocks along each spatial axis marked in `halve` (block is (C, *spatial)).

    An odd axis's last block has one sample, and is its own mean. Returns float64.
    """
    x = block.astype(np.float64)
    for axis, h in enumerate(halve, start=1):
        if not h:
            continue
        n = x.shape[axis]
        lead = (slice(None),) * axis
        even = x[(*lead, slice(0, None, 2))]
        odd = x[(*lead, slice(1, None, 2))]
        total = even.copy()
        total[(*lead, slice(0, n // 2))] += odd
        counts = np.full(-(-n // 2), 2.0)
        if n % 2:
            counts[-1] = 1.0
        x = total / counts.reshape((-1,) + (1,) * (x.ndim - axis - 1))
    return x


def downsample_chunk(
    source: zarr.Array,
    target: zarr.Array,
    level: Level,
    origin: tuple[int, ...],
    shape: tuple[int, ...],
    halve: tuple[bool, ...],
) -> None:
    """Write one chunk (origin, shape) of `level` into `target` from the level above in `source`."""
    above = source.shape[1:]
    box = tuple(
        slice(2 * o, min(2 * (o + s), n)) if h else slice(o, o + s) for o, s, n, h in zip(origin, shape, above, halve)
    )
    block = np.asarray(source[(slice(None), *box)])
    mean = block_mean(block, halve)
    target[(slice(None), *(slice(o, o + s) for o, s in zip(origin, shape)))] = to_dtype(mean, str(target.dtype))


class ChannelsLast:
    """A (C, *spatial) zarr array seen as dint's (*spatial, C), read lazily.

    Supports what a dint Store's `values` is used for: shape, dtype, chunks, nchunks, nbytes,
    and reading `[...]` or a tuple of spatial slices/ints (optionally followed by a channel index).
    """

    def __init__(self, array: zarr.Array):
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.array.shape[1:], self.array.shape[0])

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return (*self.array.chunks[1:], self.array.chunks[0])

    @property
    def nchunks(self) -> int:
        return self.array.nchunks

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def __getitem__(self, key) -> np.ndarray:
        if key is Ellipsis:
            key = ()
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            if key.count(Ellipsis) > 1 or key[-1] is not Ellipsis:
                raise IndexError("only a trailing ... is supported")
            key = key[:-1]
        spatial_dims = self.ndim - 1
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-dimensional array")
        spatial = key[:spatial_dims] + (slice(None),) * (spatial_dims - min(len(key), spatial_dims))
        channel = key[spatial_dims] if len(key) > spatial_dims else slice(None)
        data = np.asarray(self.array[(channel, *spatial)])
        if isinstance(channel, (int, np.integer)):
            return data  # the channel axis is gone
        # the channel axis sits before the surviving spatial axes
        return np.moveaxis(data, 0, -1)

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data.astype(dtype) if dtype is not None else data


def level_paths(group: zarr.Group, info: SignalInfo) -> list[str]:
    """The pyramid's level paths, finest first (from the "ome" metadata, else the "dint" extra)."""
    ome = group.attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        return [d["path"] for d in ome["multiscales"][0]["datasets"]]
    return list(info.extra.get("pyramid", {}).get("paths", ["0"]))


def open_pyramid(path: str | Path, level: int = 0) -> Store:
    """A pyramid's level as a dint Store (values channels last, read lazily): `dint info`,
    previews and anything reading stores work on `dint render` output through this."""
    path = Path(path)
    check_input(path, "store")
    if path.is_dir():
        store_files(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise DintError(f"{path}: not a zarr v3 group ({type(e).__name__})") from None
    if "dint" not in group.attrs:
        raise DintError(f"{path}: not a dint store (group attribute 'dint' is missing)")
    info = SignalInfo.from_attrs(dict(group.attrs["dint"]), str(path))
    paths = level_paths(group, info)
    if not 0 <= level < len(paths):
        raise DintError(f"{path}: no level {level} (it has {len(paths)})")
    try:
        array = group[paths[level]]
    except KeyError:
        raise DintError(f"{path}: level array '{paths[level]}' is missing") from None
    values = ChannelsLast(array)
    if level == 0:
        expected = (*info.shape, info.channels)
        if tuple(values.shape) != expected:
            raise DintError(f"{path}: level 0 has shape {tuple(array.shape)}, attributes say {expected} channels last")
    else:
        info = dataclasses.replace(info, shape=tuple(values.shape[:-1]), chunks=tuple(values.chunks[:-1]))
    return Store(path=path, info=info, values=values)  # type: ignore[arg-type]


def finest_level_within(levels: list[Level], max_side: int) -> Level | None:
    """The finest level whose largest side is at most `max_side`."""
    return next((level for level in levels if max(level.shape) <= max_side), None)
