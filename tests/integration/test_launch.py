"""launch/run_train.sh and launch/slurm.sbatch: real runs where cheap, stub launchers otherwise.

The Slurm tests put stub `scontrol` and `srun` commands first on PATH (test doubles for the
cluster) that record their arguments, so the script's host and rendezvous logic runs for
real and the torchrun command line it would start on every node can be checked exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import NO_VIEWS_TOML, REPO

RUN_TRAIN = REPO / "launch" / "run_train.sh"
SBATCH = REPO / "launch" / "slurm.sbatch"
# A stub command that writes its arguments, one a line, to $RECORD_DIR/<its name>.args.
RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$RECORD_DIR/$(basename "$0").args"\n'


def write_config(path: Path, store: Path, run_dir: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
[run]
dir = "{run_dir}"
device = "cpu"

[data]
store = "{store}"

[model]
width = 16
hidden_layers = 2

[train]
steps = 10
{extra}
"""
        + ("" if "[metrics]" in extra else NO_VIEWS_TOML + "log_every = 5\n")
    )
    return path


def launch_env(tmp_path: Path, **extra: str) -> dict:
    """The caller's environment without any launcher or Slurm settings, plus `extra`."""
    drop = ("NPROC", "NNODES", "MASTER_ADDR", "MASTER_PORT", "RDZV_ID", "TORCHRUN", "DINT_REPO")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", RECORD_DIR=str(tmp_path))
    env.update(extra)
    return env


def stub(directory: Path, name: str, body: str = RECORDER) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def recorded(tmp_path: Path, name: str) -> list[str] | None:
    path = tmp_path / f"{name}.args"
    return path.read_text().splitlines() if path.exists() else None


