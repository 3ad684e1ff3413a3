"""Checkpoints in one process (dint.train.checkpoint): complete folders only, the newest
checkpoint.keep of them kept, manifests and checksums checked on load, and CheckpointManager's
resume and rollback, with small tensors and one rank (no process group)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from dint.core.config import CheckpointConfig, Config
from dint.core.errors import DintError
from dint.data.store import SignalInfo
from dint.distributed.collectives import DistInfo
from dint.train.checkpoint import (
    MANIFEST,
    STATE,
    CheckpointManager,
    RngState,
    dest_of,
    is_complete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

ONE_RANK = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def state(step: int) -> dict:
    return {"format": 2, "step": step, "parts": {"weights": torch.full((3,), float(step))}}


def saved_steps(run_dir: Path) -> list[int]:
    return [int(p.name.removeprefix("step-")) for p in list_checkpoints(run_dir)]


def all_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# --- Saving and rotation ---------------------------------------------------------------------


def test_a_checkpoint_is_its_state_and_a_manifest_of_checksums(tmp_path):
    path = save_checkpoint(tmp_path, 7, state(7), keep=3)
    assert path == tmp_path / "checkpoints" / "step-00000007" == dest_of(tmp_path, 7)
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, STATE]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest == {
        "step": 7,
        "run": None,
        "files": {STATE: hashlib.sha256((path / STATE).read_bytes()).hexdigest()},
    }
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["parts"]["weights"], torch.full((3,), 7.0))
    assert all_names(tmp_path) == ["step-00000007"]  # no staging folder left


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path, keep):
    for step in (5, 10, 15, 20, 100):  # 100 sorts before 20 as text, after it as a step
        save_checkpoint(tmp_path, step, state(step), keep=keep)
    assert saved_steps(tmp_path) == [100, 20, 15, 10, 5][:keep]


def test_rotation_ignores_incomplete_folders_and_never_deletes_them(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    no_manifest = folder / "step-00000099"  # newer than any saved, but incomplete: takes no place
    no_manifest.mkdir()
    (no_manifest / STATE).write_bytes(b"half")
    extra_file = folder / "step-00000098"
    extra_file.mkdir()
    (extra_file / MANIFEST).write_text(json.dumps({"step": 98, "files": {}}))
    (extra_file / "notes.txt").write_text("mine")
    missing_file = folder / "step-00000097"
    missing_file.mkdir()
    (missing_file / MANIFEST).write_text(json.dumps({"step": 97, "files": {STATE: "0" * 64}}))
    bad_manifest = folder / "step-00000096"
    bad_manifest.mkdir()
    (bad_manifest / MANIFEST).write_text("{not json")
    not_a_step = folder / "step-7"
    not_a_step.mkdir()
    for path in (no_manifest, extra_file, missing_file, bad_manifest):
        assert not is_complete_checkpoint(path)
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, state(step), keep=2)
    assert all_names(tmp_path) == [
        "step-00000003",
        "step-00000004",
        "step-00000096",
        "step-00000097",
        "step-00000098",
        "step-00000099",
        "step-7",
    ]
    assert (no_manifest / STATE).read_bytes() == b"half" and (extra_file / "notes.txt").read_text() == "mine"
    assert saved_steps(tmp_path) == [99, 98, 97, 96, 4, 3]  # newest first, complete or not; step-7 is no step


def test_a_damaged_folder_at_the_destination_is_kept_aside(tmp_path, capsys):
    dest = dest_of(tmp_path, 30)
    dest.mkdir(parents=True)
    (dest / STATE).write_bytes(b"from a save that never finished")
    save_checkpoint(tmp_path, 30, state(30), keep=3)
    assert load_checkpoint(dest)["step"] == 30
    (aside,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-00000030.damaged-")]
    assert (aside / STATE).read_bytes() == b"from a save that never finished"
    assert "was not a complete checkpoint: kept as step-00000030.damaged-" in capsys.readouterr().err


def test_a_complete_checkpoint_of_the_same_step_is_replaced(tmp_path):
    save_checkpoint(tmp_path, 10, state(1), keep=3)
    save_checkpoint(tmp_path, 10, state(10), keep=3)
    assert torch.equal(load_checkpoint(dest_of(tmp_path, 10))["parts"]["weights"], torch.full((3,), 10.0))
    assert all_names(tmp_path) == ["step-00000010"]


def test_a_crash_before_the_manifest_leaves_the_older_checkpoints(tmp_path):
    for step in (10, 20):
        save_checkpoint(tmp_path, step, state(step), keep=2)

    def crash():
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 30, state(30), keep=2, before_manifest=crash)
    assert all_names(tmp_path) == ["step-00000010", "step-00000020"]  # nothing rotated, no staging left
    assert load_checkpoint(dest_of(tmp_path, 20))["step"] == 20


def test_a_full_disk_while_saving_is_one_line_naming_the_folder(tmp_path):
    save_checkpoint(tmp_path, 10, state(10), keep=1)

    def full():
        raise OSError(28, "No space left on device")

    with pytest.raises(DintError) as caught:
        save_checkpoint(tmp_path, 20, state(20), keep=1, before_manifest=full)
    assert str(caught.value) == (
        f"{tmp_path / 'checkpoints'}: cannot save the checkpoint of step 20 (No space left on device)"
    )
    assert all_names(tmp_path) == ["step-00000010"]


# --- Loading: the manifest and its checksums --------------------------------------------------


def test_load_refuses_what_does_not_match_its_manifest(tmp_path):
    path = save_checkpoint(tmp_path, 3, state(3), keep=1)
    data = bytearray((path / STATE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / STATE).write_bytes(bytes(data))
    with pytest.raises(DintError, match=f"{path}: state.pt does not match its checksum"):
        load_checkpoint(path)
    (path / STATE).write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(DintError, match="does not match its checksum"):
        load_checkpoint(path)
    (path / STATE).unlink()
    with pytest.raises(DintError, match=f"{path}: state.pt is missing"):
        load_checkpoint(path)
    (path / MANIFEST).write_text("[1, 2")
    with pytest.raises(DintError, match=f"{path}: manifest.json is unreadable"):
        load_checkpoint(path)
    (path / MANIFEST).unlink()
    with pytest.raises(DintError, match=f"{path}: incomplete checkpoint \\(no manifest.json\\)"):
        load_checkpoint(path)
    with pytest.raises(DintError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_state_that_would_run_code_is_refused_even_with_a_matching_checksum(tmp_path):
    path = save_checkpoint(tmp_path, 3, state(3), keep=1)

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"format": 2, "step": 3, "evil": Payload()}, path / STATE)
    digest = hashlib.sha256((path / STATE).read_bytes()).hexdigest()
    (path / MANIFEST).write_text(json.dumps({"step": 3, "files": {STATE: digest}}))
    with pytest.raises(DintError, match="state.pt: cannot be loaded safely: it holds a Python object"):
        load_checkpoint(path)


def test_checkpoints_are_listed_newest_first_and_each_damaged_one_refused_by_its_problem(tmp_path):
    assert list_checkpoints(tmp_path) == []  # no checkpoints folder at all
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, state(step), keep=3)
    (dest_of(tmp_path, 30) / STATE).write_bytes(b"flipped")
    (dest_of(tmp_path, 20) / MANIFEST).unlink()
    assert list_checkpoints(tmp_path) == [dest_of(tmp_path, s) for s in (30, 20, 10)]
    with pytest.raises(DintError, match="step-00000030: state.pt does not match its checksum"):
        load_checkpoint(dest_of(tmp_path, 30))
    with pytest.raises(DintError, match="step-00000020.*manifest.json"):
        load_checkpoint(dest_of(tmp_path, 20))
    assert load_checkpoint(dest_of(tmp_path, 10))["step"] == 10


def test_a_checkpoint_of_another_format_is_refused_in_one_line(tmp_path):
    """Only today's format loads: anything else is refused (and so skipped by a resume) by name."""
    for state in ({"step": 4, "model": {"w": torch.ones(2)}}, {"format": 1, "step": 4}, {"format": 3, "step": 4}):
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        run_dir.mkdir()
        path = save_checkpoint(run_dir, 4, state, keep=1)
        with pytest.raises(DintError, match="is not a checkpoint of format 2"):
            load_checkpoint(path)


