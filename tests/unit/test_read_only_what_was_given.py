"""Read only what was given (safety, second pass, rule 3), in-process.

A dint store and a checkpoint are folders dint wrote without links: a link in one (to another
store's chunk, to a file outside) is refused, as is anything that is not a regular file or a
folder (a named pipe would block the read, a device never end it), before anything is opened.
A checkpoint's manifest names plain files inside its folder. What dint prints on stdout is
escaped like its errors, and an error about a name with a newline is not cut there. A model
file that is a pickle of code is refused in one line, without torch's advice to load it unsafely.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import write_smooth_store
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dint.core.errors import DintError, escaped, say
from dint.core.files import check_input
from dint.data.readers import read_source
from dint.data.store import open_store
from dint.train import checkpoint
from dint.train.checkpoint import FORMAT, MANIFEST, STATE, list_checkpoints, load_checkpoint, load_trained

pytestmark = pytest.mark.timeout(120)  # a read that blocks on a pipe fails the test instead of hanging it
HYPOTHESIS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_store(dest: Path) -> Path:
    return write_smooth_store(dest)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """A store, and another one whose chunks a link may point at."""
    root = tmp_path_factory.mktemp("stores")
    return make_store(root / "S.zarr"), make_store(root / "other.zarr")


def files_of(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


def _link_to_another_store(path: Path, other: Path) -> str:
    path.symlink_to(other / "values" / "c" / "1" / "1" / "0")
    return "is a symbolic link"


def _link_inside_the_store(path: Path, other: Path) -> str:
    path.symlink_to(path.name + ".moved")  # its own content, moved aside: still a link dint did not write
    return "is a symbolic link"


def _named_pipe(path: Path, other: Path) -> str:
    os.mkfifo(path)
    return "is a named pipe"


def _character_device(path: Path, other: Path) -> str:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device needs root")
    return "is a character device"


def _socket(path: Path, other: Path) -> str:
    if len(str(path)) > 100:
        pytest.skip("the socket's path is too long for AF_UNIX")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return "is a socket"


KINDS = [_link_to_another_store, _link_inside_the_store, _named_pipe, _character_device, _socket]


def replace(path: Path, kind, other: Path) -> str:
    """Put `kind` where the file `path` is (its content kept beside it, as `.moved`); what the error says."""
    path.rename(path.with_name(path.name + ".moved"))
    return kind(path, other)


@HYPOTHESIS
@given(data=st.data())
@example(data=None)  # the case: a chunk linked to another store's chunk
def test_a_store_file_that_is_a_link_or_not_a_regular_file_is_refused_when_opened(stores, data):
    store, other = stores
    name = data.draw(st.sampled_from(files_of(store))) if data else "values/c/0/0/0"
    kind = data.draw(st.sampled_from(KINDS)) if data else _link_to_another_store
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(shutil.copytree(store, Path(scratch) / "S.zarr"))
        says = replace(copy / name, kind, other)
        with pytest.raises(DintError) as refused:
            open_store(copy)
        assert str(refused.value).startswith(f"{copy / name}: {says}"), str(refused.value)


@pytest.mark.parametrize("kind", [_link_to_another_store, _named_pipe, _character_device])
def test_a_chunk_replaced_after_opening_is_refused_at_once_when_read(stores, tmp_path, kind, capsys):
    """`dint info --verify` and training read chunks after open_store: the same check runs before
    each read, and a link or a pipe is not retried (nothing the next try reads would be better)."""
    store, other = stores
    copy = Path(shutil.copytree(store, tmp_path / "S.zarr"))
    opened = open_store(copy)
    chunk = copy / "values" / "c" / "1" / "2" / "0"
    says = replace(chunk, kind, other)
    with pytest.raises(DintError) as refused:
        opened.verify()
    assert str(refused.value).startswith(f"{chunk}: {says}"), str(refused.value)
    assert "retrying" not in capsys.readouterr().err


def test_a_store_given_through_a_link_is_read(stores, tmp_path):
    """The store's own path may be a link: the user named it. Only what is inside is dint's."""
    (tmp_path / "link.zarr").symlink_to(stores[0])
    assert open_store(tmp_path / "link.zarr").verify() == 9


# --- Checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A run folder with one checkpoint (step 5), and a file outside it that a manifest may name."""
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "big_outside.bin").write_bytes(b"not the checkpoint's" * 100)
    run = root / "run"
    run.mkdir()  # a run folder, as the trainer claims it
    checkpoint.save_checkpoint(run, 5, {"format": FORMAT, "step": 5, "parts": {}}, keep=2)
    return run


