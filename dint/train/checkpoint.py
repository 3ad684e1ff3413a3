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

import dataclasses
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from dint.core.config import Config, ModelConfig
from dint.core.errors import DintError, warn
from dint.core.files import anything, fsync, new_token, sha256_of, shown, staged
from dint.data.store import SignalInfo
from dint.distributed.collectives import DistInfo, all_gather_varlen, all_reduce_max
from dint.fields.model import build_model, structure

CHECKPOINTS = "checkpoints"
STATE = "state.pt"
MANIFEST = "manifest.json"
FORMAT = 2  # state.pt: {"format", "step", "parts": {name: state}, "config", "signal", "world_size"}
_NAME = re.compile(r"step-(\d{8})")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RngState:
    """Every rank's torch RNG state, so a resume on the same number of ranks draws the same."""

    def __init__(self, dist: DistInfo):
        self.dist = dist

    def state_dict(self) -> dict:
        (states,) = all_gather_varlen(torch.get_rng_state()[None].to(self.dist.device))
        return {"states": states.cpu()}

    def load_state_dict(self, state: dict) -> None:
        states = state["states"]
        # A row of the gathered states; cloned, since set_rng_state misreads a view at an offset.
        torch.set_rng_state(states[self.dist.rank if states.shape[0] == self.dist.world_size else 0].cpu().clone())


class CheckpointManager:
    """When to save, how many to keep, where to resume from, and where a rollback goes.

    What a checkpoint holds comes from the registered stateful parts ({name: part}), each
    saved under its name; the run's config and signal description go with them so that a
    resume can refuse another signal or another model shape.
    """

    def __init__(
        self,
        run_config: Config,
        info: SignalInfo,
        dist: DistInfo,
        parts: dict[str, Stateful],
        before_manifest: Callable[[int], None] = lambda step: None,
    ):
        """Checkpoints of the run of `run_config` (its [checkpoint] section, in run.dir/checkpoints)."""
        self.config, self.run_dir, self.dist, self.parts = run_config.checkpoint, Path(run_config.run.dir), dist, parts
        self.run_config, self.info = run_config, info
        self.before_manifest = before_manifest  # fault injection: a crash or a full disk while saving
        self._rollback_target: Path | dict | None = None  # newest checkpoint of this run, or its start

    def due(self, step: int, last: bool) -> bool:
        return last or bool(self.config.every and step % self.config.every == 0)

    def state_dict(self, step: int) -> dict:
        """The whole state, the same whatever the number of ranks (collective)."""
        return {
            "format": FORMAT,
            "step": step,
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "config": self.run_config.to_dict(),
            "signal": self.info.to_attrs(),
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: dict) -> int:
        """Load every part; the step to run next."""
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        return state["step"]

    def resume(self) -> int:
        """The step to run next: from checkpoint.resume (auto: the newest sound checkpoint in the
        run folder, if any; never; or a folder), or 0. Keeps the run's start as the rollback target."""
        mode, found = self.config.resume, None
        if mode == "auto":
            found = newest_checkpoint(self.run_dir, self._warn)
        elif mode != "never":
            found = Path(mode), load_checkpoint(Path(mode))
        if found is None:
            self._rollback_target = self.state_dict(0)
            return 0
        path, state = found
        self._check_compatible(path, state)
        step = self.load_state_dict(state)
        self._rollback_target = path
        if self.dist.is_main:
            print(f"dint.train: resuming from {path} (step {step})", file=sys.stderr)
        return step

    def save(self, step: int) -> None:
        """Save the state before step `step + 1` as checkpoint `step` (collective); keep the newest
        checkpoint.keep. Every rank stops together when rank 0 could not save."""
        state, failure = self.state_dict(step), None
        if self.dist.is_main:
            try:
                save_checkpoint(self.run_dir, step, state, self.config.keep, lambda: self.before_manifest(step))
            except DintError as e:
                failure = e
        if all_reduce_max(torch.tensor([int(failure is not None)], device=self.dist.device)).item():
            raise failure or DintError("checkpoint not saved (see rank 0)", shared=True)
        self._rollback_target = dest_of(self.run_dir, step)

    def roll_back(self) -> int:
        """Back to the newest checkpoint this run wrote (or resumed from), else to the run's start;
        the step to run next."""
        target = self._rollback_target
        return self.load_state_dict(load_checkpoint(target) if isinstance(target, Path) else target)

    def _check_compatible(self, path: Path, state: dict) -> None:
        saved, info = state["signal"], self.info
        if (
            saved["source"]["sha256"] != info.source_sha256
            or tuple(saved["shape"]) != info.shape
            or saved["channels"] != info.channels
        ):
            raise DintError(
                f"{path}: checkpoint is of another signal ({saved['source']['name']}, shape "
                f"{tuple(saved['shape'])}), not of {self.run_config.data.store}; use another run.dir or "
                "--checkpoint.resume never"
            )
        saved_structure = structure(saved_model_config(state["config"]["model"], path), info)
        for key, value in structure(self.run_config.model, info).items():
            if saved_structure.get(key) != value:
                raise DintError(
                    f"{path}: checkpoint has model.{key} = {saved_structure.get(key)!r}, the config says "
                    f"{value!r}: the model's shape cannot change on resume"
                )

    def _warn(self, message: str) -> None:
        if self.dist.is_main:
            print(f"dint.train: warning: {message}", file=sys.stderr)


