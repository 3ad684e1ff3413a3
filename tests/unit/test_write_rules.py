"""Safety rules 1 and 2, in-process.

Rule 1: dint writes only inside what it made, and never over its own inputs: a destination
that is, lies inside or holds an input is refused (paths resolved, links followed); every
write into a dint folder is staged and never follows a link; a lock file dint did not make is
never truncated or removed; a checkpoint belongs to the run that wrote it (rotation and
`resume auto` see only that run's).
Rule 2: one writer per destination: a store being read is held (writers refuse it), and a
render publishes its store and previews as one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_image, write_png
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dint.commands.cli import app
from dint.core.config import load_config
from dint.core.errors import DintError
from dint.core.files import (
    MARK,
    RUN_LOCK,
    check_claimable,
    claim_folder,
    exclusive,
    lock_path,
    open_staged,
    own_folder,
    publish_all,
    staging_path,
    write_outputs,
)
from dint.data.store import SignalInfo, open_store, write_store

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INPUTS_RULE = "dint never writes over its inputs, nor inside them"


def tree(folder: Path) -> dict[str, bytes]:
    """Every entry under `folder` (links not followed) with its bytes or link target; a run
    folder's lock by its name only (each holder writes its own record there)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.name == RUN_LOCK:
            found[name] = b"a lock"
            continue
        found[name] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b""
    return found


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result, says: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- Rule 1: never over or inside an input -----------------------------------------------------


def _tiles(folder: Path) -> Path:
    tiles = folder / "tiles"
    tiles.mkdir()
    for row in range(2):
        for col in range(2):
            write_png(tiles / f"tile_{row}_{col}.png", smooth_image(8, 8, seed=row * 2 + col))
    return tiles


def _zarr(folder: Path) -> Path:
    import zarr

    source = folder / "in.zarr"
    zarr.create_array(str(source), shape=(4, 4, 4), chunks=(2, 4, 4), dtype="uint8")[:] = 7
    return source


def _dint_store(folder: Path) -> Path:
    import dask.array as da

    info = tiny_info((8, 8))
    return write_store(da.from_array(np.full((8, 8, 1), 3, np.uint8), chunks=(4, 4, 1)), info, folder / "s.zarr")


def tiny_info(shape: tuple[int, ...], name: str = "tiny.png") -> SignalInfo:
    return SignalInfo(
        modality="image",
        shape=shape,
        channels=1,
        dtype="uint8",
        value_range=(0.0, 255.0),
        domain=((-1.0, 1.0),) * len(shape),
        chunks=tuple(min(4, s) for s in shape),
        source_name=name,
        source_sha256="0",
    )


SOURCES = {"tiles": _tiles, "zarr": _zarr, "dint store": _dint_store}


@example(kind="tiles", base="source", steps=[], overwrite=False)  # dint-shard tiles tiles/out.zarr
@example(kind="zarr", base="source", steps=[], overwrite=False)  # dint-shard in.zarr in.zarr/out.zarr
@settings(max_examples=30, **SETTINGS)
@given(
    kind=st.sampled_from(sorted(SOURCES)),
    base=st.sampled_from(["source", "alias", "outside"]),
    steps=st.lists(st.sampled_from(["sub", "..", "."]), max_size=3),
    overwrite=st.booleans(),
)
def test_shard_never_writes_inside_or_over_its_source(tmp_path_factory, kind, base, steps, overwrite):
    """Whatever way DEST is spelled (through a link to the source, with '..' and '.'), dint-shard
    refuses it when it resolves to the source or inside it, and leaves the source as it was."""
    folder = tmp_path_factory.mktemp("shard")
    source = SOURCES[kind](folder)
    (source / "sub").mkdir()
    (folder / "sub").mkdir()
    (folder / "alias").symlink_to(source, target_is_directory=True)  # a link to the source, outside it
    start = {"source": source, "alias": folder / "alias", "outside": folder}[base]
    dest = Path(start, *steps, "out.zarr")
    before = tree(source)
    result = invoke("shard", source, dest, *(["--overwrite"] if overwrite else []))
    target, inside = Path(os.path.realpath(dest)), Path(os.path.realpath(source))
    if target == inside or inside in target.parents:
        refused(result, INPUTS_RULE)
    assert tree(source) == before
    if result.exit_code == 0:
        assert inside not in target.parents and open_store(dest).info.shape