@contextlib.contextmanager
def reads_recorded():
    """Every file load_checkpoint hashes or loads, recorded."""
    read = []
    hash_file, load = checkpoint.sha256_of, torch.load

    def hashing(path, *args, **kwargs):
        read.append(Path(path))
        return hash_file(path, *args, **kwargs)

    def loading(path, *args, **kwargs):
        read.append(Path(path))
        return load(path, *args, **kwargs)

    with mock.patch.object(checkpoint, "sha256_of", hashing), mock.patch.object(torch, "load", loading):
        yield read


NAMES = st.one_of(
    st.sampled_from(
        [
            "../../big_outside.bin",
            "../step-00000005/state.pt",
            "..",
            ".",
            "",
            "sub/state.pt",
            "state.pt/",
            "./state.pt",
            "state.pt\n",
            "big_outside.bin",
            "/etc/hostname",
        ]
    ),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), max_size=20),
)


def newest_checkpoint(run: Path, warn) -> tuple[Path, dict] | None:
    """What `resume auto` meets, newest first: a checkpoint that loads, each refused one named in a warning."""
    for path in list_checkpoints(run):
        try:
            return path, load_checkpoint(path)
        except DintError as e:
            warn(f"skipping checkpoint {e}")
    return None


@HYPOTHESIS
@given(names=st.lists(NAMES, min_size=1, max_size=3))
@example(names=["../../big_outside.bin"])
@example(names=["<the outside file's absolute path>"])
def test_a_manifest_naming_anything_but_its_own_files_reads_nothing_outside(saved, names):
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(shutil.copytree(saved.parent, Path(scratch), dirs_exist_ok=True)) / "run"
        folder = run / "checkpoints" / "step-00000005"
        manifest = json.loads((folder / MANIFEST).read_text())
        for name in names:
            outside = str(run.parent / "big_outside.bin")
            manifest["files"][outside if name.startswith("<the outside") else name] = "0" * 64
        (folder / MANIFEST).write_text(json.dumps(manifest))
        with reads_recorded() as read:
            with pytest.raises(DintError) as refused:
                load_checkpoint(folder)
            assert not checkpoint.is_complete_checkpoint(folder)
            assert newest_checkpoint(run, lambda message: None) is None
        assert all(path.resolve().parent == folder.resolve() for path in read), read
        assert "\n" not in escaped(str(refused.value))


@pytest.mark.parametrize("what", [STATE, MANIFEST])
@pytest.mark.parametrize("kind", [_link_to_another_store, _named_pipe])
def test_a_checkpoint_file_that_is_a_link_or_a_pipe_is_skipped_unread(saved, tmp_path, what, kind):
    run = Path(shutil.copytree(saved, tmp_path / "run"))
    folder = run / "checkpoints" / "step-00000005"
    says = replace(folder / what, kind, saved.parent)
    warnings = []
    with reads_recorded() as read:
        assert newest_checkpoint(run, warnings.append) is None
    assert read == [] and len(warnings) == 1 and f"{folder / what}: {says}" in warnings[0], warnings


