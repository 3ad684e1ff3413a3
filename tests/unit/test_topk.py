"""Exact top-k in one process (dint.teaching.teacher): `topk_ordered`, `select_topk` and the
threshold search against torch.topk and a brute-force sort; over real ranks,
tests/integration/test_select_topk.py.

The rule: the k points of largest score; among equal scores, the lower (global) id wins; a NaN
score counts as the worst error. Expected selections are computed here from the scores with
torch.topk or a plain sort.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from dint.distributed.collectives import TRAFFIC
from dint.teaching.teacher import (
    GATHER_LIMIT_BYTES,
    select_topk,
    select_topk_by,
    select_topk_threshold,
    top_draws,
    topk_method,
    topk_ordered,
    worst_first,
)


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


@pytest.mark.parametrize("seed", range(6))
def test_threshold_matches_gather_in_one_process(seed):
    g = torch.Generator().manual_seed(seed)
    n = 500
    scores = [
        torch.rand(n, generator=g),
        torch.round(torch.rand(n, generator=g) * 3) / 3,
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, -1.0] * 71 + [2.0] * 3),
    ][seed % 4]
    ids = torch.randperm(4 * n, generator=g)[:n]
    for k in (0, 1, 7, 100, 250, 499, 500, 600):
        gather = set(ids[select_topk(scores, k, lambda p: ids[p])].tolist())
        assert set(ids[select_topk_threshold(scores, k, lambda p: ids[p])].tolist()) == gather, k


def test_auto_gathers_while_the_traffic_is_small_and_uses_histograms_beyond():
    small_k = GATHER_LIMIT_BYTES // (12 * 8)  # 8 ranks x k (score, id) pairs of 12 bytes: at the limit
    assert select_topk_by("auto", small_k, 8) is select_topk
    assert select_topk_by("auto", small_k + 1, 8) is select_topk_threshold
    assert select_topk_by("auto", small_k + 1, 1) is select_topk  # one rank receives 1 x k
    assert select_topk_by("gather", 10**9, 64) is select_topk
    assert select_topk_by("threshold", 1, 1) is select_topk_threshold


# --- The threshold search against torch.topk -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("seed", range(3))
def test_threshold_selects_what_torch_topk_selects(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    distinct = torch.unique((torch.randn(3000, generator=g, dtype=torch.float64) * 10 ** (seed - 1)).to(dtype))
    scores = distinct[torch.randperm(distinct.numel(), generator=g)]  # no ties, in no order
    n = scores.numel()
    assert n > 500
    for k in (0, 1, 2, 17, n // 2, n - 1, n, n + 5):
        got = select_topk_threshold(scores, k, identity)
        assert got.dtype == torch.int64
        assert torch.equal(got, got.sort().values)  # ascending positions
        assert set(got.tolist()) == set(torch.topk(scores.double(), min(k, n)).indices.tolist()), k
        assert set(select_topk(scores, k, identity).tolist()) == set(got.tolist()), k


@pytest.mark.parametrize("seed", range(4))
def test_ties_across_several_radix_rounds_of_ids_go_to_the_lower_id(seed):
    """Ids up to 2^40 need several rounds of the tie search: still the brute-force rule."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (400,), generator=g).float()
    ids = torch.randint(0, 2**40, (400,), generator=g).unique()[:300]
    scores = scores[: ids.numel()][torch.randperm(ids.numel(), generator=g)]
    for k in (1, 50, 133, 299):
        expected = expected_by_rule(scores.tolist(), ids.tolist(), k)
        for select in (select_topk, select_topk_threshold):
            assert set(ids[select(scores, k, lambda p: ids[p])].tolist()) == expected, (select.__name__, k)


def test_negative_zero_ties_zero_and_nan_is_the_worst():
    scores = torch.tensor([-0.0, 0.0, -1.0, float("nan"), float("-inf"), float("inf")])
    assert worst_first(scores)[3] == torch.finfo(torch.float32).max
    ids = torch.tensor([5, 3, 0, 9, 1, 2])
    for select in (select_topk, select_topk_threshold, topk_ordered):
        # inf first, then the NaN (the largest finite value), then one of the zeros: id 3 beats id 5
        assert sorted(select(scores, 3, lambda p: ids[p]).tolist()) == [1, 3, 5], select.__name__
        assert sorted(select(scores, 4, lambda p: ids[p]).tolist()) == [0, 1, 3, 5], select.__name__


def test_topk_method_names_what_auto_picks():
    limit_k = GATHER_LIMIT_BYTES // 12
    assert topk_method("auto", limit_k, 1) == "gather" and topk_method("auto", limit_k + 1, 1) == "threshold"
    assert topk_method("auto", limit_k // 4, 4) == "gather" and topk_method("auto", limit_k // 4 + 1, 4) == "threshold"
    assert topk_method("gather", 10**12, 1024) == "gather" and topk_method("threshold", 1, 1) == "threshold"


# --- The same code inside a process group of one rank --------------------------------------


@pytest.fixture
def one_rank_group():
    """A real gloo group of world size 1 in this process: the collectives run, not their no-op path."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_one_rank_group_selects_what_no_group_selects(one_rank_group):
    g = torch.Generator().manual_seed(11)
    scores = torch.round(torch.rand(5000, generator=g) * 50) / 50  # ties
    ids = torch.randperm(20000, generator=g)[:5000]
    for k in (0, 1, 250, 4999, 5000):
        expected = expected_by_rule(scores.tolist(), ids.tolist(), k)
        for select in (select_topk, select_topk_threshold):
            assert set(ids[select(scores, k, lambda p: ids[p])].tolist()) == expected, (select.__name__, k)
    draws = torch.randint(0, 1000, (5000,), generator=g).double() / 1000
    got = top_draws(draws, 100, 5000, select_topk, identity)
    assert got.tolist() == sorted(expected_by_rule(draws.tolist(), list(range(5000)), 100))


def test_the_threshold_search_sends_the_same_bytes_whatever_the_number_of_points(one_rank_group):
    sent = {}
    for n in (1000, 100_000):
        scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
        TRAFFIC.new_step()
        with TRAFFIC.counting("select"):
            select_topk_threshold(scores, n // 10, identity)
        sent[n] = TRAFFIC.step["select"]
    # the point count (8 bytes), then 4 rounds of a 256-bin int64 histogram for float32 scores
    assert sent[1000] == sent[100_000] == 8 + 4 * 256 * 8
    TRAFFIC.new_step()
    with TRAFFIC.counting("select"):
        select_topk(torch.rand(1000), 100, identity)
    assert TRAFFIC.step["select"] == 8 + 100 * 4 + 100 * 8  # the sizes, then k float32 scores and int64 ids
