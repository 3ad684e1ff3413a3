"""The hash-grid field (model.field = "hashgrid") through every part of training, with real processes:
the same selections and model on 1, 2 and 3 ranks with the default teacher, every other teacher and
batch plan, checkpoints resumed on another number of ranks, a hash checkpoint refused as a SIREN,
DeepSpeed with ZeRO 1 and 2, dint render, and configs/hash/image.toml as it ships."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, torchrun
from test_fault_tolerance import same_weights, summary, train
from test_train import write_config

# A small grid: 4 levels of at most 2^8 entries, so the finer levels are hashed (48x40 vertices at the finest).
HASH = {
    "field": "hashgrid",
    "hash_levels": 4,
    "hash_table_size_log2": 8,
    "hash_base_resolution": 4,
    "hash_mlp_width": 16,
}


def hash_config(tmp_path: Path, store: Path, **sections) -> Path:
    """test_train's config with the hash field and dint's default teacher (importance sampling)."""
    sections["model"] = {**HASH, **sections.get("model", {})}
    sections["teacher"] = {"strategy": "importance", "ratio": 0.1, **sections.get("teacher", {})}
    sections.setdefault("train", {})
    sections["train"] = {"steps": 30, "lr": 1e-2, **sections["train"]}
    config = write_config(tmp_path / "c.toml", store, tmp_path / "unused", **sections)
    # test_train's SIREN keys have no effect on a hash grid: dropped.
    text = config.read_text().replace("width = 32\n", "").replace("hidden_layers = 3\n", "")
    config.write_text(text)
    return config


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def by_ranks(tmp_path_factory):
    """The same hash-field run on 1, 2 and 3 ranks (default teacher, errors refreshed every 7 steps)."""
    from conftest import make_image_store

    folder = tmp_path_factory.mktemp("ranks")
    store = make_image_store(folder)
    config = hash_config(folder, store, teacher={"error_refresh": 7}, eval={"every": 10})
    runs = {}
    for ranks in (1, 2, 3):
        result = torchrun(ranks, "-m", "dint.train", "--config", config, "--run.dir", folder / f"r{ranks}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[ranks] = folder / f"r{ranks}"
    return runs


def test_one_two_and_three_ranks_select_the_same_and_reach_the_same_model(by_ranks):
    one = lines_of(by_ranks[1])
    assert summary(by_ranks[1])["final_psnr"] > one[1]["psnr"] + 3  # it learns (evaluated at steps 10 and 30)
    params = summary(by_ranks[1])["params"]
    for ranks in (2, 3):
        other = lines_of(by_ranks[ranks])
        assert [line["selected"] for line in other] == [line["selected"] for line in one]
        assert all(sum(line["selected_per_rank"]) == line["selected"] for line in other)
        # Only the float summation order differs.
        assert summary(by_ranks[ranks])["final_psnr"] == pytest.approx(summary(by_ranks[1])["final_psnr"], abs=0.05)
        # Every rank hands its whole gradient (table and MLP, float32) to each step's exchange.
        assert all(line["gradients_bytes_per_rank"] == [4 * params] * ranks for line in other)
        assert other[-1]["allreduce_seconds"] > 0
    assert all(line["gradients_bytes_per_rank"] == [0] for line in one)


@pytest.mark.parametrize(
    "teacher",
    [
        {"strategy": "full"},
        {"strategy": "uniform"},
        {"strategy": "int", "random_share": 0.0, "error_refresh": 1},
        {"strategy": "int", "minibatch": 500},  # mini-batches, in memory
    ],
    ids=["full", "uniform", "int", "int-minibatches"],
)
def test_every_teacher_trains_the_same_on_one_and_two_ranks(tmp_path, image_store, teacher):
    config = hash_config(tmp_path, image_store, teacher=teacher, train={"steps": 12}, eval={"every": 6})
    for ranks in (1, 2):
        result = torchrun(ranks, "-m", "dint.train", "--config", config, "--run.dir", tmp_path / f"r{ranks}")
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = lines_of(tmp_path / "r1"), lines_of(tmp_path / "r2")
    assert [line["selected"] for line in one] == [line["selected"] for line in two]
    assert summary(tmp_path / "r2")["final_psnr"] == pytest.approx(summary(tmp_path / "r1")["final_psnr"], abs=0.05)
    first = next(line["psnr"] for line in one if line["psnr"] is not None)  # step 6
    assert summary(tmp_path / "r1")["final_psnr"] > first  # it learns


def test_a_streamed_run_reaches_the_in_memory_model(tmp_path, image_store):
    config = hash_config(
        tmp_path, image_store, teacher={"strategy": "full"}, train={"steps": 10, "micro_batch": 200}, eval={"every": 5}
    )
    runs = {}
    for name, extra in (("memory", []), ("streamed", ["--data.memory_budget", "800"])):
        result = torchrun(2, "-m", "dint.train", "--config", config, "--run.dir", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = summary(tmp_path / name)
    assert runs["streamed"]["streamed"] and not runs["memory"]["streamed"]
    assert runs["streamed"]["final_psnr"] == pytest.approx(runs["memory"]["final_psnr"], abs=1e-3)


def test_streamed_minibatch_int_learns(tmp_path, image_store):
    """Streamed, mini-batch b is every rank's b-th group of chunks: its points depend on the number of
    ranks (docs/architecture.md), so only learning is compared here."""
    config = hash_config(
        tmp_path,
        image_store,
        teacher={"strategy": "int", "minibatch": 400},
        train={"steps": 30},
        eval={"every": 10},
        data={"memory_budget": "1KB"},
    )
    result = torchrun(2, "-m", "dint.train", "--config", config, "--run.dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    psnrs = [line["psnr"] for line in lines_of(tmp_path / "run") if line["psnr"] is not None]
    assert summary(tmp_path / "run")["streamed"] and psnrs[-1] > psnrs[0] + 2, psnrs


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """An uninterrupted 2-rank hash run with checkpoints every 10 steps, and the same run with rank 1
    killed at step 25."""
    from conftest import make_image_store

    folder = tmp_path_factory.mktemp("resume")
    store = make_image_store(folder)
    config = hash_config(folder, store, checkpoint={"every": 10}, metrics={"log_every": 5})
    assert train(config, folder / "whole").returncode == 0
    crashed = folder / "crashed"
    assert train(config, crashed, 2, "kill@25:1").returncode != 0
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step-00000010", "step-00000020"]
    return config, folder / "whole", crashed


@pytest.mark.parametrize("nproc", [2, 1, 3])
def test_resume_continues_bitwise_on_the_same_ranks_and_equal_on_others(tmp_path, resumable, nproc):
    config, whole, crashed = resumable
    shutil.copytree(crashed, tmp_path / "run")
    resumed = train(config, tmp_path / "run", nproc)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000020" in resumed.stderr
    if nproc == 2:
        assert same_weights(whole, tmp_path / "run")  # bitwise: CPU operations are deterministic
    else:
        assert summary(tmp_path / "run")["final_psnr"] == pytest.approx(summary(whole)["final_psnr"], abs=0.05)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--model.field", "siren"], "checkpoint has model.field = 'hashgrid', the config says 'siren'"),
        (["--model.hash_table_size_log2", "9"], "checkpoint has model.hash_table_size_log2 = 8, the config says 9"),
    ],
    ids=["as-a-siren", "another-table"],
)
def test_a_hash_checkpoint_is_refused_as_another_model_in_one_line(tmp_path, resumable, args, says):
    config, whole, _ = resumable
    shutil.copytree(whole, tmp_path / "run")
    if args[0] == "--model.field":  # the hash keys of the config would be refused for a SIREN first
        config = tmp_path / "siren.toml"
        config.write_text(
            "\n".join(line for line in resumable[0].read_text().splitlines() if not line.startswith(("hash_", "field")))
        )
    result = run_cli("dint.train", "--config", config, "--run.dir", tmp_path / "run", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and says in result.stderr, result.stderr


def test_a_model_pt_says_which_field_it_is_and_renders(tmp_path, by_ranks):
    from dint.train.checkpoint import load_trained

    model, info, config = load_trained(by_ranks[2] / "model.pt")
    assert config["model"]["field"] == "hashgrid" and model.__class__.__name__ == "HashGrid"
    saved = torch.load(by_ranks[2] / "model.pt", weights_only=True)
    assert set(saved["model"]) == {"table"} | {k for k in saved["model"] if k.startswith("mlp.")}
    # A model.pt whose weights are not those its config describes (a table of another size) is one line.
    saved["model"]["table"] = saved["model"]["table"][:-1]
    torch.save(saved, tmp_path / "model.pt")
    result = run_cli("dint.commands.cli", "render", tmp_path, "--out", tmp_path / "x.zarr")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a dint model file" in result.stderr

    run_dir = tmp_path / "run"
    shutil.copytree(by_ranks[2], run_dir)
    out = tmp_path / "region.zarr"
    args = ("render", run_dir, "--scale", "2", "--region", "8:24,0:40", "--out", out)
    result = torchrun(2, "-m", "dint.commands.cli", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    from dint.data.pyramid import open_pyramid
    from dint.data.store import open_store

    # At scale 2 every other sample of the region is a training sample: there the render is the training
    # reconstruction's (the same coordinates, the same field).
    level = open_pyramid(out)
    reconstruction = open_store(run_dir / "reconstruction.zarr")
    region = reconstruction.read_region((8, 0), (16, 40)).astype(float)
    rendered = level.read_region((0, 0), level.info.shape)[::2, ::2].astype(float)
    assert rendered.shape == region.shape and abs(rendered - region).max() <= 1


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_divides_adams_state_and_trains_as_ddp(tmp_path, image_store, stage):
    pytest.importorskip("deepspeed")
    config = hash_config(tmp_path, image_store, train={"steps": 12}, eval={"every": 6}, checkpoint={"every": 6})
    runs = {}
    for name, extra in (("ddp", []), ("zero", ["--train.engine", "deepspeed", "--train.zero_stage", str(stage)])):
        result = torchrun(2, "-m", "dint.train", "--config", config, "--run.dir", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = summary(tmp_path / name)
    assert runs["zero"]["final_psnr"] == pytest.approx(runs["ddp"]["final_psnr"], abs=0.05)
    ddp_state, zero_state = (
        runs["ddp"]["optimizer_state_bytes_per_rank"],
        runs["zero"]["optimizer_state_bytes_per_rank"],
    )
    full = 8 * runs["ddp"]["params"]  # Adam's two moments (and a step count per tensor)
    assert all(full <= b < full + 1024 for b in ddp_state)
    assert all(b < 0.6 * full for b in zero_state) and sum(zero_state) >= full  # each rank its share
    # A ZeRO checkpoint holds torch Adam's full state: it resumes with DDP, on one rank.
    result = run_cli(
        "dint.train",
        "--config",
        config,
        "--run.dir",
        tmp_path / "zero",
        "--checkpoint.resume",
        tmp_path / "zero" / "checkpoints" / "step-00000006",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(tmp_path / "zero")["final_psnr"] == pytest.approx(runs["ddp"]["final_psnr"], abs=0.05)


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_shipped_image_config_runs_with_its_store_and_steps_overridden(tmp_path, image_store, ranks):
    result = torchrun(
        ranks,
        "-m",
        "dint.train",
        "--config",
        REPO / "configs" / "hash" / "image.toml",
        "--data.store",
        image_store,
        "--train.steps",
        "6",
        "--run.dir",
        tmp_path / "run",
        "--run.device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(tmp_path / "run")["world_size"] == ranks
