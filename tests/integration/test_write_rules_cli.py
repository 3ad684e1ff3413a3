"""Safety rules 1 and 2 as the commands show them (real processes): a run folder's links are
never written through, a fresh run's checkpoints are its own, and a store or run folder in use
by a running training is neither replaced nor written into.

The same rules, case by case and with generated inputs, are tested in-process in
tests/unit/test_write_rules.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import NO_VIEWS_ARGS, REPO, run_cli


def train_args(store: Path, run_dir: Path, *extra) -> list:
    return [
        "dint.train",
        "--data.store",
        store,
        "--run.dir",
        run_dir,
        "--run.device",
        "cpu",
        "--model.width",
        "8",
        "--model.hidden_layers",
        "1",
        "--eval.reconstruction",
        "false",
        *NO_VIEWS_ARGS,
        *extra,
    ]


def one_line(result, says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_links_planted_in_a_run_folder_are_never_written_through(tmp_path, image_store):
    run_dir = tmp_path / "run"
    assert run_cli(*train_args(image_store, run_dir, "--train.steps", "2")).returncode == 0
    outside = {}
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        outside[name] = tmp_path / f"theirs-{name}"
        outside[name].write_text(f"the user's {name}")
        (run_dir / name).unlink()
        (run_dir / name).symlink_to(outside[name])
    result = run_cli(*train_args(image_store, run_dir, "--train.steps", "4"))
    one_line(result, "in a folder dint writes; dint makes no links and writes through none")
    assert all(path.read_text() == f"the user's {name}" for name, path in outside.items())


def test_a_fresh_run_keeps_its_checkpoints_and_resume_continues_it(tmp_path, image_store):
    """Run A (6 steps, every 3, keep 1), then run B from its start in the same folder (4 steps,
    every 2, keep 1): B keeps its step 4 (A's step 6 sorts newer, and is kept too), and `resume
    auto` continues B."""
    run_dir = tmp_path / "run"
    a = run_cli(
        *train_args(image_store, run_dir, "--train.steps", "6", "--checkpoint.every", "3", "--checkpoint.keep", "1")
    )
    assert a.returncode == 0, a.stderr
    b = run_cli(
        *train_args(
            image_store,
            run_dir,
            "--train.steps",
            "4",
            "--checkpoint.every",
            "2",
            "--checkpoint.keep",
            "1",
            "--checkpoint.resume",
            "never",
        )
    )
    assert b.returncode == 0, b.stderr
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000004", "step-00000006"]
    run_of = {p.name: json.loads((p / "manifest.json").read_text())["run"] for p in folder.iterdir()}
    assert run_of["step-00000004"] != run_of["step-00000006"]
    assert json.loads((run_dir / ".dint").read_text())["run"] == run_of["step-00000004"]
    resumed = run_cli(
        *train_args(image_store, run_dir, "--train.steps", "8", "--checkpoint.every", "2", "--checkpoint.keep", "1")
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000004 (step 4)" in resumed.stderr, resumed.stderr
    names = sorted(p.name for p in folder.iterdir())
    earlier = [name for name in names if name.startswith("step-00000006.earlier-")]  # A's, set aside, not deleted
    assert len(earlier) == 1 and [n for n in names if n not in earlier] == ["step-00000008"], names


def test_a_store_and_run_folder_in_use_are_neither_replaced_nor_written_into(tmp_path, image_store):
    """While a training reads its store and holds its run folder: dint-shard --overwrite of the
    store, dint render into the run folder, and dint render over the store all stop in one line,
    writing nothing; the training goes on until stopped."""
    other = Path(shutil.copytree(image_store, tmp_path / "other.zarr"))
    finished = tmp_path / "finished"  # trained on another store: live.zarr is no input of its renders
    assert run_cli(*train_args(other, finished, "--train.steps", "2")).returncode == 0
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        *map(str, train_args(image_store, run_dir, "--train.steps", "1000000", "--metrics.log_every", "1000")),
    ]
    training = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists():
            assert training.poll() is None, training.communicate()
            time.sleep(0.1)
        before = {p: p.read_bytes() for p in image_store.rglob("*") if p.is_file()}
        shard = run_cli("dint.commands.cli", "shard", tmp_path / "smooth.png", image_store, "--overwrite")
        one_line(shard, "(the training run reading it); one at a time, so this one stops")
        into_run = run_cli("dint.commands.cli", "render", finished, "--out", run_dir / "reconstruction.zarr")
        one_line(into_run, ".dint-lock: held by dint pid ")
        assert "(the training run in this folder)" in into_run.stderr
        over_store = run_cli("dint.commands.cli", "render", finished, "--out", image_store)
        one_line(over_store, "(the training run reading it)")
        assert {p: p.read_bytes() for p in image_store.rglob("*") if p.is_file()} == before
        assert not (run_dir / "reconstruction.zarr").exists() and training.poll() is None
    finally:
        training.send_signal(signal.SIGTERM)
        _, stderr = training.communicate(timeout=120)
    assert training.returncode == 143, stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the store's lock went too
