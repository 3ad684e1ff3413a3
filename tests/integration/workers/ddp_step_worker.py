"""One DDP update where the selected points are split unevenly across ranks (maybe none on a rank).

usage: ddp_step_worker.py OUT.json COUNTS   (COUNTS: points per rank, e.g. "40,0")
Rank 0 writes the updated parameters; the test compares them with one process holding all.
"""

import functools
import json
import sys

import torch

from dint.core.config import TrainConfig
from dint.distributed.collectives import destroy_distributed, init_distributed
from dint.fields.siren import Siren
from dint.train.engine import build_engine
from dint.train.loss import selection_loss


def batch(total: int):
    generator = torch.Generator().manual_seed(7)
    return torch.rand(total, 2, generator=generator) * 2 - 1, torch.rand(total, 3, generator=generator) * 2 - 1


def updated_parameters(counts: list[int], rank: int, world_size: int, dist_info, micro: int = 7) -> list[float]:
    coords, targets = batch(sum(counts))
    start = sum(counts[:rank])
    mine = slice(start, start + counts[rank])
    torch.manual_seed(3)
    model = Siren(2, 3, width=16, hidden_layers=2)
    engine = build_engine(TrainConfig(engine="ddp", lr=1e-2, steps=10, lr_schedule="constant"), model, dist_info)
    # Micro-batches (7 points by default): gradients accumulate over them, then one average over ranks.
    parts = [(c, t) for c, t in zip(coords[mine].split(micro), targets[mine].split(micro))] or [
        (coords[:0], targets[:0])
    ]
    for _ in range(2):
        engine.step(
            functools.partial(selection_loss, coords=c, targets=t, global_count=sum(counts), world_size=world_size)
            for c, t in parts
        )
    return torch.cat([p.detach().flatten() for p in engine.module.parameters()]).tolist()


if __name__ == "__main__":
    out, counts = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]
    info = init_distributed("cpu")
    params = updated_parameters(counts, info.rank, info.world_size, info)
    if info.is_main:
        with open(out, "w") as f:
            json.dump(params, f)
    destroy_distributed()
