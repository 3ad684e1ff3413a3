"""Run under torchrun: every rank calls dint.teaching.teacher.select_topk on its own points.

Usage: torchrun --nproc_per_node=W topk_worker.py OUT.json

Every rank builds the same global score vectors from fixed seeds, deals the points out
to the ranks (a permutation, uneven sizes, sometimes a rank holding only low scores or
nothing at all), and passes its local scores with an `id_of` mapping local positions to
global ids. Rank 0 gathers each rank's selected global ids and writes them, together with
the global scores and ids, so the test can work out the expected selection on its own.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from dint.distributed.collectives import all_gather_varlen, destroy_distributed, init_distributed
from dint.teaching.teacher import select_topk, select_topk_threshold


def uneven_sizes(n: int, world: int, weights: list[float]) -> list[int]:
    weights = weights[:world]
    cuts = [round(n * sum(weights[: r + 1]) / sum(weights)) for r in range(world)]
    return [b - a for a, b in zip([0] + cuts[:-1], cuts)]


def deal(order: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start : start + size])
        start += size
    return parts


def make_cases(world: int) -> list[dict]:
    cases = []

    def add(name, scores, ids, owners, k):
        # owners: one tensor of positions (into scores / ids) per rank
        assert len(owners) == world
        assert sorted(torch.cat(owners).tolist()) == list(range(scores.shape[0]))
        cases.append(dict(name=name, scores=scores, ids=ids, owners=owners, k=k))

    g = torch.Generator().manual_seed(1234 + world)
    n = 1000
    scores = torch.rand(n, generator=g)
    ids = torch.arange(n)
    perm = torch.randperm(n, generator=g)
    sizes = uneven_sizes(n, world, [5, 3, 2, 4])
    for k in (0, 1, 37, 100, 450, 999, 1000, 1500):
        add(f"random_k{k}", scores, ids, deal(perm, sizes), k)

    # Large k: more than any one rank holds, but less than all.
    add("random_k_above_shares", scores, ids, deal(perm, uneven_sizes(n, world, [1, 1, 1, 1])), 700)

    # Sparse, shuffled global ids (not 0..n-1), float64 scores with negative values.
    scores64 = torch.randn(n, generator=g, dtype=torch.float64)
    sparse_ids = torch.randperm(5 * n, generator=g)[:n]
    add("sparse_ids_float64", scores64, sparse_ids, deal(torch.randperm(n, generator=g), sizes), 123)

    # The last rank holds only the lowest scores: it has no point in the top-k.
    by_score = torch.argsort(scores, descending=True)
    low = by_score[-300:][torch.randperm(300, generator=g)]
    high = by_score[:-300][torch.randperm(n - 300, generator=g)]
    high_sizes = uneven_sizes(n - 300, world - 1, [3, 1, 2])
    add("low_rank_has_none", scores, ids, deal(high, high_sizes) + [low], 50)

    # One rank (rank 1) holds no point at all.
    empty_sizes = {2: [1000, 0], 3: [600, 0, 400], 4: [600, 0, 250, 150]}[world]
    for k in (0, 10, 250, 1000):
        add(f"empty_rank_k{k}", scores, ids, deal(perm, empty_sizes), k)

    # Many exact ties: scores rounded to 5 values; k falls inside a tied group.
    tied = torch.round(torch.rand(n, generator=g) * 4) / 4
    tperm = torch.randperm(n, generator=g)
    for k in (1, 137, 500, 801):
        add(f"ties_k{k}", tied, ids, deal(tperm, sizes), k)
    # Ties with shuffled, sparse ids: "lower global id" must not mean "lower position".
    add("ties_sparse_ids", tied, sparse_ids, deal(tperm, uneven_sizes(n, world, [1, 4, 2, 3])), 333)
    # Every score equal.
    add("all_equal", torch.zeros(n), ids, deal(tperm, sizes), 333)
    # Integer-valued scores with heavy duplication on every rank, small n.
    small = torch.randint(0, 3, (40,), generator=g).to(torch.float32)
    add("small_ties", small, ids[:40], deal(torch.randperm(40, generator=g), uneven_sizes(40, world, [2, 1, 1, 1])), 17)
    return cases


def main() -> None:
    out = sys.argv[1]
    info = init_distributed("cpu")
    rank, world = info.rank, info.world_size
    assert dist.is_initialized() and world >= 2
    results = []
    for case in make_cases(world):
        mine = case["owners"][rank]
        local_scores = case["scores"][mine]
        local_ids = case["ids"][mine]
        picked = select_topk(local_scores, case["k"], local_ids.__getitem__)
        assert picked.dtype == torch.int64
        selected_ids = local_ids[picked]
        by_threshold = local_ids[select_topk_threshold(local_scores, case["k"], local_ids.__getitem__)]
        threshold_ids, threshold_owner = all_gather_varlen(by_threshold, torch.full_like(by_threshold, rank))
        per_rank_ids, owner = all_gather_varlen(selected_ids, torch.full_like(selected_ids, rank))
        (counts,) = all_gather_varlen(torch.tensor([selected_ids.shape[0]]))
        if rank == 0:
            results.append(
                dict(
                    name=case["name"],
                    k=case["k"],
                    scores=case["scores"].tolist(),
                    ids=case["ids"].tolist(),
                    held=[o.shape[0] for o in case["owners"]],
                    counts=counts.tolist(),
                    selected=[per_rank_ids[owner == r].tolist() for r in range(world)],
                    threshold=[sorted(threshold_ids[threshold_owner == r].tolist()) for r in range(world)],
                )
            )
    if rank == 0:
        with open(out, "w") as f:
            json.dump(dict(world_size=world, cases=results), f)
    destroy_distributed()


if __name__ == "__main__":
    main()
