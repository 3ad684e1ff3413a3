"""Rule 5: every way a command ends leaves nothing half-made, and says so only when it is true.

- What dead dint processes left in a folder (staging copies `.NAME.tmp-HOST.PID.RAND...`,
  outputs set aside `.NAME.old-...`) goes with the next command writing in that folder
  (`remove_stale`); a set-aside output whose replacement never arrived is put back.
- What this process began and did not finish is removed when it fails or stops
  (`remove_unfinished`), even when the cleanup that should have removed it was cut short.
- A second stop signal during the cleanup of the first is not taken.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.core import errors, files
from dint.core.errors import Stopped, stop_on_sigterm, stopped_line
from dint.core.files import (
    claim_folder,
    new_token,
    publish,
    remove_stale,
    remove_unfinished,
    staged,
    staging_path,
    write_outputs,
)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    return int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )


names = st.text(st.characters(codec="ascii", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda name: name not in (".", "..")
)
suffixes = st.sampled_from(["", ".zarr", ".png", ".pt", ".tar.gz", ".ome.zarr"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(
        st.tuples(
            names,
            suffixes,
            st.sampled_from(["tmp", "old"]),
            st.sampled_from(["dead", "live", "other host"]),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda e: e[:3],
    )
)
def test_what_dead_processes_left_in_a_folder_goes(tmp_path_factory, dead_pid, entries):
    """Any stem, suffix or kind: a dead process's temporaries on this host are removed, a set-aside
    output with no replacement in place is put back; a live process's, another host's, and
    names that only look alike stay."""
    folder = tmp_path_factory.mktemp("sweep")
    host, _, random = new_token().split(".")
    kept, gone, restored, dests = set(), set(), set(), set()
    for stem, suffix, kind, owner, is_folder, dest_exists in entries:
        pid = os.getpid() if owner == "live" else dead_pid
        token = f"{host if owner != 'other host' else f'{int(host, 16) ^ 1:08x}'}.{pid}.{random}"
        dest = folder / (stem + suffix)
        path = staging_path(dest, token, mine=False) if kind == "tmp" else folder / f".{dest.name}.old-{token}"
        if dest.name in dests or os.path.lexists(path):
            continue
        dests.add(dest.name)
        (path.mkdir if is_folder else path.touch)()
        if dest_exists and owner == "dead":
            dest.touch()
        if owner != "dead":
            kept.add(path.name)
        elif kind == "old" and not dest_exists:
            restored.add(dest.name)
            gone.add(path.name)
        else:
            gone.add(path.name)
    lookalike = folder / ".x.tmp-notdints.zarr"
    lookalike.touch()
    remove_stale(folder)
    left = {p.name for p in folder.iterdir()}
    assert kept | restored | {lookalike.name} <= left
    assert not gone & left


def test_every_writing_command_sweeps_its_folder(tmp_path, dead_pid):
    """staged (every output), claim_folder (run folders, bench and scale outputs) both sweep."""
    host, _, random = new_token().split(".")
    for folder, write in (
        (tmp_path / "a", lambda f: write_outputs(f, {"out.txt": lambda tmp: tmp.write_text("x")})),
        (tmp_path / "b", lambda f: claim_folder(f, "a test")),
    ):
        claim_folder(folder, "a test")  # a run folder, a bench's output: made by dint before
        stale = [
            folder / f".other.tmp-{host}.{dead_pid}.{random}.png",
            folder / f".x.zarr.old-{host}.{dead_pid}.{random}",
        ]
        (folder / "x.zarr").mkdir()
        for path in stale:
            path.mkdir()
        write(folder)
        assert not any(path.exists() for path in stale)


def test_an_interrupted_cleanup_is_finished_before_the_stop_line(tmp_path, monkeypatch):
    """A stop during the removal of a staging copy (a second signal, before this fix) leaves it;
    remove_unfinished finishes the removal, and the line says nothing is left only then."""
    dest = tmp_path / "out.zarr"
    real_rmtree, calls = files.shutil.rmtree, []

    def rmtree_interrupted(path, ignore_errors=False):
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the second signal, in the middle of the cleanup of the first
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(files.shutil, "rmtree", rmtree_interrupted)
    with pytest.raises(KeyboardInterrupt), staged(dest) as tmp:
        (tmp / "c").mkdir(parents=True)
        raise Stopped()
    assert [p.name for p in tmp_path.iterdir()] == [tmp.name]  # the cleanup was cut short
    assert stopped_line(Stopped(), remove_unfinished()) == ("stopped by SIGTERM; nothing half-written was left", 143)
    assert list(tmp_path.iterdir()) == []


def test_a_staged_file_not_yet_handed_over_is_removed(tmp_path):
    """A preview written under its staging name, stopped before its maker returned it (so no
    one was told to discard it)."""
    preview = staging_path(tmp_path / "reconstruction.png")
    preview.write_bytes(b"half a PNG")
    assert remove_unfinished() == []
    assert list(tmp_path.iterdir()) == []


def test_an_output_set_aside_while_replacing_it_is_removed_once_replaced(tmp_path, monkeypatch):
    """A stop while the replaced output is being removed (dint render --out over an old render)."""
    dest, new = tmp_path / "render.zarr", staging_path(tmp_path / "render.zarr")
    dest.mkdir()
    (dest / "old").touch()
    new.mkdir()
    (new / "new").touch()
    monkeypatch.setattr(
        files.shutil, "rmtree", lambda path, ignore_errors=False: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        publish(new, dest, files.anything)
    monkeypatch.undo()
    assert any(p.name.startswith(".render.zarr.old-") for p in tmp_path.iterdir())
    assert remove_unfinished() == []
    assert [p.name for p in tmp_path.iterdir()] == ["render.zarr"] and (dest / "new").exists()


def test_what_could_not_be_removed_is_named_instead(tmp_path):
    line, code = stopped_line(KeyboardInterrupt(), [tmp_path / ".a.tmp-x.zarr"])
    assert code == 130 and "nothing half-written" not in line
    assert line.startswith("interrupted; could not remove the half-written") and ".a.tmp-x.zarr" in line


@pytest.fixture
def stop_handlers(monkeypatch):
    """stop_on_sigterm in this process, undone afterwards."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(errors, "_stopping", False)
    stop_on_sigterm()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    "first, second",
    [
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGINT),
    ],
)
def test_a_second_stop_signal_does_not_break_off_the_cleanup(stop_handlers, first, second):
    cleaned = False
    with pytest.raises(KeyboardInterrupt) as stop:
        try:
            os.kill(os.getpid(), first)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            os.kill(os.getpid(), second)  # during the cleanup
            for _ in range(1000):
                pass
            cleaned = True
            raise
    assert cleaned
    assert isinstance(stop.value, Stopped) == (first == signal.SIGTERM)


def test_sweeping_a_missing_folder_does_nothing(tmp_path):
    remove_stale(tmp_path / "absent")
