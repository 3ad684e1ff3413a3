"""Mini-batch INT and streaming shards: the same points per pass, the same selections, the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, torchrun
from test_train import write_config

WORKERS = Path(__file__).resolve().parent / "workers"

N = 48 * 40


@pytest.fixture(scope="module")
def passes(tmp_path_factory, request):
    image_store = request.getfixturevalue("image_store_module")
    out = {}
    for world in (1, 2, 3):
        path = tmp_path_factory.mktemp(f"w{world}") / "out.json"
        result = torchrun(world, WORKERS / "pass_worker.py", image_store, path)
        assert result.returncode == 0, result.stderr
        out[world] = json.loads(path.read_text())
    return image_store, out


@pytest.fixture(scope="module")
def image_store_module(tmp_path_factory):
    from conftest import make_image_store

    return make_image_store(tmp_path_factory.mktemp("store"))


@pytest.mark.parametrize("plan", ["whole", "whole_streamed", "minibatches", "minibatches_streamed"])
def test_every_plan_visits_every_point_once_per_pass(passes, plan):
    _, out = passes
    for world, result in out.items():
        assert sorted(result[plan]) == list(range(N)), (world, plan)
    assert out[3]["groups_per_rank"] == [3, 3, 3]  # 9 chunks, one per group: really streamed


def test_minibatches_are_spread_and_independent_of_the_world_size(passes):
    _, out = passes
    sizes = [len(m["members"]) for m in out[1]["int_minibatches"]]
    assert len(sizes) == out[1]["steps_per_pass"] == 7 and max(sizes) - min(sizes) <= 9  # ceil(1920/300)
    for world in (2, 3):
        for one, other in zip(out[1]["int_minibatches"], out[world]["int_minibatches"]):
            assert sorted(one["members"]) == sorted(other["members"])
    rows = np.array(sorted(out[1]["int_minibatches"][0]["members"])) // 40
    assert len(set(rows.tolist())) > 30  # a spread over the image, not a block of rows


def test_int_inside_each_minibatch_is_the_single_process_topk(passes):
    from dint.data.sharding import Shard, rank_chunk_ids
    from dint.data.store import open_store
    from dint.fields.siren import Siren
    from dint.teaching.teacher import point_errors, topk_ordered

    store_path, out = passes
    store = open_store(store_path)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), torch.device("cpu"))
    torch.manual_seed(0)
    model = Siren(2, 1, width=16, hidden_layers=2)
    by_global = torch.argsort(shard.global_index(torch.arange(N)))  # global index -> local index
    for minibatch in out[1]["int_minibatches"]:
        members = torch.tensor(sorted(minibatch["members"]))
        local = by_global[members]
        errors = point_errors(model, shard, local, 1000)
        expected = set(members[topk_ordered(errors, round(0.25 * len(members)), members.__getitem__)].tolist())
        for world in (2, 3):
            got = next(m for m in out[world]["int_minibatches"] if sorted(m["members"]) == members.tolist())
            assert set(got["selected"]) == expected and len(got["selected"]) == got["count"] == len(expected)


def test_streamed_and_in_memory_runs_reach_the_same_model(tmp_path, image_store):
    config = write_config(
        tmp_path / "c.toml",
        image_store,
        tmp_path / "unused",
        teacher={"strategy": "full"},
        train={"steps": 15, "micro_batch": 200},
        eval={"every": 5},
    )
    runs = {}
    for name, extra in (("memory", []), ("streamed", ["--data.memory_budget", "800"])):
        result = torchrun(2, "-m", "dint.train", "--config", config, "--run.dir", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert runs["streamed"]["streamed"] and not runs["memory"]["streamed"]
    assert runs["streamed"]["final_psnr"] == pytest.approx(runs["memory"]["final_psnr"], abs=1e-4)
    a = torch.load(tmp_path / "memory" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "streamed" / "model.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_minibatch_int_trains_with_streaming(tmp_path, image_store):
    config = write_config(
        tmp_path / "c.toml",
        image_store,
        tmp_path / "run",
        teacher={"minibatch": 400, "interval_schedule": "incremental", "random_share": 0.0},
        train={"steps": 60},
        metrics={"log_every": 10},
        eval={"every": 20, "sample": 500},
        data={"memory_budget": "1KB"},
    )
    result = torchrun(2, "-m", "dint.train", "--config", config)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["streamed"] and summary["evaluation"] == {"sampled": True, "points": 500}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("pass" in r and "minibatch" in r for r in records)
    psnrs = [r["psnr"] for r in records if r["psnr"] is not None]
    assert psnrs[-1] > psnrs[0] + 3, psnrs


def test_streaming_without_minibatches_needs_the_full_teacher(tmp_path, image_store):
    config = write_config(tmp_path / "c.toml", image_store, tmp_path / "run", data={"memory_budget": "1KB"})
    result = run_cli("dint.train", "--config", config)
    assert result.returncode == 2 and "data.memory_budget" in result.stderr and "teacher.minibatch" in result.stderr
    assert result.stderr.strip().count("\n") == 0
