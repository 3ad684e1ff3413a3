"""dint.core.files in one process: staged writes are published whole or not at all, only what
dint made is replaced, a claimed folder is dint's, one writer holds a lock, names print on one line."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.core import files
from dint.core.errors import DintError
from dint.core.files import (
    MARK,
    anything,
    check_claimable,
    check_input,
    claim_folder,
    exclusive,
    held_by,
    is_dint_png,
    is_dint_store,
    new_token,
    publish,
    remove_stale,
    sha256_of,
    shown,
    staged,
    staging_path,
    write_outputs,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """A process id no process can have (above the kernel's pid_max)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000


# --- Staging names ---------------------------------------------------------------------------


def test_a_staging_path_is_hidden_beside_its_destination_with_the_suffix_last(tmp_path):
    dest = tmp_path / "out" / "model.pt"
    tmp = staging_path(dest)
    assert tmp.parent == dest.parent and tmp.name.startswith(".model.tmp-") and tmp.suffix == ".pt"
    host, pid, random = tmp.name[len(".model.tmp-") : -len(".pt")].split(".")
    assert len(host) == 8 and int(pid) == os.getpid() and len(random) == 8
    assert staging_path(dest) != tmp  # a fresh token each time
    assert staging_path(dest, "0000abcd.12.deadbeef").name == ".model.tmp-0000abcd.12.deadbeef.pt"


def test_a_token_names_this_host_and_process():
    host, pid, random = new_token().split(".")
    assert int(pid) == os.getpid()
    int(host, 16), int(random, 16)  # both hexadecimal
    assert new_token().split(".")[0] == host and new_token() != new_token()


# --- staged / publish: all or nothing ------------------------------------------------------


def test_staged_publishes_the_whole_file_and_leaves_nothing_beside_it(tmp_path):
    dest = tmp_path / "result.txt"
    with staged(dest) as tmp:
        tmp.write_text("part one, ")
        assert not dest.exists()  # nothing at the destination while it is written
        with open(tmp, "a") as f:
            f.write("part two")
    assert dest.read_text() == "part one, part two"
    assert names(tmp_path) == ["result.txt"]


def test_staged_builds_a_folder_and_publishes_it_whole(tmp_path):
    dest = tmp_path / "store.zarr"
    with staged(dest) as tmp:
        tmp.mkdir()
        for i in range(3):
            (tmp / f"chunk{i}").write_bytes(bytes([i]) * 10)
    assert names(dest) == ["chunk0", "chunk1", "chunk2"]
    assert names(tmp_path) == ["store.zarr"]


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), OSError(28, "No space left on device")])
def test_a_failing_write_leaves_the_old_output_and_no_staging(tmp_path, error):
    dest = tmp_path / "model.pt"
    dest.write_text("old, whole")
    with pytest.raises(type(error)), staged(dest, may_replace=anything) as tmp:
        tmp.write_text("new, half")
        raise error
    assert dest.read_text() == "old, whole"
    assert names(tmp_path) == ["model.pt"]


def test_an_os_error_without_a_path_is_given_the_outputs_name(tmp_path):
    dest = tmp_path / "s.zarr"
    with pytest.raises(OSError) as caught, staged(dest):
        raise OSError(28, "No space left on device")  # as a writer thread raises it: no file name
    assert caught.value.filename == str(dest)
    with pytest.raises(OSError) as caught, staged(dest):
        raise OSError(2, "No such file or directory", "/some/other/path")
    assert caught.value.filename == "/some/other/path"  # a named one is kept


def test_an_interrupt_removes_even_a_write_that_lands_after_it(tmp_path, monkeypatch):
    dest = tmp_path / "s.zarr"
    landed = []

    class Clock:
        """time as dint.core.files sees it: the first pause of its watch lets a late write land."""

        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds):
            if not landed:  # a write handed to another thread lands after the interrupt
                tmp.mkdir()
                (tmp / "chunk").write_bytes(b"x")
                landed.append(tmp)
            time.sleep(seconds)

    monkeypatch.setattr(files, "time", Clock)
    with pytest.raises(KeyboardInterrupt), staged(dest) as tmp:
        tmp.mkdir()
        raise KeyboardInterrupt
    assert landed == [tmp]  # the late write did happen ...
    assert names(tmp_path) == []  # ... and was removed again


def test_replacing_moves_the_old_output_aside_and_removes_it_after(tmp_path):
    dest = tmp_path / "out.zarr"
    dest.mkdir()
    (dest / "old").write_text("old")
    with staged(dest, may_replace=anything) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert names(dest) == ["new"]
    assert names(tmp_path) == ["out.zarr"]  # no .out.zarr.old-* left


def test_a_failed_final_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    dest, new = tmp_path / "model.pt", tmp_path / "new.pt"
    dest.write_text("old")
    new.write_text("new")

    def failing_rename(src, dst):
        raise OSError(5, "Input/output error", str(dst))

    monkeypatch.setattr(files, "_rename_noreplace", failing_rename)
    with pytest.raises(OSError):
        publish(new, dest, anything)
    assert dest.read_text() == "old" and new.read_text() == "new"
    assert names(tmp_path) == ["model.pt", "new.pt"]  # the set-aside copy went back


