"""Learning-rate schedules as plain functions of the step (multipliers of train.lr)."""

import math

import torch


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":  # decays to zero at the last step
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, schedule))
