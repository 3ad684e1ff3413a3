"""Saving and loading: the final model (model.pt) and training checkpoints.

Every file holds tensors and plain data only, so it loads with
`torch.load(weights_only=True)` and cannot run code.

A checkpoint is a folder `run.dir/checkpoints/step-NNNNNNNN/` holding `state.pt` and,
written last, `manifest.json` with the SHA-256 of every file. It is built under a hidden
temporary name, flushed to disk, and renamed into place, so a crash while saving leaves
the previous checkpoints untouched, and a folder without a valid manifest is never used.
Its content does not depend on the number of ranks: a run saved with 2 ranks resumes
with 1 or 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dint.config import Config
from dint.errors import DintError
from dint.store import SignalInfo

CHECKPOINTS = "checkpoints"
STATE = "state.pt"
MANIFEST = "manifest.json"
_NAME = re.compile(r"step-(\d{8})")


def save_model(path: Path, model: nn.Module, config: Config, info: SignalInfo) -> Path:
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "signal": info.to_attrs(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous model.pt whole
    return path


def load_trained(path: Path) -> tuple[nn.Module, SignalInfo, dict]:
    """The model saved at `path`, the description of the signal it fits, and its config."""
    from dint.model import Siren

    if not path.is_file():
        raise DintError(f"{path}: no saved model (train first, or name a run folder holding model.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        info = SignalInfo.from_attrs(saved["signal"], str(path))
        m = saved["config"]["model"]
        model = Siren(info.ndim, info.channels, m["width"], m["hidden_layers"], m["w0"], m["w0_first"])
        model.load_state_dict(saved["model"])
    except DintError:
        raise
    except Exception as e:  # unpickling, a missing key or a shape mismatch: the file is not ours
        raise DintError(f"{path}: not a dint model file ({type(e).__name__}: {e})".splitlines()[0]) from None
    return model.eval(), info, saved["config"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int,
                    before_manifest: Callable[[], None] | None = None) -> Path:
    """Write `state` as the checkpoint of `step` (the next step to run); keep the newest `keep`.

    Any OSError (a full disk, a read-only folder) becomes a DintError naming the folder;
    the temporary folder is removed and older checkpoints are left as they were.
    """
    folder = run_dir / CHECKPOINTS
    dest = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(state, tmp / STATE)
        _fsync(tmp / STATE)
        if before_manifest is not None:  # a hook for fault-injection tests: a crash mid-save
            before_manifest()
        manifest = {"step": step, "files": {STATE: _sha256(tmp / STATE)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(tmp / MANIFEST)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        _fsync(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DintError(f"{folder}: cannot save the checkpoint of step {step} ({e.strerror or e})") from None
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first (complete or not)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)), reverse=True)


def load_checkpoint(path: Path) -> dict:
    """The state saved in checkpoint folder `path`, after checking its manifest; DintError if bad."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DintError(f"{path}: incomplete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise DintError(f"{path}: {MANIFEST} is unreadable") from None
    for name, digest in files.items():
        if not (path / name).is_file():
            raise DintError(f"{path}: {name} is missing")
        if _sha256(path / name) != digest:
            raise DintError(f"{path}: {name} does not match its checksum (truncated or altered)")
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # the checksum matched, so this is a file we did not write
        raise DintError(f"{path}: {STATE} cannot be loaded safely ({type(e).__name__})") from None


def newest_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, warning (one line each) about those skipped."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path)
        except DintError as e:
            warn(f"skipping checkpoint {e}")
    return None
