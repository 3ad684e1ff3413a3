"""Writing outputs: never half of one, never over what dint did not make, one writer at a time.

- **Stage, then publish.** Every file or folder dint writes (a store, a checkpoint,
  model.pt, a reconstruction, a preview) is built under a hidden staging name beside its
  destination and renamed into place when whole. One naming scheme for all of them,
  `.STEM.tmp-HOST.PID.RANDOM.SUFFIX` (the suffix kept last, since some writers pick the
  format from it), so what a killed process leaves behind is recognisable as dint's, and
  as stale once its process is gone (`remove_stale`).
- **Replace only what dint made.** `publish` never replaces anything unless its caller
  says what may be replaced (`may_replace`): a dint store for stores, anything inside a
  folder dint claimed (`claim_folder`: a run folder, a bench's output) for the files it
  holds. A destination that appears while dint writes is left alone: the final rename
  refuses to replace it (renameat2's RENAME_NOREPLACE).
- **One writer per destination.** `exclusive(path)` holds an advisory lock (flock) whose
  file names the holder; the kernel drops it when the holder dies, so a stale lock never
  blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from dint.core.errors import DintError, escaped

MARK = ".dint"  # in a folder dint claimed for its outputs
RUN_LOCK = ".dint-lock"  # in a run folder, held by rank 0 while a training runs there (dint.train)
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_STAGING = re.compile(r"^\.(?P<stem>.*)\.(?:tmp|old)-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}(?P<suffix>.*)$")


def new_token() -> str:
    """HOST.PID.RANDOM: unique, and tells a later run on this host whether its maker still lives."""
    return f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def shown(path: object) -> str:
    """A path (or a message) as printed on one line: control characters escaped, so a file
    name cannot split or forge a log line."""
    return escaped(str(path))


def staging_path(dest: Path, token: str | None = None) -> Path:
    """Where `dest` is built before `publish`: hidden, beside it; a fresh token unless given
    (ranks that build one output together pass the same token)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.stem}.tmp-{token or new_token()}{dest.suffix}")


def remove(path: Path) -> None:
    """Remove a file, link or folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def anything(_: Path) -> bool:
    """may_replace for files inside a folder dint claimed: whatever is there is dint's."""
    return True


def publish(tmp: Path, dest: Path, may_replace: Callable[[Path], bool] | None = None) -> Path:
    """Rename the finished `tmp` to `dest`.

    `dest` is replaced only if `may_replace(dest)` says so; then the old one is moved aside
    first and removed after (a folder cannot be swapped for another atomically), so `dest` is
    at every moment either the old whole output or the new whole one. Whatever else is at
    `dest`, or appears there meanwhile, is left as it is and the publish fails (DintError).
    """
    if not os.path.lexists(dest):
        _rename_noreplace(tmp, dest)
        return dest
    if may_replace is None or not may_replace(dest):
        raise DintError(
            f"{shown(dest)}: exists and was not made by dint (or appeared while dint was writing "
            "it); left as it is, nothing written there"
        )
    old = dest.with_name(f".{dest.name}.old-{new_token()}")
    os.replace(dest, old)
    try:
        _rename_noreplace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    remove(old)
    return dest


def _rename_noreplace(src: Path, dst: Path) -> None:
    """os.rename that fails, rather than replace, when `dst` exists (Linux renameat2)."""
    if _renameat2 is not None:
        if _renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise DintError(f"{shown(dst)}: appeared while dint was writing it; left as it is, nothing written there")
        if code not in (errno.EINVAL, errno.ENOSYS):  # a filesystem without the flag: fall back below
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise DintError(f"{shown(dst)}: appeared while dint was writing it; left as it is, nothing written there")
    os.rename(src, dst)


def _load_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _load_renameat2()


