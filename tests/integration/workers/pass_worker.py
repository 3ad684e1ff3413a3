"""Which points one pass visits, and what INT selects inside mini-batches, on each rank.

usage: pass_worker.py STORE OUT.json
Rank 0 writes, per plan, the global indices each rank trained on during one pass, and per
mini-batch the global indices INT selected (a fixed model), gathered over the ranks.
"""

import json
import sys

import torch

from dint.core.config import TeacherConfig
from dint.data.sharding import Shard, ShardStream, rank_chunk_ids
from dint.data.store import open_store
from dint.distributed.collectives import all_gather_varlen, all_reduce_max, destroy_distributed, init_distributed
from dint.fields.siren import Siren
from dint.teaching.plans import MiniBatchesInMemory, MiniBatchesStreamed, WholeSignal, WholeSignalStreamed
from dint.teaching.teacher import Teacher

GROUP_BYTES = 16 * 16  # bytes: a group of one 16x16 uint8 chunk at a time
MINIBATCH = 300


def teacher(strategy: str) -> Teacher:
    return Teacher(
        TeacherConfig(
            strategy=strategy, ratio=0.25, ratio_schedule="constant", interval_schedule="dense", random_share=0.0
        ),
        block_points=97,
        seed=5,
    )


def visited(plan, model, steps: int) -> list[int]:
    ids = []
    for step in range(steps):
        for selection in plan.at(step, model):
            ids += selection.shard.global_index(selection.local).tolist()
    (gathered,) = all_gather_varlen(torch.tensor(ids, dtype=torch.int64))
    return gathered.tolist()


def main(store_path: str, out: str) -> None:
    info_ = init_distributed("cpu")
    store = open_store(store_path)
    chunk_ids = rank_chunk_ids(store.info, info_.rank, info_.world_size)
    torch.manual_seed(0)
    model = Siren(2, 1, width=16, hidden_layers=2)
    shard = Shard(store, chunk_ids, torch.device("cpu"))
    stream = ShardStream(store, chunk_ids, torch.device("cpu"), store.info, GROUP_BYTES)
    groups = int(all_reduce_max(torch.tensor([len(stream)])))
    (counts,) = all_gather_varlen(torch.tensor([stream.num_points]))
    in_memory = MiniBatchesInMemory(teacher("full"), shard, MINIBATCH, 100, 5)
    results = {
        "groups_per_rank": all_gather_varlen(torch.tensor([len(stream)]))[0].tolist(),
        "whole": visited(WholeSignal(teacher("full"), shard, 10), model, 1),
        "whole_streamed": visited(WholeSignalStreamed(teacher("full"), stream, counts.tolist()), model, 1),
        "minibatches": visited(in_memory, model, in_memory.steps_per_pass),
        "minibatches_streamed": visited(MiniBatchesStreamed(teacher("full"), stream, groups, 100), model, groups),
        "steps_per_pass": in_memory.steps_per_pass,
    }
    # INT inside each mini-batch: the selected global indices, over all ranks.
    int_plan = MiniBatchesInMemory(teacher("int"), shard, MINIBATCH, 100, 5)
    selected = []
    for step in range(int_plan.steps_per_pass):
        (selection,) = int_plan.at(step, model)
        (ids,) = all_gather_varlen(shard.global_index(selection.local))
        (members,) = all_gather_varlen(shard.global_index(int_plan.plan.points(step)))
        selected.append({"members": members.tolist(), "selected": ids.tolist(), "count": selection.global_count})
    results["int_minibatches"] = selected
    if info_.is_main:
        with open(out, "w") as f:
            json.dump(results, f)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
