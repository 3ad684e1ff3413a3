"""Volumes and plain arrays: .npy, .npz, NIfTI, MetaImage, raw binaries, zarr arrays, TIFF stacks.

Axis order. A volume is stored as (Z, Y, X, C): Z the slowest axis (slices), X the fastest
(columns), C the channels (1 for scalar data). Per format:

- .npy / .npz / zarr / raw: the array's own axes, read as the modality says: 3 axes are
  (Z, Y, X) and 4 are (Z, Y, X, C) for volumes (the default); with --modality image, 2 are
  (H, W) and 3 are (H, W, C); with --modality audio, 1 is (samples,) and 2 (samples, C).
- NIfTI (.nii, .nii.gz): nibabel's array axes are (X, Y, Z[, T]); they are transposed to
  (Z, Y, X), a 4th axis (or the 5th of an (X, Y, Z, 1, C) vector image) becoming the
  channels. Voxels keep the file's storage order: no reorientation to RAS is applied.
  The scaling (scl_slope, scl_inter) is applied as nibabel applies it.
- MetaImage (.mhd + data file, .mha): SimpleITK's array axes, already (Z, Y, X[, C]).
- TIFF stacks (multi-page, handed over by read_source): (pages, Y, X[, samples]).

Nothing is loaded whole where the format allows it: .npy, uncompressed .npz members, raw
binaries, uncompressed MetaImage data and uncompressed TIFF stacks are memory-mapped;
NIfTI, zarr arrays and compressed TIFFs are read region by region. Those lazy reads run
while the store is written, so they too turn any failure into a one-line DintError. Only
compressed MetaImage data, compressed .npz members and .nii.gz files (gzip has no random
access) are inflated into memory, once, after the size their header declares and their
decoder's peak are checked against the decoding limit and the memory available
(dint.core.resources.check_decoded_size); then they are read in blocks from memory.

Voxel spacing, where the file has it, is kept as extra["spacing"] in (Z, Y, X) order.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dint.core.errors import DintError
from dint.core.files import check_input, checked_files, shown
from dint.core.packages import need
from dint.core.resources import check_decoded_size
from dint.data.readers.common import (
    ReadOptions,
    Regions,
    Source,
    aligned_blocks,
    check_dtype,
    error_message,
    extension_of,
    float_audio_range,
    lazy_array,
    native_order,
    store_chunks,
)

EXTENSIONS = (".npy", ".npz", ".nii", ".nii.gz", ".mhd", ".mha", ".raw", ".bin", ".zarr")
# Each decoder's most memory in use while it decodes, a multiple of the decoded array (measured
# on 64 to 512 MiB volumes): numpy fills the array it returns from the zip stream; nibabel
# and SimpleITK each hold the data they inflated and the array made of it.
NPZ_DECODE_PEAK = 1.1
NIFTI_GZ_DECODE_PEAK = 2.1
METAIMAGE_DECODE_PEAK = 2.1

# How the axes of a plain array read, per modality: number of axes -> has a channel axis.
_PLAIN_LAYOUTS = {"volume": {3: False, 4: True}, "image": {2: False, 3: True}, "audio": {1: False, 2: True}}


def read(path: Path, options: ReadOptions) -> Source:
    readers: dict[str, Callable[[Path, ReadOptions], Source]] = {
        ".npy": _read_npy,
        ".npz": _read_npz,
        ".nii": _read_nifti,
        ".nii.gz": _read_nifti,
        ".mhd": _read_metaimage,
        ".mha": _read_metaimage,
        ".raw": _read_raw,
        ".bin": _read_raw,
        ".zarr": _read_zarr,
    }
    ext = extension_of(path)
    try:
        return readers[ext](path, options)
    except DintError:
        raise
    except MemoryError:
        raise DintError(f"{path}: out of memory while reading") from None
    except Exception as e:  # numpy, nibabel, SimpleITK, zarr and tifffile each raise their own types
        raise DintError(error_message(path, f"not a readable {ext} file", e)) from None


def read_tiff_stack(path: Path, options: ReadOptions) -> Source:
    """A multi-page TIFF (pages, Y, X[, samples]) as a volume; read_source hands it such TIFFs."""
    try:
        return _read_tiff_stack(path, options)
    except DintError:
        raise
    except Exception as e:
        raise DintError(error_message(path, "not a readable TIFF stack", e)) from None


def _layout(path: Path, shape: tuple[int, ...], options: ReadOptions) -> tuple[str, bool]:
    """(modality, has a channel axis) for a plain array of this shape under --modality."""
    modality = "volume" if options.modality == "auto" else options.modality
    if 0 in shape:  # read_source reports empty signals
        return modality, False
    if modality not in _PLAIN_LAYOUTS:
        raise DintError(f"{path}: holds a plain array, which cannot be read as {modality} data")
    layouts = _PLAIN_LAYOUTS[modality]
    if len(shape) in layouts:
        return modality, layouts[len(shape)]
    if options.modality == "auto" and len(shape) in (1, 2):
        raise DintError(
            f"{path}: a {len(shape)}-D array {shape} is not a volume (Z, Y, X[, C]); "
            f"pass --modality image for (H, W[, C]) or --modality audio for (samples[, C])"
        )
    axes = {
        "volume": "(Z, Y, X) or (Z, Y, X, C)",
        "image": "(H, W) or (H, W, C)",
        "audio": "(samples,) or (samples, C)",
    }[modality]
    raise DintError(f"{path}: a {len(shape)}-D array {shape} cannot be {modality} data, which is {axes}")


def _plain(
    path: Path, source, options: ReadOptions, kind: str, source_chunks=None, extra: dict | None = None
) -> Source:
    """A plain array (npy, npz, raw, zarr) as a signal: axes as `_layout` says, channels last."""
    shape = tuple(int(s) for s in source.shape)
    check_dtype(path, np.dtype(source.dtype))
    modality, has_channels = _layout(path, shape, options)
    if 0 in shape:  # read_source reports it as empty
        chunks = "auto"
    else:
        chunks = store_chunks(shape, has_channels, options)
        if source_chunks is not None:
            chunks = aligned_blocks(shape, source_chunks, chunks)
    values = native_order(lazy_array(path, source, chunks, kind))
    if not has_channels:
        values = values[..., None]
    value_range = None
    if modality == "audio" and values.dtype.kind == "f" and 0 not in values.shape:
        value_range = float_audio_range(values)
    return Source(values=values, modality=modality, value_range=value_range, extra=extra or {})


def _volume(values, has_channels: bool, extra: dict | None = None) -> Source:
    """A volume already in (Z, Y, X[, C]) order."""
    values = native_order(values)
    if not has_channels:
        values = values[..., None]
    return Source(values=values, modality="volume", extra=extra or {})


def _spacing(zyx) -> list[float]:
    return [float(s) for s in zyx]


# .npy and .npz


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 only differs for structured dtypes with non-latin names
            raise DintError(f"{path}: .npy format version {version[0]}.{version[1]} is not supported")
    except DintError:
        raise
    except Exception as e:
        raise DintError(error_message(path, "not a valid .npy array", e)) from None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def _npy_memmap(path: Path, start: int, end: int, label: str) -> np.ndarray:
    """Map the .npy array whose bytes lie in [start, end) of `path` (a .npy file or an npz member)."""
    with open(path, "rb") as f:
        f.seek(start)
        shape, fortran, dtype = _npy_header(f, path)
        offset = f.tell()
    check_dtype(path, dtype)
    need = math.prod(shape) * dtype.itemsize
    have = end - offset
    if have < need:
        raise DintError(f"{path}: truncated {label}: {have} data bytes, the header {shape} {dtype} needs {need}")
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_npy(path: Path, options: ReadOptions) -> Source:
    array = _npy_memmap(path, 0, path.stat().st_size, ".npy file")
    return _plain(path, array, options, "npy")


def _read_npz(path: Path, options: ReadOptions) -> Source:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DintError(error_message(path, "not a valid .npz archive", e)) from None
    with archive:
        members = archive.infolist()
        names = [m.filename.removesuffix(".npy") for m in members]
        if len(members) != 1:
            listed = ", ".join(names) if names else "none"
            raise DintError(
                f"{path}: holds {len(members)} arrays ({listed}); dint reads one array per file "
                f"(save the one to shard with np.save or np.savez)"
            )
        member = members[0]
        if member.compress_type == zipfile.ZIP_STORED:
            # np.savez stores members uncompressed: map the array in place inside the archive.
            with open(path, "rb") as f:
                f.seek(member.header_offset)
                local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise DintError(f"{path}: corrupt .npz archive (bad local header for {names[0]})")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = member.header_offset + 30 + name_length + extra_length
            end = min(start + member.file_size, path.stat().st_size)
            array = _npy_memmap(path, start, end, f".npz member {names[0]}")
        else:  # compressed (np.savez_compressed): decompressed into memory, once its declared size is checked
            try:
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    declared, _, declared_dtype = read_header(f)
                    header_bytes = f.tell()
                check_decoded_size(
                    path,
                    tuple(declared),
                    np.dtype(declared_dtype).itemsize,
                    NPZ_DECODE_PEAK,
                    "save it with np.save (.npy) or np.savez: dint reads those out of core",
                )
                need = math.prod(declared) * np.dtype(declared_dtype).itemsize
                if member.file_size != header_bytes + need:  # one of the two headers lies
                    raise DintError(
                        f"{path}: .npz member {names[0]}: its array header declares {tuple(declared)} "
                        f"{np.dtype(declared_dtype)} ({need} bytes), its zip entry holds "
                        f"{member.file_size - header_bytes} bytes of data; the archive is damaged"
                    )
                with archive.open(member) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            except DintError:
                raise
            except Exception as e:
                raise DintError(error_message(path, f"cannot read .npz member {names[0]}", e)) from None
    return _plain(path, array, options, "npz")


# Raw binaries


def _read_raw(path: Path, options: ReadOptions) -> Source:
    if options.shape is None or options.dtype is None:
        missing = " and ".join(o for o, v in (("--shape", options.shape), ("--dtype", options.dtype)) if v is None)
        hint = ""
        for header in (path.with_suffix(".mhd"), path.with_suffix(".mha")):
            if header.exists():
                hint = f" (or shard its header {header.name})"
        raise DintError(f"{path}: a raw binary needs {missing}, e.g. --shape 93,64,64 --dtype uint16{hint}")
    try:
        dtype = np.dtype(options.dtype)
    except TypeError:
        raise DintError(f"{path}: --dtype {options.dtype}: not a numpy dtype (e.g. uint8, int16, <f4, >u2)") from None
    check_dtype(path, dtype)
    shape = tuple(int(s) for s in options.shape)
    need = math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size != need:
        raise DintError(
            f"{path}: file is {size} bytes, but --shape {','.join(map(str, shape))} "
            f"--dtype {options.dtype} needs {need} bytes"
        )
    array = np.memmap(path, dtype=dtype, mode="r", shape=shape) if need else np.zeros(shape, dtype)
    return _plain(path, array, options, "raw")


# zarr


def _read_zarr(path: Path, options: ReadOptions) -> Source:
    import zarr

    if not path.is_dir():
        raise DintError(f"{path}: expected a zarr folder")
    # Links (to chunk files, to sub-folders) must resolve inside the folder, or dint would read
    # what it was not given.
    checked_files(path, f"the zarr folder {shown(path)}", links_inside=True)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:
        raise DintError(error_message(path, "not a zarr array or group", e)) from None
    if isinstance(node, zarr.Group):
        if "dint" in node.attrs:
            return _read_dint_store(path, node, options)
        arrays = sorted(node.arrays(), key=lambda item: item[0])
        if len(arrays) != 1:
            listed = ", ".join(name for name, _ in arrays) if arrays else "none"
            raise DintError(
                f"{path}: zarr group holds {len(arrays)} arrays ({listed}); "
                f"dint reads a group with exactly one array, or the array's own folder"
            )
        node = arrays[0][1]
    source = Regions(path, node.shape, node.dtype, node.__getitem__, base=node)
    return _plain(path, source, options, "zarr", source_chunks=node.chunks)


def _read_dint_store(path: Path, group, options: ReadOptions) -> Source:
    """Another dint store: shard it again (e.g. with a new --chunk), keeping its description."""
    from dint.data.store import VALUES, SignalInfo

    info = SignalInfo.from_attrs(dict(group.attrs["dint"]), str(path))
    array = group[VALUES]
    source = Regions(path, array.shape, array.dtype, array.__getitem__, base=array)
    chunks = aligned_blocks(array.shape, array.chunks, store_chunks(tuple(array.shape), True, options))
    values = lazy_array(path, source, chunks, "dint")
    return Source(values=values, modality=info.modality, value_range=info.value_range, extra=dict(info.extra))


# NIfTI


def _read_nifti(path: Path, options: ReadOptions) -> Source:
    nib = need("nibabel", "nibabel", "reading NIfTI volumes")

    try:
        image = nib.load(str(path))
    except Exception as e:  # ImageFileError, gzip and zlib errors, EOFError for a cut header
        raise DintError(error_message(path, "not a readable NIfTI file", e)) from None
    proxy = image.dataobj
    shape = tuple(int(s) for s in image.shape)  # (X, Y, Z[, T]) or (X, Y, Z, 1, C)
    if extension_of(path) == ".nii.gz" and 0 not in shape:
        # gzip has no random access: reading slab by slab would inflate from the start for
        # every slab (time growing with the square of the size). The declared size is checked,
        # then the data inflated once.
        check_decoded_size(
            path, shape, _nifti_itemsize(image), NIFTI_GZ_DECODE_PEAK, "gunzip it: dint reads a .nii out of core"
        )
        try:
            proxy = np.asanyarray(image.dataobj)
        except EOFError as e:
            raise DintError(error_message(path, "truncated file", e)) from None
        except Exception as e:
            raise DintError(error_message(path, "cannot read the NIfTI data", e)) from None
    if len(shape) == 5 and shape[3] == 1:
        proxy_index = lambda index: proxy[(*index[:3], 0, index[3])]  # noqa: E731
        shape = (*shape[:3], shape[4])
    elif len(shape) in (3, 4):
        proxy_index = proxy.__getitem__
    else:
        raise DintError(
            f"{path}: NIfTI image of shape {image.shape}: dint reads (X, Y, Z), (X, Y, Z, C) or (X, Y, Z, 1, C)"
        )
    has_channels = len(shape) == 4
    zyx_shape = (*shape[2::-1], *shape[3:])
    if 0 in shape:  # read_source reports it as empty
        import dask.array as da

        return _volume(da.zeros(zyx_shape, dtype=image.get_data_dtype()), has_channels)
    spacing = list(image.header.get_zooms()[:3])[::-1]
    # The scaled dtype (scl_slope/scl_inter may turn integers into floats), from one voxel.
    dtype = np.asarray(proxy_index((slice(0, 1),) * len(shape))).dtype
    check_dtype(path, dtype)
    store = store_chunks(zyx_shape, has_channels, options)  # (Z, Y, X[, C])
    chunks = (*store[2::-1], *store[3:])  # the same blocks in nibabel's (X, Y, Z[, C]) order
    values = lazy_array(path, Regions(path, shape, dtype.newbyteorder("="), proxy_index, base=proxy), chunks, "nifti")
    values = values.transpose(2, 1, 0, *range(3, len(shape)))
    return _volume(values, has_channels, {"spacing": _spacing(spacing)})


def _nifti_itemsize(image) -> int:
    """Bytes a voxel of the array nibabel returns: the stored type's, or float64's where a
    scaling (scl_slope, scl_inter) applies, as it may be."""
    stored = image.get_data_dtype().itemsize
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return stored if (slope, inter) == (1.0, 0.0) else max(stored, 8)


# MetaImage


def _sitk_dtypes() -> dict[int, np.dtype]:
    sitk = need("SimpleITK", "SimpleITK", "reading MetaImage volumes")

    names = {
        "UInt8": "u1",
        "Int8": "i1",
        "UInt16": "u2",
        "Int16": "i2",
        "UInt32": "u4",
        "Int32": "i4",
        "UInt64": "u8",
        "Int64": "i8",
        "Float32": "f4",
        "Float64": "f8",
    }
    table = {}
    for name, code in names.items():
        for prefix in ("sitk", "sitkVector"):
            pixel_id = getattr(sitk, prefix + name, None)
            if pixel_id is not None and pixel_id >= 0:
                table[pixel_id] = np.dtype(code)
    return table


def _metaimage_fields(path: Path) -> dict[str, str]:
    """The text header's "Key = Value" lines, up to ElementDataFile (binary data may follow it)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        for raw in f:
            key, sep, value = raw.decode("latin-1").partition("=")
            if sep:
                fields[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    fields["_header_bytes"] = str(f.tell())
                    break
    return fields


def _check_data_file_inside(path: Path) -> None:
    """A MetaImage header may name its data file anywhere (`../../etc/passwd`, an absolute
    path), a LIST of files or a name pattern: dint reads only one data file beside the header
    (inside its folder, links resolved), or the header's own LOCAL data."""
    data_file = _metaimage_fields(path).get("ElementDataFile", "")
    if not data_file:  # SimpleITK would guess where the data is
        raise DintError(
            f"{shown(path)}: ElementDataFile is missing or empty; name the data file beside the header, or LOCAL"
        )
    if data_file.upper().startswith("LIST") or "%" in data_file:
        raise DintError(
            f"{shown(path)}: ElementDataFile = {data_file!r}: data spread over a LIST of files or a "
            "file-name pattern is not read; name one data file beside the header"
        )
    if data_file.upper() == "LOCAL":
        return
    folder = path.parent.resolve()
    if folder not in (folder / data_file).resolve().parents:
        raise DintError(
            f"{shown(path)}: ElementDataFile = {data_file!r} is outside the header's folder; dint reads "
            "only a data file beside the header"
        )


def _read_metaimage(path: Path, options: ReadOptions) -> Source:
    sitk = need("SimpleITK", "SimpleITK", "reading MetaImage volumes")

    _check_data_file_inside(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as e:
        raise DintError(error_message(path, "not a readable MetaImage header", e)) from None
    size = tuple(int(s) for s in reader.GetSize())  # (X, Y, Z)
    if len(size) != 3:
        raise DintError(f"{path}: MetaImage with {len(size)} dimensions {size}; dint reads 3D volumes")
    components = int(reader.GetNumberOfComponents())
    dtype = _sitk_dtypes().get(reader.GetPixelID())
    if dtype is None:
        raise DintError(
            f"{path}: MetaImage pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())} is not supported"
        )
    extra = {"spacing": _spacing(reader.GetSpacing()[::-1])}
    has_channels = components > 1
    shape = (*size[::-1], components) if has_channels else size[::-1]  # (Z, Y, X[, C])
    array = _metaimage_memmap(path, shape, dtype)
    if array is None:  # compressed, split over several files, ...: SimpleITK reads it whole
        check_decoded_size(
            path, shape, dtype.itemsize, METAIMAGE_DECODE_PEAK, "save it uncompressed: dint reads that out of core"
        )
        try:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except Exception as e:
            raise DintError(error_message(path, "cannot read the MetaImage data", e)) from None
        array = array.reshape(shape)
    if 0 in shape:
        import dask.array as da

        return _volume(da.zeros(shape, dtype), has_channels)
    values = lazy_array(path, array, store_chunks(shape, has_channels, options), "mhd")
    return _volume(values, has_channels, extra)


def _metaimage_memmap(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """Map uncompressed data held in one file (or LOCAL, after the header); None otherwise."""
    fields = _metaimage_fields(path)
    if fields.get("CompressedData", "False").lower() == "true":
        return None
    data_file = fields.get("ElementDataFile", "")
    if not data_file or data_file.upper() == "LIST" or "%" in data_file or " " in data_file:
        return None
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = dtype.newbyteorder(">" if msb else "<")
    need = math.prod(shape) * dtype.itemsize
    if data_file.upper() == "LOCAL":
        data_path, offset = path, int(fields["_header_bytes"])
    else:
        data_path, offset = path.parent / data_file, 0
        check_input(data_path, "data file its header names")
    size = data_path.stat().st_size
    header_size = int(fields.get("HeaderSize", "0"))
    offset = size - need if header_size == -1 else offset + header_size
    if size - offset < need or offset < 0:
        raise DintError(
            f"{path}: truncated MetaImage data: {data_path.name} holds {max(0, size - offset)} "
            f"data bytes, the header needs {need}"
        )
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=shape)


# TIFF stacks


def is_tiff_stack(path: Path) -> bool:
    """Whether the TIFF's first series has an axis beyond (Y, X, channels): pages, Z, T, ..."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return any(axis not in "YXSC" and n > 1 for axis, n in zip(series.axes, series.shape))
    except Exception:  # the image reader reports unreadable files
        return False


def _read_tiff_stack(path: Path, options: ReadOptions) -> Source:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(int(s) for s in series.shape), np.dtype(series.dtype)
    check_dtype(path, dtype)
    keep = [i for i, (axis, n) in enumerate(zip(axes, shape)) if n > 1 or axis in "YX"]
    kept = "".join(axes[i] for i in keep)
    stack = [a for a in kept if a not in "YXSC"]
    channel = [a for a in kept if a in "SC"]
    if len(stack) != 1 or len(channel) > 1 or "Y" not in kept or "X" not in kept:
        raise DintError(
            f"{path}: TIFF series with axes {axes} {shape}: dint reads one stack of "
            f"pages (Z, Y, X) with at most one channel axis"
        )
    order = [kept.index(stack[0]), kept.index("Y"), kept.index("X"), *(kept.index(c) for c in channel)]
    kept_shape = tuple(shape[i] for i in keep)
    final = tuple(kept_shape[i] for i in order)
    store = store_chunks(final, bool(channel), options)
    try:
        array = tifffile.memmap(path, series=0, mode="r")  # uncompressed, contiguous: mapped
        if array.shape != shape:
            raise ValueError(f"mapped shape {array.shape} differs from the series shape {shape}")
        source, source_chunks = array, None
    except Exception:  # compressed or scattered pages: read chunk by chunk through tifffile's zarr view
        import zarr

        node = zarr.open(tifffile.imread(path, aszarr=True, series=0), mode="r")
        if isinstance(node, zarr.Group):  # a pyramid: its full-resolution level
            node = node[sorted(node.array_keys())[0]]
        if tuple(node.shape) != shape:
            raise DintError(f"{path}: TIFF series reads as {tuple(node.shape)}, its pages say {shape}") from None
        source = Regions(path, node.shape, node.dtype, node.__getitem__, base=node)
        source_chunks = node.chunks
    # Blocks in the series' own axis order, then drop unit axes and reorder lazily.
    inverse = {axis_index: store[position] for position, axis_index in enumerate(keep[i] for i in order)}
    wanted = tuple(inverse.get(i, 1) for i in range(len(shape)))
    chunks = wanted if source_chunks is None else aligned_blocks(shape, source_chunks, wanted)
    values = lazy_array(path, source, chunks, "tiff")
    values = values[tuple(slice(None) if i in keep else 0 for i in range(len(shape)))]
    values = values.transpose(order)
    return _volume(values, bool(channel))
