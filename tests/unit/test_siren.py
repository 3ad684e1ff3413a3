"""The SIREN as built (dint.fields.siren): weight scaling (model.init_scale) is what it says, and
model.compile = auto compiles on CUDA only; a compiled model training: tests/integration/test_speed_features.py."""

from __future__ import annotations

import math

import pytest
import torch

from dint.core.config import ModelConfig
from dint.fields.model import compile_wanted
from dint.fields.siren import Siren, build_siren


def old_siren(in_features, out_features, width, hidden_layers, w0=30.0, w0_first=30.0) -> torch.nn.Module:
    """The model as dint made it before model.init_scale existed, written out here."""
    model = Siren.__new__(Siren)
    torch.nn.Module.__init__(model)
    layers = []
    for i in range(hidden_layers):
        fan_in = in_features if i == 0 else width
        linear = torch.nn.Linear(fan_in, width)
        bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / w0
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound)
        layer = torch.nn.Module()
        layer.linear, layer.w0 = linear, (w0_first if i == 0 else w0)
        layers.append(layer)
    head = torch.nn.Linear(width, out_features)
    with torch.no_grad():
        head.weight.uniform_(-math.sqrt(6.0 / width) / w0, math.sqrt(6.0 / width) / w0)
    return torch.nn.ModuleList([*[layer.linear for layer in layers], head])


def linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_init_scale_one_is_the_model_as_before(tmp_path):
    info = type("Info", (), {"ndim": 2, "channels": 3})()
    torch.manual_seed(7)
    reference = linears(old_siren(2, 3, 32, 3))
    torch.manual_seed(7)
    model = linears(build_siren(ModelConfig(width=32, hidden_layers=3), info))
    assert len(model) == len(reference) == 4
    for new, old in zip(model, reference, strict=True):
        assert torch.equal(new.weight, old.weight) and torch.equal(new.bias, old.bias)


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
def test_init_scale_multiplies_every_weight_but_the_last_layers(scale):
    info = type("Info", (), {"ndim": 2, "channels": 1})()
    torch.manual_seed(3)
    plain = linears(build_siren(ModelConfig(width=64, hidden_layers=3), info))
    torch.manual_seed(3)
    scaled = linears(build_siren(ModelConfig(width=64, hidden_layers=3, init_scale=scale), info))
    bounds = [1.0 / 2] + [math.sqrt(6.0 / 64) / 30.0] * 2  # first layer 1/fan_in, then sqrt(6/fan_in)/w0
    for layer, (a, b) in enumerate(zip(plain, scaled, strict=True)):
        last = layer == len(plain) - 1
        assert torch.equal(b.weight, a.weight if last else a.weight * scale)
        assert torch.equal(b.bias, a.bias)
        if not last:  # U(-s bound, s bound): inside, and reaching near the ends
            bound = scale * bounds[layer]
            assert b.weight.abs().max() <= bound and b.weight.abs().max() > 0.9 * bound
            assert abs(b.weight.mean().item()) < 0.1 * bound


@pytest.mark.parametrize(
    "setting, device, wanted",
    [("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False)],
)
def test_model_compile_auto_compiles_on_cuda_only(setting, device, wanted):
    assert compile_wanted(setting, torch.device(device)) is wanted
