"""Exact top-k over real gloo ranks: `select_topk` (and the threshold search) on 2, 3 and 4
processes started by torchrun; in one process, tests/unit/test_topk.py.

The rule: the k points of largest score; among equal scores, the lower (global) id wins.
Expected selections are computed here from the scores with torch.topk or a plain sort.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import NO_VIEWS_ARGS, torchrun

WORKER = Path(__file__).parent / "workers" / "topk_worker.py"


def expected_by_rule(scores: list[float], ids: list[int], k: int) -> set[int]:
    """Ids of the k best points under (higher score first, then lower id)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))
    return {ids[i] for i in order[: max(0, k)]}


# --- select_topk over real ranks ---------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"world{w}")
def distributed_run(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"topk{world}") / "result.json"
    result = torchrun(world, WORKER, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    data = json.loads(out.read_text())
    assert data["world_size"] == world
    return data


def test_distributed_union_is_the_exact_global_topk(distributed_run):
    cases = distributed_run["cases"]
    assert len(cases) >= 20
    for case in cases:
        scores, ids, k = case["scores"], case["ids"], case["k"]
        union = [i for part in case["selected"] for i in part]
        # disjoint across ranks, and k in all (or every point when k >= n)
        assert len(union) == len(set(union)), case["name"]
        assert len(union) == min(max(k, 0), len(scores)), case["name"]
        assert case["counts"] == [len(part) for part in case["selected"]], case["name"]
        assert set(union) == expected_by_rule(scores, ids, k), case["name"]


def test_distributed_untied_cases_match_torch_topk(distributed_run):
    checked = 0
    for case in distributed_run["cases"]:
        scores = torch.tensor(case["scores"], dtype=torch.float64)
        k = case["k"]
        if torch.unique(scores).numel() != scores.numel() or not 0 < k < scores.numel():
            continue
        ids = torch.tensor(case["ids"])
        expected = set(ids[torch.topk(scores, k).indices].tolist())
        assert {i for part in case["selected"] for i in part} == expected, case["name"]
        checked += 1
    assert checked >= 8


def test_distributed_tie_cases_straddle_the_boundary(distributed_run):
    """The tie cases really test the tie rule: the k-th score is shared inside and outside."""
    straddling = 0
    for case in distributed_run["cases"]:
        if not (case["name"].startswith("ties") or case["name"] in ("all_equal", "small_ties")):
            continue
        scores, k = case["scores"], case["k"]
        kth = sorted(scores, reverse=True)[k - 1]
        inside = sum(1 for s in sorted(scores, reverse=True)[:k] if s == kth)
        if inside < scores.count(kth):
            straddling += 1
            # and the tied points that got in were spread over more than one rank
            by_id = dict(zip(case["ids"], scores))
            ranks_with_kth = [r for r, part in enumerate(case["selected"]) if any(by_id[i] == kth for i in part)]
            if inside >= 20:
                assert len(ranks_with_kth) >= 2, case["name"]
    assert straddling >= 5


def test_distributed_rank_with_only_low_scores_selects_nothing(distributed_run):
    world = distributed_run["world_size"]
    (case,) = [c for c in distributed_run["cases"] if c["name"] == "low_rank_has_none"]
    assert case["held"][world - 1] == 300
    assert case["selected"][world - 1] == []
    assert sum(case["counts"]) == case["k"]


def test_distributed_rank_with_no_points(distributed_run):
    cases = [c for c in distributed_run["cases"] if c["name"].startswith("empty_rank")]
    assert len(cases) == 4
    for case in cases:
        assert case["held"][1] == 0
        assert case["selected"][1] == []
        assert sum(case["counts"]) == case["k"]


def test_threshold_selects_what_gather_selects_on_every_rank(distributed_run):
    """teacher.topk = "threshold" (histograms, no candidates gathered): per rank, the same points
    as the all-gather, ties included, in every case of the worker."""
    for case in distributed_run["cases"]:
        assert case["threshold"] == [sorted(part) for part in case["selected"]], case["name"]


def test_threshold_bytes_do_not_grow_with_the_signal(tmp_path):
    """Two ranks, the paper's INT selecting every step with teacher.topk = "threshold": the bytes
    each rank sends for selection are the same for signals 16x apart, while gather's (k pairs
    from each rank) are above them on the larger one."""
    import json as json_

    from conftest import run_cli, smooth_image, write_png

    sent = {}
    for side in (32, 128):
        store = tmp_path / f"s{side}.zarr"
        png = write_png(tmp_path / f"s{side}.png", smooth_image(side, side, channels=1, seed=side))
        assert run_cli("dint.commands.cli", "shard", png, store, "--chunk", str(side // 2)).returncode == 0
        for topk in ("threshold", "gather") if side == 128 else ("threshold",):
            run_dir = tmp_path / f"{topk}{side}"
            result = torchrun(
                2,
                "-m",
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
                "--train.steps",
                "4",
                "--metrics.log_every",
                "1",
                "--teacher.strategy",
                "int",
                "--teacher.random_share",
                "0",
                "--teacher.error_refresh",
                "1",
                "--teacher.topk",
                topk,
                "--eval.reconstruction",
                "false",
                *NO_VIEWS_ARGS,
            )
            assert result.returncode == 0, result.stderr
            lines = [json_.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            sent[topk, side] = [line["select_bytes_per_rank"] for line in lines]
    assert sent["threshold", 32] == sent["threshold", 128]
    assert all(0 < b < 20_000 for line in sent["threshold", 32] for b in line)
    # gather's (each rank's local top-k: k (score, id) pairs of 12 bytes) exceed the histograms at 128x128
    k = round(0.1 * 128 * 128)  # teacher.ratio's default
    assert all(b >= 12 * k > 2 * max(sent["threshold", 128][0]) for line in sent["gather", 128] for b in line)
