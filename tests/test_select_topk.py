"""Exact top-k: `topk_ordered` in one process, `select_topk` over 2 and 3 real gloo ranks.

The rule: the k points of largest score; among equal scores, the lower (global) id wins.
Expected selections are computed here from the scores with torch.topk or a plain sort.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import NO_VIEWS_ARGS, torchrun
from dint.teaching.teacher import select_topk, select_topk_threshold, top_draws, topk_ordered

WORKER = Path(__file__).parent / "workers" / "topk_worker.py"


def expected_by_rule(scores: list[float], ids: list[int], k: int) -> set[int]:
    """Ids of the k best points under (higher score first, then lower id)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))
    return {ids[i] for i in order[: max(0, k)]}


def identity(positions: torch.Tensor) -> torch.Tensor:
    return positions


# --- top_draws: ranking only the draws above a cut ----------------------------------------


@pytest.mark.parametrize("select", [select_topk, select_topk_threshold], ids=["gather", "threshold"])
@pytest.mark.parametrize("count", [0, 1, 37, 2000, 9999])
def test_top_draws_picks_what_ranking_every_draw_picks(select, count):
    """Uniform draws with ties and excluded points (-1): the same points as a top-k over all,
    in ascending order; with `available` overstated the cut lets too few through, and the
    fallback ranks every draw."""
    g = torch.Generator().manual_seed(count)
    draws = torch.randint(0, 4000, (10_000,), generator=g).double() / 4000  # many ties
    excluded = torch.randperm(10_000, generator=g)[:500]
    draws[excluded] = -1.0
    expected = sorted(expected_by_rule(draws.tolist(), list(range(10_000)), count))
    for available in (9_500, 10_000_000):
        got = top_draws(draws, count, available, select, identity)
        assert got.tolist() == expected, available


# --- topk_ordered in one process ---------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 100, 999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_scores_match_torch_topk(k, dtype):
    g = torch.Generator().manual_seed(k)
    scores = torch.randn(1000, generator=g, dtype=dtype)
    assert torch.unique(scores).numel() == 1000  # no ties
    ids = torch.randperm(1000, generator=g)
    got = topk_ordered(scores, k, lambda p: ids[p])
    assert got.dtype == torch.int64
    assert got.shape == (k,)
    assert set(got.tolist()) == set(torch.topk(scores, k).indices.tolist())


@pytest.mark.parametrize("seed", range(4))
def test_ties_away_from_the_boundary_match_torch_topk(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (500,), generator=g).to(torch.float32)  # 6 values, many ties
    values, counts = torch.unique(scores, return_counts=True)
    # k = the number of points with a score >= some value: the k-th score's group is whole.
    for cut in range(1, len(values)):
        k = int(counts[cut:].sum())
        expected = set(torch.topk(scores, k).indices.tolist())
        assert expected == set(torch.nonzero(scores >= values[cut]).squeeze(1).tolist())
        got = topk_ordered(scores, k, identity)
        assert got.shape == (k,)
        assert set(got.tolist()) == expected


@pytest.mark.parametrize("k", [1, 3, 77, 250, 499])
def test_ties_at_the_boundary_lower_id_wins(k):
    g = torch.Generator().manual_seed(100 + k)
    scores = torch.randint(0, 4, (500,), generator=g).to(torch.float32)
    ids = torch.randperm(10_000, generator=g)[:500]  # sparse, shuffled: id order != position order
    got = topk_ordered(scores, k, lambda p: ids[p])
    assert got.shape == (k,)
    assert len(set(got.tolist())) == k
    # Same multiset of values as torch.topk ...
    assert sorted(scores[got].tolist()) == sorted(torch.topk(scores, k).values.tolist())
    # ... and among the tied points at the k-th score, the lowest ids.
    assert {int(ids[p]) for p in got} == expected_by_rule(scores.tolist(), ids.tolist(), k)


def test_id_of_is_asked_only_about_the_tied_points():
    scores = torch.tensor([5.0, 1.0, 3.0, 3.0, 0.0, 3.0, 4.0, 3.0])
    asked = []

    def id_of(positions):
        asked.append(positions.clone())
        return 100 - positions  # higher position, lower id

    got = topk_ordered(scores, 4, id_of)
    # 5 and 4 are above the cut; of the four 3.0s (positions 2, 3, 5, 7) ids 98, 97, 95, 93
    assert set(got.tolist()) == {0, 6, 7, 5}
    asked_positions = set(torch.cat(asked).tolist())
    assert asked_positions <= {2, 3, 5, 7}


