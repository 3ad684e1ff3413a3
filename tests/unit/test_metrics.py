"""Run logging's pure parts (dint.train.metrics): which steps are logged and evaluated, the
selection steps kept as runs, and the time a quality curve first reaches a target."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dint.core.config import Config
from dint.teaching.teacher import is_selection_step
from dint.train.evaluation import Evaluator
from dint.train.metrics import MetricsLogger, StepRuns, Timers, quality_curve, time_to_reach

# --- StepRuns ---------------------------------------------------------------------------------


def runs_of(steps: list[int]) -> StepRuns:
    runs = StepRuns()
    for step in steps:
        runs.add(step)
    return runs


def test_every_step_is_one_run():
    runs = runs_of(list(range(1, 1001)))
    assert runs.runs == [[1, 1000, 1]] and runs.steps() == list(range(1, 1001))


def test_a_fixed_interval_is_one_run_and_a_schedule_a_few():
    assert runs_of(list(range(3, 300, 7))).runs == [[3, 297, 7]]
    incremental = [s + 1 for s in range(1000) if is_selection_step(s, 1000, "incremental", 0)]
    runs = runs_of(incremental)
    assert runs.steps() == incremental
    # Steps 0-249 dense, then phases of 10, 20, ... from step 250, 400, ...: in 1-based steps, a
    # phase's first selection often falls on the stride of the one before, so one run a phase.
    assert runs.runs == [[1, 251, 1], [261, 401, 10], [421, 541, 20], [551, 701, 30], [741, 821, 40], [851, 951, 50]]


@pytest.mark.parametrize("seed", range(20))
def test_any_increasing_steps_come_back_as_they_went_in(seed):
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, 500), rng.randint(0, 60)))
    assert runs_of(steps).steps() == steps


def test_runs_saved_in_a_checkpoint_go_on_where_they_stopped():
    before = runs_of([1, 2, 3, 10, 20])
    resumed = StepRuns(before.runs)  # what a checkpoint holds, as plain lists
    assert resumed.runs == before.runs and resumed.runs is not before.runs
    for step in (30, 40, 41):
        resumed.add(step)
    assert resumed.steps() == [1, 2, 3, 10, 20, 30, 40, 41]
    assert before.steps() == [1, 2, 3, 10, 20]  # the saved lists were copied, not shared
    assert StepRuns().steps() == [] and StepRuns(None).runs == []


# --- Quality curves ---------------------------------------------------------------------------


def test_time_to_reach_interpolates_between_evaluations():
    curve = [(1.0, 10.0), (3.0, 20.0), (4.0, 30.0)]
    assert time_to_reach(curve, 15.0) == pytest.approx(2.0)
    assert time_to_reach(curve, 20.0) == 3.0  # reached exactly at an evaluation
    assert time_to_reach(curve, 27.5) == pytest.approx(3.75)
    assert time_to_reach(curve, 5.0) == 1.0  # above the target at the first evaluation: that time
    assert time_to_reach(curve, 30.5) is None
    assert time_to_reach([], 1.0) is None


def test_time_to_reach_is_the_first_crossing():
    curve = [(1.0, 10.0), (2.0, 25.0), (3.0, 5.0), (4.0, 40.0)]
    assert time_to_reach(curve, 20.0) == pytest.approx(1 + 10 / 15)
    assert time_to_reach(curve, 30.0) == pytest.approx(3 + 25 / 35)


def test_an_exact_fit_is_reached_after_the_evaluation_below_the_target():
    reached = time_to_reach([(1.0, 10.0), (2.0, math.inf)], 20.0)
    assert reached is not None and 1.0 < reached <= 2.0


def test_quality_curve_keeps_the_evaluated_lines():
    lines = [
        {"step": 5, "train_seconds": 0.5, "psnr": None},
        {"step": 10, "train_seconds": 1.5, "psnr": 21.0},
        {"step": 15, "train_seconds": 2.0},
        {"step": 20, "train_seconds": 3.25, "psnr": 24.5},
    ]
    assert quality_curve(lines, "psnr") == [(1.5, 21.0), (3.25, 24.5)]
    assert quality_curve(lines, "psnr", by="step") == [(10, 21.0), (20, 24.5)]
    assert quality_curve(lines, "iou") == []


# --- Which steps are logged and evaluated -----------------------------------------------------


def cadences(steps: int, log_every: int, eval_every: int, run_dir: Path = Path("unused")):
    """The metrics logger and the evaluator of a run: each owns its cadence."""
    config = Config()
    config.metrics.log_every, config.eval.every = log_every, eval_every
    log = MetricsLogger(config.metrics, steps, run_dir, enabled=False, timers=Timers(torch.device("cpu")))
    evaluation = Evaluator(config.eval, SimpleNamespace(num_points=1), [], torch.device("cpu"), 1, 0, steps)
    return log, evaluation


def logged(log: MetricsLogger, evaluation: Evaluator, steps: int) -> list[int]:
    return [s for s in range(1, steps + 1) if log.due(s) or evaluation.due(s)]


def test_logged_steps_are_every_n_the_evaluations_and_the_last():
    log, evaluation = cadences(steps=23, log_every=5, eval_every=4)
    assert [s for s in range(1, 24) if evaluation.due(s)] == [4, 8, 12, 16, 20]  # the last: evaluated anyway
    assert logged(log, evaluation, 23) == [4, 5, 8, 10, 12, 15, 16, 20, 23]
    log, evaluation = cadences(steps=20, log_every=10, eval_every=4)  # the last step's evaluation is the final one
    assert [s for s in range(1, 21) if evaluation.due(s)] == [4, 8, 12, 16]
    assert logged(log, evaluation, 20) == [4, 8, 10, 12, 16, 20]
    log, evaluation = cadences(steps=10, log_every=100, eval_every=0)
    assert not any(evaluation.due(s) for s in range(1, 11))
    assert logged(log, evaluation, 10) == [10]


def test_a_disabled_logger_keeps_its_history_and_writes_nothing(tmp_path):
    log, _ = cadences(steps=10, log_every=1, eval_every=0, run_dir=tmp_path)
    for step in range(1, 6):
        log.log({"step": step})
    log.rewind(3)  # a rollback to step 3
    assert [r["step"] for r in log.history] == [1, 2, 3]
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_timers_add_up_and_save_their_seconds():
    timers = Timers(torch.device("cpu"))
    assert set(timers) == set(Timers.NAMES)
    with timers["select"]():
        sum(range(10000))
    with timers["select"]():
        pass
    assert timers["select"].seconds > 0 and timers["update"].seconds == 0
    state = timers.state_dict()
    restored = Timers(torch.device("cpu"))
    restored.load_state_dict({"select": 2.5})  # a checkpoint from before some timers existed
    assert restored.state_dict() == {**{name: 0.0 for name in Timers.NAMES}, "select": 2.5}
    assert state["select"] == timers["select"].seconds
