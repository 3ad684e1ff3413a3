"""Writing outputs so that a reader never sees half of one: stage, then publish.

Every file or folder dint writes (a store, a checkpoint, model.pt, a reconstruction, a
preview) is built under a hidden staging name beside its destination and renamed into
place when whole. One naming scheme for all of them, `.STEM.tmp-TOKEN.SUFFIX` (the suffix
kept last, since some writers pick the format from it), so what a crash leaves behind is
recognisable as dint's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def new_token() -> str:
    return uuid.uuid4().hex[:8]


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


def publish(tmp: Path, dest: Path) -> Path:
    """Rename the finished `tmp` to `dest`. An old `dest` is moved aside first and removed after
    (a folder cannot be swapped for another atomically), so `dest` is at every moment either the
    old whole output or the new whole one."""
    if not dest.exists() or not tmp.is_dir():
        os.replace(tmp, dest)
        return dest
    old = dest.with_name(f".{dest.name}.old-{new_token()}")
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    remove(old)
    return dest


@contextlib.contextmanager
def staged(dest: Path, token: str | None = None) -> Iterator[Path]:
    """`with staged(dest) as tmp:` write `tmp`; it is published as `dest` when the block ends,
    and removed, leaving `dest` as it was, when the block raises."""
    tmp = staging_path(dest, token)
    try:
        yield tmp
        publish(tmp, dest)
    except BaseException:
        remove(tmp)
        raise


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
