"""The teacher's schedules: how many points (ratio_at) and how often (is_selection_step); and
the learning-rate schedules (dint.train.schedule).

Expected values are the paper's, written out by hand or computed here with exact rational
arithmetic, never with the functions under test.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import pairwise

import pytest
import torch

from dint.teaching.teacher import interval_at, is_selection_step, ratio_at
from dint.train.schedule import ScaledFactor, build_lr_scheduler, lr_factor

TOTAL = 1000
RATIO = 0.2


# --- ratio schedules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.2),
        (1, 0.2),
        (99, 0.2),  # stage 0: steps 0..99
        (100, 0.28),
        (199, 0.28),  # stage 1
        (200, 0.36),
        (550, 0.6),
        (599, 0.6),  # stage 5
        (900, 0.92),
        (999, 0.92),  # last stage: never reaches 1 inside training
    ],
)
def test_step_schedule_values(step, expected):
    assert ratio_at(step, TOTAL, RATIO, "step") == pytest.approx(expected, abs=1e-12)


def test_step_schedule_has_ten_equal_stages():
    values = [ratio_at(s, TOTAL, RATIO, "step") for s in range(TOTAL)]
    # Constant within each block of total/10 steps, rising by (1 - ratio)/10 between blocks.
    for stage in range(10):
        block = values[stage * 100 : (stage + 1) * 100]
        assert max(block) == min(block)
        assert block[0] == pytest.approx(RATIO + (1 - RATIO) * stage / 10, abs=1e-12)
    assert len({round(v, 9) for v in values}) == 10


def test_step_schedule_uneven_total():
    # total 1005: stage s covers steps with floor(step * 10 / 1005) == s
    assert ratio_at(100, 1005, 0.5, "step") == pytest.approx(0.5)
    assert ratio_at(101, 1005, 0.5, "step") == pytest.approx(0.55)
    assert ratio_at(1004, 1005, 0.5, "step") == pytest.approx(0.95)


SQRT_HALF = math.sqrt(0.5)


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 0, 0.2),
        ("constant", 500, 0.2),
        ("constant", 999, 0.2),
        ("linear", 0, 0.2),
        ("linear", 250, 0.4),
        ("linear", 500, 0.6),
        ("linear", 750, 0.8),
        ("linear", 999, 0.2 + 0.8 * 0.999),
        ("linear", 1000, 1.0),
        # cosine: ratio + (1 - ratio) (1 - cos(pi t/T)) / 2, slow start, from ratio up to 1
        ("cosine", 0, 0.2),
        ("cosine", 250, 0.2 + 0.8 * (1 - SQRT_HALF) / 2),
        ("cosine", 500, 0.6),
        ("cosine", 750, 0.2 + 0.8 * (1 + SQRT_HALF) / 2),
        ("cosine", 1000, 1.0),
        # reverse-cosine: from 1 down to ratio
        ("reverse-cosine", 0, 1.0),
        ("reverse-cosine", 250, 0.2 + 0.8 * (1 + SQRT_HALF) / 2),
        ("reverse-cosine", 500, 0.6),
        ("reverse-cosine", 750, 0.2 + 0.8 * (1 - SQRT_HALF) / 2),
        ("reverse-cosine", 1000, 0.2),
    ],
)
def test_ratio_schedule_endpoints_and_midpoints(schedule, step, expected):
    assert ratio_at(step, TOTAL, RATIO, schedule) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("schedule, direction", [("linear", 1), ("cosine", 1), ("step", 1), ("reverse-cosine", -1)])
def test_ratio_schedules_are_monotone_and_bounded(schedule, direction):
    values = [ratio_at(s, TOTAL, RATIO, schedule) for s in range(TOTAL)]
    assert all(RATIO - 1e-12 <= v <= 1.0 + 1e-12 for v in values)
    diffs = [direction * (b - a) for a, b in pairwise(values)]
    assert min(diffs) >= -1e-12
    assert values[-1] != values[0]


def test_cosine_is_slow_at_both_ends():
    # The first and last 10% of steps change the ratio less than the middle 10%.
    start = ratio_at(100, TOTAL, RATIO, "cosine") - ratio_at(0, TOTAL, RATIO, "cosine")
    middle = ratio_at(550, TOTAL, RATIO, "cosine") - ratio_at(450, TOTAL, RATIO, "cosine")
    end = ratio_at(1000, TOTAL, RATIO, "cosine") - ratio_at(900, TOTAL, RATIO, "cosine")
    assert start < middle / 5 and end < middle / 5
    assert start == pytest.approx(end, abs=1e-12)


def test_unknown_schedules_raise():
    with pytest.raises(ValueError):
        ratio_at(0, TOTAL, RATIO, "exponential")
    with pytest.raises(ValueError):
        interval_at(0, TOTAL, "sometimes", 5)


# --- interval schedules ------------------------------------------------------------------

# total = 1000: steps 0..249 are dense (25%); the remaining 750 split into 5 phases of 150.
PHASES_1000 = [  # (first step, end step exclusive, interval)
    (250, 400, 10),
    (400, 550, 20),
    (550, 700, 30),
    (700, 850, 40),
    (850, 1000, 50),
]


def selection_steps(total, schedule="incremental", interval=0):
    return [s for s in range(total) if is_selection_step(s, total, schedule, interval)]


def test_incremental_selection_steps_total_1000():
    expected = list(range(0, 250))
    expected += list(range(250, 400, 10))  # 250, 260, ..., 390: 15
    expected += list(range(400, 550, 20))  # 400, 420, ..., 540: 8
    expected += [550, 580, 610, 640, 670]
    expected += [700, 740, 780, 820]
    expected += [850, 900, 950]
    assert len(expected) == 250 + 15 + 8 + 5 + 4 + 3 == 285
    got = selection_steps(TOTAL)
    assert got == expected
    assert len(got) == 285


@pytest.mark.parametrize(
    "step, selects",
    [
        (248, True),
        (249, True),  # last dense steps
        (250, True),
        (251, False),
        (259, False),
        (260, True),
        (390, True),
        (391, False),
        (399, False),
        (400, True),
        (410, False),
        (420, True),
        (540, True),
        (549, False),
        (550, True),
        (560, False),
        (570, False),
        (580, True),
        (670, True),
        (699, False),
        (700, True),
        (730, False),
        (740, True),
        (820, True),
        (849, False),
        (850, True),
        (860, False),
        (880, False),
        (900, True),
        (950, True),
        (999, False),
    ],
)
def test_incremental_phase_boundaries_total_1000(step, selects):
    assert is_selection_step(step, TOTAL, "incremental", 0) is selects


@pytest.mark.parametrize(
    "step, every",
    [
        (0, 1),
        (249, 1),
        (250, 10),
        (399, 10),
        (400, 20),
        (549, 20),
        (550, 30),
        (699, 30),
        (700, 40),
        (849, 40),
        (850, 50),
        (999, 50),
    ],
)
def test_incremental_interval_in_force_total_1000(step, every):
    assert interval_at(step, TOTAL, "incremental", 0) == every


def expected_incremental(total):
    """Selection steps, computed with exact fractions: each phase counts from its first step."""
    dense = math.floor(Fraction(total, 4))
    rest = Fraction(total - dense)
    starts = [dense + math.ceil(i * rest / 5) for i in range(5)] + [total]
    steps = list(range(dense))
    for i, every in enumerate((10, 20, 30, 40, 50)):
        steps += list(range(starts[i], starts[i + 1], every))
    return steps


@pytest.mark.parametrize("total", [10, 37, 101, 999, 1001, 1003, 2000, 7919])
def test_incremental_matches_exact_phase_table(total):
    assert selection_steps(total) == expected_incremental(total)


@pytest.mark.parametrize("total", [1001, 1003, 7919])
def test_incremental_each_phase_starts_with_a_selection(total):
    previous = None
    for s in range(total):
        every = interval_at(s, total, "incremental", 0)
        if every != previous:
            assert is_selection_step(s, total, "incremental", 0), (total, s, every)
        previous = every


def test_dense_selects_every_step():
    assert selection_steps(TOTAL, "dense", 7) == list(range(TOTAL))
    assert all(interval_at(s, TOTAL, "dense", 7) == 1 for s in (0, 500, 999))


@pytest.mark.parametrize("interval", [1, 7, 50])
def test_fixed_selects_every_interval(interval):
    assert selection_steps(TOTAL, "fixed", interval) == list(range(0, TOTAL, interval))
    assert interval_at(999, TOTAL, "fixed", interval) == interval


# --- learning-rate schedules ------------------------------------------------------------


def test_constant_lr_is_one_throughout():
    assert {lr_factor(s, TOTAL, "constant") for s in (0, 1, 500, 999, 1000, 5000)} == {1.0}


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (250, (1 + SQRT_HALF) / 2), (500, 0.5), (750, (1 - SQRT_HALF) / 2), (1000, 0.0), (1500, 0.0)],
)
def test_cosine_lr_from_one_to_zero_at_the_last_step(step, expected):
    assert lr_factor(step, TOTAL, "cosine") == pytest.approx(expected, abs=1e-12)


def test_cosine_lr_never_rises_and_stays_in_zero_one():
    values = [lr_factor(s, TOTAL, "cosine") for s in range(TOTAL + 50)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b <= a for a, b in pairwise(values))
    assert values[TOTAL:] == [0.0] * 50  # past the end: held at zero, not rising again
    assert lr_factor(1, TOTAL, "cosine") < 1.0 and lr_factor(TOTAL - 1, TOTAL, "cosine") > 0.0


def test_unknown_lr_schedule_raises():
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_factor(0, TOTAL, "linear")


def test_the_scheduler_sets_lr_times_the_factor_and_saves_the_rollback_scale():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, 4, "cosine")
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * lr_factor(s, 4, "cosine") for s in range(5)], abs=1e-12)
    assert seen[0] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.0, abs=1e-12)
    # A rollback halves the scale; the scale travels with the scheduler's state (a checkpoint).
    factor = scheduler.lr_lambdas[0]
    assert isinstance(factor, ScaledFactor)
    factor.scale *= 0.5
    state = scheduler.state_dict()
    other = build_lr_scheduler(torch.optim.SGD([weight], lr=0.1), 4, "cosine")
    other.load_state_dict(state)
    assert other.lr_lambdas[0].scale == 0.5
    assert other.lr_lambdas[0](2) == pytest.approx(0.5 * lr_factor(2, 4, "cosine"))
