"""Run under torchrun (or in one process): the real Teacher on a rank's Shard of a store.

Usage: torchrun --nproc_per_node=W teacher_worker.py STORE TINY_STORE OUT.json

TINY_STORE has fewer chunks than there are ranks, so some rank holds no point at all.

Every rank opens the store, builds its Shard and the same seeded Siren, and runs
Teacher.select for several (strategy, schedule, step) cases. Rank 0 gathers every rank's
selected coordinates and targets (in rank order, tagged with the rank) and writes them with
the Selection's counts, so the test can compare the selections across world sizes.
"""

from __future__ import annotations

import json
import sys

import torch

from dint.core.config import TeacherConfig
from dint.data.sharding import Shard, rank_chunk_ids
from dint.data.store import open_store
from dint.distributed.collectives import all_gather_varlen, destroy_distributed, init_distributed
from dint.fields.siren import Siren
from dint.teaching.teacher import Teacher

TOTAL_STEPS = 100
RATIO = 0.2
SEED = 11
BLOCK_POINTS = 100  # blocks cross chunk boundaries

# (name, strategy, ratio schedule, error, step, model); model "zero" outputs 0 everywhere, so
# a point's error is |target|: few distinct values, many exact ties at the cut.
CASES = [
    ("int_step0", "int", "step", "l1", 0, "siren"),
    ("int_step55", "int", "step", "l1", 55, "siren"),
    ("int_linear37_l2", "int", "linear", "l2", 37, "siren"),
    ("int_ties_step0", "int", "step", "l1", 0, "zero"),
    ("int_ties_linear37", "int", "linear", "l1", 37, "zero"),
    ("uniform_step0", "uniform", "step", "l1", 0, "siren"),
    ("uniform_step55", "uniform", "step", "l1", 55, "siren"),
    ("uniform_linear37", "uniform", "linear", "l1", 37, "siren"),
    ("full_step0", "full", "step", "l1", 0, "siren"),
]

# The newer teachers: (name, teacher settings, step, model). `reuse` selects at step 0 with a
# scoring forward, then the "zero" model's errors at the chosen points are remembered as a
# training forward would leave them, and step 1 selects from memory (no scoring forward).
NEW_CASES = [
    ("int_share_step0", dict(strategy="int", random_share=0.5), 0, "siren"),
    ("int_share_ties55", dict(strategy="int", random_share=0.3), 55, "zero"),
    ("int_share_ties55_threshold", dict(strategy="int", random_share=0.3, topk="threshold"), 55, "zero"),
    ("importance_step0", dict(strategy="importance", random_share=0.2), 0, "siren"),
    ("importance_step55", dict(strategy="importance"), 55, "siren"),
    ("importance_soft_step0", dict(strategy="importance", random_share=0.2, importance_correction=0.5), 0, "siren"),
    ("reuse_step1", dict(strategy="int", random_share=0.25, interval_schedule="dense", error_refresh=3), 1, "siren"),
]

TINY_CASES = [
    ("int_step0", "int", "step", "l1", 0, "siren"),
    ("int_ties_step55", "int", "step", "l1", 55, "zero"),
    ("uniform_step55", "uniform", "step", "l1", 55, "siren"),
    ("full_step0", "full", "step", "l1", 0, "siren"),
]


def make_model(in_features: int, out_features: int) -> Siren:
    torch.manual_seed(0)
    return Siren(in_features, out_features, width=16, hidden_layers=2)


def make_zero_model(in_features: int, out_features: int) -> Siren:
    model = make_model(in_features, out_features)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def make_teacher(strategy: str, ratio_schedule: str, error: str, **settings) -> Teacher:
    settings = {"interval_schedule": "fixed", "interval": 5, "random_share": 0.0, "error_refresh": 1, **settings}
    return Teacher(
        TeacherConfig(strategy=strategy, ratio=RATIO, ratio_schedule=ratio_schedule, error=error, **settings),
        block_points=BLOCK_POINTS,
        seed=SEED,
    )