@pytest.mark.parametrize("dest", ["source", "its folder", "a folder above"])
def test_shard_refuses_a_destination_holding_the_source(tmp_path, dest):
    (tmp_path / "in").mkdir()
    source = write_png(tmp_path / "in" / "img.png", smooth_image(8, 8))
    target = {"source": source, "its folder": source.parent, "a folder above": tmp_path}[dest]
    before = tree(tmp_path)
    refused(invoke("shard", source, target, "--overwrite"), INPUTS_RULE)
    assert tree(tmp_path) == before


@settings(max_examples=25, **SETTINGS)
@given(
    where=st.sampled_from(
        ["the store", "inside the store", "above the store", "beside", "inside a checkpoint", "above a checkpoint"]
    ),
    spelled=st.sampled_from(["plain", "dots", "link"]),
)
def test_a_run_folder_is_never_an_input_nor_inside_one(tmp_path_factory, where, spelled):
    """run.dir may not be the store, lie inside it or hold it, nor lie inside the checkpoint it
    resumes from (a run's own checkpoints lie inside its folder)."""
    from dint.train.checkpoint import check_run_folder

    folder = tmp_path_factory.mktemp("runs")
    store = folder / "data" / "s.zarr"
    store.mkdir(parents=True)
    checkpoint = folder / "old" / "checkpoints" / "step-00000004"
    checkpoint.mkdir(parents=True)
    (folder / "alias").symlink_to(folder, target_is_directory=True)
    run_dir = {
        "the store": store,
        "inside the store": store / "run",
        "above the store": folder / "data",
        "beside": folder / "run",
        "inside a checkpoint": checkpoint / "run",
        "above a checkpoint": folder / "old",
    }[where]
    relative = run_dir.relative_to(folder)
    run_dir = {"plain": run_dir, "dots": folder / "data" / ".." / relative, "link": folder / "alias" / relative}[
        spelled
    ]
    resume = str(checkpoint) if "checkpoint" in where else "auto"
    config = load_config(None, {"data.store": str(store), "run.dir": str(run_dir), "checkpoint.resume": resume})
    if where in ("the store", "inside the store", "above the store", "inside a checkpoint"):
        with pytest.raises(DintError, match=INPUTS_RULE):
            check_run_folder(config)
    elif where == "above a checkpoint":  # a folder of other files: refused as not dint's, not as an input
        with pytest.raises(DintError, match="a folder with files dint did not make"):
            check_run_folder(config)
    else:
        check_run_folder(config)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run folder dint made, holding a tiny model trained on `store.zarr` beside it."""
    from dint.core.config import ModelConfig
    from dint.fields.model import build_model
    from dint.train.checkpoint import save_model

    folder = tmp_path_factory.mktemp("trained")
    info = tiny_info((8, 8))
    store = _dint_store(folder)
    run_dir = claim_folder(folder / "run", "a training run")
    (run_dir / "checkpoints").mkdir()
    with exclusive(run_dir / RUN_LOCK, "training run in this folder"):  # as a training leaves it
        pass
    config = load_config(
        None, {"data.store": str(store), "run.dir": str(run_dir), "model.width": "8", "model.hidden_layers": "1"}
    )
    torch.manual_seed(0)
    save_model(run_dir / "model.pt", build_model(ModelConfig(**config.to_dict()["model"]), info), config, info)
    return run_dir


@settings(max_examples=25, **SETTINGS)
@given(
    out=st.sampled_from(
        [
            "run",
            "model.pt",
            "checkpoints",
            "checkpoints/x.zarr",
            "store",
            "store/x.zarr",
            "parent",
            "run/x.zarr",
            "beside.zarr",
        ]
    ),
    spelled=st.sampled_from(["plain", "dots"]),
)
def test_render_never_writes_over_or_inside_its_inputs(trained_run, out, spelled):
    """dint render's inputs are the model, the run's checkpoints and the store it was trained
    on: an --out that is one, lies inside one or holds one is refused; anything else is written."""
    folder = trained_run.parent
    target = {
        "run": trained_run,
        "model.pt": trained_run / "model.pt",
        "checkpoints": trained_run / "checkpoints",
        "checkpoints/x.zarr": trained_run / "checkpoints" / "x.zarr",
        "store": folder / "s.zarr",
        "store/x.zarr": folder / "s.zarr" / "x.zarr",
        "parent": folder,
        "run/x.zarr": trained_run / "x.zarr",
        "beside.zarr": folder / "beside.zarr",
    }[out]
    if spelled == "dots":
        target = target.parent / "." / target.name
    before = tree(folder)
    result = invoke("render", trained_run, "--out", target, "--device", "cpu")
    if out in ("run/x.zarr", "beside.zarr"):
        assert result.exit_code == 0, result.output
        assert (target / "zarr.json").is_file()
        shutil.rmtree(target)
        for preview in target.parent.glob(target.stem + "*.png"):
            preview.unlink()
    else:
        refused(result, INPUTS_RULE)
    assert tree(folder) == before


@pytest.mark.parametrize(
    "args, says",
    [
        (["report", "{run}", "--plot", "{run}/p.png"], "--plot {run}/p.png: is inside the run folder {run}"),
        (["report", "{run}", "--plot", "{run}"], "--plot {run}: is the run folder {run}"),
        (["scale", "--from", "{run}", "--out", "{run}"], "--out {run}: is the run folder {run}"),
        (["scale", "--from", "{run}", "--out", "{run}/scale"], "is inside the run folder"),
        (["bench", "--from", "{run}", "--out", "{run}/sub"], "--out {run}/sub: is inside the bench {run}"),
    ],
)
def test_reports_never_write_inside_what_they_read(tmp_path, args, says):
    """dint report, dint scale --from and dint bench --from read folders: their outputs may
    not lie in one (they may hold one: a report's folder may gather the runs it reads)."""
    run = claim_folder(tmp_path / "run", "a training run")
    before = tree(tmp_path)
    refused(invoke(*(a.format(run=run) for a in args)), says.format(run=run))
    assert tree(tmp_path) == before


# --- Rule 1: every write into a dint folder is staged and follows no link ---------------------

RUN_FILES = ["config.toml", "metrics.jsonl", "summary.json", "model.pt", "selection.npz", "quality.png", MARK]


def _plant_link(folder: Path, name: str, kind: str, outside: Path) -> Path:
    target = {"file": outside / "precious.txt", "dangling": outside / "nowhere.txt", "folder": outside}[kind]
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(target)
    return target


@settings(max_examples=40, **SETTINGS)
@given(
    name=st.sampled_from(RUN_FILES),
    kind=st.sampled_from(["file", "dangling", "folder"]),
    how=st.sampled_from(["write_outputs", "open_staged"]),
)
def test_a_link_in_a_dint_folder_is_replaced_never_followed(tmp_path_factory, name, kind, how):
    """A link planted in a folder dint claimed, under the name of a file dint writes, is replaced
    by dint's file; what it pointed to is untouched."""
    base = tmp_path_factory.mktemp("links")
    outside = base / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("the user's")
    folder = claim_folder(base / "run", "a training run")
    _plant_link(folder, name, kind, outside)
    before = tree(outside)
    if how == "write_outputs":
        write_outputs(folder, {name: lambda tmp: tmp.write_text("dint's")})
    else:
        with open_staged(folder / name, "dint's") as file:
            file.write(" and more")
    assert tree(outside) == before
    assert not (folder / name).is_symlink() and (folder / name).read_text().startswith("dint's")
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


@settings(max_examples=25, **SETTINGS)
@given(
    where=st.sampled_from(
        [
            "config.toml",
            "metrics.jsonl",
            "summary.json",
            "checkpoints",
            "tensorboard",
            "checkpoints/step-00000003/state.pt",
            RUN_LOCK,
        ]
    ),
    kind=st.sampled_from(["file", "dangling", "folder"]),
)
def test_a_run_folder_holding_a_link_is_refused_before_anything_is_written(tmp_path_factory, where, kind):
    base = tmp_path_factory.mktemp("claimed")
    outside = base / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("the user's")
    folder = claim_folder(base / "run", "a training run")
    (folder / where).parent.mkdir(parents=True, exist_ok=True)
    _plant_link(folder, where, kind, outside)
    before = tree(base)
    with pytest.raises(DintError, match="in a folder dint writes; dint makes no links and writes through none"):
        claim_folder(folder, "a training run")
    assert tree(base) == before


def test_a_sub_folder_that_is_a_link_is_never_written_through(tmp_path):
    """A link planted mid-run where dint keeps a folder (checkpoints, tensorboard) stops the write."""
    from dint.train.checkpoint import save_checkpoint

    (tmp_path / "elsewhere").mkdir()
    folder = claim_folder(tmp_path / "run", "a training run")
    (folder / "checkpoints").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DintError, match="is not a folder dint made \\(a link\\)"):
        own_folder(folder / "checkpoints")
    with pytest.raises(DintError, match="is not a folder dint made"):
        save_checkpoint(folder, 3, {"format": 2}, keep=1, run="r")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_metrics_lines_go_to_dints_own_file_whatever_replaces_it(tmp_path):
    """metrics.jsonl stays open for the run: a link planted at its name meanwhile is never
    written through, and a rollback rewrites dint's own lines (staged), not what the link shows."""
    from dint.core.config import MetricsConfig
    from dint.train.metrics import MetricsLogger, Timers

    folder = claim_folder(tmp_path / "run", "a training run")
    (tmp_path / "precious.txt").write_text('{"step": 1, "theirs": true}\n')
    logger = MetricsLogger(MetricsConfig(), 10, folder, True, Timers(torch.device("cpu")))
    for step in (1, 2, 3):
        logger.log({"step": step})
    (folder / "metrics.jsonl").unlink()
    (folder / "metrics.jsonl").symlink_to(tmp_path / "precious.txt")
    logger.log({"step": 4})
    logger.rewind(2)
    logger.log({"step": 3, "again": True})
    logger.close()
    assert (tmp_path / "precious.txt").read_text() == '{"step": 1, "theirs": true}\n'
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1}, {"step": 2}, {"step": 3, "again": True}]


