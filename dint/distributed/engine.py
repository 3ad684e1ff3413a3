"""Update engines: how gradients are synchronised and the optimizer stepped.

Both engines average gradients over ranks (DDP all-reduces them in buckets during the
backward pass; DeepSpeed does the same in its own engine), run Adam and the learning-rate
schedule, and expose `module`, the bare model, for no-grad passes and saving.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dint.components.lr_schedule import build_lr_scheduler
from dint.distributed.utils import DistInfo

LossFn = Callable[[nn.Module], torch.Tensor]


class DDPEngine:
    def __init__(self, model: nn.Module, dist_info: DistInfo, lr: float, total_steps: int, lr_schedule: str):
        self.module = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.scheduler = build_lr_scheduler(self.optimizer, total_steps, lr_schedule)
        if dist_info.distributed:
            device_ids = [dist_info.device] if dist_info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.model = model

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        loss = loss_fn(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, dist_info: DistInfo, lr: float, total_steps: int, lr_schedule: str):
        import deepspeed

        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = build_lr_scheduler(optimizer, total_steps, lr_schedule)
        config = {
            # One "micro-batch" per step: the teacher's selection is the whole batch.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 0},
            "steps_per_print": 0,
            "wall_clock_breakdown": False,
        }
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
            dist_init_required=False,
        )
        self.module = self.model.module

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        loss = loss_fn(self.model)
        self.model.backward(loss)
        self.model.step()  # optimizer step, lr schedule step and zero_grad
        return loss.detach()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def build_engine(name: str, model: nn.Module, dist_info: DistInfo, lr: float, total_steps: int,
                 lr_schedule: str) -> DDPEngine | DeepSpeedEngine:
    engine = {"ddp": DDPEngine, "deepspeed": DeepSpeedEngine}[name]
    return engine(model, dist_info, lr, total_steps, lr_schedule)
