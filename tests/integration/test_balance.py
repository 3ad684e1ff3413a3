"""teacher.balance = "alltoall": every rank trains as many points, and the training is the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import NO_VIEWS_ARGS, run_cli, smooth_image, torchrun, write_png


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory):
    """A 64x64 image whose left 40 columns are flat: the selection falls on the right."""
    folder = tmp_path_factory.mktemp("flat")
    image = smooth_image(64, 64, channels=1, seed=3)
    image[:, :40] = 128
    store = folder / "flat.zarr"
    assert (
        run_cli("dint.commands.cli", "shard", write_png(folder / "flat.png", image), store, "--chunk", "16").returncode
        == 0
    )
    return store


def train_three_ranks(tmp_path, store, name, *overrides):
    """Micro-batches of 64 of about 140 points a rank: a receiving rank trains parts of its own
    points, of its own and received ones, and of received ones alone."""
    run_dir = tmp_path / name
    result = torchrun(
        3,
        "-m",
        "dint.train",
        "--run.dir",
        run_dir,
        "--data.store",
        store,
        "--run.device",
        "cpu",
        "--model.width",
        "32",
        "--model.hidden_layers",
        "3",
        "--train.steps",
        "40",
        "--metrics.log_every",
        "5",
        "--train.micro_batch",
        "64",
        "--eval.reconstruction",
        "false",
        "--checkpoint.every",
        "20",
        "--checkpoint.resume",
        "never",
        *NO_VIEWS_ARGS,
        *overrides,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return lines, json.loads((run_dir / "summary.json").read_text()), run_dir


@pytest.mark.parametrize(
    "teacher",
    [
        # the default teacher with error reuse: the errors seen at moved points must go home
        ("--teacher.strategy", "importance", "--teacher.error_refresh", "5", "--teacher.random_share", "0.25"),
        ("--teacher.strategy", "int", "--teacher.minibatch", "1500"),
    ],
    ids=["importance-reuse", "int-minibatch"],
)
def test_alltoall_trains_equal_counts_with_the_same_update(tmp_path, flat_store, teacher):
    plain, plain_summary, plain_dir = train_three_ranks(
        tmp_path, flat_store, "none", *teacher, "--teacher.balance", "none"
    )
    even, even_summary, even_dir = train_three_ranks(
        tmp_path, flat_store, "alltoall", *teacher, "--teacher.balance", "alltoall"
    )
    assert [line["step"] for line in plain] == [line["step"] for line in even]
    for a, b in zip(plain, even):
        assert b["selected_per_rank"] == a["selected_per_rank"]  # the same selection...
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)  # ...and the same update
        assert sum(b["trained_per_rank"]) == sum(a["trained_per_rank"])
        assert max(b["trained_per_rank"]) - min(b["trained_per_rank"]) <= 1
        assert b["imbalance"] <= 1.02
        assert a["balance_bytes_per_rank"] == [0, 0, 0] and a["balance_seconds"] == 0
        assert b["select_bytes_per_rank"] == a["select_bytes_per_rank"] and min(a["select_bytes_per_rank"]) > 0
    assert max(a["imbalance"] for a in plain) > 1.1  # the flat region leaves ranks with little to train
    assert any(sum(b["balance_bytes_per_rank"]) > 0 for b in even)
    assert even_summary["final_psnr"] == pytest.approx(plain_summary["final_psnr"], abs=0.01)
    assert sum(even_summary["balance_bytes_per_rank"]) > 0 and plain_summary["balance_bytes_per_rank"] == [0, 0, 0]
    # The teacher's saved state (selection, and with error reuse every point's remembered error)
    # is the same, so a resumed run goes on alike.
    saved = [
        torch.load(d / "checkpoints" / "step-00000020" / "state.pt", weights_only=True)["parts"]["teacher"]
        for d in (plain_dir, even_dir)
    ]
    assert torch.equal(saved[0]["bits"], saved[1]["bits"])
    if "errors" in saved[0]:
        np.testing.assert_allclose(saved[1]["errors"].numpy(), saved[0]["errors"].numpy(), rtol=1e-4, atol=1e-6)
