"""The field a run trains, as `model.field` chooses: a SIREN (dint.fields.siren) or a hash grid
(dint.fields.hashgrid). Training, checkpoints and dint render build and size it here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dint.fields.hashgrid import build_hashgrid, hashgrid_params, hashgrid_training_bytes, resolved_activation
from dint.fields.siren import build_siren, siren_params, siren_training_bytes

if TYPE_CHECKING:
    from dint.core.config import ModelConfig
    from dint.data.store import SignalInfo


def build_model(config: ModelConfig, info: SignalInfo) -> nn.Module:
    """The field of `config` for `info`'s coordinates in and channels out (training and dint render)."""
    return build_hashgrid(config, info) if config.field == "hashgrid" else build_siren(config, info)


def parameter_count(config: ModelConfig, info: SignalInfo) -> int:
    if config.field == "hashgrid":
        return hashgrid_params(config, info)
    return siren_params(info.ndim, info.channels, config.hidden_layers, config.width)


def training_bytes(config: ModelConfig, info: SignalInfo, micro_batch: int) -> int:
    """Memory a training step needs for the model: its weights, gradients and Adam's state, and
    what one micro-batch keeps for the backward."""
    if config.field == "hashgrid":
        return hashgrid_training_bytes(config, info, micro_batch)
    return siren_training_bytes(config, info, micro_batch)


def structure(config: ModelConfig, info: SignalInfo) -> dict:
    """The model keys that decide the field's parameters and function: a checkpoint resumes only
    into the same (a field's keys, and the activation it resolves to)."""
    if config.field == "hashgrid":
        keys = ("hash_levels", "hash_table_size_log2", "hash_features", "hash_base_resolution")
        keys += ("hash_finest_resolution", "hash_mlp_width", "hash_mlp_layers")
        return {
            "field": "hashgrid",
            **{k: getattr(config, k) for k in keys},
            "hash_activation": resolved_activation(config, info),
        }
    return {"field": "siren", "width": config.width, "hidden_layers": config.hidden_layers}


def check_training_memory(config: ModelConfig, info: SignalInfo, micro_batch: int, device: torch.device) -> None:
    """Refuse, before anything is loaded, a model whose training cannot fit (model.width = 1e6, or a
    hash table of 2^30 entries a level, say)."""
    from dint.core.resources import local_ranks, require_memory

    if config.field == "hashgrid":
        what = (
            f"model.hash_levels = {config.hash_levels}, model.hash_table_size_log2 = {config.hash_table_size_log2}, "
            f"model.hash_features = {config.hash_features} ({parameter_count(config, info):,} parameters: the table "
            "and its gradient and Adam's state, and a micro-batch's gathered features)"
        )
    else:
        what = (
            f"model.width = {config.width}, model.hidden_layers = {config.hidden_layers} (weights, gradients, "
            "Adam's state and a micro-batch's activations)"
        )
    require_memory(training_bytes(config, info, micro_batch), what, local_ranks(), device)


def compile_wanted(setting: str, device: torch.device) -> bool:
    """`model.compile`: on, off, or auto, which compiles on CUDA only: on a CPU the time
    compiling takes outweighs what it saves on all but long runs (benchmarks/: torch.compile)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compile_model(model: nn.Module, config: ModelConfig, device: torch.device) -> bool:
    """Compile `model`'s forward in place when `config.compile` asks for it on `device`, and say
    whether it did. Shapes are dynamic (selections vary in size from step to step), and the
    parameters and state_dict keys stay those of the eager model, so checkpoints, DDP and
    dint render see no difference. A backend that fails on this machine (no C++ compiler, no
    Triton) falls back to eager with torch's warning instead of stopping the run."""
    if not compile_wanted(config.compile, device):
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.compile(backend=config.compile_backend, dynamic=True)
    return True
