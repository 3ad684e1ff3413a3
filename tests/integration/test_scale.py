"""`dint scale`: real torchrun runs per size, the records and plots, two "nodes" on this machine."""

from __future__ import annotations

import json

import pytest
from conftest import NO_VIEWS_ARGS, run_cli, smooth_image, write_png

from dint.commands.bench import time_to_reach
from dint.commands.scale import PARTS


def shard(tmp_path, name, height, width=64):
    png = write_png(tmp_path / f"{name}.png", smooth_image(height, width, channels=1, seed=5))
    store = tmp_path / f"{name}.zarr"
    assert run_cli("dint.commands.cli", "shard", png, store, "--chunk", "16").returncode == 0
    return store


COMMON = [
    "--run.device",
    "cpu",
    "--model.width",
    "16",
    "--model.hidden_layers",
    "2",
    "--metrics.log_every",
    "5",
    "--teacher.strategy",
    "int",
    "--teacher.random_share",
    "0.2",
    *NO_VIEWS_ARGS,
]


def test_two_nodes_train_what_one_node_with_two_ranks_trains(tmp_path):
    """`--nodes 2` starts two torchrun agents meeting at a c10d rendezvous on 127.0.0.1, one rank
    each: the same selection and update as one node with two ranks."""
    store = shard(tmp_path, "image", 48)
    out = tmp_path / "scale"
    result = run_cli(
        "dint.commands.cli",
        "scale",
        "--ranks",
        "2,2",
        "--nodes",
        "1,2",
        "--steps",
        "30",
        "--out",
        out,
        "--data.store",
        store,
        *COMMON,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    scaling = json.loads((out / "scaling.json").read_text())
    assert scaling["mode"] == "strong"
    one_node, two_nodes = scaling["records"]
    assert (one_node["ranks"], one_node["nodes"], two_nodes["ranks"], two_nodes["nodes"]) == (2, 1, 2, 2)
    assert two_nodes["final_psnr"] == pytest.approx(one_node["final_psnr"], abs=0.01)
    lines = [
        [json.loads(line) for line in (out / "runs" / f"ranks2-nodes{n}" / "metrics.jsonl").read_text().splitlines()]
        for n in (1, 2)
    ]
    assert [line["selected_per_rank"] for line in lines[0]] == [line["selected_per_rank"] for line in lines[1]]
    assert [line["loss"] for line in lines[1]] == pytest.approx([line["loss"] for line in lines[0]], rel=1e-5)
    for record in scaling["records"]:
        assert set(record["step_split"]) == set(PARTS)
        assert record["steps"] == 30 and record["points"] == 48 * 64
        assert record["select_bytes_per_step"] > 0 and record["imbalance"] >= 1.0
        # The parts add up to the step (rank 0's timers).
        assert sum(record["step_split"].values()) == pytest.approx(record["seconds_per_step"], rel=1e-6)
    assert "| ranks | nodes |" in (out / "scaling.md").read_text()
    for plot in ("scaling.png", "step_split.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = json.loads((out / "cost_model.json").read_text())
    assert [c["ranks"] for c in model["validation"]] == [2, 2]
    assert all(c["modelled"] > 0 and c["measured"] > 0 for c in model["validation"])
    assert {(p["world"], p["topk"]) for p in model["predictions"]} == {
        (w, t) for w in (8, 64, 256, 1024) for t in ("gather", "threshold")
    }
    assert all(0 < p["efficiency"] <= 1.0 + 1e-9 and p["step_seconds"] > 0 for p in model["predictions"])
    assert "Modelled, not measured" in (out / "cost_model.md").read_text()


def test_weak_scaling_grows_the_signal_with_the_ranks(tmp_path):
    for ranks in (1, 2):
        shard(tmp_path, f"weak_{ranks}", 32 * ranks)
    out = tmp_path / "weak"
    result = run_cli(
        "dint.commands.cli",
        "scale",
        "--mode",
        "weak",
        "--ranks",
        "1,2",
        "--steps",
        "20",
        "--out",
        out,
        "--data.store",
        str(tmp_path / "weak_{ranks}.zarr"),
        *COMMON,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    scaling = json.loads((out / "scaling.json").read_text())
    one, two = scaling["records"]
    assert (one["points"], two["points"]) == (32 * 64, 64 * 64)
    assert two["speedup"] == pytest.approx(two["points_per_second"] / one["points_per_second"])
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2)
    summary = json.loads((out / "runs" / "ranks2-nodes1" / "summary.json").read_text())
    assert two["points_per_second"] == pytest.approx(summary["points_trained"] / summary["train_seconds"])
    # The time to target agrees with the run's own curve.
    lines = [json.loads(line) for line in (out / "runs" / "ranks2-nodes1" / "metrics.jsonl").read_text().splitlines()]
    curve = [
        (line["select_seconds"] + line["balance_seconds"] + line["update_seconds"], line["psnr"])
        for line in lines
        if line["psnr"] is not None
    ]
    assert two["time_to_target"] == pytest.approx(time_to_reach(curve, scaling["target_psnr"]))
    # The report rebuilt from the run folders (a cluster's sweep) says the same.
    again = run_cli(
        "dint.commands.cli",
        "scale",
        "--mode",
        "weak",
        "--from",
        out / "runs" / "ranks1-nodes1",
        "--from",
        out / "runs" / "ranks2-nodes1",
        "--out",
        tmp_path / "again",
    )
    assert again.returncode == 0, again.stderr
    rebuilt = json.loads((tmp_path / "again" / "scaling.json").read_text())
    assert [r["points_per_second"] for r in rebuilt["records"]] == [r["points_per_second"] for r in scaling["records"]]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ranks", "0,2"], "--ranks 0,2: expected positive whole numbers"),
        (["--ranks", "2,3", "--nodes", "2"], "--ranks 3 is not a multiple of --nodes 2"),
        (["--ranks", "1,2", "--nodes", "1,1,1"], "--nodes 1,1,1: give one number, or one per size"),
        (["--mode", "weak"], "--mode weak needs --data.store with {ranks} in it"),
        (["--mode", "diagonal"], "--mode diagonal: expected strong or weak"),
        (["--train.stepz", "3"], "train.stepz"),
    ],
)
def test_bad_scale_arguments_give_one_line(tmp_path, image_store, args, says):
    result = run_cli(
        "dint.commands.cli", "scale", "--data.store", image_store, "--steps", "5", "--out", tmp_path / "o", *args
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "o" / "scaling.json").exists()
