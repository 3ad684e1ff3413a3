"""Rule 5: a checkpoint whose checksums match but whose content is not what dint writes (a
manifest that is a list, files given as a string, a state that is a list, missing keys, wrong
tensors) is skipped with one warning line, like a corrupt one, and the resume falls back to the
checkpoint before it; nothing of the refused one stays loaded.

In-process: one small run trains once (checkpoints of steps 10 and 20); each example writes a
damaged checkpoint of step 30 beside them and resumes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import NO_VIEWS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.core.config import load_config
from dint.core.errors import DintError
from dint.train.checkpoint import MANIFEST, STATE, Incompatible, check_state, load_checkpoint
from dint.train.trainer import Trainer

NEWEST = "step-00000030"


@pytest.fixture(scope="module")
def run(tmp_path_factory, sharded_smooth_image):
    """A Trainer that has run 20 steps (checkpoints 10 and 20), its state before the first step,
    and a sound state to plant as checkpoint 30 (checkpoint 20's)."""
    run_dir = tmp_path_factory.mktemp("malformed") / "run"
    overrides = {f"metrics.{key}": json.dumps(value) for key, value in NO_VIEWS.items()}
    overrides.update(
        {
            "data.store": str(sharded_smooth_image),
            "run.dir": str(run_dir),
            "run.device": "cpu",
            "model.width": "8",
            "model.hidden_layers": "1",
            "train.steps": "20",
            "checkpoint.every": "10",
            "eval.reconstruction": "false",
        }
    )
    trainer = Trainer(load_config(None, overrides))
    fresh = trainer.checkpoint.state_dict(0)
    trainer.train()
    good = load_checkpoint(run_dir / "checkpoints" / "step-00000020")
    return trainer, fresh, {**good, "step": 30}  # planted as checkpoint 30


SOUND = object()  # write_checkpoint's manifest: the one save_checkpoint would write


def write_checkpoint(run_dir: Path, state: object, manifest: object = SOUND) -> Path:
    """A checkpoint of step 30 holding `state`, with a manifest whose checksum matches (or `manifest`)."""
    folder = run_dir / "checkpoints" / NEWEST
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    torch.save(state, folder / STATE)
    if manifest is SOUND:
        manifest = {"step": 30, "files": {STATE: hashlib.sha256((folder / STATE).read_bytes()).hexdigest()}}
    (folder / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder


def resume(run, capsys) -> tuple[int, str]:
    """Resume as a run starts (nothing loaded yet); the step it resumes from, and its stderr."""
    trainer, fresh, _ = run
    trainer.checkpoint.load_state_dict(fresh)
    capsys.readouterr()
    step = trainer.checkpoint.resume()
    return step, capsys.readouterr().err


def resume_skipping(run, capsys) -> str:
    """Resume; it must fall back to checkpoint 20, warning once about checkpoint 30. The warning."""
    step, err = resume(run, capsys)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert step == 20 and len(warnings) == 1, err
    assert f"skipping checkpoint {run[0].run_dir / 'checkpoints' / NEWEST}: " in warnings[0], warnings
    return warnings[0]


def leaf_paths(tree: object, at: tuple = ()) -> list[tuple]:
    """Every key path of a nested state (into dicts and lists), inner nodes included."""
    paths = [at] if at else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        paths += leaf_paths(value, (*at, key))
    return paths


def at_path(tree: dict, path: tuple) -> tuple[dict, object]:
    for key in path[:-1]:
        tree = tree[key]
    return tree, path[-1]


plain_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=3),
    st.just({}),
    st.just([[]]),
)