@contextlib.contextmanager
def staged(dest: Path, token: str | None = None, may_replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """`with staged(dest) as tmp:` write `tmp`; it is published as `dest` when the block ends
    (replacing only what `may_replace` allows), and removed, leaving `dest` as it was, when
    the block raises."""
    remove_stale(dest)
    tmp = staging_path(dest, token)
    try:
        with naming(dest):
            yield tmp
            publish(tmp, dest, may_replace)
    except BaseException as e:
        discard(tmp, e)
        raise


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError of the block that names no file (a write to an open file, a writer thread's:
    a full disk) is given `path`, so that its one line says what could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def discard(tmp: Path, error: BaseException) -> None:
    """Remove the staging copy `tmp` of an output that failed with `error`; after an interrupt,
    also whatever a writer thread still puts there."""
    remove(tmp)
    if isinstance(error, KeyboardInterrupt):
        _remove_late_writes(tmp)


def _remove_late_writes(tmp: Path, seconds: float = 1.0) -> None:
    """After an interrupt (Ctrl-C, SIGTERM), a write already handed to another thread (zarr's
    I/O loop) may still land and recreate `tmp`: watch for a moment and remove it again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if os.path.lexists(tmp):
            remove(tmp)


def write_outputs(folder: Path, writers: dict[str, Callable[[Path], object] | str]) -> None:
    """Write each named file of a folder dint claimed (`claim_folder`), staged: {name: write(tmp)},
    or {name: text}. A failure (a full disk) names the file and leaves the one before whole."""
    for name, write in writers.items():
        with staged(Path(folder) / name, may_replace=anything) as tmp:
            if isinstance(write, str):
                tmp.write_text(write)
            else:
                write(tmp)


def remove_stale(dest: Path) -> None:
    """Remove what dead dint processes on this host left beside `dest` (staging and set-aside
    names of `dest`); anything of a live process, or of another host, is left."""
    dest = Path(dest)
    try:
        siblings = list(dest.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        match = _STAGING.match(path.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        if (match["stem"], match["suffix"]) in ((dest.stem, dest.suffix), (dest.name, "")):
            remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- What dint made ---------------------------------------------------------------------------


def is_dint_store(path: Path) -> bool:
    """A folder whose zarr.json carries dint's attributes (a store, a reconstruction, a render
    pyramid): what dint-shard --overwrite and dint render may replace."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not is_plain_file(path / "zarr.json"):
        return False
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and isinstance(attrs.get("dint"), dict)


def check_claimable(path: Path, what: str) -> None:
    """Refuse, before anything is written, a `path` that claim_folder would refuse."""
    path = Path(path)
    if path.is_symlink():  # followed, dint would write (and replace files) wherever it points
        raise DintError(
            f"{shown(path)}: is a symbolic link (to {shown(os.readlink(path))}), not a folder; {what} "
            "writes only into a folder named as it is: give the folder itself"
        )
    if path.exists() and not path.is_dir():
        raise DintError(f"{shown(path)}: exists and is not a folder; {what} needs a folder")
    if path.is_dir() and not (path / MARK).is_file() and any(path.iterdir()):
        raise DintError(
            f"{shown(path)}: a folder with files dint did not make (no {MARK} mark in it); {what} "
            "writes only into a new or empty folder, or one dint made: choose another"
        )


def claim_folder(path: Path, what: str) -> Path:
    """Make `path` a folder of dint's outputs: create it, or adopt it empty, or accept it when
    dint made it (its MARK); refuse anything else. Files in a claimed folder are dint's."""
    path = Path(path)
    check_claimable(path, what)
    path.mkdir(parents=True, exist_ok=True)
    mark = path / MARK
    if not mark.is_file():
        with naming(mark):
            mark.write_text(json.dumps({"made_by": "dint", "for": what}) + "\n")
    return path


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str, remove_after: bool = False) -> Iterator[None]:
    """Hold an advisory lock on `lock_file` (created if needed) for the block, or fail at once
    naming the holder and what it holds (`what`). The kernel releases the lock when the holder
    exits, however it exits, so a lock of a dead process never blocks. `remove_after`: the
    file goes when the block ends (a lock beside an output, not inside one)."""
    lock_file = Path(lock_file)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DintError(
                f"{shown(lock_file)}: held by {shown(holder)} (the {what}); one at a time, so this one stops"
            ) from None
        try:  # the holder before us may have removed the file: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with naming(lock_file):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"dint pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        if remove_after:
            with contextlib.suppress(OSError):
                os.unlink(lock_file)
        os.close(fd)  # releases the lock


