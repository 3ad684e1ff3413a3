"""The loss of one step: mean squared error over the teacher's global selection."""

from __future__ import annotations

import torch


def selection_loss(
    model: torch.nn.Module,
    *,
    coords: torch.Tensor,
    targets: torch.Tensor,
    global_count: int | float | torch.Tensor,
    world_size: int,
    weights: torch.Tensor | None = None,
    local: torch.Tensor | slice | None = None,
    remember=None,
) -> torch.Tensor:
    """Mean squared error over the *global* selection, as this rank's share of it.

    Engines average gradients over ranks, so each rank's sum is scaled by
    world_size / global_count: the average then equals the gradient of the global mean
    however the selected points fall across ranks (a rank holding none adds zero, but
    still joins the gradient all-reduce). Summed over micro-batches, the same holds.
    `weights` (importance sampling) weigh each point; `remember(local, f - y)` keeps the
    errors this forward saw, before the update (error reuse).
    """
    diff = model(coords) - targets
    if remember is not None:
        remember(local, diff)
    per_point = diff.square().mean(dim=1)
    if weights is not None:
        per_point = per_point * weights
    scale = world_size / global_count  # a device scalar for soft mining: cast as a Python number would be
    return per_point.sum() * (scale.to(per_point.dtype) if isinstance(scale, torch.Tensor) else scale)
