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


def load_trained(path: Path) -> tuple[nn.Module, SignalInfo, dict]:
    """The model saved at `path`, the description of the signal it fits, and its config."""
    from dint.errors import DintError
    from dint.model import Siren

    if not path.is_file():
        raise DintError(f"{path}: no saved model (train first, or name a run folder holding model.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        info = SignalInfo.from_attrs(saved["signal"], str(path))
        m = saved["config"]["model"]
        model = Siren(info.ndim, info.channels, m["width"], m["hidden_layers"], m["w0"], m["w0_first"])
        model.load_state_dict(saved["model"])
    except DintError:
        raise
    except Exception as e:  # unpickling, a missing key or a shape mismatch: the file is not ours
        raise DintError(f"{path}: not a dint model file ({type(e).__name__}: {e})".splitlines()[0]) from None
    return model.eval(), info, saved["config"]
