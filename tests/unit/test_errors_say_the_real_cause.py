"""Errors say the real cause, in one line, exit code 2 (safety, second pass, rule 6), in-process.

Store attributes are checked against each other, not only one by one; run folders read back
by `dint report` and `dint scale --from` are checked value by value; `dint bench`'s teacher
strings and every number option are checked before anything trains or is written; a device
or an environment variable that cannot be used is named as the cause; a run folder given
as a link says so; a write that fails on a full disk names its file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from conftest import NO_VIEWS_ARGS, smooth_image, write_png
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dint.commands.bench import relative_settings
from dint.commands.cli import app
from dint.commands.report import compare_runs
from dint.commands.scale import record_of
from dint.commands.train import main as train_main
from dint.core.errors import DintError
from dint.core.files import check_claimable
from dint.core.resources import DECODE_LIMIT_ENV, decode_limit
from dint.data.readers import read_source
from dint.data.sharding import CoordinateMap
from dint.data.store import SignalInfo
from dint.fields.quality import inside_threshold
from dint.fields.render import _previews, physical_transform, plan_grid
from dint.observe.maps import SignalView
from dint.train.checkpoint import save_tensors

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(result, says: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a finished run folder, its config): a tiny real training."""
    root = tmp_path_factory.mktemp("run")
    png = write_png(root / "smooth.png", smooth_image(24, 20))
    assert CliRunner().invoke(app, ["shard", str(png), str(root / "S.zarr"), "--chunk", "8"]).exit_code == 0
    config = root / "c.toml"
    config.write_text(
        f'[run]\ndir = "{root / "run"}"\ndevice = "cpu"\n[data]\nstore = "{root / "S.zarr"}"\n'
        "[model]\nwidth = 8\nhidden_layers = 1\n[train]\nsteps = 4\n[eval]\nevery = 2\n"
        "reconstruction = false\n[metrics]\nlog_every = 1\n"
    )
    assert train_main(["--config", str(config), *NO_VIEWS_ARGS]) == 0
    return root / "run", config


# --- Store attributes that disagree ------------------------------------------------------------------

MODALITIES = st.sampled_from(["audio", "image", "volume", "shape"])
EXTRA_VALUES = st.one_of(
    st.none(),
    st.integers(-3, 50000),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 6), max_size=3),
    st.lists(st.lists(st.integers(-2, 6), max_size=3), max_size=3),
)


@st.composite
def store_attributes(draw) -> dict:
    shape = draw(st.lists(st.integers(2, 6), min_size=1, max_size=4))
    extra = {
        key: draw(EXTRA_VALUES) for key in draw(st.sets(st.sampled_from(["sample_rate", "field", "crop", "spacing"])))
    }
    return {
        "format_version": 1,
        "modality": draw(MODALITIES),
        "shape": shape,
        "channels": draw(st.integers(1, 4)),
        "dtype": draw(st.sampled_from(["uint8", "uint16", "float32", "bool", "int16", "complex64", "U4", "nope"])),
        "value_range": [0, 255],
        "domain": [[-1, 1]] * len(shape),
        "chunks": [4] * len(shape),
        "source": {"name": "x", "sha256": ""},
        "extra": {key: value for key, value in extra.items() if value is not None},
    }


@HYPOTHESIS
@given(attrs=store_attributes())
@example(
    attrs={
        "format_version": 1,
        "modality": "volume",
        "shape": [48, 40],
        "channels": 1,
        "dtype": "uint8",
        "value_range": [0, 255],
        "domain": [[-1, 1]] * 2,
        "chunks": [16, 16],
        "source": {"name": "x", "sha256": ""},
        "extra": {},
    }
)
def test_attributes_are_refused_when_they_disagree_or_serve_every_use_of_the_store(attrs, tmp_path):
    """Whatever from_attrs accepts, what reads the attributes later (pictures, previews, the
    render grid, coordinates) takes without an error; what it refuses is one line naming a key."""
    try:
        info = SignalInfo.from_attrs(attrs, "S.zarr")
    except DintError as e:
        assert str(e).startswith("S.zarr: store attribute") and "\n" not in str(e), str(e)
        return
    values = np.zeros((*info.shape, info.channels), dtype=info.dtype)
    SignalView(info, 16)
    CoordinateMap(info, torch.device("cpu")).exact(np.zeros((1, info.ndim)))
    physical_transform(info, plan_grid(info))
    inside_threshold(info)
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        _previews(values, info, Path(scratch) / "p.zarr")


