"""dint scale's cost model (dint.commands.cost_model) on made-up rates: what each term grows with."""

from __future__ import annotations

import pytest


def test_the_cost_model_charges_gather_for_k_and_threshold_for_rounds_only():
    from dint.commands.cost_model import INTERCONNECT, Rates, allreduce_seconds, step_seconds

    rates = Rates(score=1e-8, select=1e-9, train=3e-8, optimizer=1e-9, macs=1000, source="test")
    free = {**INTERCONNECT, "intra_latency": 0.0, "inter_latency": 0.0}

    def select(points, topk, world=64):
        return step_seconds(rates, world, points, 10_000, 0.2, 10, topk, 1.0, free)["select"]

    # With compute per point taken out (select - its local ranking), threshold's traffic is flat in N.
    local = lambda n, w=64: rates.select * n / w  # noqa: E731
    assert select(2**30, "threshold") - local(2**30) == pytest.approx(select(2**26, "threshold") - local(2**26))
    assert select(2**30, "gather") - local(2**30) > 10 * (select(2**26, "gather") - local(2**26))
    assert allreduce_seconds(10**6, 1, INTERCONNECT) == 0.0
    # Beyond one node the slower inter-node link sets the pace.
    assert allreduce_seconds(10**8, 16, INTERCONNECT) > allreduce_seconds(10**8, 8, INTERCONNECT)