# --- CheckpointManager: save, resume, roll back -----------------------------------------------


class Counter:
    """A stateful part: a tensor and a number."""

    def __init__(self, value: float = 0.0):
        self.weights, self.calls = torch.full((4,), value), 0

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.calls = state["weights"].clone(), state["calls"]


def signal(sha: str = "a" * 64, shape: tuple = (8, 6)) -> SignalInfo:
    return SignalInfo(
        modality="image",
        shape=shape,
        channels=1,
        dtype="uint8",
        value_range=(0.0, 255.0),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        chunks=(4, 6),
        source_name="s.png",
        source_sha256=sha,
    )


def manager(
    run_dir: Path, part: Counter, resume: str = "auto", info: SignalInfo | None = None, width: int = 16, **hook
) -> CheckpointManager:
    config = Config()
    config.model.width = width
    config.checkpoint = CheckpointConfig(every=5, keep=2, resume=resume)
    config.run.dir = str(run_dir)
    return CheckpointManager(config, info or signal(), ONE_RANK, {"counter": part, "rng": RngState(ONE_RANK)}, **hook)


def test_checkpoints_are_due_every_n_steps_and_at_the_last(tmp_path):
    checkpoints = manager(tmp_path, Counter())
    assert [s for s in range(1, 21) if checkpoints.due(s, last=False)] == [5, 10, 15, 20]
    assert checkpoints.due(7, last=True)
    checkpoints.config = CheckpointConfig(every=0)
    assert not any(checkpoints.due(s, last=False) for s in range(1, 50)) and checkpoints.due(3, last=True)