@pytest.mark.parametrize("may_replace", [None, lambda path: False])
def test_publish_refuses_what_it_may_not_replace(tmp_path, may_replace):
    dest, new = tmp_path / "thesis.tex", tmp_path / "new"
    dest.write_text("years of work")
    new.write_text("dint's")
    with pytest.raises(DintError, match="thesis.tex: exists and was not made by dint"):
        publish(new, dest, may_replace)
    assert dest.read_text() == "years of work" and new.exists()
    with pytest.raises(DintError), staged(dest, may_replace=may_replace) as tmp:
        tmp.write_text("dint's")
    assert dest.read_text() == "years of work" and names(tmp_path) == ["new", "thesis.tex"]


def test_publish_never_follows_a_link_at_the_destination(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("theirs")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    new = tmp_path / "new.txt"
    new.write_text("dint's")
    with pytest.raises(DintError, match="exists and was not made by dint"):
        publish(new, link)
    assert link.is_symlink() and target.read_text() == "theirs"


def test_the_final_rename_never_replaces_what_appeared(tmp_path):
    dest = tmp_path / "out.zarr"
    with pytest.raises(DintError, match="appeared while dint was writing it"), staged(dest) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("dint's")
        dest.mkdir()  # another writer, meanwhile
        (dest / "theirs").write_text("theirs")
    assert sorted(p.name for p in dest.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    empty = tmp_path / "empty"
    (tmp_path / "src").write_text("x")
    empty.mkdir()  # even an empty folder is not replaced silently
    with pytest.raises(DintError):
        publish(tmp_path / "src", empty)


def test_write_outputs_writes_each_file_whole_and_replaces_its_own(tmp_path):
    folder = claim_folder(tmp_path / "run", "a test")
    (folder / "summary.json").write_text("old")
    write_outputs(
        folder, {"summary.json": lambda tmp: tmp.write_text("{}"), "notes.txt": lambda tmp: tmp.write_text("hello")}
    )
    assert (folder / "summary.json").read_text() == "{}" and (folder / "notes.txt").read_text() == "hello"
    assert names(folder) == [MARK, "notes.txt", "summary.json"]


# --- Stale staging of dead processes ---------------------------------------------------------


def test_remove_stale_clears_a_folder_of_what_dead_processes_here_left(tmp_path):
    """Staging of dead processes on this host goes, whatever output it was for; a set-aside
    output whose replacement never arrived goes back in place; a live process's, another
    host's and names that are not dint's stay."""
    dest = tmp_path / "s.zarr"
    host, _, random = new_token().split(".")
    dead = dead_pid()
    stale = staging_path(dest, f"{host}.{dead}.{random}")
    set_aside = tmp_path / f".{dest.name}.old-{host}.{dead}.{random}"
    live = staging_path(dest, new_token())  # this process: alive
    other_host = staging_path(dest, f"{int(host, 16) ^ 1:08x}.{dead}.{random}")
    other_dest = staging_path(tmp_path / "t.zarr", f"{host}.{dead}.{random}")
    other_suffix = staging_path(tmp_path / "s.png", f"{host}.{dead}.{random}")
    not_dints = tmp_path / ".s.tmp-notdints.zarr"
    for path in (stale, set_aside, live, other_host, other_dest, other_suffix, not_dints):
        path.mkdir()
    (stale / "chunk").write_bytes(b"half")
    (set_aside / "zarr.json").write_text("{}")
    remove_stale(tmp_path)
    assert set(names(tmp_path)) == {dest.name, live.name, other_host.name, not_dints.name}
    assert (dest / "zarr.json").read_text() == "{}"  # the output set aside is back
    remove_stale(tmp_path / "missing-folder")  # a folder that is not there: nothing to do


def test_a_process_is_alive_while_it_runs():
    assert files._alive(os.getpid())
    assert not files._alive(dead_pid())


# --- Claimed folders -------------------------------------------------------------------------


def test_claim_folder_creates_marks_and_adopts(tmp_path):
    new = claim_folder(tmp_path / "a" / "b", "a test")
    assert new.is_dir() and json.loads((new / MARK).read_text()) == {"made_by": "dint", "for": "a test"}
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty, "a test")
    assert names(empty) == [MARK]
    (empty / MARK).write_text("kept")
    claim_folder(empty, "something else")  # already dint's: the mark is left as it is
    assert (empty / MARK).read_text() == "kept"


def test_claim_refuses_a_file_or_a_link(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(DintError, match="notes.txt: exists and is not a folder; a test needs a folder"):
        claim_folder(plain, "a test")
    folder = claim_folder(tmp_path / "real", "a test")
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(DintError, match="is a symbolic link .*, not a folder"):
        check_claimable(link, "a test")
    assert plain.read_text() == "keep me"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=12
        ).filter(lambda n: n not in (".", "..", MARK)),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_claim_folder_takes_only_new_empty_or_marked_folders(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("claim")
    for name in names:
        (folder / name).write_bytes(b"x")
    with pytest.raises(DintError, match="a folder with files dint did not make"):
        claim_folder(folder, "a test")
    assert not (folder / MARK).exists()
    empty = tmp_path_factory.mktemp("empty")
    claim_folder(empty, "a test")
    (empty / names[0]).write_bytes(b"dint's")
    claim_folder(empty, "a test")  # marked: dint's, whatever it holds


# --- One writer at a time --------------------------------------------------------------------


def test_a_held_lock_stops_a_second_holder_naming_the_first(tmp_path):
    lock = tmp_path / ".dint-lock"
    assert held_by(lock) is None and not lock.exists()  # looking creates nothing
    with exclusive(lock, "training run"):
        holder = held_by(lock)
        assert holder is not None and holder.startswith(f"dint pid {os.getpid()} on ")
        with pytest.raises(DintError) as caught, exclusive(lock, "training run"):
            pass
        message = str(caught.value)
        assert message.startswith(f"{lock}: held by dint pid {os.getpid()} on ")
        assert message.endswith("(the training run); one at a time, so this one stops")
    assert held_by(lock) is None and lock.exists()  # released, the file kept
    with exclusive(lock, "training run", remove_after=True):
        pass
    assert not lock.exists()


def test_a_lock_is_released_when_its_block_raises(tmp_path):
    lock = tmp_path / "s.lock"
    with pytest.raises(RuntimeError), exclusive(lock, "writer"):
        raise RuntimeError("failed")
    with exclusive(lock, "writer"):  # free again
        assert held_by(lock) is not None


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    lock = tmp_path / "s.lock"
    lock.symlink_to(target)
    with pytest.raises(DintError, match="s.lock: exists and is not a lock dint made"), exclusive(lock, "writer"):
        pass
    assert target.read_text() == "keep me" and lock.is_symlink()


# --- What dint reads -------------------------------------------------------------------------


def test_check_input_accepts_files_and_folders_and_refuses_the_rest(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    check_input(tmp_path / "f.png")
    check_input(tmp_path)
    with pytest.raises(DintError, match=r"missing.png: input not found$"):
        check_input(tmp_path / "missing.png")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DintError, match="pipe: is a named pipe, not a file or folder"):
        check_input(tmp_path / "pipe", "config file")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DintError, match=r"loop: cannot read the config file \(Too many levels of symbolic links\)"):
        check_input(tmp_path / "loop", "config file")


def test_names_print_on_one_line():
    name = Path("/data/a\nb\x1b[31m\tc é.png")
    assert shown(name) == "/data/a\\nb\\x1b[31m\\tc é.png"
    assert "\n" not in shown(name) and shown("plain/name.png") == "plain/name.png"


def test_is_dint_store_reads_the_attributes_only(tmp_path):
    def group(name: str, text: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "zarr.json").write_text(text)
        return folder

    store = group("dint.zarr", json.dumps({"zarr_format": 3, "attributes": {"dint": {"modality": "image"}}}))
    assert is_dint_store(store)
    assert not is_dint_store(group("other.zarr", json.dumps({"zarr_format": 3, "attributes": {}})))
    assert not is_dint_store(group("odd.zarr", json.dumps({"attributes": {"dint": "a string"}})))
    assert not is_dint_store(group("broken.zarr", "{not json"))
    assert not is_dint_store(group("list.zarr", "[]"))
    assert not is_dint_store(tmp_path / "missing.zarr")
    (tmp_path / "link.zarr").symlink_to(store)
    assert not is_dint_store(tmp_path / "link.zarr")


def test_is_dint_png_reads_the_software_text(tmp_path):
    from PIL import Image, PngImagePlugin

    mine, theirs = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    mine.add_text("Software", "dint")
    theirs.add_text("Software", "GIMP")
    Image.new("L", (4, 4)).save(tmp_path / "mine.png", pnginfo=mine)
    Image.new("L", (4, 4)).save(tmp_path / "theirs.png", pnginfo=theirs)
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    assert is_dint_png(tmp_path / "mine.png")
    assert not any(is_dint_png(tmp_path / n) for n in ("theirs.png", "plain.png", "fake.png", "missing.png"))


def test_sha256_of_a_folder_covers_names_and_contents(tmp_path):
    folder = tmp_path / "src.zarr"
    (folder / "c").mkdir(parents=True)
    (folder / "zarr.json").write_text("{}")
    (folder / "c" / "0").write_bytes(b"\x01\x02")
    expected = hashlib.sha256(b"c/0\0\x01\x02zarr.json\0{}").hexdigest()
    assert sha256_of(folder) == expected
    (folder / "c" / "0").rename(folder / "c" / "1")  # same bytes, another name
    assert sha256_of(folder) != expected
