"""Writing outputs: never half of one, never over what dint did not make, one writer at a time.

- **Stage, then publish.** Every file or folder dint writes (a store, a checkpoint,
  model.pt, a reconstruction, a preview) is built under a hidden staging name beside its
  destination and renamed into place when whole. One naming scheme for all of them,
  `.STEM.tmp-HOST.PID.RANDOM.SUFFIX` (the suffix kept last, since some writers pick the
  format from it), so what a killed process leaves behind is recognisable as dint's, and
  as stale once its process is gone: every command that writes into a folder first clears it
  of what dead dint processes left there (`remove_stale`). What this process has begun and
  not finished is known too (`remove_unfinished`): a failed or stopped command removes it,
  and says so only when it is true.
- **Replace only what dint made.** `publish` never replaces anything unless its caller
  says what may be replaced (`may_replace`): a dint store for stores, anything inside a
  folder dint claimed (`claim_folder`: a run folder, a bench's output) for the files it
  holds. A destination that appears while dint writes is left alone: the final rename
  refuses to replace it (renameat2's RENAME_NOREPLACE).
- **Never over or inside an input.** `check_outside_inputs`: no destination is, lies inside,
  or (replaced as a whole) holds what the command reads, links followed.
- **No link is followed.** dint makes no links: a folder it claims may hold none, every file
  it writes there is staged and published in place of whatever is at its name
  (`write_outputs`, `open_staged`), and its sub-folders are real folders (`own_folder`).
- **One writer per destination.** `exclusive(path)` holds an advisory lock (flock) whose
  file holds the holder's record; the kernel drops it when the holder dies, so a stale lock
  never blocks. A file of a lock's name that is not such a record is never truncated or
  removed. Readers share a store's lock (`lock_path`), so no writer replaces it while it is
  read; a folder dint claimed has one writer at a time (`hold_folder`, RUN_LOCK).
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
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dint.core.errors import DintError, escaped

MARK = ".dint"  # in a folder dint claimed for its outputs
RUN_LOCK = ".dint-lock"  # in a folder dint claimed, held by the command writing there (a training: rank 0)
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_STAGING = re.compile(  # any character in a name, a newline too
    r"\.(?P<stem>.*)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}(?P<suffix>.*)", re.DOTALL
)
# Staging copies this process has named and not yet published or removed, and outputs it set
# aside while replacing them: what a failure or a stop must not leave behind.
_UNFINISHED: set[Path] = set()


def new_token() -> str:
    """HOST.PID.RANDOM: unique, and tells a later run on this host whether its maker still lives."""
    return f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def shown(path: object) -> str:
    """A path (or a message) as printed on one line: control characters escaped, so a file
    name cannot split or forge a log line."""
    return escaped(str(path))


def staging_path(dest: Path, token: str | None = None, mine: bool = True) -> Path:
    """Where `dest` is built before `publish`: hidden, beside it; a fresh token unless given
    (ranks that build one output together pass the same token). `mine`: this process writes it,
    so it is among what `remove_unfinished` removes (not so on the ranks that only fill it in)."""
    dest = Path(dest)
    path = dest.with_name(f".{dest.stem}.tmp-{token or new_token()}{dest.suffix}")
    if mine:
        _UNFINISHED.add(path)
    return path


def remove(path: Path) -> None:
    """Remove a file, link or folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if not os.path.lexists(path):
        _UNFINISHED.discard(path)


def anything(_: Path) -> bool:
    """may_replace for files inside a folder dint claimed: whatever is there is dint's."""
    return True


def publish(tmp: Path, dest: Path, may_replace: Callable[[Path], bool] | None = None) -> Path:
    """Rename the finished `tmp` to `dest` (`publish_all` of one output)."""
    publish_all([(tmp, dest, may_replace)])
    return dest


