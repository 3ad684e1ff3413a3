"""Hostile stores: every damaged or contradictory store is one line naming it, exit code 2.

The store S.zarr is a 48x40 grey image chunked 16x16 (3x3 chunks). What `python -m dint.train
--config C` prints on stderr, exit code 2, before any training (no run folder is made) but
in the two mid-run rows; `dint info S.zarr` prints the same message after "dint info: error: "
where it says so.

| Bad input | What the user sees |
|---|---|
| store path does not exist | `dint.train: error: S.zarr: store not found` (also `dint info`) |
| a folder that is not a zarr group | `dint.train: error: S.zarr: not a zarr v3 group (no zarr.json)` (also `dint info`) |
| `zarr.json` is not valid JSON | `dint.train: error: S.zarr/zarr.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 19 (char 18)); the store S.zarr is damaged` (also `dint info`) |
| `values/zarr.json` is not valid JSON | `dint.train: error: S.zarr/values/zarr.json: not valid JSON (Expecting value: line 1 column 1 (char 0)); the store S.zarr is damaged` (also `dint info`) |
| a zarr group without the `dint` attribute | `dint.train: error: S.zarr: not a dint store (group attribute 'dint' is missing; make one with dint-shard)` (also `dint info`) |
| the `dint` attribute is not an object | `dint.train: error: S.zarr: store attribute 'dint' = "image" must be a JSON object` (also `dint info`) |
| written by a newer dint (`format_version` 2) | `dint.train: error: S.zarr: store format version 2 is newer than this dint reads (1); upgrade dint` (also `dint info`) |
| a modality dint does not know | `dint.train: error: S.zarr: unknown modality 'hologram' (known: audio, image, volume, shape)` (also `dint info`) |
| an attribute is missing | `dint.train: error: S.zarr: store attribute 'value_range' is missing` (also `dint info`) |
| `value_range` is not two numbers | `dint.train: error: S.zarr: store attribute 'value_range' = [0] is malformed (expected [lo, hi], two finite numbers)` (also `dint info`) |
| `value_range` with lo >= hi | `dint.train: error: S.zarr: store attribute 'value_range' = [255, 0] is empty (needs lo < hi)` (also `dint info`) |
| a `domain` interval with lo >= hi | `dint.train: error: S.zarr: store attribute 'domain' = [[1, -1], [-1, 1]] is malformed at axis 0 (expected [lo, hi], finite numbers with lo < hi)` (also `dint info`) |
| `chunks` not positive | `dint.train: error: S.zarr: store attribute 'chunks' = [0, 16] is malformed (expected positive integers)` (also `dint info`) |
| `channels` contradicts the array | `dint.train: error: S.zarr: array 'values' has shape (48, 40, 1), attributes say (48, 40, 3)` (also `dint info`) |
| `dtype` contradicts the array | `dint.train: error: S.zarr: array 'values' has dtype uint8, attributes say uint16` (also `dint info`) |
| a chunk file is missing | `dint.train: error: S.zarr: chunk (1, 2) at (16, 32) (values/c/1/2/0) is missing (1 of 9 chunk files missing; the store is damaged: make it again with dint-shard)` (also `dint info`) |
| a chunk file is truncated (or otherwise undecodable) | two warnings, then the error: `dint: warning: S.zarr: chunk (1, 1) at (16, 16) (values/c/1/1/0) cannot be read (Zstd decompression error: invalid input data); retrying in 0.5 s (try 2 of 3)`, the same with `retrying in 1 s (try 3 of 3)`, `dint.train: error: S.zarr: chunk (1, 1) at (16, 16) (values/c/1/1/0) cannot be read (Zstd decompression error: invalid input data); gave up after 3 tries` (`dint info` reads no chunk: no error) |
| a chunk with one byte flipped (caught by the zstd checksum every chunk now carries) | as above, for chunk (0, 0) at (0, 0) (values/c/0/0/0), with the reason `Zstd decompression error: b"Restored data doesn't match checksum"` |
| a chunk that fails mid-run (streaming), for good | the two warnings and the error above, after the steps before it were trained and logged; the run folder holds what was written so far |
| a chunk that fails mid-run, then reads again (a file system hiccup) | one warning per failed try (`... retrying in 0.5 s (try 2 of 3)`), then the run goes on |

Missing chunk files are found in stores whose `values` array says every chunk is stored
(attribute `{"dint": {"every_chunk_stored": true}}`, written by dint-shard from now on). A
store written before is still read as it was, a missing chunk as zeros (zarr left out chunks
of fill values).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import NO_VIEWS, run_cli, smooth_image, write_smooth_store

import dint.data.store
from dint.core.errors import DintError
from dint.data.store import FORMAT_VERSION, open_store, write_store

IMAGE = smooth_image(48, 40)
TRIES = dint.data.store.READ_TRIES


def make_store(dest: Path) -> Path:
    """S.zarr at `dest`: a 48x40 grey image chunked 16x16, written in this process."""
    return write_smooth_store(dest)


def edit_dint_attrs(store: Path, **changes) -> None:
    """Edit the "dint" attribute in zarr.json directly (no zarr checks in the way)."""
    meta = json.loads((store / "zarr.json").read_text())
    attrs = meta["attributes"]["dint"]
    for key, value in changes.items():
        if value is None:
            del attrs[key]
        else:
            attrs[key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


def set_dint_attribute(store: Path, value) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    if value is None:
        del meta["attributes"]["dint"]
    else:
        meta["attributes"]["dint"] = value
    (store / "zarr.json").write_text(json.dumps(meta))


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def not_a_zarr_group(store: Path) -> None:
    shutil.rmtree(store)
    store.mkdir()
    (store / "notes.txt").write_text("hello")


# (id, damage, the error after "dint.train: error: " ({S}: the store; {...}: library text),
#  the chunk a read failure names (warnings expected) or None, whether `dint info` sees it)
CASES = [
    ("not_found", lambda s: shutil.rmtree(s), "{S}: store not found", None, True),
    ("not_a_zarr_group", not_a_zarr_group, "{S}: not a zarr v3 group (no zarr.json)", None, True),
    (
        "zarr_json_not_json",
        lambda s: (s / "zarr.json").write_text('{"zarr_format": 3,'),
        "{S}/zarr.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 19 "
        "(char 18)); the store {S} is damaged",
        None,
        True,
    ),
    (
        "values_zarr_json_not_json",
        lambda s: (s / "values" / "zarr.json").write_text("garbage"),
        "{S}/values/zarr.json: not valid JSON (Expecting value: line 1 column 1 (char 0)); the store {S} is damaged",
        None,
        True,
    ),
    (
        "no_dint_attribute",
        lambda s: set_dint_attribute(s, None),
        "{S}: not a dint store (group attribute 'dint' is missing; make one with dint-shard)",
        None,
        True,
    ),
    (
        "dint_attribute_not_an_object",
        lambda s: set_dint_attribute(s, "image"),
        "{S}: store attribute 'dint' = \"image\" must be a JSON object",
        None,
        True,
    ),
    (
        "newer_format",
        lambda s: edit_dint_attrs(s, format_version=FORMAT_VERSION + 1),
        f"{{S}}: store format version {FORMAT_VERSION + 1} is newer than this dint reads ({FORMAT_VERSION}); "
        "upgrade dint",
        None,
        True,
    ),
    (
        "unknown_modality",
        lambda s: edit_dint_attrs(s, modality="hologram"),
        "{S}: unknown modality 'hologram' (known: audio, image, volume, shape)",
        None,
        True,
    ),
    (
        "attribute_missing",
        lambda s: edit_dint_attrs(s, value_range=None),
        "{S}: store attribute 'value_range' is missing",
        None,
        True,
    ),
    (
        "value_range_not_two_numbers",
        lambda s: edit_dint_attrs(s, value_range=[0]),
        "{S}: store attribute 'value_range' = [0] is malformed (expected [lo, hi], two finite numbers)",
        None,
        True,
    ),
    (
        "value_range_empty",
        lambda s: edit_dint_attrs(s, value_range=[255, 0]),
        "{S}: store attribute 'value_range' = [255, 0] is empty (needs lo < hi)",
        None,
        True,
    ),
    (
        "domain_lo_not_below_hi",
        lambda s: edit_dint_attrs(s, domain=[[1, -1], [-1, 1]]),
        "{S}: store attribute 'domain' = [[1, -1], [-1, 1]] is malformed at axis 0 (expected [lo, hi], finite "
        "numbers with lo < hi)",
        None,
        True,
    ),
    (
        "chunks_not_positive",
        lambda s: edit_dint_attrs(s, chunks=[0, 16]),
        "{S}: store attribute 'chunks' = [0, 16] is malformed (expected positive integers)",
        None,
        True,
    ),
    (
        "channels_contradict_the_array",
        lambda s: edit_dint_attrs(s, channels=3),
        "{S}: array 'values' has shape (48, 40, 1), attributes say (48, 40, 3)",
        None,
        True,
    ),
    (
        "dtype_contradicts_the_array",
        lambda s: edit_dint_attrs(s, dtype="uint16"),
        "{S}: array 'values' has dtype uint8, attributes say uint16",
        None,
        True,
    ),
    (
        "chunk_file_missing",
        lambda s: (s / "values" / "c" / "1" / "2" / "0").unlink(),
        "{S}: chunk (1, 2) at (16, 32) (values/c/1/2/0) is missing (1 of 9 chunk files missing; the store is "
        "damaged: make it again with dint-shard)",
        None,
        True,
    ),
    (
        "chunk_truncated",
        lambda s: truncate(s / "values" / "c" / "1" / "1" / "0"),
        f"{{S}}: chunk (1, 1) at (16, 16) (values/c/1/1/0) cannot be read (Zstd decompression error: {{...}}); "
        f"gave up after {TRIES} tries",
        "chunk (1, 1) at (16, 16) (values/c/1/1/0)",
        False,
    ),
    (
        "chunk_byte_flipped",
        lambda s: flip_a_byte(s / "values" / "c" / "0" / "0" / "0"),
        f"{{S}}: chunk (0, 0) at (0, 0) (values/c/0/0/0) cannot be read (Zstd decompression error: {{...}}); "
        f"gave up after {TRIES} tries",
        "chunk (0, 0) at (0, 0) (values/c/0/0/0)",
        False,
    ),
]


def line_pattern(template: str, store: Path) -> re.Pattern:
    parts = template.replace("{S}", str(store)).split("{...}")
    return re.compile(".+".join(map(re.escape, parts)))


def write_config(path: Path, store: Path, run_dir: Path, **sections) -> Path:
    config = {
        "run": {"dir": str(run_dir), "device": "cpu"},
        "data": {"store": str(store)},
        "model": {"width": 16, "hidden_layers": 2},
        "train": {"steps": 20},
        "eval": {"reconstruction": False},
        "metrics": {**NO_VIEWS, "log_every": 1},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in config.items()
        )
    )
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case's damaged store, run through `dint.train` and `dint info` (several at once)."""
    root = tmp_path_factory.mktemp("hostile")
    good = make_store(root / "good.zarr")
    jobs, cases = [], {}
    for case_id, damage, *_ in CASES:
        folder = root / case_id
        folder.mkdir()
        store = folder / "S.zarr"
        shutil.copytree(good, store)
        damage(store)
        config = write_config(folder / "c.toml", store, folder / "run")
        cases[case_id] = store
        jobs += [
            (case_id, "train", ("dint.train", "--config", config)),
            (case_id, "info", ("dint.commands.cli", "info", store)),
        ]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda job: run_cli(*job[2]), jobs))
    out = {case_id: {"store": store} for case_id, store in cases.items()}
    for (case_id, command, _), result in zip(jobs, results):
        out[case_id][command] = result
    return out


