"""SIREN (Sitzmann et al. 2020): an MLP with sine activations, coordinates in, signal out.

`hidden_layers` counts the sine layers, so hidden_layers=5 is the paper's "5 hidden layers
of 256, 6 layers in all" (5 sine layers and a linear output layer).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dint.core.config import ModelConfig
    from dint.data.store import SignalInfo


class SineLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, w0: float, first: bool, init_scale: float = 1.0):
        super().__init__()
        self.w0 = w0
        self.linear = nn.Linear(in_features, out_features)
        # The first layer spans [-1, 1] inputs over several periods of sin(w0 x); deeper layers
        # keep pre-activations ~ U(-sqrt(6), sqrt(6)) so the sine stays in its useful range.
        bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            if init_scale != 1.0:  # weight scaling: larger weights fit high frequencies sooner
                self.linear.weight.mul_(init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 256,
        hidden_layers: int = 5,
        w0: float = 30.0,
        w0_first: float = 30.0,
        init_scale: float = 1.0,
    ):
        super().__init__()
        layers = [SineLayer(in_features, width, w0_first, first=True, init_scale=init_scale)]
        layers += [SineLayer(width, width, w0, first=False, init_scale=init_scale) for _ in range(hidden_layers - 1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)
        bound = math.sqrt(6.0 / width) / w0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(coords))


def siren_macs(in_features: int, out_features: int, hidden_layers: int, width: int) -> int:
    """Multiply-adds per point of a forward pass (= its weights)."""
    return in_features * width + (hidden_layers - 1) * width * width + width * out_features


def siren_params(in_features: int, out_features: int, hidden_layers: int, width: int) -> int:
    return siren_macs(in_features, out_features, hidden_layers, width) + hidden_layers * width + out_features


def siren_training_bytes(config: ModelConfig, info: SignalInfo, micro_batch: int) -> int:
    """Memory a training step needs for the model: weights, gradients and Adam's two moments
    (4 floats a parameter), and the activations of one micro-batch kept for the backward
    (about 3 floats per neuron and point)."""
    params = siren_params(info.ndim, info.channels, config.hidden_layers, config.width)
    return 16 * params + 12 * micro_batch * config.width * config.hidden_layers


def build_siren(config: ModelConfig, info: SignalInfo) -> Siren:
    """The SIREN of `config` for `info`'s coordinates in and channels out."""
    return Siren(
        info.ndim, info.channels, config.width, config.hidden_layers, config.w0, config.w0_first, config.init_scale
    )
