"""Rule 5, as the processes see it: every way a run ends leaves nothing half-made, and every
run can resume (docs/fault-tolerance-and-safety.md, the rows of rule 5).

- a second Ctrl-C or SIGTERM 0.05-0.3 s after the first, during dint-shard: the cleanup of the
  first goes on, and the line says nothing was left only when nothing was;
- a training killed while saving a checkpoint: the next run removes checkpoints/.step-N.tmp-*
  (and the other temporaries of dead dint processes in its run folder);
- a resume whose newest checkpoint is malformed and whose metrics.jsonl is damaged: warnings,
  and the resume goes on from the checkpoint before;
- a resume asked for fewer steps than were trained: it says so, and what the model is.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import NO_VIEWS_ARGS, REPO, _env, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.core.files import new_token

STOPS = [signal.SIGTERM, signal.SIGINT]


@pytest.fixture(scope="module")
def big_array(tmp_path_factory):
    """A volume large enough that sharding it takes a while (1,000 chunks)."""
    path = tmp_path_factory.mktemp("big") / "big.npy"
    np.save(path, np.random.default_rng(0).random((160, 160, 160), dtype=np.float32))
    return path


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.sampled_from(STOPS), second=st.sampled_from(STOPS), delay=st.floats(0.05, 0.3))
def test_a_second_stop_signal_during_sharding_still_leaves_nothing(tmp_path_factory, big_array, first, second, delay):
    folder = tmp_path_factory.mktemp("shard")
    dest = folder / "big.zarr"
    process = subprocess.Popen(
        [sys.executable, "-m", "dint.commands.cli", "shard", str(big_array), str(dest), "--chunk", "16"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(folder.glob(".big.tmp-*.zarr")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "dint-shard ended before it could be stopped"
    process.send_signal(first)
    time.sleep(delay)
    process.send_signal(second)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (143 if first == signal.SIGTERM else 130), stderr
    assert "Traceback" not in stderr
    assert stderr.strip().endswith("nothing half-written was left"), stderr
    assert list(folder.iterdir()) == [], [p.name for p in folder.iterdir()]


def train_args(store, run_dir, *more: str) -> list[str]:
    return [
        "dint.train",
        "--data.store",
        str(store),
        "--run.dir",
        str(run_dir),
        "--run.device",
        "cpu",
        "--model.width",
        "8",
        "--model.hidden_layers",
        "1",
        "--checkpoint.every",
        "10",
        "--eval.reconstruction",
        "false",
        *NO_VIEWS_ARGS,
        *more,
    ]


def test_temporaries_of_a_training_killed_while_saving_go_with_the_next_run(tmp_path, image_store):
    run_dir = tmp_path / "run"
    killed = run_cli(
        *train_args(image_store, run_dir, "--train.steps", "20"), extra_env={"DINT_FAULT": "save-crash@20"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((run_dir / "checkpoints").glob(".step-00000020.tmp-*")), "the kill left no staging folder"
    # and what a run killed during its final reconstruction left (a preview under its staging name)
    host, _, random = new_token().split(".")
    (run_dir / f".reconstruction.tmp-{host}.{_dead_pid()}.{random}.png").write_bytes(b"half a PNG")
    resumed = run_cli(*train_args(image_store, run_dir, "--train.steps", "20"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000010" in resumed.stderr
    hidden = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob(".*"))
    assert hidden == [".dint", ".dint-lock"], hidden


def _dead_pid() -> int:
    return int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, sharded_smooth_image):
    """A run of 20 steps: checkpoints of steps 10 and 20, metrics lines of steps 10 and 20."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli(*train_args(sharded_smooth_image, run_dir, "--train.steps", "20"))
    assert result.returncode == 0, result.stderr
    return run_dir


def test_a_damaged_newest_checkpoint_and_metrics_resume_from_the_one_before(
    tmp_path, trained_run, sharded_smooth_image
):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    newest = run_dir / "checkpoints" / "step-00000020"
    (newest / "manifest.json").write_text(json.dumps([{"files": {"state.pt": "0" * 64}}]))  # a list
    metrics = run_dir / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + "[1, 2]\n" + "\0" * 100 + '\n{"step": 21, "lo')
    resumed = run_cli(*train_args(sharded_smooth_image, run_dir, "--train.steps", "30"))
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 3, resumed.stderr
    assert f"skipping checkpoint {newest}: manifest.json is malformed" in warnings[0]
    assert f"{metrics}: dropped 3 damaged line(s) (3, 4, 5)" in warnings[1]
    assert f"{newest} was not a complete checkpoint: kept as step-00000020.damaged-" in warnings[2]  # step 20 again
    assert "resuming from" in resumed.stderr and "(step 10)" in resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_a_resume_asked_for_fewer_steps_than_trained_says_so(tmp_path, trained_run, sharded_smooth_image):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    resumed = run_cli(*train_args(sharded_smooth_image, run_dir, "--train.steps", "5"))
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "dint.train: already trained 20 steps, more than train.steps = 5: nothing to train; the model is that "
        "of step 20"
    ) in resumed.stderr
    assert " after 20 steps on 1 rank(s)" in resumed.stdout and "after 5 steps" not in resumed.stdout
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20