def hold_run_folder(run_dir: Path) -> contextlib.ExitStack:
    """Claim `run_dir` for a training run (claim_folder) and lock it (RUN_LOCK) for the run; the
    lock goes when the returned stack closes or the process ends."""
    claim_folder(run_dir, "a training run")
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(run_dir / RUN_LOCK, "training run in this folder"))
    return stack


# --- What dint reads -------------------------------------------------------------------------

_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_input(path: Path, what: str = "input", holder: str | None = None) -> None:
    """Refuse, in one line, an input that is not a regular file or a folder: reading a named
    pipe or a device blocks or never ends, and a symlink loop has nothing to read. Call it
    before opening anything dint reads. `holder`: the folder dint wrote that holds `path` (a
    store, a checkpoint; e.g. "the store S.zarr"): dint writes no links there, so a link is
    refused rather than followed to what was not given."""
    try:
        mode = (os.lstat if holder else os.stat)(path).st_mode  # else through links, to what would be read
    except FileNotFoundError:
        raise DintError(f"{shown(path)}: {what} not found") from None
    except OSError as e:  # a symlink loop, a name too long, a path through a file, no permission
        raise DintError(f"{shown(path)}: cannot read the {what} ({e.strerror})") from None
    if stat.S_ISLNK(mode):
        raise DintError(
            f"{shown(path)}: is a symbolic link (to {shown(os.readlink(path))}); {holder} was written by dint "
            "without links, so dint reads only what is inside it"
        )
    for test, kind in _SPECIAL:
        if test(mode):
            raise DintError(
                f"{shown(path)}: is {kind}, not a file or folder; dint reads only regular files "
                "(a pipe or device could block it or never end)"
            )


def is_plain_file(path: Path) -> bool:
    """A regular file, not through a link: what dint may open of a folder it wrote without
    blocking (a named pipe) or reading elsewhere (a link)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def checked_files(folder: Path, holder: str, links_inside: bool = False) -> set[str]:
    """The regular files under `folder` ('/'-separated, relative to it), every entry checked by
    check_input first, in one walk that reads no file. `links_inside`: links are followed when
    they resolve inside `folder` (a zarr source made by other tools), else (a folder dint
    wrote, named by `holder`, e.g. "the store S.zarr") any link is refused."""
    root, files, pending = Path(folder).resolve(), set(), [Path(folder)]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                if entry.is_file(follow_symlinks=False):
                    files.add(path.relative_to(folder).as_posix())
                    continue
                check_input(path, f"part of {holder}", holder=None if links_inside else holder)
                if root not in path.resolve().parents:  # a link that check_input followed
                    raise DintError(
                        f"{shown(path)}: links to {shown(path.resolve())}, outside {holder}; dint reads "
                        "only what is inside it"
                    )
                if path.is_file():
                    files.add(path.relative_to(folder).as_posix())
    return files


def real_path(path: Path) -> Path:
    """The path with every link followed, without failing on a loop (then: as far as it goes)."""
    return Path(os.path.realpath(path))


def held_by(lock_file: Path) -> str | None:
    """Who holds the `exclusive` lock on `lock_file` (its text), or None when no one does;
    looks without taking it for longer than the test, and creates nothing."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def is_dint_png(path: Path) -> bool:
    """A PNG that dint wrote (its Software text says so): what dint may replace with a new one."""
    from PIL import Image, UnidentifiedImageError

    if Path(path).is_symlink() or not Path(path).is_file():
        return False
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software", "").startswith("dint")
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def sha256_of(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 of a file; of a folder (a zarr source), over its files' relative names and contents, sorted."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file or folder to disk (a folder: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