def test_a_volume_said_of_a_2d_array_is_refused_naming_both_attributes():
    attrs = {
        "format_version": 1,
        "modality": "volume",
        "shape": [48, 40],
        "channels": 1,
        "dtype": "uint8",
        "value_range": [0, 255],
        "domain": [[-1, 1]] * 2,
        "chunks": [16, 16],
        "source": {"name": "x", "sha256": ""},
    }
    with pytest.raises(
        DintError,
        match=r"^S.zarr: store attributes disagree: modality 'volume' has 3 axes, "
        r"'shape' = \[48, 40\] has 2$",
    ):
        SignalInfo.from_attrs(attrs, "S.zarr")


# --- Run folders read back: dint report, dint scale --from ---------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
TOML_VALUES = st.sampled_from(['"x"', "1.5", "[1]", "true", "{ a = 1 }", "-3", "0", '""', "nan"])


@st.composite
def damage(draw, summary_keys: list[str], line_keys: list[str]) -> tuple[str, object, object]:
    """(file, key or None for the whole content, new value or a "delete" marker)."""
    file = draw(st.sampled_from(["summary.json", "metrics.jsonl", "config.toml"]))
    if file == "config.toml":
        key = draw(st.sampled_from(["teacher.strategy", "train.steps", "teacher", None]))
        return file, key, draw(TOML_VALUES) if key else draw(st.sampled_from(["[teacher\n", "x = ", "garbage"]))
    keys = summary_keys if file == "summary.json" else line_keys
    key = draw(st.sampled_from([*keys, None]))
    return file, key, draw(st.one_of(st.just("delete"), JSON))


def damaged_copy(run: Path, dest: Path, file: str, key: str | None, value) -> Path:
    shutil.copytree(run, dest)
    path = dest / file
    if file == "config.toml":
        if key is None:
            path.write_text(value)
            return dest
        section, _, name = key.partition(".")
        rows = [f"{section} = {value}"] if not name else []  # the whole section made a single value
        for title, values in tomllib.loads(path.read_text()).items():
            if title != section or name:
                rows.append(f"[{title}]")
                rows += [
                    f"{k} = {value if (title, k) == (section, name) else json.dumps(v)}" for k, v in values.items()
                ]
        path.write_text("\n".join(rows) + "\n")
        return dest
    if file == "summary.json":
        data = json.loads(path.read_text())
        data = value if key is None else data
        if key is not None:
            data.pop(key) if value == "delete" else data.update({key: value})
        path.write_text(json.dumps(data))
        return dest
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines[-2:]:
        if key is None:
            continue
        line.pop(key, None) if value == "delete" else line.update({key: value})
    rows = [json.dumps(value)] if key is None else [json.dumps(line) for line in lines]
    path.write_text("\n".join(rows) + "\n")
    return dest


SUMMARY_KEYS = [
    "final_psnr",
    "steps",
    "train_seconds",
    "points",
    "points_trained",
    "params",
    "world_size",
    "select_bytes_per_rank",
    "score_seconds",
    "device",
]
LINE_KEYS = ["step", "train_seconds", "psnr", "imbalance", "selected_per_rank", "select_seconds"]


@HYPOTHESIS
@given(change=damage(SUMMARY_KEYS, LINE_KEYS))
@example(change=("summary.json", None, [1, 2]))
@example(change=("summary.json", None, 3))
@example(change=("summary.json", "final_psnr", "high"))
@example(change=("metrics.jsonl", "train_seconds", "delete"))
@example(change=("config.toml", "teacher", '"x"'))
@example(change=("summary.json", "train_seconds", 0))
@example(change=("summary.json", "steps", "delete"))
def test_damaged_run_folders_are_one_line_for_report_and_scale(finished_run, tmp_path, change):
    run, _ = finished_run
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        copy = damaged_copy(run, Path(scratch) / "run", *change)
        for read in (lambda: compare_runs([copy], None, None), lambda: record_of(copy, 1, 1, None)):
            try:
                read()
            except DintError as e:
                assert "\n" not in str(e) and str(copy) in str(e), str(e)


def test_report_and_scale_read_a_sound_run(finished_run):
    run, _ = finished_run
    assert "| finished |" in compare_runs([run], None, None)
    assert record_of(run, 1, 1, None)["steps"] == 4


# --- Options and settings checked before anything runs -------------------------------------------------

FACTORS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "1e400", "-1e400", "inf", "", "abc", "1e308", "2", "0.5", "0"]),
)


