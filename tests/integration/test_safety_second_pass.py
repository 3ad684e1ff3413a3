"""Safety, second pass: what only a whole process shows (rules 3 and 6).

A full disk during training and on resume is one line naming the path (no traceback, none
from TensorBoard's writer thread either), and what was written before is kept; a store with
a named pipe or a link in it is refused at once by `dint info`, training and `dint-shard
--overwrite`; names are printed escaped on stdout too, and an error about such a name is not
cut at its newline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import NO_VIEWS_TOML, run_cli, smooth_image, write_png

HOSTILE = "a\nb\x1b[31m\u202e"  # a newline, an escape sequence, a right-to-left override
HOSTILE_SHOWN = "a\\nb\\x1b[31m\\u202e"


def one_line(result, says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr


def write_config(path: Path, store: Path, run_dir: Path, extra: str = "") -> Path:
    path.write_text(
        f'[run]\ndir = {json.dumps(str(run_dir))}\ndevice = "cpu"\n[data]\nstore = {json.dumps(str(store))}\n'
        "[model]\nwidth = 16\nhidden_layers = 1\n[train]\nsteps = 20\n[eval]\nevery = 10\n"
        "reconstruction = false\n[checkpoint]\nevery = 10\n" + NO_VIEWS_TOML + extra
    )
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 40 KiB tmpfs: a run's first checkpoint does not fit."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], capture_output=True)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_during_training_and_on_resume_is_one_line_naming_the_path(tmp_path, small_disk, image_store):
    # Training: the first checkpoint does not fit.
    run = small_disk / "run"
    config = write_config(tmp_path / "c.toml", image_store, run)
    one_line(
        run_cli("dint.train", "--config", config),
        f"{run / 'checkpoints'}: the checkpoint of step 10 would write",  # refused before writing a byte
    )
    # Resume, with TensorBoard on: the disk filled up after the run had checkpointed.
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)
    shutil.rmtree(run)
    tensorboard = "tensorboard = true\n"
    config = write_config(tmp_path / "c.toml", image_store, run, "")
    config.write_text(config.read_text().replace("tensorboard = false\n", tensorboard))
    assert run_cli("dint.train", "--config", config).returncode == 0
    before = {name: (run / name).read_bytes() for name in ("config.toml", "metrics.jsonl", "summary.json")}
    fill(small_disk)
    result = run_cli("dint.train", "--config", config, "--train.steps", "40")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    full = ": No space left on device" in errors[0] or "is free on the disk of" in errors[0]
    assert len(errors) == 1 and full and str(run) in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr, result.stderr
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing already written is lost


def test_a_store_holding_a_pipe_or_a_link_is_refused_at_once(tmp_path, image_store):
    other = shutil.copytree(image_store, tmp_path / "other.zarr")
    chunk = image_store / "values" / "c" / "0" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(other / "values" / "c" / "1" / "1" / "0")
    result = run_cli("dint.commands.cli", "info", image_store, "--verify", timeout=60)
    one_line(result, f"{chunk}: is a symbolic link")
    assert "chunks read" not in result.stderr
    chunk.unlink()
    os.mkfifo(image_store / "zarr.json.pipe")
    (image_store / "zarr.json").rename(image_store / "zarr.json.kept")
    (image_store / "zarr.json.pipe").rename(image_store / "zarr.json")
    says = f"{image_store / 'zarr.json'}: is a named pipe"
    one_line(run_cli("dint.commands.cli", "info", image_store, timeout=60), says)
    one_line(
        run_cli("dint.train", "--config", write_config(tmp_path / "c.toml", image_store, tmp_path / "run"), timeout=60),
        says,
    )
    assert not (tmp_path / "run").exists()
    one_line(
        run_cli("dint.commands.cli", "shard", tmp_path / "smooth.png", image_store, "--overwrite", timeout=60),
        "exists and is not a dint store",
    )
    assert (image_store / "zarr.json").is_fifo()


def test_names_are_escaped_on_stdout_and_not_cut_in_errors(tmp_path):
    png = write_png(tmp_path / "smooth.png", smooth_image(24, 20))
    store = tmp_path / f"{HOSTILE}.zarr"
    result = run_cli("dint.commands.cli", "shard", png, store)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(f"{tmp_path}/{HOSTILE_SHOWN}.zarr: image "), (
        result.stdout
    )
    info = run_cli("dint.commands.cli", "info", store).stdout.splitlines()
    assert info[0] == f"store           {tmp_path}/{HOSTILE_SHOWN}.zarr", info
    run = tmp_path / f"run{HOSTILE}"
    result = run_cli("dint.train", "--config", write_config(tmp_path / "c.toml", store, run), "--train.steps", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"dint.train: outputs in {tmp_path}/run{HOSTILE_SHOWN}/: "), (
        result.stdout
    )
    assert all(line.isprintable() for line in result.stdout.splitlines())
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not a PNG")
    one_line(
        run_cli("dint.commands.cli", "shard", bad, tmp_path / "out.zarr"),
        f"dint-shard: error: {tmp_path}/bad\\nname.png: not a readable image (",
    )
    assert json.loads(run_cli("dint.commands.cli", "info", store, "--json").stdout)["modality"] == "image"
