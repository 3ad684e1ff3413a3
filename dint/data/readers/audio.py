"""Audio: WAV files (RIFF, RIFX, RF64) through scipy.io.wavfile, as a 1D signal (samples, channels).

PCM 8 (unsigned), 16, 24, 32 and 64 bits and IEEE float 32/64; mono or any number of
channels. The samples are memory-mapped where scipy can (everything but 24-bit PCM), so a
long recording is read chunk by chunk while the store is written, never loaded whole.
24-bit PCM comes back from scipy as int32 with the sample in the top 24 bits, so the
int32 full range is still the right value range.

Value range: integers map their type's full range (filled in centrally by read_source);
floats map (-1, 1) when every |x| <= 1, else (-m, m) with m = max |x|, so that silence is
always 0 after normalisation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dint.core.errors import DintError, one_line
from dint.data.readers.common import ReadOptions, Source, error_message, float_audio_range, lazy_array

EXTENSIONS = (".wav", ".wave")


def _wav(path: Path) -> tuple[int, np.ndarray]:
    from scipy.io import wavfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                rate, data = wavfile.read(path, mmap=True)
            except ValueError as e:
                if "not compatible" not in str(e):  # e.g. 24-bit PCM cannot be memory-mapped
                    raise
                rate, data = wavfile.read(path, mmap=False)
        except ValueError as e:
            if "greater than file size" in str(e):  # the mapping runs past the end of the file
                raise DintError(f"{path}: truncated WAV file (the data chunk runs past the end of the file)") from None
            raise DintError(error_message(path, "not a readable WAV file", e)) from None
        except (OSError, EOFError, IndexError, TypeError, KeyError) as e:
            raise DintError(error_message(path, "not a readable WAV file", e)) from None
    for warning in caught:
        if "EOF prematurely" in str(warning.message):
            raise DintError(f"{path}: truncated WAV file ({one_line(warning.message)})")
    return int(rate), data


def read(path: Path, options: ReadOptions) -> Source:
    from dint.data.store import default_chunks

    rate, data = _wav(path)
    if rate <= 0:
        raise DintError(f"{path}: WAV sample rate {rate} is not positive")
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise DintError(f"{path}: WAV data has {data.ndim} dimensions, expected (samples, channels)")
    if data.dtype.kind not in "uif":
        raise DintError(f"{path}: WAV samples of type {data.dtype} are not supported")
    # Blocks of whole store chunks (all channels): each task reads one stretch of the mapped file.
    chunks = (*default_chunks(data.shape[:1], options.chunk), data.shape[1])
    values = lazy_array(path, data, chunks, "wav")  # not da.from_array: it would copy the mapping
    if not data.dtype.isnative:  # RIFX (big-endian) files
        values = values.astype(data.dtype.newbyteorder("="))
    value_range = None
    if values.dtype.kind == "f" and 0 not in values.shape:
        value_range = float_audio_range(values)
    return Source(values=values, modality="audio", value_range=value_range, extra={"sample_rate": rate})