# --- Rule 1: a lock file dint did not make is never truncated or removed ----------------------


@settings(max_examples=40, **SETTINGS)
@given(
    content=st.binary(max_size=64).filter(lambda b: not b.startswith(b"dint pid ")),
    kind=st.sampled_from(["file", "link"]),
    shared=st.booleans(),
)
def test_a_file_named_like_a_lock_is_left_as_it_is(tmp_path_factory, content, kind, shared):
    folder = tmp_path_factory.mktemp("lock")
    dest = folder / "dest.zarr"
    mine = folder / "mine.bin"
    mine.write_bytes(content)
    lock = lock_path(dest)
    if kind == "file":
        shutil.copy(mine, lock)
    else:
        lock.symlink_to(mine)
    before = tree(folder)
    with pytest.raises(DintError, match="exists and is not a lock dint made"), exclusive(lock, "test", True, shared):
        pass
    assert tree(folder) == before


def test_a_store_writer_leaves_a_users_lock_named_file_and_writes_nothing(tmp_path):
    import dask.array as da

    dest = tmp_path / "dest.zarr"
    lock_path(dest).write_text("my notes")
    values = da.from_array(np.zeros((8, 8, 1), np.uint8), chunks=(4, 4, 1))
    with pytest.raises(DintError, match="is not a lock dint made"):
        write_store(values, tiny_info((8, 8)), dest)
    assert lock_path(dest).read_text() == "my notes" and not dest.exists()
    refused(invoke("shard", write_png(tmp_path / "i.png", smooth_image(8, 8)), dest), "is not a lock dint made")
    assert lock_path(dest).read_text() == "my notes" and not dest.exists()


