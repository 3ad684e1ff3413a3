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


def test_zero_divides_the_optimizer_but_exchanges_as_many_bytes():
    from dint.commands.cost_model import INTERCONNECT, Rates, step_seconds

    rates = Rates(score=1e-8, select=1e-9, train=3e-8, optimizer=1e-9, macs=1000, source="test")
    ddp = step_seconds(rates, 64, 2**30, 10**9, 0.1, 10, "threshold", 1.0, INTERCONNECT)
    zero = step_seconds(rates, 64, 2**30, 10**9, 0.1, 10, "threshold", 1.0, INTERCONNECT, zero_stage=1)
    assert zero["optimizer"] == pytest.approx(ddp["optimizer"] / 64) and zero["allreduce"] == ddp["allreduce"]


def test_a_hash_fields_table_is_the_exchange_that_grows_with_the_workload():
    from dint.commands.cost_model import HASH_TABLE_SIZE_LOG2, hash_prediction_table

    record = {
        "steps": 10,
        "ranks": 1,
        "step_split": {"score": 0.01, "topk_merge": 0.001, "forward_backward": 0.05, "optimizer": 0.02},
        "points_scored_per_rank": [10**6],
        "points_trained": 10**6,
        "points": 10**6,
        "params": 4 * 10**6,
        "device": "cpu",
        "hash": {"hash_levels": 16, "hash_features": 2, "hash_mlp_width": 64, "hash_mlp_layers": 2},
    }
    text, rows = hash_prediction_table(record, 2, 1, 0.1, 80)
    image = [r for r in rows if r["workload"].startswith("1-gigapixel")]
    # 16 levels of 2^24 entries at most (the 11 coarse ones hold their whole grid), 2 features, and the MLP.
    assert 2 * 5 * 2**HASH_TABLE_SIZE_LOG2 < image[0]["params"] < 2 * 16 * 2**HASH_TABLE_SIZE_LOG2
    assert all(r["gradient_bytes"] == 4 * r["params"] for r in rows)
    ddp = {r["world"]: r for r in image if r["engine"] == "DDP"}
    # Beyond one node (8 GPUs) the table's all-reduce crosses InfiniBand and costs several times more.
    assert ddp[64]["parts"]["allreduce"] > 5 * ddp[8]["parts"]["allreduce"]
    assert "gradient exchange" in text and "2^24 entries a level" in text