def test_a_checkpoint_folder_that_is_a_link_is_skipped_unread(saved, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-00000009").symlink_to(saved / "checkpoints" / "step-00000005")
    warnings = []
    with reads_recorded() as read:
        assert newest_checkpoint(run, warnings.append) is None
    assert read == [] and "is a symbolic link" in warnings[0], warnings


# --- Model files ------------------------------------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo ran",))


@pytest.mark.parametrize("load", ["model", "checkpoint"])
def test_a_pickle_that_runs_code_is_one_line_without_advice_to_load_it_unsafely(tmp_path, capfd, load):
    if load == "model":
        (tmp_path / "model.pt").write_bytes(pickle.dumps(RunsCode(), protocol=4))
        with pytest.raises(DintError) as refused:
            load_trained(tmp_path / "model.pt")
    else:
        folder = tmp_path / "step-00000001"
        folder.mkdir()
        (folder / STATE).write_bytes(pickle.dumps(RunsCode(), protocol=4))
        (folder / MANIFEST).write_text(json.dumps({"files": {STATE: checkpoint.sha256_of(folder / STATE)}}))
        with pytest.raises(DintError) as refused:
            load_checkpoint(folder)
    message = str(refused.value)
    assert "cannot be loaded safely" in message and "\n" not in message, message
    assert "weights_only" not in message and "trusted" not in message, message
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == "", printed  # no torch warning, nothing ran


@pytest.mark.parametrize("kind", [_named_pipe, _character_device])
def test_a_model_file_that_is_not_a_regular_file_is_refused_unread(tmp_path, kind):
    says = kind(tmp_path / "model.pt", tmp_path)
    with pytest.raises(DintError, match=f"model.pt: {says}"):
        load_trained(tmp_path / "model.pt")


# --- Names on stdout and in errors -------------------------------------------------------------------

HOSTILE_NAMES = st.text(
    alphabet=st.one_of(
        st.sampled_from(["\n", "\r", "\x1b", "\u202e", "\t", "\x85", "\u2028"]),
        st.characters(codec="utf-8", exclude_characters="/\0"),
    ),
    min_size=1,
    max_size=30,
).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


@HYPOTHESIS
@given(name=HOSTILE_NAMES)
@example(name="a\nb\x1b[31m\u202e")
def test_a_result_line_naming_any_file_stays_one_printable_line(name, capsys):
    say(f"{name}: image 48x40x1 uint8, written in 0.1 s")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n"), repr(out)
    assert out[:-1].isprintable() and out[:-1] == escaped(f"{name}: image 48x40x1 uint8, written in 0.1 s")


@HYPOTHESIS
@given(name=HOSTILE_NAMES)
@example(name="bad\nname")
def test_an_error_naming_a_file_is_not_cut_at_a_newline_in_its_name(tmp_path, name):
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        path = Path(scratch) / f"{name}.png"
        path.write_bytes(b"not a PNG at all")
        with pytest.raises(DintError) as refused:
            read_source(path)
    shown = escaped(str(refused.value))
    assert shown.startswith(escaped(str(path)) + ": not a readable image (") and shown.endswith(")"), shown
    assert shown.isprintable()


def test_check_input_names_what_a_special_file_is(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "device").symlink_to("/dev/null")
    for name, says in (("pipe", "is a named pipe"), ("device", "is a character device")):
        with pytest.raises(DintError, match=f"{name}: {says}, not a file or folder"):
            check_input(tmp_path / name, "config file")
    with pytest.raises(DintError, match="device: is a symbolic link \\(to /dev/null\\); the store S was written"):
        check_input(tmp_path / "device", "chunk file", holder="the store S")


def test_overwrite_names_a_special_zarr_json_without_opening_it(tmp_path):
    """dint-shard --overwrite over a folder whose zarr.json is a named pipe: refused at once,
    saying what is there (a read of the pipe would block)."""
    from dint.data.store import check_destination

    dest = tmp_path / "live.zarr"
    dest.mkdir()
    os.mkfifo(dest / "zarr.json")
    with pytest.raises(DintError, match=r"live.zarr: exists and is not a dint store \(.*zarr.json: is a named pipe"):
        check_destination(dest, overwrite=True)
