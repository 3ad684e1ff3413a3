"""The scoring forward in float16 against float32 on a trained model (benchmarks/2026-12-01-engineering.md,
"Scoring in float16"). One process:

    OMP_NUM_THREADS=2 .venv/bin/python experiments/bench_score_precision.py RUN/model.pt STORE [cuda]

Prints how far float16 moves the errors (mean and largest), what share of the top 10% and 20%
by error stays the same points, and the seconds of each scoring pass over the whole store.
"""

import sys
import time
from pathlib import Path

import torch

from dint.data.sharding import Shard, rank_chunk_ids
from dint.data.store import open_store
from dint.teaching.teacher import point_errors
from dint.train.checkpoint import load_trained


def timed(device: torch.device, score) -> tuple[torch.Tensor, float]:
    score()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    errors = score()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return errors, time.perf_counter() - start


if __name__ == "__main__":
    model_path, store_path = Path(sys.argv[1]), sys.argv[2]
    device = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
    model = load_trained(model_path)[0].to(device)
    store = open_store(store_path)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), device)
    everything = torch.arange(len(shard), device=device)
    exact, exact_s = timed(device, lambda: point_errors(model, shard, everything, 16384))
    low, low_s = timed(device, lambda: point_errors(model, shard, everything, 16384, precision=torch.float16))
    deviation = (low - exact).abs()
    print(
        f"{model_path}: mean error {exact.mean().item():.4f}; float16 moves it by {deviation.mean().item():.4f} "
        f"on average ({(deviation.mean() / exact.mean()).item():.1%}), at most {deviation.max().item():.4f}"
    )
    for share in (0.1, 0.2):
        k = int(share * len(everything))
        same = set(torch.topk(exact, k).indices.tolist()) & set(torch.topk(low, k).indices.tolist())
        print(f"  top {share:.0%}: {len(same) / k:.1%} the same points")
    print(f"  scoring {len(everything):,} points: float32 {exact_s * 1e3:.1f} ms, float16 {low_s * 1e3:.1f} ms")
