"""Checkpoints, exact resume on any world size, elastic restarts, rollbacks, failed saves.

Faults are injected with DINT_FAULT (dint/train/faults.py): a rank SIGKILLs itself,
hangs, or the loss turns NaN at a given step; a save crashes or finds the disk full.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, torchrun
from test_train import write_config

STEPS = 30


def config_for(tmp_path: Path, store: Path, **sections) -> Path:
    sections.setdefault("train", {})
    sections["train"] = {"steps": STEPS, **sections["train"]}
    sections["metrics"] = {"log_every": 5, **sections.get("metrics", {})}
    sections.setdefault("eval", {"every": 10})
    sections.setdefault("model", {"width": 24, "hidden_layers": 2})
    return write_config(
        tmp_path / "c.toml",
        store,
        tmp_path / "unused",
        **sections,
        **({} if "checkpoint" in sections else {"checkpoint": {"every": 10}}),
    )


def train(config: Path, run_dir: Path, nproc: int = 2, fault: str | None = None, *args: str, restarts: int = 0):
    env = {"DINT_FAULT": fault} if fault else None
    launcher = ["--max-restarts", str(restarts)] if restarts else []
    return torchrun(
        nproc, *launcher, "-m", "dint.train", "--config", config, "--run.dir", run_dir, *args, extra_env=env
    )


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-rank run, and its config (INT, selections every few steps)."""
    from conftest import make_image_store

    folder = tmp_path_factory.mktemp("reference")
    store = make_image_store(folder)
    config = config_for(folder, store, teacher={"interval_schedule": "fixed", "interval": 3})
    result = train(config, folder / "run")
    assert result.returncode == 0, result.stderr
    return config, store, folder / "run"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, reference):
    """The reference run with rank 1 SIGKILLed at step 25 (no restarts): checkpoints 10 and 20."""
    config, _, _ = reference
    run_dir = tmp_path_factory.mktemp("crashed") / "run"
    result = train(config, run_dir, 2, "kill@25:1")
    assert result.returncode != 0 and not (run_dir / "summary.json").exists()
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-00000010", "step-00000020"]
    return run_dir


def test_stop_and_resume_gives_the_same_model(tmp_path, reference, crashed):
    config, _, uninterrupted = reference
    shutil.copytree(crashed, tmp_path / "run")
    resumed = train(config, tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000020" in resumed.stderr
    assert same_weights(uninterrupted, tmp_path / "run")  # bitwise: CPU operations are deterministic
    assert summary(tmp_path / "run")["final_psnr"] == summary(uninterrupted)["final_psnr"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, STEPS + 1, 5))  # no line twice, none lost


def test_sigkill_under_torchrun_restarts_and_finishes_the_same(tmp_path, reference):
    config, _, uninterrupted = reference
    result = train(config, tmp_path / "run", 2, "kill@25:1", restarts=1)
    assert result.returncode == 0, result.stderr
    assert same_weights(uninterrupted, tmp_path / "run")
    assert summary(tmp_path / "run")["final_psnr"] == summary(uninterrupted)["final_psnr"]


@pytest.mark.parametrize("nproc", [1, 3])
def test_a_two_rank_checkpoint_resumes_on_other_world_sizes(tmp_path, reference, crashed, nproc):
    config, _, uninterrupted = reference
    shutil.copytree(crashed, tmp_path / "run")
    resumed = train(config, tmp_path / "run", nproc)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(tmp_path / "run")["world_size"] == nproc
    # The same selections and updates; only the float summation order differs across ranks.
    assert summary(tmp_path / "run")["final_psnr"] == pytest.approx(summary(uninterrupted)["final_psnr"], abs=0.05)