def publish_all(outputs: list[tuple[Path, Path, Callable[[Path], bool] | None]]) -> None:
    """Rename finished staged outputs [(tmp, dest, may_replace)] into place as one publish: an
    output and its companions (a store and its preview) are all replaced, or none is.

    A `dest` is replaced only if `may_replace(dest)` says so, which is asked of every one before
    any is moved; then the old one is moved aside first and removed after (a folder cannot be
    swapped for another atomically), so each `dest` is at every moment either the old whole
    output or the new whole one. Whatever else is at a `dest`, or appears there meanwhile, is
    left as it is, the outputs already renamed go back, and the publish fails (DintError).
    """
    replaced = []  # whether each dest is there, and may be replaced: only those are moved aside
    for _, dest, may_replace in outputs:
        replaced.append(os.path.lexists(dest))
        if replaced[-1] and (may_replace is None or not may_replace(dest)):
            raise DintError(
                f"{shown(dest)}: exists and was not made by dint (or appeared while dint was writing "
                "it); left as it is, nothing written there"
            )
    placed: list[tuple[Path, Path, Path | None]] = []  # (tmp, dest, the old dest set aside)
    with _signals_held():  # a stop between the renames would leave a `dest` missing
        try:
            for (tmp, dest, _), replacing in zip(outputs, replaced):
                old = None
                if replacing:
                    old = dest.with_name(f".{dest.name}.old-{new_token()}")
                    os.replace(dest, old)
                try:
                    _rename_noreplace(tmp, dest)
                except BaseException:
                    if old is not None:
                        os.replace(old, dest)
                    raise
                placed.append((tmp, dest, old))
        except BaseException:
            for tmp, dest, old in reversed(placed):  # back to how it was: the new to staging, the old in place
                os.replace(dest, tmp)
                if old is not None:
                    os.replace(old, dest)
            raise
        for tmp, _, old in placed:
            _UNFINISHED.discard(tmp)
            if old is not None:
                _UNFINISHED.add(old)  # removed below; if a stop cuts that short, by remove_unfinished
    for _, _, old in placed:
        if old is not None:
            remove(old)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block: they are taken (and raise) when it ends."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


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
    remove_stale(dest.parent)
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
        _remove_late_writes([tmp])


def remove_unfinished() -> list[Path]:
    """Remove whatever this process began writing and did not finish (staging copies, outputs it
    set aside to replace): what a failed or stopped command calls before it says it left
    nothing. Returns what could not be removed, which is then a dead process's, and goes with
    the next dint command writing in its folder (`remove_stale`)."""
    present = [path for path in sorted(_UNFINISHED) if os.path.lexists(path)]
    _UNFINISHED.intersection_update(present)
    for path in present:
        remove(path)
    if present:
        _remove_late_writes(present)
    return [path for path in present if os.path.lexists(path)]


