"""The torch dint supports, and the optional packages it imports only where they are used.

dint needs torch >= MIN_TORCH (pyproject.toml states the same); an older one is refused at
start-up in one line. It uses nothing newer: a CUDA machine's own torch (2.11 on the lent GPU
machines) runs it as it is. The heavy packages that only some paths use (DeepSpeed, trimesh,
nibabel, SimpleITK, imagecodecs, dask.distributed) are imported there, through `need`, so a
machine without them runs everything else, and a path that needs one says so in one line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from types import ModuleType

from dint.core.errors import DintError

MIN_TORCH = (2, 4)


def check_torch(version: str | None = None) -> None:
    """Refuse a torch older than MIN_TORCH (`version`: the installed one's unless given, read
    without importing torch, so commands that need none stay quick)."""
    if version is None:
        if "torch" in sys.modules:
            version = sys.modules["torch"].__version__
        else:
            try:
                version = importlib.metadata.version("torch")
            except importlib.metadata.PackageNotFoundError:
                return  # no torch at all: the first command that imports it says so
    match = re.match(r"(\d+)\.(\d+)", str(version))
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_TORCH:
        wanted = ".".join(map(str, MIN_TORCH))
        raise DintError(f"torch {version} is too old: dint needs torch >= {wanted} (pyproject.toml)")


def need(module: str, package: str, needed_for: str) -> ModuleType:
    """`module`, imported; a DintError naming `package` and what needs it when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if (e.name or "").split(".")[0] == module.split(".")[0]:
            raise DintError(f"{package} is not installed: needed for {needed_for}") from None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DintError(f"{package} cannot be imported ({first}): needed for {needed_for}") from None