def test_a_lock_left_by_a_dead_dint_is_taken_and_removed(tmp_path):
    lock = tmp_path / ".dest.zarr.lock"
    lock.write_bytes(b"dint pid 999999 on gone (the writer of this store)")
    with exclusive(lock, "writer of this store", remove_after=True):
        assert lock.read_bytes().startswith(f"dint pid {os.getpid()} ".encode())
    assert not lock.exists()


# --- Rule 1: a checkpoint belongs to the run that wrote it -------------------------------------


class Counter:
    """A stateful part: the step it was saved at."""

    def __init__(self):
        self.step = torch.tensor(0)

    def state_dict(self) -> dict:
        return {"step": self.step.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"].clone()


def run_once(run_dir: Path, mode: str, steps: int, every: int, keep: int) -> tuple[int, str, list[int]]:
    """One training run's checkpointing as Trainer does it: (resumed step, run id, steps saved)."""
    from dint.distributed.collectives import DistInfo
    from dint.train.checkpoint import CheckpointManager

    claim_folder(run_dir, "a training run")
    config = load_config(
        None,
        {
            "data.store": "S.zarr",
            "run.dir": str(run_dir),
            "checkpoint.resume": mode,
            "checkpoint.every": str(every),
            "checkpoint.keep": str(keep),
            "train.steps": str(steps),
        },
    )
    counter = Counter()
    manager = CheckpointManager(config, tiny_info((4, 4)), DistInfo(0, 1, 0, torch.device("cpu")), {"c": counter})
    start = step = manager.resume()
    assert int(counter.step) == start
    saved = []
    while step < steps:
        step += 1
        counter.step = torch.tensor(step)
        if manager.due(step, step == steps):
            manager.save(step)
            saved.append(step)
    return start, manager.run_id, saved


@example(runs=[("auto", 6, 3, 1), ("never", 4, 2, 1), ("auto", 8, 2, 1)])  # the runs A, B, then auto
@settings(max_examples=30, **SETTINGS)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["auto", "never"]), st.integers(1, 8), st.integers(0, 3), st.integers(1, 3)),
        min_size=1,
        max_size=4,
    )
)
def test_rotation_and_resume_see_only_the_runs_own_checkpoints(tmp_path_factory, runs):
    """Runs one after another in one folder: each keeps its own newest `keep` checkpoints and
    deletes no other run's; `resume auto` continues the folder's latest run, from its newest."""
    from dint.train.checkpoint import list_checkpoints, run_of

    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    present: dict[str, set[int]] = {}  # run id -> steps of its checkpoints named step-N
    asides, latest = 0, None
    for mode, steps, every, keep in runs:
        expected_start = max(present.get(latest, {0}) or {0}) if mode == "auto" and latest else 0
        start, run, saved = run_once(run_dir, mode, steps, every, keep)
        assert start == expected_start
        assert (run == latest) == (mode == "auto" and latest is not None)
        mine = present.setdefault(run, set())
        for step in saved:
            for other, steps_of in present.items():
                if other != run and step in steps_of:
                    steps_of.discard(step)
                    asides += 1
            mine.add(step)
            present[run] = mine = set(sorted(mine, reverse=True)[:keep])
        latest = run
        on_disk = {(run_of(p), int(p.name[5:])) for p in list_checkpoints(run_dir)}
        assert on_disk == {(r, s) for r, steps_of in present.items() for s in steps_of}
        assert len([p for p in (run_dir / "checkpoints").glob("step-*.earlier-*")]) == asides