@HYPOTHESIS
@given(factor=FACTORS, key=st.sampled_from(["train.steps", "train.lr", "model.width"]))
@example(factor="nan", key="train.steps")
@example(factor="1e400", key="train.steps")
def test_relative_teacher_settings_are_finite_numbers_or_one_line(finished_run, factor, key):
    _, config = finished_run
    try:
        resolved = relative_settings(str(config), {}, {key: f"x{factor}"})
    except DintError as e:
        assert str(e).startswith(f"{key}=x{factor}: "), str(e)
        return
    assert math.isfinite(float(resolved[key]))


@pytest.mark.parametrize("teachers", ["default:train.steps=xnan", "default:train.steps=x1e400", "full,int:train.lr=x0"])
def test_bench_checks_every_teacher_before_training_and_leaves_no_folder(finished_run, tmp_path, teachers):
    _, config = finished_run
    result = CliRunner().invoke(
        app, ["bench", "--config", str(config), "--teachers", teachers, "--out", str(tmp_path / "bench")]
    )
    one_line(result, f"--teachers {teachers.split(',')[-1]}: ")
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["scale", "--timeout", "nan", "--ranks", "1"], "--timeout nan: must be a positive, finite number of seconds"),
        (["scale", "--timeout", "inf", "--ranks", "1"], "--timeout inf: must be a positive, finite number of seconds"),
        (["scale", "--target-psnr", "nan", "--ranks", "1"], "--target-psnr nan: must be a finite number of dB"),
        (
            ["shard", "builtin:cameraman", "{tmp}/s.zarr", "--scheduler-timeout", "nan"],
            "--scheduler-timeout nan: must be a positive, finite number of seconds",
        ),
        (["report", "{run}", "--target", "nan"], "--target nan: must be a finite number"),
        (["bench", "--from", "{run}", "--margin", "nan"], "--margin nan: must be a finite number of dB"),
    ],
)
def test_number_options_that_are_nan_or_infinite_are_one_line(finished_run, tmp_path, args, says):
    run, config = finished_run
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    if args[0] in ("scale", "bench"):
        args += ["--config", str(config), "--out", str(tmp_path / "out")]
    one_line(CliRunner().invoke(app, args), says)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA uses it")
def test_cuda_asked_for_on_a_machine_without_it_is_one_line(finished_run, tmp_path, capsys):
    run, config = finished_run
    assert train_main(["--config", str(config), "--run.dir", str(tmp_path / "new"), "--run.device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device 'cuda'" in err[0] and "without CUDA" in err[0], err
    assert not (tmp_path / "new").exists()
    one_line(
        CliRunner().invoke(app, ["render", str(run), "--device", "cuda", "--out", str(tmp_path / "r.zarr")]),
        "device 'cuda'",
    )
    assert list(tmp_path.iterdir()) == []


@HYPOTHESIS
@given(
    text=st.one_of(
        st.sampled_from(["1e400", "nan", "inf", "-1", "0", "abc", "1e9", "16e9", " 5 "]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
    )
)
def test_the_decode_limit_variable_is_a_positive_size_or_blamed(text):
    before = os.environ.get(DECODE_LIMIT_ENV)
    os.environ[DECODE_LIMIT_ENV] = text
    try:
        limit = decode_limit()
        assert limit > 0 and isinstance(limit, int)
    except DintError as e:
        assert str(e).startswith(f"{DECODE_LIMIT_ENV}={text!r} (environment variable): "), str(e)
    finally:
        os.environ.pop(DECODE_LIMIT_ENV) if before is None else os.environ.update({DECODE_LIMIT_ENV: before})


def test_a_bad_decode_limit_is_blamed_on_the_variable_not_the_image(tmp_path, monkeypatch):
    png = write_png(tmp_path / "fine.png", smooth_image(8, 8))
    monkeypatch.setenv(DECODE_LIMIT_ENV, "1e400")
    with pytest.raises(DintError, match=f"^{DECODE_LIMIT_ENV}='1e400' \\(environment variable\\)"):
        read_source(png)


def test_a_run_folder_given_as_a_link_says_it_is_a_link(finished_run, tmp_path, capsys):
    _, config = finished_run
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(DintError, match="link: is a symbolic link \\(to .*real\\), not a folder"):
        check_claimable(tmp_path / "link", "a training run")
    assert train_main(["--config", str(config), "--run.dir", str(tmp_path / "link"), "--check"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert list((tmp_path / "real").iterdir()) == []


def test_torch_saving_onto_a_full_disk_raises_the_os_error_naming_the_file():
    """torch's writer says `enforce fail at inline_container.cc` for a full disk; /dev/full is one."""
    with pytest.raises(OSError) as full:
        save_tensors({"weights": torch.zeros(100_000)}, Path("/dev/full"))
    assert full.value.errno == 28 and full.value.filename == "/dev/full"
