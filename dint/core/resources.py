"""What the machine has, and refusing before starting what cannot fit in it.

Every check names what needs the room, how much, and how much there is, in one line.
Decoding a compressed input (an image, a .npz, a gzip NIfTI) is also capped by
DINT_MAX_DECODE_BYTES (default 16 GiB, or the memory available if less): a small file that
declares a huge size is refused before it is inflated.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from dint.core.errors import DintError

DECODE_LIMIT_ENV = "DINT_MAX_DECODE_BYTES"
DEFAULT_DECODE_LIMIT = 16 << 30


def human(nbytes: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def available_memory(device=None) -> int:
    """Bytes of memory available now: on a CUDA device its free memory, else the host's
    (Linux MemAvailable; the free pages elsewhere)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk(path: Path) -> int:
    """Bytes free on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def local_ranks() -> int:
    """Ranks of this job on this machine (torchrun's LOCAL_WORLD_SIZE), 1 without torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def require_memory(nbytes: float, what: str, share: int = 1, device=None) -> None:
    """Refuse `what` when it needs more than the memory available (of `device`, or the host's
    split over `share` processes of this machine)."""
    have = available_memory(device) // (
        1 if device is not None and getattr(device, "type", None) == "cuda" else max(1, share)
    )
    if nbytes > have:
        per = f" to each of {share} ranks on this machine" if share > 1 else " on this machine"
        raise DintError(f"{what} needs {human(nbytes)} of memory; {human(have)} is available{per}")


def require_disk(nbytes: float, what: str, where: Path) -> None:
    have = free_disk(where)
    if nbytes > have:
        raise DintError(f"{what} would write {human(nbytes)}; {human(have)} is free on the disk of {where}")


def decode_limit() -> int:
    """The most bytes a compressed input may inflate to (DINT_MAX_DECODE_BYTES, capped by memory)."""
    text = os.environ.get(DECODE_LIMIT_ENV)
    if not text:
        return min(DEFAULT_DECODE_LIMIT, available_memory())
    try:
        limit = float(text)
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit >= 1):  # 1e400 reads as inf, which no size is over
        raise DintError(
            f"{DECODE_LIMIT_ENV}={text!r} (environment variable): expected a finite number of "
            "bytes, at least 1, e.g. 17179869184 or 16e9"
        )
    return min(int(limit), available_memory())


def check_decoded_size(path: object, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before decoding, an input whose declared size inflates beyond decode_limit()."""
    nbytes = itemsize
    for n in shape:
        nbytes *= int(n)
    limit = decode_limit()
    if nbytes > limit:
        raise DintError(
            f"{path}: declares {' x '.join(map(str, shape))} samples ({human(nbytes)} decoded), over the "
            f"{human(limit)} this machine allows for decoding one input ({DECODE_LIMIT_ENV} raises the "
            "limit up to the memory available)"
        )


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30
_kept_freed_memory = False


def keep_freed_memory(keep: bool) -> bool:
    """Let glibc keep the memory a training step frees, for the next step (run.keep_freed_memory).

    By default glibc maps every block over its mmap threshold afresh and unmaps it when freed,
    and returns the heap's free top to the system: on a CPU every step's activations (a few
    MB each) are then page-faulted and zeroed anew at every step, which costs a third of a
    scoring forward here. Raising both thresholds keeps up to 1 GiB of freed memory for reuse
    (blocks of 32 MiB and more are still mapped). Process-wide, and not undone once set (glibc
    drops its adaptive threshold): a later run in the same process that asks for the default
    is refused. Returns whether the setting is in effect (False where there is no glibc).
    """
    global _kept_freed_memory
    if not keep:
        if _kept_freed_memory:
            raise DintError(
                "run.keep_freed_memory = false: an earlier run in this process already keeps freed "
                "memory, which cannot be undone; set it for every run of the process (dint bench: "
                "--run.keep_freed_memory false)"
            )
        return False
    if _kept_freed_memory:
        return True
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    _kept_freed_memory = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _kept_freed_memory