def run(script: Path, *args, env: dict, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


# --- run_train.sh ---------------------------------------------------------------------------


def test_run_train_two_ranks(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    # From another directory: the script finds the repository itself.
    result = run(RUN_TRAIN, config, "--train.steps", "8", env=launch_env(tmp_path, NPROC="2"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"]) == (2, 8)  # the override reached the ranks
    assert "final PSNR" in result.stdout


def test_run_train_bad_config_is_one_line_and_no_torchrun(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run", extra="warmup = 3")
    torchrun = stub(tmp_path / "bin", "torchrun")
    result = run(RUN_TRAIN, config, env=launch_env(tmp_path, NPROC="2", TORCHRUN=str(torchrun)))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dint.train: error:") and "train.warmup" in lines[0]
    assert recorded(tmp_path, "torchrun") is None  # never started
    assert not (tmp_path / "run").exists()


def test_run_train_bad_override_and_missing_store_are_one_line(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    torchrun = stub(tmp_path / "bin", "torchrun")
    env = launch_env(tmp_path, TORCHRUN=str(torchrun))
    bad_value = run(RUN_TRAIN, config, "--train.steps", "many", env=env)
    no_store = run(RUN_TRAIN, config, "--data.store", tmp_path / "missing.zarr", env=env)
    for result in (bad_value, no_store):
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert recorded(tmp_path, "torchrun") is None


def test_run_train_command_lines(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    torchrun = stub(tmp_path / "bin", "torchrun")

    single = run(RUN_TRAIN, config, "--train.lr", "2e-3", env=launch_env(tmp_path, TORCHRUN=str(torchrun)))
    assert single.returncode == 0, single.stderr
    assert recorded(tmp_path, "torchrun") == [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "auto",
        "-m",
        "dint.train",
        "--config",
        str(config),
        "--train.lr",
        "2e-3",
    ]

    env = launch_env(
        tmp_path,
        TORCHRUN=str(torchrun),
        NNODES="3",
        NPROC="4",
        MASTER_ADDR="node0",
        MASTER_PORT="31337",
        RDZV_ID="job42",
    )
    multi = run(RUN_TRAIN, config, "--train.steps", "7", env=env)
    assert multi.returncode == 0, multi.stderr
    assert recorded(tmp_path, "torchrun") == [
        "--nnodes",
        "3",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "node0:31337",
        "--rdzv_id",
        "job42",
        "--nproc_per_node",
        "4",
        "-m",
        "dint.train",
        "--config",
        str(config),
        "--train.steps",
        "7",
    ]

    (tmp_path / "torchrun.args").unlink()
    del env["MASTER_ADDR"]
    no_addr = run(RUN_TRAIN, config, env=env)
    assert no_addr.returncode == 2 and len(no_addr.stderr.splitlines()) == 1
    assert "MASTER_ADDR" in no_addr.stderr
    assert recorded(tmp_path, "torchrun") is None

    usage = run(RUN_TRAIN, env=env)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_run_train_two_nodes_rendezvous_for_real(tmp_path, image_store):
    """The multi-node branch with real torchrun agents: two "nodes" on this host, one rank each."""
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = launch_env(
        tmp_path, NNODES="2", NPROC="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RDZV_ID="two-nodes"
    )
    command = ["bash", str(RUN_TRAIN), str(config), "--train.steps", "4"]
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"]) == (2, 4)


# --- slurm.sbatch ---------------------------------------------------------------------------


def test_slurm_sbatch_syntax_and_header():
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    text = SBATCH.read_text()
    for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--time="):
        assert f"#SBATCH {directive}" in text
    assert "srun" in text and "--rdzv_endpoint" in text


def slurm_env(tmp_path: Path, **extra: str) -> dict:
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "srun")
    # scontrol: record the call, then expand the node list the way Slurm would (from FAKE_HOSTS).
    stub(bin_dir, "scontrol", RECORDER + 'printf "%s\\n" $FAKE_HOSTS\n')
    env = launch_env(
        tmp_path,
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu[07-09]",
        SLURM_NNODES="3",
        SLURM_JOB_NUM_NODES="3",
        SLURM_GPUS_ON_NODE="8",
        SLURM_CPUS_PER_TASK="32",
        SLURM_SUBMIT_DIR=str(REPO),
        FAKE_HOSTS="gpu07 gpu08 gpu09",
    )
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def test_slurm_sbatch_runs_one_torchrun_per_node_with_first_host_rendezvous(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    # Slurm runs a copy of the script from its spool directory: run one from elsewhere.
    spooled = tmp_path / "spool" / "slurm_script"
    spooled.parent.mkdir()
    spooled.write_text(SBATCH.read_text())
    result = run(spooled, config, "--train.steps", "7", "--model.width", "16", env=slurm_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert recorded(tmp_path, "scontrol") == ["show", "hostnames", "gpu[07-09]"]
    assert recorded(tmp_path, "srun") == [
        "--nodes=3",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--cpus-per-task=32",
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "3",
        "--nproc_per_node",
        "8",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "gpu07:29500",
        "--rdzv_id",
        "4242",
        "-m",
        "dint.train",
        "--config",
        str(config),
        "--train.steps",
        "7",
        "--model.width",
        "16",
    ]


def test_slurm_sbatch_overrides_and_bad_config(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run")
    env = slurm_env(
        tmp_path,
        FAKE_HOSTS="a100-1",
        SLURM_JOB_NODELIST="a100-1",
        NPROC="2",
        MASTER_PORT="29511",
        TORCHRUN="torchrun --max-restarts 0",
    )
    del env["SLURM_CPUS_PER_TASK"]
    result = run(SBATCH, config, env=env)
    assert result.returncode == 0, result.stderr
    srun = recorded(tmp_path, "srun")
    assert srun[:4] == ["--nodes=1", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "torchrun"]
    assert srun[4:12] == ["--max-restarts", "0", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d"]
    assert srun[12:14] == ["--rdzv_endpoint", "a100-1:29511"]

    (tmp_path / "srun.args").unlink()
    bad = run(SBATCH, config, "--model.depth", "3", env=env)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert recorded(tmp_path, "srun") is None  # checked before any node starts
