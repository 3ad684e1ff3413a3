"""teacher.balance = "alltoall"'s transfer plan (dint.teaching.balance), a pure function of the
per-rank counts; the balanced training itself runs over real ranks in tests/integration/test_balance.py."""

from __future__ import annotations

import random

import pytest

from dint.teaching.balance import balanced_counts, transfer_plan


@pytest.mark.parametrize("seed", range(40))
def test_the_transfer_plan_evens_out_the_counts_moving_only_the_surplus(seed):
    rng = random.Random(seed)
    world_size = rng.randint(1, 9)
    counts = [rng.choice([0, rng.randint(0, 50), rng.randint(0, 5000)]) for _ in range(world_size)]
    moves = transfer_plan(counts)
    after = [counts[r] - sum(moves[r]) + sum(moves[s][r] for s in range(world_size)) for r in range(world_size)]
    assert after == balanced_counts(counts)
    assert sum(after) == sum(counts) and max(after) - min(after) <= 1
    targets = balanced_counts(counts)
    for r in range(world_size):
        sends, receives = sum(moves[r]), sum(moves[s][r] for s in range(world_size))
        assert moves[r][r] == 0 and not (sends and receives)  # a point moves at most once
        assert sends == max(0, counts[r] - targets[r]) and receives == max(0, targets[r] - counts[r])


@pytest.mark.parametrize(
    "counts, targets, moves",
    [
        ([10, 0], [5, 5], [[0, 5], [0, 0]]),
        ([0, 7, 0], [3, 2, 2], [[0, 0, 0], [3, 0, 2], [0, 0, 0]]),  # the first ranks take the remainder
        ([4, 4, 4], [4, 4, 4], [[0] * 3] * 3),  # already even: nothing moves
        ([9, 1, 9, 1], [5, 5, 5, 5], [[0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 0, 0]]),  # in rank order
        ([0], [0], [[0]]),
    ],
)
def test_the_transfer_plan_by_hand(counts, targets, moves):
    assert balanced_counts(counts) == targets
    assert transfer_plan(counts) == moves
