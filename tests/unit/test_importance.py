"""The teacher's arithmetic in one process (dint.teaching.teacher): per-point errors, importance
sampling's inclusion probabilities and loss weights, and the error memory."""

from __future__ import annotations

import math

import pytest
import torch

from dint.fields.siren import Siren
from dint.teaching.teacher import ErrorMemory, importance_weights, inclusion_probability, per_point_error


def test_per_point_error_sums_over_channels():
    diff = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 0.0, 4.0]])
    assert per_point_error(diff, "l1").tolist() == [3.5, 0.0, 7.0]
    assert per_point_error(diff, "l2").tolist() == [5.25, 0.0, 25.0]


@pytest.mark.parametrize("share", [0.0, 0.2, 1.0])
def test_inclusion_probabilities_add_up_to_k_and_grow_with_the_error(share):
    g = torch.Generator().manual_seed(0)
    errors = 0.5 + torch.rand(1000, generator=g) / 2
    probability = inclusion_probability(errors, 100, 1000, share)
    assert probability.dtype == torch.float32 and probability.max() < 1.0  # no point capped here
    assert probability.double().sum().item() == pytest.approx(100, rel=1e-4)  # expected draw: k points
    order = torch.argsort(errors)
    assert (probability[order].diff() >= 0).all()  # a larger error is never less likely
    if share == 1.0:  # all uniform
        assert torch.allclose(probability, torch.full((1000,), 0.1))
    else:
        top, bottom = errors.argmax(), errors.argmin()
        expected = (probability[top] - 100 * share / 1000) / (probability[bottom] - 100 * share / 1000)
        assert expected.item() == pytest.approx((errors[top] / errors[bottom]).item(), rel=1e-4)


def test_an_infinite_error_is_drawn_for_sure():
    errors = torch.tensor([0.1, float("inf"), 0.3, 0.2])
    probability = inclusion_probability(errors, 2, 4, 0.2)
    assert probability[1] == 1.0
    torch.testing.assert_close(probability[[0, 2, 3]], torch.full((3,), 2 * 0.2 / 4))  # the rest: the uniform share


def test_a_nan_error_is_drawn_for_sure_as_the_top_k_counts_it_the_worst():
    errors = torch.tensor([0.1, float("nan"), 0.3, 0.2])
    probability = inclusion_probability(errors, 2, 4, 0.2)
    assert probability[1] == 1.0
    assert torch.isfinite(probability).all()


def test_importance_weights_undo_the_draw_at_correction_one():
    probability = torch.tensor([0.25, 0.5, 1.0, 0.1])
    weights, normalizer = importance_weights(probability, torch.tensor([0, 3]), 4, 1.0)
    torch.testing.assert_close(weights, torch.tensor([4.0, 10.0]))
    assert normalizer == 4  # the number of candidates: an unbiased mean
    weights, normalizer = importance_weights(probability, torch.tensor([0, 3]), 4, 0.0)
    torch.testing.assert_close(weights, torch.ones(2))  # hard mining: the drawn points' plain mean
    assert float(normalizer) == 2.0


def test_the_error_memory_starts_unseen_and_remembers_what_training_saw():
    memory = ErrorMemory(5, torch.device("cpu"), "l2")
    assert memory.refreshed_at is None and torch.isinf(memory.errors).all()  # unseen points rank first
    memory.remember(torch.tensor([3, 0]), torch.tensor([[1.0, 2.0], [0.5, 0.0]], requires_grad=True))
    assert memory.errors.tolist() == [0.25, math.inf, math.inf, 5.0, math.inf]
    assert not memory.errors.requires_grad


def test_soft_mining_weights_a_draw_that_took_no_point():
    """Poisson draws can take no point at all (likely when k is 1): below an importance
    correction of 1 the loss then divides by 1, not by the empty sum, and is zero."""
    from dint.teaching.teacher import importance_weights
    from dint.train.trainer import selection_loss

    probability = torch.tensor([0.25, 0.5, 1.0])
    weights, normalizer = importance_weights(probability, torch.tensor([], dtype=torch.int64), 3, 0.5)
    assert weights.shape == (0,) and normalizer == 1.0
    loss = selection_loss(
        Siren(2, 1, width=8, hidden_layers=1),
        coords=torch.zeros(0, 2),
        targets=torch.zeros(0, 1),
        global_count=normalizer,
        world_size=1,
        weights=weights,
    )
    assert loss.item() == 0.0
    weights, normalizer = importance_weights(probability, torch.tensor([0, 2]), 3, 0.5)
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.0]))
    assert normalizer == 3.0


def test_importance_probabilities_and_soft_weights_read_nothing_back(monkeypatch):
    """The default teacher's probabilities (global maximum, error mass) and soft mining's
    normalizer stay tensors: on a GPU the host does not wait for them. Every way of reading a
    tensor's value into Python fails while they are made."""
    from dint.teaching.teacher import importance_weights, inclusion_probability

    errors = torch.tensor([0.0, 1.0, 3.0, 0.5, 2.0, 8.0, 0.25, 4.0])

    def read_back(*args, **kwargs):
        raise AssertionError("a tensor's value was read back to the host")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
            patched.setattr(torch.Tensor, name, read_back)
        probability = inclusion_probability(errors, 4, 8, 0.25)
        weights, normalizer = importance_weights(probability, torch.tensor([1, 5, 7]), 8, 0.5)
        nothing = inclusion_probability(torch.zeros(8), 4, 8, 0.25)
    quanta = torch.floor(errors * (2**24 / 8.0))
    expected = (quanta * (4 * 0.75 / quanta.sum()) + 4 * 0.25 / 8).clamp(max=1.0)
    torch.testing.assert_close(probability, expected)
    torch.testing.assert_close(nothing, torch.full((8,), 0.5))
    torch.testing.assert_close(weights, probability[[1, 5, 7]].pow(-0.5))
    assert float(normalizer) == pytest.approx(float(weights.double().sum()))
