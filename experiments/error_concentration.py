"""How concentrated a fitted model's errors are, which bounds what sampling by error can gain.

    .venv/bin/python experiments/error_concentration.py RUN_DIR STORE [RUN_DIR STORE ...]

For each trained run (its model.pt) over every point of its store: rho = (mean e)^2 / mean(e^2)
of the per-point l1 errors e, and the share of the error held by the worst 10% of points.
Sampling in proportion to e instead of uniformly shrinks the variance of a gradient estimate
by a factor of about rho (1 when the error is spread evenly: nothing to gain; near 0 when a few
points hold it), so a signal with rho near 1 leaves importance sampling little to win over
random selection however it is tuned.
"""

import sys
from pathlib import Path

import torch

from dint.data.sharding import Shard, rank_chunk_ids
from dint.data.store import open_store
from dint.teaching.teacher import point_errors
from dint.train.checkpoint import load_trained

if len(sys.argv) < 3 or len(sys.argv) % 2 == 0:
    sys.exit(__doc__.strip().splitlines()[2].strip())
for run, store_path in zip(sys.argv[1::2], sys.argv[2::2]):
    model, _, _ = load_trained(Path(run) / "model.pt")
    store = open_store(store_path)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), torch.device("cpu"))
    errors = point_errors(model, shard, torch.arange(len(shard)), 16384).double()
    worst = errors.sort(descending=True).values[: len(errors) // 10]
    print(
        f"{run}: rho {float(errors.mean() ** 2 / errors.square().mean()):.3f}, "
        f"the worst 10% of points hold {float(worst.sum() / errors.sum()):.0%} of the l1 error"
    )
