"""Saving and loading trained models.

`model.pt` holds tensors and plain data only (the config as a dict, the store's
description), so it loads with `torch.load(weights_only=True)` and cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dint.config import Config
from dint.store import SignalInfo


def save_model(path: Path, model: nn.Module, config: Config, info: SignalInfo) -> Path:
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "signal": info.to_attrs(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous model.pt whole
    return path


def load_model_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