@pytest.mark.parametrize("case_id, template, chunk", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_train_refuses_the_store_with_one_line_naming_it(outcomes, case_id, template, chunk):
    outcome = outcomes[case_id]
    store, result = outcome["store"], outcome["train"]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("dint.train: error: ")]
    assert len(errors) == 1, result.stderr
    assert line_pattern("dint.train: error: " + template, store).fullmatch(errors[0]), errors[0]
    warnings = [line for line in lines if line not in errors]
    if chunk is None:
        assert warnings == []  # exactly one line
    else:  # a failed read is tried again: one warning per retry, naming the chunk
        assert len(warnings) == TRIES - 1, result.stderr
        for attempt, warning in enumerate(warnings, start=2):
            assert warning.startswith(f"dint: warning: {store}: {chunk} cannot be read (")
            assert warning.endswith(f"(try {attempt} of {TRIES})")
    assert not (store.parent / "run").exists()  # refused before any training


@pytest.mark.parametrize("case_id, template, sees", [(c[0], c[2], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_info_refuses_the_store_with_the_same_line(outcomes, case_id, template, sees):
    outcome = outcomes[case_id]
    store, result = outcome["store"], outcome["info"]
    if not sees:  # dint info reads no chunk
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert line_pattern("dint info: error: " + template, store).fullmatch(result.stderr.strip()), result.stderr


# ---------------------------------------------------------------------------------------------
# Reads that fail mid-run: retried, then fatal, naming the chunk


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "S.zarr")


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(dint.data.store, "READ_BACKOFF_S", 0.01)


class Flaky:
    """A zarr array whose reads raise `failures` times (an I/O error), then work."""

    def __init__(self, array, failures: int):
        self.array, self.failures = array, failures

    def __getitem__(self, index):
        if self.failures:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        return self.array[index]

    def __getattr__(self, name):
        return getattr(self.array, name)


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dint: warning: ")]


def test_a_read_failing_twice_is_retried_then_succeeds(store, quick_retries, capsys):
    opened = open_store(store)
    opened.values = Flaky(opened.values, failures=TRIES - 1)
    np.testing.assert_array_equal(opened.read_region((16, 32), (16, 8)), IMAGE[16:32, 32:40])
    warnings = warnings_in(capsys.readouterr().err)
    assert warnings == [
        f"dint: warning: {store}: chunk (1, 2) at (16, 32) (values/c/1/2/0) cannot be read ([Errno 5] Input/output "
        f"error); retrying in {0.01 * 2 ** (n - 2):g} s (try {n} of {TRIES})"
        for n in range(2, TRIES + 1)
    ]


def test_a_read_failing_every_time_names_the_chunk(store, quick_retries, capsys):
    opened = open_store(store)
    opened.values = Flaky(opened.values, failures=TRIES)
    with pytest.raises(DintError) as caught:
        opened.read_region((16, 32), (16, 8))
    assert str(caught.value) == (
        f"{store}: chunk (1, 2) at (16, 32) (values/c/1/2/0) cannot be read ([Errno 5] "
        f"Input/output error); gave up after {TRIES} tries"
    )
    assert len(warnings_in(capsys.readouterr().err)) == TRIES - 1


def test_a_read_over_several_chunks_names_the_failing_one(store, quick_retries, capsys):
    opened = open_store(store)
    truncate(store / "values" / "c" / "2" / "1" / "0")
    with pytest.raises(DintError, match=re.escape("chunk (2, 1) at (32, 16) (values/c/2/1/0) cannot be read")):
        opened.read_region((0, 0), (48, 40))
    assert opened.read_region((0, 0), (32, 40)).shape == (32, 40, 1)  # the other chunks still read


def stream_all(store: Path) -> np.ndarray:
    """Every value of the store read the way a streaming run does: a chunk group at a time,
    the next read in a background thread."""
    import torch

    from dint.data.sharding import ShardStream

    opened = open_store(store)
    stream = ShardStream(opened, list(range(9)), torch.device("cpu"), opened.info, group_bytes=1)
    assert len(stream) == 9  # one chunk per group
    image = np.zeros_like(IMAGE)
    for shard in stream:
        every = torch.arange(len(shard))
        rows, cols = shard.multi_index(every).T
        image[rows, cols] = shard.values[every].numpy()
    return image


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_streamed_chunk_failing_then_restored_is_read_after_retries(
    store, quick_retries, monkeypatch, capsys, damage
):
    chunk = store / "values" / "c" / "2" / "1" / "0"
    good = chunk.read_bytes()
    if damage == "garbage":
        chunk.write_bytes(os.urandom(len(good)))
    else:
        chunk.unlink()
    warned = []
    real_warn = dint.data.store.warn

    def warn(message):  # the file system recovers as the last retry is announced
        real_warn(message)
        warned.append(message)
        if len(warned) == TRIES - 1:
            chunk.write_bytes(good)

    monkeypatch.setattr(dint.data.store, "warn", warn)
    # open_store checks every chunk file at the start: the chunk fails after it, mid-run.
    monkeypatch.setattr(dint.data.store, "_check_chunk_files", lambda *args: None)
    np.testing.assert_array_equal(stream_all(store), IMAGE)
    warnings = warnings_in(capsys.readouterr().err)
    assert len(warnings) == TRIES - 1
    assert all(f"{store}: chunk (2, 1) at (32, 16) (values/c/2/1/0) cannot be read (" in w for w in warnings)
    if damage == "deleted":
        assert "(the chunk file is missing)" in warnings[0]


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_streamed_chunk_that_stays_damaged_fails_naming_it(store, quick_retries, monkeypatch, capsys, damage):
    chunk = store / "values" / "c" / "2" / "1" / "0"
    monkeypatch.setattr(dint.data.store, "_check_chunk_files", lambda *args: None)
    if damage == "garbage":
        chunk.write_bytes(os.urandom(len(chunk.read_bytes())))
    else:
        chunk.unlink()
    with pytest.raises(DintError) as caught:
        stream_all(store)
    reason = "the chunk file is missing" if damage == "deleted" else "Zstd decompression error: "
    assert str(caught.value).startswith(f"{store}: chunk (2, 1) at (32, 16) (values/c/2/1/0) cannot be read ({reason}")
    assert str(caught.value).endswith(f"gave up after {TRIES} tries")
    assert len(warnings_in(capsys.readouterr().err)) == TRIES - 1


def test_a_streaming_run_stops_mid_run_at_a_damaged_chunk(tmp_path, store):
    truncate(store / "values" / "c" / "2" / "2" / "0")  # the last chunk: read after 8 trained groups
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.toml",
        store,
        run_dir,
        data={"memory_budget": "800"},
        teacher={"strategy": "int", "minibatch": 256},
    )
    result = run_cli("dint.train", "--config", config)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    chunk = "chunk (2, 2) at (32, 32) (values/c/2/2/0)"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == TRIES, result.stderr
    assert all(line.startswith(f"dint: warning: {store}: {chunk} cannot be read (") for line in lines[:-1])
    assert lines[-1].startswith(f"dint.train: error: {store}: {chunk} cannot be read (Zstd decompression error")
    assert lines[-1].endswith(f"gave up after {TRIES} tries")
    # It failed mid-run: the steps on the chunk groups before it were trained and logged.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 5 and not (run_dir / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Writing stores every chunk; older stores still open


def test_write_store_stores_every_chunk_even_one_of_fill_values(tmp_path):
    image = IMAGE.copy()
    image[:16, :16] = 0  # chunk (0, 0) equals the fill value: zarr would leave it out by default
    info = open_store(make_store(tmp_path / "ref.zarr")).info
    dest = write_store(da.from_array(image), info, tmp_path / "zeros.zarr")
    assert (dest / "values" / "c" / "0" / "0" / "0").is_file()
    opened = open_store(dest)
    assert opened.values.nchunks_initialized == opened.values.nchunks == 9
    assert opened.verify() == 9


def test_verify_finds_a_damaged_chunk(store, quick_retries):
    truncate(store / "values" / "c" / "0" / "1" / "0")
    with pytest.raises(DintError, match=re.escape(f"{store}: chunk (0, 1) at (0, 16) (values/c/0/1/0) cannot be read")):
        open_store(store).verify()


def test_a_store_written_before_every_chunk_was_stored_reads_a_missing_chunk_as_zeros(store):
    meta_file = store / "values" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    assert meta["attributes"] == {"dint": {dint.data.store.EVERY_CHUNK_STORED: True}}
    meta["attributes"] = {}  # as write_store wrote it before
    meta_file.write_text(json.dumps(meta))
    (store / "values" / "c" / "1" / "2" / "0").unlink()
    opened = open_store(store)  # zarr left out chunks of fill values: a missing one may be zeros
    assert not opened.chunk_files
    assert not opened.read_region((16, 32), (16, 8)).any()