def test_damaged_checkpoints_are_skipped_for_the_newest_sound_one(tmp_path, reference):
    config, _, uninterrupted = reference
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000010", "step-00000020", "step-00000030"]
    flipped = folder / "step-00000030" / "state.pt"  # one byte flipped
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated = folder / "step-00000020" / "state.pt"  # cut short
    truncated.write_bytes(truncated.read_bytes()[:100])
    (run_dir / "model.pt").unlink()
    result = run_cli("dint.train", "--config", config, "--run.dir", run_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and "step-00000030" in warnings[0] and "step-00000020" in warnings[1], result.stderr
    assert all("checksum" in w for w in warnings)
    assert "resuming from" in result.stderr and "step-00000010" in result.stderr
    assert summary(run_dir)["final_psnr"] == pytest.approx(summary(uninterrupted)["final_psnr"], abs=0.05)

    # The resumed run saved sound checkpoints 20 and 30 again. One without its manifest (a
    # save that never finished) is skipped too.
    (folder / "step-00000030" / "manifest.json").unlink()
    result = run_cli("dint.train", "--config", config, "--run.dir", run_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and "step-00000030" in warnings[0] and "no manifest.json" in warnings[0]
    assert "resuming from" in result.stderr and "step-00000020" in result.stderr
    # Saving step 30 again does not delete the incomplete folder (dint deletes only complete
    # checkpoints it recognises): it is kept under another name.
    assert "was not a complete checkpoint: kept as step-00000030.damaged-" in warnings[1]
    kept = [p for p in folder.iterdir() if p.name.startswith("step-00000030.damaged-")]
    assert len(kept) == 1 and (kept[0] / "state.pt").is_file()


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, reference):
    config, _, _ = reference

    def one_process(run_dir, fault=None):
        return run_cli(
            "dint.train", "--config", config, "--run.dir", run_dir, extra_env={"DINT_FAULT": fault} if fault else None
        )

    crashed = one_process(tmp_path / "run", "save-crash@20")
    assert crashed.returncode != 0
    folder = tmp_path / "run" / "checkpoints"
    assert (folder / "step-00000010" / "manifest.json").exists() and not (folder / "step-00000020").exists()
    resumed = one_process(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-00000010" in resumed.stderr
    assert one_process(tmp_path / "straight").returncode == 0
    assert same_weights(tmp_path / "straight", tmp_path / "run")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous(tmp_path, reference):
    config, _, _ = reference
    result = train(config, tmp_path / "run", 2, "save-full@20")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("dint.train: error")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "checkpoints" in errors[0]
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000010"]  # no temporary folder left
    from dint.train.checkpoint import load_checkpoint

    assert load_checkpoint(folder / "step-00000010")["step"] == 10


def test_a_nan_loss_rolls_back_with_half_the_learning_rate(tmp_path, reference):
    config, _, _ = reference
    result = train(config, tmp_path / "run", 2, "nan@15")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "rolled back to step 10" in warnings[0] and "x0.5" in warnings[0]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
    assert all(r["loss"] == r["loss"] for r in records)  # no NaN reached the log
    assert records[-1]["psnr"] > records[1]["psnr"]
    lr_after = next(r["lr"] for r in records if r["step"] == 15)
    reference_lr = 1e-3 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 15 / STEPS))
    assert lr_after == pytest.approx(reference_lr * 0.5)


def test_too_many_rollbacks_stop_the_run(tmp_path, reference):
    config, _, _ = reference
    result = run_cli(
        "dint.train",
        "--config",
        config,
        "--run.dir",
        tmp_path / "run",
        "--train.max_rollbacks",
        "0",
        extra_env={"DINT_FAULT": "nan@15"},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not finite at step 15" in result.stderr, result.stderr


def test_resume_refuses_another_store_or_model_shape(tmp_path, reference):
    config, store, uninterrupted = reference
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    result = run_cli("dint.train", "--config", config, "--run.dir", run_dir, "--model.width", "32")
    assert result.returncode == 2 and "model.width" in result.stderr and result.stderr.count("\n") == 1
    other = tmp_path / "other.zarr"
    assert run_cli("dint.commands.cli", "shard", "builtin:cameraman", other, "--chunk", "128").returncode == 0
    result = run_cli("dint.train", "--config", config, "--run.dir", run_dir, "--data.store", other)
    assert result.returncode == 2 and "another signal" in result.stderr and result.stderr.count("\n") == 1


def test_a_checkpoint_cannot_run_code(tmp_path, reference):
    import hashlib
    import pickle

    config, _, uninterrupted = reference
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    newest = run_dir / "checkpoints" / "step-00000030"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Exploit())
    (newest / "state.pt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    (newest / "manifest.json").write_text(json.dumps({"step": 30, "files": {"state.pt": digest}}))
    result = run_cli("dint.train", "--config", config, "--run.dir", run_dir)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert "cannot be loaded safely" in result.stderr and "step-00000020" in result.stderr


def test_a_hung_rank_ends_the_job_with_a_named_timeout(tmp_path, reference):
    config, _, _ = reference
    started = time.monotonic()
    result = train(config, tmp_path / "run", 2, "hang@5:1", "--run.collective_timeout", "3")
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    errors = [line for line in result.stderr.splitlines() if line.startswith("dint.train: error")]
    assert errors and "rank 0" in errors[0] and "step 5" in errors[0] and "timed out after 3.0 s" in errors[0]


@pytest.mark.parametrize("mode", ["in memory", "streamed"])
def test_minibatch_selections_survive_a_resume_exactly(tmp_path, reference, mode):
    """Mini-batch INT reusing its selections for 2 passes: a resume between a mini-batch's
    selection and its reuse must reuse the same points (restored from the checkpoint)."""
    _, store, _ = reference
    extra = {"data": {"memory_budget": "1KB"}} if mode == "streamed" else {}
    config = config_for(
        tmp_path,
        store,
        teacher={"minibatch": 400, "interval_schedule": "fixed", "interval": 2},
        checkpoint={"every": 7},
        **extra,
    )

    def one_process(run_dir, fault=None):
        return run_cli(
            "dint.train", "--config", config, "--run.dir", run_dir, extra_env={"DINT_FAULT": fault} if fault else None
        )

    assert one_process(tmp_path / "straight").returncode == 0
    assert one_process(tmp_path / "run", "kill@16").returncode != 0  # checkpoint 14: mid-pass, mid-interval
    resumed = one_process(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-00000014" in resumed.stderr
    assert summary(tmp_path / "run")["streamed"] == (mode == "streamed")
    assert same_weights(tmp_path / "straight", tmp_path / "run")