def _remove_late_writes(paths: list[Path], seconds: float = 1.0) -> None:
    """After an interrupt (Ctrl-C, SIGTERM), a write already handed to another thread (zarr's
    I/O loop) may still land and recreate a staging copy: watch for a moment and remove it again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        for path in paths:
            if os.path.lexists(path):
                remove(path)


def write_outputs(folder: Path, writers: dict[str, Callable[[Path], object] | str]) -> None:
    """Write each named file of a folder dint claimed (`claim_folder`), staged: {name: write(tmp)},
    or {name: text}. A failure (a full disk) names the file and leaves the one before whole."""
    for name, write in writers.items():
        with staged(Path(folder) / name, may_replace=anything) as tmp:
            if isinstance(write, str):
                tmp.write_text(write)
            else:
                write(tmp)


def remove_stale(folder: Path) -> None:
    """Clear `folder` of what dead dint processes on this host left in it (killed, or stopped
    before their cleanup ended): their staging copies are removed; an output one had set aside
    to replace goes back in place when its replacement never arrived (killed between the two
    renames of `publish`), else is removed. Anything of a live process, or of another host, is
    left. Every command writing into a folder runs this first (`staged`, `claim_folder`)."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return
    for path in entries:
        match = _STAGING.fullmatch(path.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        dest = path.with_name(match["stem"] + match["suffix"])
        if match["kind"] == "old" and not os.path.lexists(dest):
            try:
                _rename_noreplace(path, dest)
                continue
            except (OSError, DintError):
                pass  # a new `dest` appeared meanwhile: the old one is stale like the rest
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
    if path.is_dir() and not is_marked(path) and any(path.iterdir()):
        raise DintError(
            f"{shown(path)}: a folder with files dint did not make (no {MARK} mark in it); {what} "
            "writes only into a new or empty folder, or one dint made: choose another"
        )
    if path.is_dir():
        link = _first_link(path)
        if link is not None:
            raise DintError(
                f"{shown(link)}: links to {shown(real_path(link))}, in a folder dint writes; dint makes no "
                "links and writes through none, so it stops: remove the link or choose another folder"
            )


def _first_link(folder: Path) -> Path | None:
    """The first symbolic link under `folder` (not followed), or None."""
    for parent, folders, files in os.walk(folder):
        for name in sorted(folders + files):
            if os.path.islink(os.path.join(parent, name)):
                return Path(parent) / name
    return None


def is_marked(path: Path) -> bool:
    """Whether dint claimed the folder `path`: its MARK is a regular file (a link is no mark)."""
    try:
        return stat.S_ISREG(os.lstat(Path(path) / MARK).st_mode)
    except OSError:
        return False


def claim_folder(path: Path, what: str) -> Path:
    """Make `path` a folder of dint's outputs: create it, or adopt it empty, or accept it when
    dint made it (its MARK); refuse anything else. Files in a claimed folder are dint's."""
    path = Path(path)
    check_claimable(path, what)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    if not is_marked(path):
        write_outputs(path, {MARK: lambda tmp: tmp.write_text(json.dumps({"made_by": "dint", "for": what}) + "\n")})
    return path


def read_mark(folder: Path) -> dict:
    """What the MARK of a folder dint claimed says ({} if it says nothing readable)."""
    try:
        note = json.loads(read_own(Path(folder) / MARK) or "{}")
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def note_in_mark(folder: Path, **fields) -> None:
    """Add `fields` to the MARK of a folder dint claimed (and holds the lock of)."""
    note = {**read_mark(folder), **fields}
    write_outputs(Path(folder), {MARK: lambda tmp: tmp.write_text(json.dumps(note) + "\n")})


def own_folder(path: Path) -> Path:
    """The sub-folder `path` of a folder dint claimed, made if missing; refused (DintError) when
    something else is there, a link above all: dint writes into no folder through a link."""
    path = Path(path)
    try:
        path.mkdir()
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise DintError(
                f"{shown(path)}: is not a folder dint made ({'a link' if path.is_symlink() else 'a file'}); "
                "dint writes nothing through it, so it stops: remove it"
            ) from None
    return path


def open_staged(dest: Path, text: str = "") -> IO[str]:
    """A new file at `dest` (in a folder dint claimed) holding `text`, left open to write more:
    made under a staging name and published in place of whatever was at `dest` (a link is
    replaced, never followed), so all that is written goes into dint's own file. Read back
    through the same handle (opened for reading too)."""
    dest = Path(dest)
    remove_stale(dest)
    tmp = staging_path(dest)
    file = os.fdopen(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "w+")
    try:
        file.write(text)
        file.flush()
        publish(tmp, dest, anything)
    except BaseException as e:
        file.close()
        discard(tmp, e)
        raise
    return file


def read_own(path: Path) -> str | None:
    """The text of a file dint wrote in its folder, or None if there is none; never read through
    a link (a link there is not dint's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    with os.fdopen(fd, errors="replace") as file:  # a crash can leave bytes that are not text
        return file.read()


def check_outside_inputs(
    dest: Path, inputs: dict[str, Path | str], label: str | None = None, holding: bool = True
) -> None:
    """Refuse a destination that is one of the command's `inputs` ({what: path}) or lies inside
    one, or (`holding`: the destination is replaced or written into as a whole) holds one:
    dint never writes inside or over what it reads. Paths are compared with every link followed."""
    target = real_path(dest)
    for what, path in inputs.items():
        source = real_path(path)
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "is inside"
        elif holding and target in source.parents:
            relation = "contains"
        else:
            continue
        raise DintError(
            f"{label or shown(dest)}: {relation} {what} {shown(path)}; dint never writes over its inputs, "
            "nor inside them"
        )


_LOCK_RECORD = 200  # bytes: a lock file holds one record, "dint pid N on HOST (the ROLE)", padded to this size
_LOCK_PREFIX = b"dint pid "


def lock_path(dest: Path) -> Path:
    """The lock beside a destination (a store, a render) that its writers hold, and its readers share."""
    dest = real_path(dest)
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def exclusive(
    lock_file: Path, what: str, remove_after: bool = False, shared: bool = False, optional: bool = False
) -> Iterator[None]:
    """Hold an advisory lock on `lock_file` for the block, or fail at once naming the holder and
    its role (`what`, the role of this holder, is written for the next one to read). The kernel
    releases the lock when the holder exits, however it exits, so a lock of a dead process
    never blocks. `shared`: a reader's lock, held by many at once, that keeps a writer out.
    `remove_after`: the file goes when the block ends (a lock beside an output, not inside
    one), if no one else holds it. `optional`: where the lock cannot be made (a read-only
    folder), go on without it.

    A lock file is created whole (its record staged and renamed into place), so a file of that
    name that does not begin like a record is not dint's: it is refused, never truncated, and
    never removed.
    """
    lock_file = Path(lock_file)
    fd = _take_lock(lock_file, what, shared, optional)
    try:
        yield
    finally:
        if fd is not None:
            if remove_after:
                _remove_lock_file(lock_file, fd, shared)
            os.close(fd)  # releases the lock


def _take_lock(lock_file: Path, what: str, shared: bool, optional: bool) -> int | None:
    while True:
        fd = _open_lock_file(lock_file, what, optional)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DintError(f"{shown(lock_file)}: held by {shown(holder)}; one at a time, so this one stops") from None
        if _same_file(fd, lock_file):  # the holder before us may have removed it: then lock the new one
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # a shared lock opened read-only (a read-only folder) keeps its record
        os.pwrite(fd, _lock_record(what), 0)
    return fd


def _lock_record(what: str) -> bytes:
    text = f"dint pid {os.getpid()} on {socket.gethostname()} (the {what})"
    return text.encode(errors="replace")[:_LOCK_RECORD].ljust(_LOCK_RECORD)


def _open_lock_file(lock_file: Path, what: str, optional: bool) -> int | None:
    """The lock file open, made if missing; refused (DintError) when it is not a lock dint made."""
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not _create_lock_file(lock_file, what, optional):
                return None
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link: dint makes none
                raise _foreign_lock(lock_file) from None
            if not (optional and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM)):
                raise
            try:
                fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return None
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(_LOCK_PREFIX), 0) == _LOCK_PREFIX:
            return fd
        os.close(fd)
        raise _foreign_lock(lock_file)


def _create_lock_file(lock_file: Path, what: str, optional: bool) -> bool:
    """Put a lock file, record included, at `lock_file` unless one is there; False where the
    folder takes no new file and the lock is optional."""
    remove_stale(lock_file)
    tmp = staging_path(lock_file)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if optional and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return False
        raise
    try:
        os.write(fd, _lock_record(what))
    finally:
        os.close(fd)
    try:
        _rename_noreplace(tmp, lock_file)
    except DintError:  # another process made it first: use theirs
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _foreign_lock(lock_file: Path) -> DintError:
    return DintError(
        f"{shown(lock_file)}: exists and is not a lock dint made (dint locks under this name); "
        "left as it is, so this one stops: move it away"
    )


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _remove_lock_file(lock_file: Path, fd: int, shared: bool) -> None:
    """Remove the lock file held by `fd`, unless another process holds it too (readers share it)."""
    if shared:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
    if _same_file(fd, lock_file):
        with contextlib.suppress(OSError):
            os.unlink(lock_file)


def lock_output(dest: Path, what: str = "writer of this store") -> contextlib.ExitStack:
    """Hold the lock beside `dest` (lock_path) for its writer, until the returned stack closes:
    one writer at a time, and none while a command reads it (they share that lock)."""
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(lock_path(dest), what, remove_after=True))
    return stack


def hold_folder(path: Path, what: str, role: str) -> contextlib.ExitStack:
    """Claim `path` for `what` (claim_folder) and lock it (RUN_LOCK) for the command writing there
    (`role`): one writer in a dint folder at a time. The lock goes when the returned stack
    closes or the process ends."""
    claim_folder(path, what)
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(Path(path) / RUN_LOCK, role))
    return stack


def hold_run_folder(run_dir: Path) -> contextlib.ExitStack:
    """Claim and lock `run_dir` for a training run (hold_folder), for the run."""
    return hold_folder(run_dir, "a training run", "training run in this folder")


def hold_folder_of(path: Path, what: str) -> contextlib.ExitStack:
    """Lock (RUN_LOCK) the folder dint claimed that `path` lies in, if any, for a command writing
    there, until the returned stack closes: one writer in a dint folder at a time, so a command
    writing into a run folder while it trains stops at once, naming the training."""
    stack = contextlib.ExitStack()
    for folder in real_path(path).parents:
        if is_marked(folder):
            stack.enter_context(exclusive(folder / RUN_LOCK, what))
            break
    return stack


# --- What dint reads -------------------------------------------------------------------------

_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_output_folder(dest: Path) -> None:
    """Refuse, before anything is read, an output whose folder is missing or no folder."""
    if not Path(dest).parent.is_dir():
        parent = Path(dest).parent
        problem = (
            "not a folder, so nothing can be written inside it"
            if os.path.lexists(parent)
            else "output folder does not exist"
        )
        raise DintError(f"{shown(parent)}: {problem}")


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
        if os.pread(fd, len(_LOCK_PREFIX), 0) != _LOCK_PREFIX:
            return None
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
    try:  # the header and the text before the pixels only (`image.text` would decode them all)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.format == "PNG" and str(image.info.get("Software", "")).startswith("dint")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
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