@pytest.mark.parametrize("n", [0, 1, 10])
def test_k_zero_and_k_at_least_n(n):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    for k in (0, -3):
        got = topk_ordered(scores, k, identity)
        assert got.shape == (0,) and got.dtype == torch.int64
    for k in (n, n + 1, n + 100):
        got = topk_ordered(scores, k, identity)
        assert sorted(got.tolist()) == list(range(n))


def test_a_nan_score_does_not_empty_the_selection():
    # A diverging model can give NaN errors at a few points; the selection must still have
    # k points, and a NaN counts as the worst error.
    scores = torch.tensor([0.5, float("nan"), 0.2, 0.9, 0.1])
    got = topk_ordered(scores, 2, identity)
    assert sorted(got.tolist()) == [1, 3]
    assert sorted(select_topk(scores, 2, identity).tolist()) == [1, 3]


def test_select_topk_without_a_process_group_is_topk_ordered():
    g = torch.Generator().manual_seed(7)
    scores = torch.round(torch.rand(300, generator=g) * 3)
    ids = torch.randperm(300, generator=g)
    for k in (0, 1, 50, 299, 300, 400):
        got = select_topk(scores, k, lambda p: ids[p])
        assert {int(ids[p]) for p in got} == expected_by_rule(scores.tolist(), ids.tolist(), k)


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


@pytest.mark.parametrize("seed", range(6))
def test_threshold_matches_gather_in_one_process(seed):
    from dint.teaching.teacher import select_topk_threshold

    g = torch.Generator().manual_seed(seed)
    n = 500
    scores = [torch.rand(n, generator=g), torch.round(torch.rand(n, generator=g) * 3) / 3,
              torch.randn(n, generator=g, dtype=torch.float64),
              torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0] * 71 + [2.0] * 3)][seed % 4]
    ids = torch.randperm(4 * n, generator=g)[:n]
    for k in (0, 1, 7, 100, 250, 499, 500, 600):
        gather = set(ids[select_topk(scores, k, lambda p: ids[p])].tolist())
        assert set(ids[select_topk_threshold(scores, k, lambda p: ids[p])].tolist()) == gather, k


def test_auto_gathers_while_the_traffic_is_small_and_uses_histograms_beyond():
    from dint.teaching.teacher import GATHER_LIMIT_BYTES, select_topk_by, select_topk_threshold

    small_k = GATHER_LIMIT_BYTES // (12 * 8)  # 8 ranks x k (score, id) pairs of 12 bytes: at the limit
    assert select_topk_by("auto", small_k, 8) is select_topk
    assert select_topk_by("auto", small_k + 1, 8) is select_topk_threshold
    assert select_topk_by("auto", small_k + 1, 1) is select_topk  # one rank receives 1 x k
    assert select_topk_by("gather", 10**9, 64) is select_topk
    assert select_topk_by("threshold", 1, 1) is select_topk_threshold


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
            result = torchrun(2, "-m", "dint.train", "--data.store", store, "--run.dir", run_dir, "--run.device", "cpu",
                              "--model.width", "8", "--model.hidden_layers", "1", "--train.steps", "4",
                              "--train.log_every", "1", "--teacher.strategy", "int", "--teacher.random_share", "0",
                              "--teacher.error_refresh", "1", "--teacher.topk", topk,
                              "--eval.reconstruction", "false", *NO_VIEWS_ARGS)
            assert result.returncode == 0, result.stderr
            lines = [json_.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            sent[topk, side] = [l["select_bytes_per_rank"] for l in lines]
    assert sent["threshold", 32] == sent["threshold", 128]
    assert all(0 < b < 20_000 for line in sent["threshold", 32] for b in line)
    # gather's (each rank's local top-k: k (score, id) pairs of 12 bytes) exceed the histograms at 128x128
    k = round(0.1 * 128 * 128)  # teacher.ratio's default
    assert all(b >= 12 * k > 2 * max(sent["threshold", 128][0]) for line in sent["gather", 128] for b in line)
