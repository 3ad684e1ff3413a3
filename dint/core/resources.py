"""What the machine has, and refusing before starting what cannot fit in it.

Every check names what needs the room, how much, and how much there is, in one line.
The memory available is the least of what the machine has free, what this process's control
group still allows and what its address-space and data limits (ulimit -v, -d) leave.
Decoding a compressed input (an image, a .npz, a gzip NIfTI, a compressed MetaImage) is
checked from the size its header declares, before it is inflated: the decoded size against
DINT_MAX_DECODE_BYTES (default 16 GiB), and the decoder's peak (its own measured multiple of
the decoded size) against the memory available.
"""

from __future__ import annotations

import math
import os
import resource
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
    """Bytes of memory available now: on a CUDA device its free memory, else the least of the
    host's (Linux MemAvailable; the free pages elsewhere), what this process's control group
    allows beyond its use, and what its address-space and data limits leave."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return max(0, min(_host_available(), _cgroup_room(), _rlimit_room()))


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float:
    """What the memory limits of this process's control group and of each group above it leave
    (cgroup v2 memory.max less memory.current; v1 memory.limit_in_bytes less usage); inf
    where there is none. A container or a Slurm job shows the host's memory in /proc/meminfo."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return math.inf
    room = math.inf
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            base, limit_file, use_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit_file, use_file = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = base / group.lstrip("/")
        while True:
            try:
                limit = (folder / limit_file).read_text().strip()
                used = int((folder / use_file).read_text())
                if limit != "max":
                    room = min(room, int(limit) - used)
            except (OSError, ValueError):
                pass
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return room


def _rlimit_room() -> float:
    """What ulimit -v (RLIMIT_AS) and ulimit -d (RLIMIT_DATA) leave beyond this process's
    current address space and data segment; inf where neither is set."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    except OSError:
        status = {}
    room = math.inf
    for limit_kind, used_key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft = resource.getrlimit(limit_kind)[0]
        if soft != resource.RLIM_INFINITY:
            used = int(status.get(used_key, "0 kB").split()[0]) * 1024
            room = min(room, soft - used)
    return room


def free_disk(path: Path) -> int:
    """Bytes free on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def local_ranks() -> int:
    """Ranks of this job on this machine (torchrun's LOCAL_WORLD_SIZE), 1 without torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def require_memory(nbytes: float, what: str, share: int = 1, device=None, hint: str = "") -> None:
    """Refuse `what` when it needs more than the memory available (of `device`, or the host's
    split over `share` processes of this machine); `hint`, if any, ends the message."""
    have = available_memory(device) // (
        1 if device is not None and getattr(device, "type", None) == "cuda" else max(1, share)
    )
    if nbytes > have:
        per = f" to each of {share} ranks on this machine" if share > 1 else " on this machine"
        hint = f"; {hint}" if hint else ""
        raise DintError(f"{what} needs {human(nbytes)} of memory; {human(have)} is available{per}{hint}")


# A training rank's own memory (Python, torch, gloo; measured: about 340 MiB for a small run).
RANK_PROCESS_BYTES = 384 << 20
# Ranks a core may run at once: beyond this they mostly wait for one another (and for the
# core), so a run measures the waiting; a study that counts rather than times may go this far.
RANKS_PER_CORE = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, a cgroup's cpuset, Slurm)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def require_ranks(ranks: int, threads: int, what: str) -> None:
    """Refuse starting `ranks` training processes of `threads` threads each on this machine when
    its cores or its memory cannot run them."""
    cores = usable_cores()
    if ranks * threads > RANKS_PER_CORE * cores:
        raise DintError(
            f"{what}: {ranks} rank(s) of {threads} thread(s) on this machine's {cores} core(s) is over "
            f"{RANKS_PER_CORE} threads a core; ask for fewer ranks (or run them on several machines)"
        )
    require_memory(ranks * RANK_PROCESS_BYTES, f"{what}: {ranks} rank(s) at {human(RANK_PROCESS_BYTES)} each")


def require_disk(nbytes: float, what: str, where: Path) -> None:
    """Refuse `what` when the disk of the folder `where` has less free than `nbytes`. A folder
    this process cannot write, or one on a read-only or pseudo filesystem (which reports no
    space at all), is left to the write itself, whose error says why."""
    folder = Path(where).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        disk = os.statvfs(folder)
    except OSError:
        return  # unreadable: the write names why
    if disk.f_flag & os.ST_RDONLY or disk.f_blocks == 0 or not os.access(folder, os.W_OK | os.X_OK):
        return
    have = free_disk(where)
    if nbytes > have:
        raise DintError(f"{what} would write {human(nbytes)}; {human(have)} is free on the disk of {where}")


def decode_limit() -> int:
    """The most bytes a compressed input may inflate to (DINT_MAX_DECODE_BYTES)."""
    text = os.environ.get(DECODE_LIMIT_ENV)
    if not text:
        return DEFAULT_DECODE_LIMIT
    try:
        limit = float(text)
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit >= 1):  # 1e400 reads as inf, which no size is over
        raise DintError(
            f"{DECODE_LIMIT_ENV}={text!r} (environment variable): expected a finite number of "
            "bytes, at least 1, e.g. 17179869184 or 16e9"
        )
    return int(limit)


def check_decoded_size(path: object, shape: tuple[int, ...], itemsize: int, peak: float = 1.0, hint: str = "") -> None:
    """Refuse, before decoding, an input whose declared size inflates beyond decode_limit(), or
    whose decoder needs more than the memory available: `peak` is the decoder's most memory in
    use while it decodes, as a multiple of the decoded size (each reader's, measured); `hint`
    says what the user can do instead (a form of the input dint reads out of core)."""
    nbytes = itemsize * math.prod(int(n) for n in shape)
    declared = f"{path}: declares {' x '.join(map(str, shape))} samples ({human(nbytes)} decoded)"
    limit = decode_limit()
    if nbytes > limit:
        raise DintError(
            f"{declared}, over the {human(limit)} this machine allows for decoding one input "
            f"({DECODE_LIMIT_ENV} raises the limit){f'; {hint}' if hint else ''}"
        )
    require_memory(nbytes * peak, f"{declared}; decoding it", hint=hint)


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
