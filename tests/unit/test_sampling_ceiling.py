"""experiments/sampling_ceiling.py's per-point scores, in one process."""

from __future__ import annotations

import torch
from conftest import REPO

from dint.fields.siren import Siren


def _sampling_ceiling():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampling_ceiling", REPO / "experiments" / "sampling_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sampling_ceiling_scores_are_each_points_error_and_gradient_norm():
    """experiments/sampling_ceiling.py's per-point gradient norms (from layer inputs and output
    gradients) equal per-sample autograd's; its errors are |f - y| summed over channels."""
    from torch.func import functional_call, grad, vmap

    ceiling = _sampling_ceiling()
    torch.manual_seed(0)
    model = Siren(in_features=2, out_features=3, hidden_layers=2, width=16, w0=30.0, w0_first=30.0)
    coords, targets = torch.rand(40, 2) * 2 - 1, torch.rand(40, 3) * 2 - 1
    params = {name: p.detach() for name, p in model.named_parameters()}

    def point_loss(p, c, t):
        return (functional_call(model, p, (c.unsqueeze(0),)) - t.unsqueeze(0)).square().mean()

    grads = vmap(grad(point_loss), in_dims=(None, 0, 0))(params, coords, targets)
    expected = torch.sqrt(sum(g.reshape(40, -1).square().sum(1) for g in grads.values()))
    torch.testing.assert_close(ceiling.scores(model, coords, targets, "gradient"), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        errors = (model(coords) - targets).abs().sum(1)
    torch.testing.assert_close(ceiling.scores(model, coords, targets, "error"), errors)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind
