"""Saving and loading: the final model (model.pt) and training checkpoints.

Every file holds tensors and plain data only, so it loads with
`torch.load(weights_only=True)` and cannot run code.

A checkpoint is a folder `run.dir/checkpoints/step-NNNNNNNN/` holding `state.pt` and,
written last, `manifest.json` with the SHA-256 of every file. It is built under a hidden
temporary name, flushed to disk, and renamed into place, so a crash while saving leaves
the previous checkpoints untouched, and a folder without a valid manifest is never used.
Its content does not depend on the number of ranks: a run saved with 2 ranks resumes
with 1 or 3.

A checkpoint belongs to the run that wrote it: its manifest names the run (RUN_KEY), and so
does the run folder's mark for the run now in it. A run resumed automatically continues the
run it resumes (the same id, across restarts and numbers of ranks); a run from its start, or
from a checkpoint named on the command line, is a new run. Rotation (checkpoint.keep) counts
and deletes only the run's own checkpoints, and `resume auto` looks only at the checkpoints of
the run the folder holds: those of a run before it are kept, never resumed.

A checkpoint is used only once it is known sound: its manifest and checksums hold, its
state has the form this run saves (`check_state`), and every part took it; one that fails
any of these is skipped with a warning, and nothing of it stays loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from dint.core.config import Config, ModelConfig
from dint.core.errors import DintError, one_line, warn
from dint.core.files import (
    check_claimable,
    check_input,
    check_outside_inputs,
    fsync,
    naming,
    new_token,
    note_in_mark,
    own_folder,
    read_mark,
    remove_stale,
    sha256_of,
    shown,
    staged,
    write_outputs,
)
from dint.core.resources import require_disk
from dint.data.store import SignalInfo, _is_int, _short
from dint.distributed.collectives import DistInfo, all_gather_varlen, all_reduce_max, barrier, collective_failure
from dint.fields.model import build_model, structure

CHECKPOINTS = "checkpoints"
STATE = "state.pt"
MANIFEST = "manifest.json"
FORMAT = 2  # state.pt: {"format", "step", "parts": {name: state}, "config", "signal", "world_size"}
_NAME = re.compile(r"step-(\d{8})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
RUN_KEY = "run"  # in a manifest: the run that wrote the checkpoint; in the run folder's mark: the run in it
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # in torch's message: what the pickle would call


class Stateful(Protocol):
    """A part of the checkpoint. `load_state_dict` raises (any exception) on a state it cannot
    use, before it uses it where it can. A part may also offer `state_form()`: the form of
    its state once training has begun, when state_dict() before the first step lacks some of
    it (the optimizer's moments, made at the first step)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Incompatible(DintError):
    """A sound checkpoint that this run must not continue (another signal, another model
    shape): an error, where an unsound one is skipped."""


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
        self.run_id: str | None = None  # set by `resume`: the run whose checkpoints this one writes

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

    def state_form(self) -> dict:
        """The form of this run's checkpoints (check_state): each part's state as it is once
        training has begun (collective)."""
        return {name: getattr(part, "state_form", part.state_dict)() for name, part in self.parts.items()}

    def resume(self) -> int:
        """The step to run next: from checkpoint.resume (auto: the newest sound checkpoint of the
        run the folder holds, if any, skipping unsound ones with a warning; never; or a folder,
        which must be sound), or 0. Keeps the run's start as the rollback target, and records in
        the folder's mark which run this is (collective)."""
        mode, fresh = self.config.resume, self.state_dict(0)
        self._rollback_target = fresh
        if self.dist.is_main:  # what a process killed while saving left (it holds no lock any more)
            remove_stale(self.run_dir / CHECKPOINTS)
        current = read_mark(self.run_dir).get(RUN_KEY) if mode == "auto" else None
        current = current if isinstance(current, str) else None  # a mark dint did not write names no run
        candidates = []
        if mode == "auto":  # the run's own checkpoints, and those whose run cannot be told (damaged, unnamed)
            candidates = [p for p in list_checkpoints(self.run_dir) if current is None or run_of(p) in (current, None)]
        elif mode != "never":
            candidates = [Path(mode)]
        step, continued = 0, None
        form = self.state_form() if mode != "never" else None
        for path in candidates:
            try:
                state = load_checkpoint(path)
                check_state(path, state, form, self.dist.world_size, self._check_compatible)
                step = self._load_sound(path, state, fresh)
            except Incompatible:
                raise
            except DintError as e:
                if mode != "auto":
                    raise
                self._warn(f"skipping checkpoint {e}")
                continue
            self._rollback_target = path
            continued = run_of(path) if mode == "auto" else None
            if self.dist.is_main:
                print(f"dint.train: resuming from {shown(path)} (step {step})", file=sys.stderr)
                steps = self.run_config.train.steps
                if step > steps:
                    print(
                        f"dint.train: already trained {step} steps, more than train.steps = {steps}: nothing to "
                        f"train; the model is that of step {step} (set train.steps above {step} to train on)",
                        file=sys.stderr,
                    )
            break
        # A run resumed automatically continues the run it resumes; any other is a new run.
        self.run_id = current or (continued if isinstance(continued, str) else None) or uuid.uuid4().hex
        barrier()  # every rank has read the mark before rank 0 changes it
        if self.dist.is_main:
            note_in_mark(self.run_dir, **{RUN_KEY: self.run_id})
        return step

    def _load_sound(self, path: Path, state: dict, fresh: dict) -> int:
        """Load `state` into every part; the step to run next. If a part refuses it, on any rank,
        every part goes back to `fresh` and the checkpoint is refused (DintError)."""
        problem = None
        try:
            step = self.load_state_dict(state)
        except Exception as e:  # a part could not take it: the form held, a value did not
            if isinstance(e, RuntimeError) and collective_failure(e, "", None) is not None:
                raise  # another rank went away: not this checkpoint's fault
            problem = f"{type(e).__name__}: {e}".splitlines()[0]
        if all_reduce_max(torch.tensor([int(problem is not None)], device=self.dist.device)).item():
            self.load_state_dict(fresh)
            raise DintError(f"{shown(path)}: {STATE} cannot be loaded into this run ({problem or 'on another rank'})")
        return step

    def save(self, step: int) -> None:
        """Save the state before step `step + 1` as checkpoint `step` (collective); keep the newest
        checkpoint.keep. Every rank stops together when rank 0 could not save."""
        state, failure = self.state_dict(step), None
        if self.dist.is_main:
            try:
                save_checkpoint(
                    self.run_dir, step, state, self.config.keep, lambda: self.before_manifest(step), self.run_id
                )
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
            raise Incompatible(
                f"{path}: checkpoint is of another signal ({saved['source']['name']}, shape "
                f"{tuple(saved['shape'])}), not of {self.run_config.data.store}; use another run.dir or "
                "--checkpoint.resume never"
            )
        saved_structure = structure(saved_model_config(state["config"]["model"], path), info)
        for key, value in structure(self.run_config.model, info).items():
            if saved_structure.get(key) != value:
                raise Incompatible(
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
    require_disk(saved_bytes(payload), f"{shown(path)}: the model", path.parent)
    write_outputs(path.parent, {path.name: lambda tmp: save_tensors(payload, tmp)})  # a crash leaves the old one whole
    return path


def saved_bytes(state: object) -> int:
    """About what torch.save writes for `state`: its tensors' bytes, and room for the rest."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(saved_bytes(v) for v in state.values()) + 64 * len(state)
    if isinstance(state, (list, tuple)):
        return sum(saved_bytes(v) for v in state) + 16 * len(state)
    return 64


def load_trained(path: Path) -> tuple[nn.Module, SignalInfo, dict]:
    """The model saved at `path`, the description of the signal it fits, and its config."""
    if not os.path.lexists(path):
        raise DintError(f"{shown(path)}: no saved model (train first, or name a run folder holding model.pt)")
    saved = load_tensors(path, "dint model file")
    try:
        info = SignalInfo.from_attrs(saved["signal"], shown(path))
        model = build_model(saved_model_config(saved["config"]["model"], shown(path)), info)
        model.load_state_dict(saved["model"])
    except DintError:
        raise
    except Exception as e:  # a missing key or a shape mismatch: the file is not ours
        raise DintError(f"{shown(path)}: not a dint model file ({type(e).__name__}: {one_line(e)})") from None
    return model.eval(), info, saved["config"]


def check_run_folder(config: Config) -> None:
    """Refuse, before anything is written, a run.dir that training may not write: one claim_folder
    refuses, or one that is, lies inside or holds the store it reads, or lies inside the
    checkpoint it resumes from (the run's own checkpoints lie inside it)."""
    run_dir, label = Path(config.run.dir), f"run.dir {shown(config.run.dir)}"
    check_outside_inputs(run_dir, {"the store": config.data.store}, label)
    if config.checkpoint.resume not in ("auto", "never"):
        check_outside_inputs(run_dir, {"the checkpoint": config.checkpoint.resume}, label, holding=False)
    check_claimable(run_dir, "a training run")


def load_tensors(path: Path, what: str) -> object:
    """What the file at `path` holds, loaded with torch.load(weights_only=True): tensors and plain
    data only, so nothing in it runs. Anything else is one line naming the file; not torch's
    message, which advises loading it with weights_only=False, as dint never does."""
    check_input(path, what)
    if path.is_dir():
        raise DintError(f"{shown(path)}: is a folder, not a {what}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        held = f"a Python object ({found[1]})" if found else "Python objects"
        raise DintError(
            f"{shown(path)}: cannot be loaded safely: it holds {held}, not only tensors and plain data, "
            f"so it is no {what}; loading it could run code, and dint does not"
        ) from None
    except Exception as e:  # not a torch file, truncated, unreadable
        raise DintError(f"{shown(path)}: not a {what} ({type(e).__name__}: {one_line(e)})") from None


def save_tensors(payload: object, path: Path) -> None:
    """torch.save to `path`. torch's own file writer turns a failed write (a full disk) into a
    RuntimeError that names no file; written through WholeWrites, the OSError itself is raised."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    file = WholeWrites(fd)
    try:
        with naming(path):
            try:
                torch.save(payload, file)
            except RuntimeError:
                if file.error is None:
                    raise
                raise file.error from None
    finally:
        os.close(fd)


class WholeWrites:
    """A file object over `fd` for torch.save: writes each buffer whole (torch takes a short
    write for a failure) and keeps the OSError of a write that fails."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        pass


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
    run_dir: Path,
    step: int,
    state: dict,
    keep: int,
    before_manifest: Callable[[], None] | None = None,
    run: str | None = None,
) -> Path:
    """Write `state` as the checkpoint of `step` (the next step to run) of the run `run`; keep
    that run's newest `keep` (the checkpoints of other runs are neither counted nor deleted).

    Any OSError (a full disk, a read-only folder) becomes a DintError naming the folder;
    the staging folder is removed and older checkpoints are left as they were.
    """
    dest = dest_of(run_dir, step)
    folder = dest.parent
    try:
        own_folder(folder)
        require_disk(saved_bytes(state), f"{shown(folder)}: the checkpoint of step {step}", folder)
        if os.path.lexists(dest) and not (is_complete_checkpoint(dest) and run_of(dest) == run):
            # Where this checkpoint goes, a damaged (or foreign) folder, or another run's checkpoint: kept, renamed.
            complete = is_complete_checkpoint(dest)
            aside = dest.with_name(f"{dest.name}.{'earlier' if complete else 'damaged'}-{new_token()}")
            os.rename(dest, aside)
            kind = "a checkpoint of another run" if complete else "not a complete checkpoint"
            warn(f"{shown(dest)} was {kind}: kept as {shown(aside.name)}")
        with staged(dest, may_replace=lambda old: is_complete_checkpoint(old) and run_of(old) == run) as tmp:
            tmp.mkdir()
            save_tensors(state, tmp / STATE)
            fsync(tmp / STATE)
            if before_manifest is not None:  # a hook for fault-injection tests: a crash mid-save
                before_manifest()
            manifest = {"step": step, RUN_KEY: run, "files": {STATE: sha256_of(tmp / STATE)}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            fsync(tmp / MANIFEST)
        fsync(folder)
    except OSError as e:
        raise DintError(f"{shown(folder)}: cannot save the checkpoint of step {step} ({e.strerror or e})") from None
    # Rotation deletes only complete checkpoints it recognises, of this run: a folder holding
    # anything else (or missing a file) may not be dint's, and another run's is not this one's.
    own = [p for p in list_checkpoints(run_dir) if is_complete_checkpoint(p) and run_of(p) == run]
    for old in own[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint folder exactly as save_checkpoint leaves it: its manifest, and the files it
    lists, nothing else (checksums are checked when loading, not here)."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        files = read_manifest(path)
        present = {p.name for p in path.iterdir()}
    except (OSError, DintError):
        return False
    return present == {MANIFEST, *files} and all((path / n).is_file() for n in files)


def read_manifest(path: Path) -> dict[str, str]:
    """The files a checkpoint folder's manifest lists, {name: SHA-256}, checked before any is
    opened: an object whose "files" map plain names of regular files in the folder (no path out
    of it, no link, no pipe), the state among them, to checksums. DintError naming what is wrong
    otherwise."""
    holder = f"the checkpoint {shown(path)}"
    manifest_path = path / MANIFEST
    if not os.path.lexists(manifest_path):
        raise DintError(f"{shown(path)}: incomplete checkpoint (no {MANIFEST})")
    check_input(manifest_path, MANIFEST, holder=holder)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DintError(f"{shown(path)}: {MANIFEST} is unreadable ({type(e).__name__})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise DintError(f'{shown(path)}: {MANIFEST} is malformed (expected an object whose "files" is an object)')
    if STATE not in files:
        raise DintError(f"{shown(path)}: {MANIFEST} does not list {STATE}")
    for name, digest in files.items():
        if name in ("", ".", "..", MANIFEST) or "/" in name or "\0" in name:
            raise DintError(
                f"{shown(path)}: {MANIFEST} lists {shown(repr(name))}, not a file of the checkpoint; dint reads "
                "nothing outside it"
            )
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise DintError(f"{shown(path)}: {MANIFEST} gives {shown(name)} the checksum {shown(repr(digest))[:80]}")
        if not os.path.lexists(path / name):
            raise DintError(f"{shown(path)}: {name} is missing")
        check_input(path / name, name, holder=holder)
    return files


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first (complete or not)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)), reverse=True)


def load_checkpoint(path: Path) -> dict:
    """The state saved in checkpoint folder `path`, after checking its manifest; DintError if bad."""
    if not os.path.lexists(path):
        raise DintError(f"{shown(path)}: checkpoint not found")
    check_input(
        path, "checkpoint", holder=f"the run folder {shown(path.parent.parent)}"
    )  # a linked folder is not dint's
    for name, digest in read_manifest(path).items():
        if sha256_of(path / name) != digest:
            raise DintError(f"{shown(path)}: {name} does not match its checksum (truncated or altered)")
    state = load_tensors(path / STATE, "checkpoint state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DintError(f"{shown(path)}: {STATE} is not a checkpoint of format {FORMAT}")
    return state


def check_state(
    path: Path,
    state: dict,
    form: dict,
    world_size: int,
    compatible: Callable[[Path, dict], None] = lambda path, state: None,
) -> None:
    """Refuse (DintError) a loaded state that has not the form this run saves, before anything
    uses it: its step, world size, signal and model shape, then (once `compatible` has had its
    say on the signal and model shape: a checkpoint of another one is an error, not damage) each
    part's state against `form` (CheckpointManager.state_form): the same keys, kinds of values,
    and tensors of the same dtype and shape. A checksum says a file is as it was written, not
    that dint wrote it."""

    def bad(problem: str) -> DintError:
        return DintError(f"{shown(path)}: {STATE} is not as dint writes it: {problem}")

    step, ranks = state.get("step"), state.get("world_size")
    if not (_is_int(step) and step >= 0):
        raise bad(f"step = {_short(step)} is not a number of steps")
    named = _NAME.fullmatch(path.name)
    if named and int(named[1]) != step:
        raise bad(f"step = {step}, where its folder's name says {int(named[1])}")
    if not (_is_int(ranks) and ranks >= 1):
        raise bad(f"world_size = {_short(ranks)} is not a number of ranks")
    SignalInfo.from_attrs(state.get("signal"), f"{shown(path)}: {STATE}: signal")
    model = state.get("config", {}).get("model") if isinstance(state.get("config"), dict) else None
    for key in ("width", "hidden_layers"):
        if not (isinstance(model, dict) and _is_int(model.get(key))):
            raise bad(f"config.model.{key} is missing or not a whole number")
    compatible(path, state)
    problem = _form_problem(state.get("parts"), form, "parts", (world_size, ranks))
    if problem is not None:
        raise bad(problem)


def _form_problem(value: object, form: object, at: str, ranks: tuple[int, int]) -> str | None:
    """Where and how `value` differs from `form`, or None. A dict `form` that is empty is filled
    only as the run goes (the teacher's selections): its part checks it when loading. A plain
    value a part's own state lacks takes the part's default (a timer newer than the checkpoint);
    deeper down (an optimizer's settings) nothing may be missing.
    `ranks` = (this run's, the checkpoint's): a tensor gathered over ranks has a row for each."""
    if isinstance(form, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return f"{at} is {_kind(value)}, not a tensor"
        if value.dtype != form.dtype:
            return f"{at} is a tensor of {value.dtype}, not {form.dtype}"
        shape, expected = tuple(value.shape), tuple(form.shape)
        gathered = expected[:1] == ranks[:1] and shape[:1] == ranks[1:] and shape[1:] == expected[1:]
        return None if shape == expected or gathered else f"{at} has shape {shape}, not {expected}"
    if isinstance(form, dict):
        if not isinstance(value, dict):
            return f"{at} is {_kind(value)}, not a dict"
        if not form:
            return None
        extra = [key for key in value if key not in form]
        if extra:
            return f"{at} holds {_short(extra[0])}, which dint does not save there"
        for key, item in form.items():
            if key in value:
                problem = _form_problem(value[key], item, f"{at}.{key}", ranks)
                if problem is not None:
                    return problem
            elif isinstance(item, (torch.Tensor, dict, list, tuple)) or at.count(".") > 1:
                return f"{at} lacks {_short(key)}"
        return None
    if isinstance(form, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return f"{at} is {_kind(value)}, not a list"
        if not form:
            return None
        if len(value) != len(form):
            return f"{at} has {len(value)} items, not {len(form)}"
        for index, (item, item_form) in enumerate(zip(value, form)):
            problem = _form_problem(item, item_form, f"{at}[{index}]", ranks)
            if problem is not None:
                return problem
        return None
    if form is None or value is None:
        return None if value is form else f"{at} = {_short(value)} is {_kind(value)}, not {_kind(form)}"
    if isinstance(form, bool) or isinstance(value, bool):
        return None if type(value) is type(form) else f"{at} = {_short(value)} is {_kind(value)}, not {_kind(form)}"
    if isinstance(form, float):
        return None if isinstance(value, (int, float)) else f"{at} = {_short(value)} is {_kind(value)}, not a number"
    return None if type(value) is type(form) else f"{at} = {_short(value)} is {_kind(value)}, not {_kind(form)}"


def _kind(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def run_of(path: Path) -> str | None:
    """The run that wrote the checkpoint at `path`; None when its manifest names none (a dint
    before runs were named) or cannot be read."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    run = manifest.get(RUN_KEY) if isinstance(manifest, dict) else None
    return run if isinstance(run, str) else None