def test_checkpoints_of_an_older_dint_are_resumed_and_never_deleted(tmp_path):
    """A folder of a dint before runs were named (no run in its mark nor in its manifests):
    `resume auto` continues its newest checkpoint, and the run's rotation leaves it."""
    from dint.train.checkpoint import list_checkpoints, run_of

    run_dir = tmp_path / "run"
    run_once(run_dir, "auto", 4, 2, 1)
    manifest = run_dir / "checkpoints" / "step-00000004" / "manifest.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "run"}))
    (run_dir / MARK).write_text(json.dumps({"made_by": "dint", "for": "a training run"}))
    start, run, saved = run_once(run_dir, "auto", 8, 2, 1)
    assert (start, saved) == (4, [6, 8])
    assert [(p.name, run_of(p)) for p in list_checkpoints(run_dir)] == [("step-00000008", run), ("step-00000004", None)]


# --- Rule 2: one writer per destination ------------------------------------------------------


@settings(max_examples=25, **SETTINGS)
@given(ops=st.lists(st.sampled_from(["read", "stop reading", "write"]), min_size=1, max_size=8))
def test_a_store_being_read_is_never_replaced(tmp_path_factory, ops):
    """Readers (open_store held) and writers (dint-shard --overwrite) in any order: a write
    succeeds exactly when no one reads the store, and a refused one changes nothing."""
    import dask.array as da

    folder = tmp_path_factory.mktemp("held")
    store = _dint_store(folder)
    readers, version = [], 3
    for op in ops:
        if op == "read":
            readers.append(open_store(store, held_for="training run reading it"))
        elif op == "stop reading" and readers:
            readers.pop(0).release()
        elif op == "write":
            values = da.from_array(np.full((8, 8, 1), version + 1, np.uint8), chunks=(4, 4, 1))
            context = (
                pytest.raises(
                    DintError,
                    match=f"held by dint pid {os.getpid()} on .* \\(the training run reading it\\); one at a time",
                )
                if readers
                else contextlib.nullcontext()
            )
            with context:
                write_store(values, tiny_info((8, 8)), store, overwrite=True)
                version += 1
        assert int(open_store(store).read_region((0, 0), (1, 1))[0, 0, 0]) == version
    for reader in readers:
        reader.release()
    assert sorted(p.name for p in folder.iterdir()) == ["s.zarr"]  # the shared lock file went with the last reader