def run_new_cases(store_path: str, rank: int, world: int) -> list[dict]:
    """The newer teachers' selections, gathered on rank 0 as (coords, targets, weights, owner)."""
    store = open_store(store_path)
    shard = make_shard(store, rank, world)
    models = {
        "siren": make_model(store.info.ndim, store.info.channels),
        "zero": make_zero_model(store.info.ndim, store.info.channels),
    }
    everything = torch.arange(len(shard))
    results = []
    for name, settings, step, model in NEW_CASES:
        settings = dict(settings)
        teacher = make_teacher(settings.pop("strategy"), "step", "l1", **settings)
        memory = teacher.error_memory(len(shard), shard.device)
        if memory is not None:
            first = teacher.select(models[model], shard, everything, 0, TOTAL_STEPS, memory)
            (part,) = first.parts(0)
            with torch.no_grad():  # what a training forward of the zero model leaves behind
                part["remember"](part["local"], models["zero"](part["coords"]) - part["targets"])
        selection = teacher.select(models[model], shard, everything, step, TOTAL_STEPS, memory)
        (part,) = selection.parts(0)
        n = part["coords"].shape[0]
        weights = part.get("weights", torch.ones(n))
        coords, targets, weights, owner = all_gather_varlen(
            part["coords"], part["targets"], weights, torch.full((n,), rank, dtype=torch.int64)
        )
        results.append(
            dict(
                name=name,
                global_count=selection.global_count,
                normalizer=float(selection.normalizer),
                rank_counts=list(selection.rank_counts),
                ratio=selection.ratio,
                coords=coords.tolist(),
                targets=targets.tolist(),
                weights=weights.tolist(),
                owner=owner.tolist(),
            )
        )
    return results


def make_shard(store, rank: int, world: int) -> Shard:
    return Shard(store, rank_chunk_ids(store.info, rank, world), torch.device("cpu"))


def run(store_path: str, tiny_path: str, rank: int, world: int) -> dict | None:
    """All cases on this rank; the gathered results on rank 0, None elsewhere."""
    data = run_store(store_path, rank, world, CASES)
    tiny = run_store(tiny_path, rank, world, TINY_CASES)
    new = run_new_cases(store_path, rank, world)
    if rank != 0:
        return None
    data["tiny"], data["new"] = tiny, new
    return data


def run_store(store_path: str, rank: int, world: int, cases: list[tuple]) -> dict:
    store = open_store(store_path)
    shard = make_shard(store, rank, world)
    models = {
        "siren": make_model(store.info.ndim, store.info.channels),
        "zero": make_zero_model(store.info.ndim, store.info.channels),
    }
    (every_index,) = all_gather_varlen(shard.global_index(torch.arange(len(shard))))
    (sizes,) = all_gather_varlen(torch.tensor([len(shard)]))
    results = []
    for name, strategy, schedule, error, step, model in cases:
        teacher = make_teacher(strategy, schedule, error)
        everything = torch.arange(len(shard))
        selection = teacher.select(models[model], shard, everything, step, TOTAL_STEPS)
        assert torch.equal(everything[selection.positions], selection.local)
        (part,) = selection.parts(0)  # the whole selection as one batch
        mine, wanted = part["coords"], part["targets"]
        n = mine.shape[0]
        assert wanted.shape[0] == n
        coords, targets, owner = all_gather_varlen(mine, wanted, torch.full((n,), rank, dtype=torch.int64))
        results.append(
            dict(
                name=name,
                step=selection.step,
                ratio=selection.ratio,
                global_count=selection.global_count,
                rank_counts=list(selection.rank_counts),
                coords=coords.tolist(),
                targets=targets.tolist(),
                owner=owner.tolist(),
            )
        )
    return dict(
        world_size=world,
        num_points=store.info.num_points,
        shape=list(store.info.shape),
        shard_sizes=sizes.tolist(),
        shard_global_index=every_index.tolist(),
        cases=results,
    )


def main() -> None:
    store_path, tiny_path, out = sys.argv[1:4]
    info = init_distributed("cpu")
    data = run(store_path, tiny_path, info.rank, info.world_size)
    if info.rank == 0:
        with open(out, "w") as f:
            json.dump(data, f)
    destroy_distributed()


if __name__ == "__main__":
    main()
