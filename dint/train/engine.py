"""Update engines: how gradients are synchronised and the optimizer stepped.

Both engines average gradients over ranks (DDP all-reduces them in buckets during the
backward pass; DeepSpeed does the same in its own engine), run Adam and the learning-rate
schedule, and expose `module`, the bare model, for no-grad passes and saving.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import nn

from dint.core.config import TrainConfig
from dint.core.packages import need
from dint.distributed.collectives import TRAFFIC, DistInfo, pick_device
from dint.train.schedule import build_lr_scheduler

LossFn = Callable[[nn.Module], torch.Tensor]


class _Engine:
    """What both engines share: Adam and the schedule, their state, the learning rate, and the
    bytes of the gradient exchange."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    exchanges: bool = False  # gradients go to other ranks (more than one)

    def _count_gradients(self) -> None:
        """The gradients this rank hands to the step's exchange (all-reduce, or ZeRO's
        reduce-scatter), in TRAFFIC's "gradients": every trainable parameter's, once a step."""
        if self.exchanges:
            with TRAFFIC.counting("gradients"):
                TRAFFIC.add(sum(p.numel() * p.element_size() for p in self.module.parameters() if p.requires_grad))

    def _build_optimizer(self, model: nn.Module, config: TrainConfig) -> None:
        # A field may set Adam up its own way (a hash grid: the table in a group of its own at a
        # higher learning rate); the first group's learning rate is the run's (metrics' lr).
        settings = model.adam_settings(config.lr) if hasattr(model, "adam_settings") else {}
        self.optimizer = torch.optim.Adam(**{"params": model.parameters(), "lr": config.lr, **settings})
        self.scheduler = build_lr_scheduler(self.optimizer, config.steps, config.lr_schedule)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def scale_lr(self, scale: float) -> None:
        """From now on (this step included) the learning rate is `scale` times the schedule's."""
        for factor in self.scheduler.lr_lambdas:
            factor.scale = scale
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)

    def state_dict(self) -> dict:
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
        }

    def state_form(self) -> dict:
        """The form state_dict() takes once training has begun (what a checkpoint is checked
        against): torch makes the optimizer's moments at its first step, so they are taken from a
        copy of the optimizer after one step, on copies of the parameters."""
        state = self.state_dict()
        copies = [nn.Parameter(p.detach().clone()) for p in self.module.parameters()]
        probe = torch.optim.Adam(copies)
        try:
            probe.load_state_dict(state["optimizer"])  # the same groups and settings, no moments yet
        except (ValueError, KeyError, TypeError):
            return state  # an optimizer of another form: as it is now
        for copy_ in copies:
            copy_.grad = torch.zeros_like(copy_)
        probe.step()
        return {**state, "optimizer": probe.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # The optimizer's settings (betas, eps, amsgrad...) are this run's, not state: a checkpoint
        # that says otherwise was not written by a run like this one. Only the rate moves.
        mine, saved = self.optimizer.state_dict()["param_groups"], state["optimizer"]["param_groups"]
        moving = {"params", "lr", "initial_lr"}
        if len(saved) != len(mine) or any(
            {k: v for k, v in s.items() if k not in moving} != {k: v for k, v in m.items() if k not in moving}
            for s, m in zip(saved, mine)
        ):
            raise ValueError("the optimizer's settings differ from this run's")
        self.module.load_state_dict(state["model"])
        self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for factor in self.scheduler.lr_lambdas:  # a schedule that cannot give a rate fails here, not at a step
            factor(self.scheduler.last_epoch + 1)

    def optimizer_state_bytes(self) -> int:
        """Bytes of Adam's state this rank holds (all of it with DDP, its share with ZeRO 1 and 2)."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # ZeRO's: torch Adam over the partitions
        return sum(
            value.numel() * value.element_size()
            for entry in optimizer.state.values()
            for value in entry.values()
            if torch.is_tensor(value)
        )

    def _optimizer_state(self) -> dict:
        return copy.deepcopy(self.optimizer.state_dict())

    def _load_optimizer_state(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved)


class DDPEngine(_Engine):
    def __init__(self, model: nn.Module, dist_info: DistInfo, config: TrainConfig, timers: dict | None = None):
        self.module = model
        self._build_optimizer(model, config)
        self._optimizer_timer = timers["optimizer"] if timers else nullcontext
        self.exchanges = dist_info.world_size > 1
        if dist_info.distributed:
            device_ids = [dist_info.device] if dist_info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
            if timers:
                self.model.register_comm_hook(timers["allreduce"], _timed_allreduce)
        else:
            self.model = model

    def step(self, parts: Iterable[LossFn]) -> torch.Tensor:
        """One optimizer step on the sum of the parts' losses, each part backward on its own.

        Gradients accumulate locally (DDP's no_sync) and are averaged over ranks once, with
        the last part, so activation memory is that of one part; every rank runs at least
        one part, so every rank joins the all-reduce.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total, pending = None, None
        for part in parts:
            if pending is not None:
                with self._no_sync():
                    total = self._backward(pending, total)
            pending = part
        total = self._backward(pending, total)
        self._count_gradients()
        with self._optimizer_timer():
            self.optimizer.step()
            self.scheduler.step()
        return total

    def _backward(self, part: LossFn, total: torch.Tensor | None) -> torch.Tensor:
        loss = part(self.model)
        loss.backward()
        return loss.detach() if total is None else total + loss.detach()

    def _no_sync(self):
        return self.model.no_sync() if isinstance(self.model, nn.parallel.DistributedDataParallel) else nullcontext()


def _timed_allreduce(timer, bucket):  # unannotated: DDP checks annotations, and these are strings here
    """DDP's default gradient sync (mean over ranks), waited for inside `timer`.

    Waiting in the hook gives up overlapping the all-reduce with the rest of the backward,
    which a SIREN's few parameters (one bucket, ready only at the end) never had.
    """
    import torch.distributed as dist

    tensor = bucket.buffer()
    with timer():
        tensor.div_(dist.get_world_size())
        dist.all_reduce(tensor)
    future = torch.futures.Future()
    future.set_result(tensor)
    return future


class DeepSpeedEngine(_Engine):
    """DeepSpeed's engine over dint's own process group: ZeRO stage 0, or (train.zero_stage) 1 or 2,
    which divide Adam's state (and with 2 the gradients) over the ranks.

    DeepSpeed picks its "accelerator" (device family and collective backend) once, at
    import, from DS_ACCELERATOR or by probing; it is set here from the device dint chose so
    the two cannot disagree (a CUDA machine with run.device = "cpu", say). The CPU
    accelerator talks gloo unless Intel's oneccl_bindings_for_pytorch is installed, and
    since the group already exists, deepspeed.initialize wraps it (TorchBackend) instead of
    creating one: the collectives are those of dint's gloo (CPU) or nccl (CUDA) group.
    """

    def __init__(self, model: nn.Module, dist_info: DistInfo, config: TrainConfig):
        # DeepSpeed insists on a process group, even for one process: init_distributed makes
        # one (group_required, see needs_process_group) before the engine is built.
        deepspeed = _import_deepspeed(dist_info.device)
        self._build_optimizer(model, config)
        self.zero_stage = config.zero_stage
        self._params = list(model.parameters())  # the order of torch Adam's state_dict
        self._group_indices = _group_indices(self.optimizer, self._params)
        settings = {
            # One "micro-batch" per step: the teacher's selection is the whole batch, and
            # the loss is already scaled so that the mean over ranks is the global mean.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": config.zero_stage},
            "zero_allow_untested_optimizer": True,  # torch's Adam, divided over the ranks by ZeRO 1 and 2
            "gradient_clipping": 0.0,
            "steps_per_print": None,  # no per-step progress lines (0 would divide by zero)
            "wall_clock_breakdown": False,
            "dump_state": False,
        }
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            config=settings,
            dist_init_required=False,
        )
        self.module = self.model.module
        self.exchanges = dist_info.world_size > 1

    def step(self, parts: Iterable[LossFn]) -> torch.Tensor:
        # DeepSpeed accumulates over a fixed number of micro-steps, not a varying one: the
        # parts are summed into one backward (same update, activations of all parts at once).
        loss = sum(part(self.model) for part in parts)
        self.model.backward(loss)  # backward, then the gradient all-reduce (mean over ranks)
        self._count_gradients()
        self.model.step()  # optimizer step, lr schedule step and zero_grad
        return loss.detach()

    def _optimizer_state(self) -> dict:
        """With ZeRO, the partitions of Adam's state gathered into torch Adam's own state_dict (as
        DDP's), so a checkpoint resumes on any number of ranks and with either engine (collective)."""
        return self._gathered_optimizer_state() if self.zero_stage else super()._optimizer_state()

    def _load_optimizer_state(self, saved: dict) -> None:
        if self.zero_stage:
            self._scatter_optimizer_state(saved)
        else:
            super()._load_optimizer_state(saved)

    def _gathered_optimizer_state(self) -> dict:
        from deepspeed.utils import safe_get_full_optimizer_state

        base = self.optimizer.optimizer  # torch's Adam over this rank's flat partitions
        steps = [entry["step"] for entry in base.state.values() if "step" in entry]
        if steps:  # DeepSpeed links each parameter to its share of Adam's state after the first group's
            self._link_optimizer_state()  # first step: the later groups' state did not exist yet
        state = {}
        for index, param in enumerate(self._params):  # every rank in the same order: each gather is collective
            if steps:
                moments = {key: safe_get_full_optimizer_state(param, key).detach().cpu().clone() for key in ADAM_STATE}
                state[index] = {"step": steps[0].detach().cpu().clone(), **moments}
        groups = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": indices}
            for group, indices in zip(base.param_groups, self._group_indices)
        ]
        return {"state": state, "param_groups": groups}

    def _scatter_optimizer_state(self, saved: dict) -> None:
        """Each rank takes its partition of torch Adam's state_dict `saved` (no state: a fresh Adam)."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        base = self.optimizer.optimizer
        step = next((float(entry["step"]) for entry in saved["state"].values()), 0.0)
        for group, saved_group in zip(base.param_groups, saved["param_groups"]):
            group["lr"] = saved_group["lr"]
            for flat in group["params"]:  # Adam's state exists from the first step on: made here if not yet
                device = flat.device if group.get("fused") or group.get("capturable") else "cpu"
                base.state[flat] = {
                    "step": torch.tensor(step, dtype=torch.float32, device=device),
                    **{key: torch.zeros_like(flat) for key in ADAM_STATE},
                }
        self._link_optimizer_state()
        for index, param in enumerate(self._params):
            safe_set_full_fp32_param(param, param.detach())  # ZeRO's fp32 copy of the weights just loaded
            for key in ADAM_STATE:
                value = saved["state"][index][key] if index in saved["state"] else torch.zeros_like(param)
                safe_set_full_optimizer_state(param, value.to(param.device), key)

    def _link_optimizer_state(self) -> None:
        """Point each parameter at its share of every group's Adam state (DeepSpeed's safe_* calls read it)."""
        self.optimizer._hp_optimizer_states_linked = False
        self.optimizer._lazy_init_hp_params_optimizer_state()


ADAM_STATE = ("exp_avg", "exp_avg_sq")


def _group_indices(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[list[int]]:
    """Per group of `optimizer`, the indices of its parameters in `params` (torch Adam's state_dict numbering)."""
    position = {id(p): i for i, p in enumerate(params)}
    return [[position[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _import_deepspeed(device: torch.device):
    """Import deepspeed with its accelerator (device family, collective backend) matching `device`."""
    wanted = "cuda" if device.type == "cuda" else "cpu"
    if "deepspeed" not in sys.modules:
        os.environ["DS_ACCELERATOR"] = wanted  # read once, by deepspeed's first get_accelerator()
    deepspeed = need("deepspeed", "deepspeed", 'train.engine = "deepspeed"')
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != wanted:  # imported earlier, for another device
        if wanted == "cuda":
            from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
        else:
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
        set_accelerator(Accelerator())
    if wanted == "cpu":
        # The CPU accelerator's TorchBackend JIT-compiles a shared-memory all-reduce kernel
        # (a minute of C++ on first use, and a compiler on every node) that only
        # inference_all_reduce uses; training's gradient all-reduce is torch.distributed's
        # on the gloo group either way. Marking it incompatible skips the build.
        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
    return deepspeed


def import_engine_library(name: str, device_preference: str) -> None:
    """Import the engine's library before the process group exists (call before init_distributed).

    DeepSpeed binds the default group into default arguments when first imported
    (deepspeed.comm.torch's barrier). Bound to a live group, those would keep it alive past
    destroy_distributed(), and with it gloo threads that may then outlive the interpreter.
    """
    if name == "deepspeed":
        _import_deepspeed(pick_device(device_preference, local_rank=0))


def needs_process_group(name: str) -> bool:
    """DeepSpeed wants a process group even in one process (init_distributed's group_required)."""
    return name == "deepspeed"


def build_engine(
    config: TrainConfig, model: nn.Module, dist_info: DistInfo, timers: dict | None = None
) -> DDPEngine | DeepSpeedEngine:
    """`timers` (optional): DDP times its gradient all-reduce in timers["allreduce"] and the
    optimizer step in timers["optimizer"]; DeepSpeed's steps are not split."""
    if config.engine == "deepspeed":
        return DeepSpeedEngine(model, dist_info, config)
    return DDPEngine(model, dist_info, config, timers)