def test_render_refuses_a_store_being_read_or_written_and_a_locked_folder(trained_run):
    folder = trained_run.parent
    (folder / "live").mkdir()
    live = _dint_store(folder / "live")
    before = tree(folder)
    reader = open_store(live, held_for="training run reading it")
    refused(invoke("render", trained_run, "--out", live, "--device", "cpu"), "(the training run reading it)")
    reader.release()
    dest = folder / "two.zarr"
    # Another render of the same --out, meanwhile:
    with exclusive(lock_path(dest), "writer of this store", remove_after=True):
        refused(invoke("render", trained_run, "--out", dest, "--device", "cpu"), f"held by dint pid {os.getpid()}")
    with exclusive(trained_run / RUN_LOCK, "training run in this folder"):  # a training in the run folder
        result = invoke("render", trained_run, "--out", trained_run / "reconstruction.zarr", "--device", "cpu")
        refused(result, f"{RUN_LOCK}: held by dint pid {os.getpid()} on ")
        assert "(the training run in this folder)" in result.stderr
    assert tree(folder) == before


@pytest.mark.parametrize("role", ["training run in this folder", "dint render writing in this folder"])
def test_a_dint_folder_has_one_writer_at_a_time(tmp_path, role):
    """dint bench and dint scale hold their --out folder as a training holds its run folder:
    whoever holds it, the next writer there stops at once, naming it."""
    from dint.core.files import hold_folder

    folder = claim_folder(tmp_path / "out", "a training run")
    holder = f"held by dint pid {os.getpid()} on .* \\(the {role}\\)"
    with exclusive(folder / RUN_LOCK, role), pytest.raises(DintError, match=holder):
        hold_folder(folder, "dint bench's outputs", "dint bench writing in this folder")
    hold_folder(folder, "dint bench's outputs", "dint bench writing in this folder").close()


@settings(max_examples=40, **SETTINGS)
@given(states=st.lists(st.sampled_from(["new", "dint's", "foreign", "appears"]), min_size=1, max_size=4))
def test_outputs_published_together_are_all_replaced_or_none(tmp_path_factory, states):
    """A store and its previews publish as one: when one destination may not be replaced (not
    dint's, or appeared meanwhile), none is, and each is as it was."""
    folder = tmp_path_factory.mktemp("publish")
    outputs = []
    for index, state in enumerate(states):
        dest = folder / f"out{index}"
        if state in ("dint's", "foreign"):
            dest.write_text(f"old {index}")
        tmp = staging_path(dest)
        tmp.write_text(f"new {index}")
        outputs.append((tmp, dest, (lambda path: True) if state == "dint's" else None))
    appearing = [dest for (_, dest, _), state in zip(outputs, states) if state == "appears"]

    def appear(path: Path) -> bool:  # asked before anything moves; the destination appears after its check
        for dest in appearing:
            dest.write_text("theirs")
        return True

    outputs.append((staging_path(folder / "last"), folder / "last", appear))
    outputs[-1][0].write_text("new last")
    (folder / "last").write_text("old last")
    before = {dest: dest.read_text() if dest.exists() else None for _, dest, _ in outputs}
    if "foreign" in states or appearing:
        with pytest.raises(DintError, match="left as it is, nothing written there"):
            publish_all(outputs)
        after = {dest: dest.read_text() if dest.exists() else None for _, dest, _ in outputs}
        appeared = set(appearing) if "foreign" not in states else set()  # checks stop at a foreign one
        assert after == {dest: "theirs" if dest in appeared else text for dest, text in before.items()}
    else:
        publish_all(outputs)
        assert all(dest.read_text().startswith("new") for _, dest, _ in outputs)
    assert not [p for p in folder.iterdir() if ".old-" in p.name]


def test_check_claimable_accepts_dints_own_run_folder(tmp_path):
    folder = claim_folder(tmp_path / "run", "a training run")
    write_outputs(folder, {"config.toml": lambda tmp: tmp.write_text("")})
    own_folder(folder / "checkpoints")
    check_claimable(folder, "a training run")
