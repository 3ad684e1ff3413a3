"""Learning-rate schedules as plain functions of the step (multipliers of train.lr)."""

import math

import torch


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":  # decays to zero at the last step
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr schedule {schedule!r}")


class ScaledFactor:
    """The schedule's factor times `scale` (halved by each rollback). An object, not a lambda,
    so that LambdaLR's state_dict saves the scale with the checkpoint."""

    def __init__(self, total_steps: int, schedule: str):
        self.total_steps, self.schedule, self.scale = total_steps, schedule, 1.0

    def __call__(self, step: int) -> float:
        return self.scale * lr_factor(step, self.total_steps, self.schedule)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ScaledFactor(total_steps, schedule))