def test_save_then_resume_restores_every_part_and_keeps_the_newest(tmp_path, capsys):
    part = Counter()
    checkpoints = manager(tmp_path, part)
    assert checkpoints.resume() == 0  # nothing saved yet
    for step in (5, 10, 15):
        part.weights += 1
        part.calls = step
        checkpoints.save(step)
    assert saved_steps(tmp_path) == [15, 10]  # checkpoint.keep = 2
    saved = load_checkpoint(dest_of(tmp_path, 15))
    assert saved["world_size"] == 1 and saved["config"]["model"]["width"] == 16
    assert saved["signal"]["source"]["sha256"] == "a" * 64
    fresh = Counter(value=-1.0)
    assert manager(tmp_path, fresh).resume() == 15
    assert torch.equal(fresh.weights, torch.full((4,), 3.0)) and fresh.calls == 15
    assert f"resuming from {dest_of(tmp_path, 15)} (step 15)" in capsys.readouterr().err
    never = Counter(value=-1.0)
    assert manager(tmp_path, never, resume="never").resume() == 0 and never.calls == 0
    folder = Counter(value=-1.0)
    assert manager(tmp_path, folder, resume=str(dest_of(tmp_path, 10))).resume() == 10 and folder.calls == 10
    with pytest.raises(DintError, match="checkpoint not found"):
        manager(tmp_path, Counter(), resume=str(tmp_path / "nowhere")).resume()


def test_a_resume_draws_what_the_saved_run_drew_next(tmp_path):
    torch.manual_seed(123)
    manager(tmp_path, Counter()).save(5)
    after_save = torch.rand(4)
    torch.rand(100)  # the run goes on, then is killed
    manager(tmp_path, Counter()).resume()
    assert torch.equal(torch.rand(4), after_save)


def test_a_rollback_goes_to_the_newest_checkpoint_or_the_start(tmp_path):
    part = Counter(value=1.0)
    checkpoints = manager(tmp_path, part, resume="never")
    assert checkpoints.resume() == 0
    part.weights += 5
    part.calls = 4
    assert checkpoints.roll_back() == 0  # nothing saved: back to the run's start
    assert torch.equal(part.weights, torch.ones(4)) and part.calls == 0
    part.weights.fill_(7.0)
    part.calls = 5
    checkpoints.save(5)
    part.weights.fill_(float("nan"))  # a diverged step
    assert checkpoints.roll_back() == 5
    assert torch.equal(part.weights, torch.full((4,), 7.0)) and part.calls == 5


def test_a_failed_save_raises_and_keeps_the_previous_rollback_target(tmp_path):
    def full(step):
        if step == 10:
            raise OSError(28, "No space left on device")

    part = Counter(value=2.0)
    checkpoints = manager(tmp_path, part, resume="never", before_manifest=full)
    checkpoints.resume()
    checkpoints.save(5)
    with pytest.raises(DintError, match="cannot save the checkpoint of step 10"):
        checkpoints.save(10)
    part.weights.zero_()
    assert checkpoints.roll_back() == 5 and torch.equal(part.weights, torch.full((4,), 2.0))
    assert saved_steps(tmp_path) == [5]


@pytest.mark.parametrize(
    "change, says",
    [
        ({"info": signal(sha="b" * 64)}, "checkpoint is of another signal (s.png, shape (8, 6))"),
        ({"info": signal(shape=(8, 7))}, "checkpoint is of another signal"),
        ({"width": 32}, "checkpoint has model.width = 16, the config says 32"),
    ],
)
def test_resume_refuses_another_signal_or_model_shape(tmp_path, change, says):
    manager(tmp_path, Counter()).save(5)
    part = Counter(value=-1.0)
    with pytest.raises(DintError, match=re.escape(says)):
        manager(tmp_path, part, **change).resume()
    assert part.calls == 0 and torch.equal(part.weights, torch.full((4,), -1.0))  # nothing loaded