@st.composite
def damaged_states(draw, good: dict):
    """A copy of `good` with one key removed, or one value replaced by another kind, or one tensor
    given another shape or dtype; or a state that is not a dict at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(plain_values, st.just([good]), st.just((good,))))
    state = copy.deepcopy(good)
    path = draw(st.sampled_from(leaf_paths(state)))
    parent, key = at_path(state, path)
    value = parent[key]
    how = draw(
        st.sampled_from(
            ["remove", "replace", "reshape", "retype"] if isinstance(value, torch.Tensor) else ["remove", "replace"]
        )
    )
    if how == "remove":
        del parent[key]
    elif how == "replace":
        parent[key] = draw(
            plain_values if not isinstance(value, torch.Tensor) else st.one_of(plain_values, st.just(value.tolist()))
        )
    elif how == "reshape":
        shape = list(value.shape) or [1]
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] += draw(st.sampled_from([-1, 1, 7])) if shape[axis] > 1 else 1
        parent[key] = torch.zeros(draw(st.sampled_from([shape, [*shape, 2], shape[1:]])), dtype=value.dtype)
    else:
        dtype = draw(st.sampled_from([torch.float64, torch.int64, torch.uint8, torch.bool, torch.float16]))
        parent[key] = value.to(torch.float32 if dtype == value.dtype else dtype)
    return state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_state_is_skipped_or_harmless(run, capsys, data):
    """Whatever is damaged, resuming never fails: the checkpoint is skipped for the one before,
    or (a value dint does not use, a counter with a default) it loads and the run trains on, or
    (a sound checkpoint of another signal or model shape, as far as anyone can tell) the run is
    refused in one line, as such a checkpoint always is."""
    trainer, _, good = run
    write_checkpoint(trainer.run_dir, data.draw(damaged_states(good)))
    try:
        step, err = resume(run, capsys)
    except Incompatible as e:
        assert "checkpoint is of another signal" in str(e) or "the model's shape cannot change" in str(e)
        return
    assert "Traceback" not in err
    if step == 20:
        warnings = [line for line in err.splitlines() if "warning" in line]
        assert len(warnings) == 1 and f"skipping checkpoint {trainer.run_dir / 'checkpoints' / NEWEST}" in warnings[0]
        assert torch.equal(
            next(trainer.engine.module.parameters()).detach(),
            good["parts"]["engine"]["model"][next(iter(good["parts"]["engine"]["model"]))],
        )
    else:
        assert step == 30, err
        loss = trainer.train_step(31)  # what was loaded is fit to train on, and to save again
        assert torch.isfinite(loss).all()
        check_state(trainer.run_dir, trainer.checkpoint.state_dict(31), trainer.checkpoint.state_form(), 1)


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda state: [state], "is not a checkpoint of format 2"),
        (lambda state: {k: v for k, v in state.items() if k != "parts"}, "parts is None, not a dict"),
        (lambda state: {**state, "step": "30"}, 'step = "30" is not a number of steps'),
        (lambda state: {**state, "signal": {**state["signal"], "shape": "48x40"}}, "signal: store attribute 'shape'"),
        (lambda state: {**state, "config": {**state["config"], "model": {}}}, "config.model.width is missing"),
    ],
)
def test_a_damaged_frame_is_named_in_the_warning(run, capsys, damage, says):
    trainer, _, good = run
    write_checkpoint(trainer.run_dir, damage(copy.deepcopy(good)))
    assert says in resume_skipping(run, capsys)


def test_wrong_tensors_are_named_in_the_warning(run, capsys):
    trainer, _, good = run
    state = copy.deepcopy(good)
    name = next(iter(state["parts"]["engine"]["model"]))
    state["parts"]["engine"]["model"][name] = torch.zeros(3, 2)
    write_checkpoint(trainer.run_dir, state)
    warning = resume_skipping(run, capsys)
    assert f"state.pt is not as dint writes it: parts.engine.model.{name} has shape (3, 2), not (8, 2)" in warning
    state = copy.deepcopy(good)
    state["parts"]["engine"]["optimizer"]["state"][0]["exp_avg"] = torch.zeros(8)  # torch would load it
    write_checkpoint(trainer.run_dir, state)
    assert "parts.engine.optimizer.state.0.exp_avg has shape (8,), not (8, 2)" in resume_skipping(run, capsys)
    state = copy.deepcopy(good)
    state["parts"]["teacher"]["bits"] = state["parts"]["teacher"]["bits"][:-1]  # would fail on some ranks only
    write_checkpoint(trainer.run_dir, state)
    assert "the saved selections' 'bits' is not 240 values of torch.uint8" in resume_skipping(run, capsys)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    manifest=st.one_of(
        json_values,
        st.builds(lambda files: {"step": 30, "files": files}, json_values),
        st.builds(
            lambda name: {"files": {name: "0" * 64}},
            st.sampled_from(["../state.pt", "/etc/passwd", "", ".", "a/b", "manifest.json"]),
        ),
        st.just({"files": {}}),
        st.just({"files": "state.pt"}),
        st.just("not json {"),
        st.just("\0\0\0"),
    )
)
def test_a_malformed_manifest_is_skipped(run, capsys, manifest):
    trainer, _, good = run
    write_checkpoint(trainer.run_dir, good, manifest)
    warning = resume_skipping(run, capsys)
    assert "manifest.json" in warning or "state.pt is missing" in warning


def test_a_resume_named_explicitly_refuses_a_damaged_checkpoint_in_one_line(run):
    trainer, _, good = run
    folder = write_checkpoint(trainer.run_dir, [good])
    trainer.checkpoint.config.resume = str(folder)
    try:
        with pytest.raises(DintError, match=f"{folder}: state.pt is not a checkpoint of format 2"):
            trainer.checkpoint.resume()
    finally:
        trainer.checkpoint.config.resume = "auto"