def save_model(path: Path, model: nn.Module, config: Config, info: SignalInfo) -> Path:
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "signal": info.to_attrs(),
    }
    with staged(path, may_replace=anything) as tmp:  # in the claimed run folder; a crash leaves the old one whole
        torch.save(payload, tmp)
    return path


def load_trained(path: Path) -> tuple[nn.Module, SignalInfo, dict]:
    """The model saved at `path`, the description of the signal it fits, and its config."""
    if not path.is_file():
        raise DintError(f"{path}: no saved model (train first, or name a run folder holding model.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        info = SignalInfo.from_attrs(saved["signal"], str(path))
        model = build_model(saved_model_config(saved["config"]["model"], str(path)), info)
        model.load_state_dict(saved["model"])
    except DintError:
        raise
    except Exception as e:  # unpickling, a missing key or a shape mismatch: the file is not ours
        raise DintError(f"{path}: not a dint model file ({type(e).__name__}: {e})".splitlines()[0]) from None
    return model.eval(), info, saved["config"]


def saved_model_config(saved: dict, where: object) -> ModelConfig:
    """The [model] section a checkpoint or model.pt was saved with (one saved before
    model.field existed is a SIREN); DintError for keys this dint does not know."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise DintError(f"{where}: saved with model.{unknown[0]}, which this dint does not know (a newer dint?)")
    return ModelConfig(**saved)


def dest_of(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(
    run_dir: Path, step: int, state: dict, keep: int, before_manifest: Callable[[], None] | None = None
) -> Path:
    """Write `state` as the checkpoint of `step` (the next step to run); keep the newest `keep`.

    Any OSError (a full disk, a read-only folder) becomes a DintError naming the folder;
    the staging folder is removed and older checkpoints are left as they were.
    """
    dest = dest_of(run_dir, step)
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(dest) and not is_complete_checkpoint(dest):
            # A damaged (or foreign) folder where this checkpoint goes: kept, under another name.
            aside = dest.with_name(f"{dest.name}.damaged-{new_token()}")
            os.rename(dest, aside)
            warn(f"{shown(dest)} was not a complete checkpoint: kept as {shown(aside.name)}")
        with staged(dest, may_replace=is_complete_checkpoint) as tmp:
            tmp.mkdir()
            torch.save(state, tmp / STATE)
            fsync(tmp / STATE)
            if before_manifest is not None:  # a hook for fault-injection tests: a crash mid-save
                before_manifest()
            manifest = {"step": step, "files": {STATE: sha256_of(tmp / STATE)}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            fsync(tmp / MANIFEST)
        fsync(folder)
    except OSError as e:
        raise DintError(f"{folder}: cannot save the checkpoint of step {step} ({e.strerror or e})") from None
    # Rotation deletes only complete checkpoints it recognises: a folder holding anything else
    # (or missing a file) may not be dint's, and stays.
    complete = [p for p in list_checkpoints(run_dir) if is_complete_checkpoint(p)]
    for old in complete[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint folder exactly as save_checkpoint leaves it: its manifest, and the files it
    lists, nothing else (checksums are checked when loading, not here)."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        present = {p.name for p in path.iterdir()}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(files, dict) and present == {MANIFEST, *files} and all((path / n).is_file() for n in files)


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
    if not os.path.lexists(path):
        raise DintError(f"{shown(path)}: checkpoint not found")
    if not manifest_path.is_file():
        raise DintError(f"{shown(path)}: incomplete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise DintError(f"{path}: {MANIFEST} is unreadable") from None
    for name, digest in files.items():
        if not (path / name).is_file():
            raise DintError(f"{path}: {name} is missing")
        if sha256_of(path / name) != digest:
            raise DintError(f"{path}: {name} does not match its checksum (truncated or altered)")
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # the checksum matched, so this is a file we did not write
        raise DintError(f"{path}: {STATE} cannot be loaded safely ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DintError(f"{path}: {STATE} is not a checkpoint of format {FORMAT}")
    return state


def newest_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, warning (one line each) about those skipped."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path)
        except DintError as e:
            warn(f"skipping checkpoint {e}")
    return None
