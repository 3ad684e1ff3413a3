"""Training on a huge store: throughput and peak memory per rank, in memory and streamed.

    .venv/bin/python tools/bench_train_memory.py runs/stores/pluto-32768.zarr --nproc 2 \
        --steps 20 --minibatch 1048576 --budget 256MB

Runs mini-batch INT for a bounded number of optimizer steps (a whole pass over a gigapixel
signal takes too long on a CPU), once with the rank's shard in memory and once streamed
under a memory budget below the shard size, and prints a Markdown table: points per second
(mini-batch points scored and trained on, over selection + update seconds), seconds per
pass extrapolated from the steps run, peak resident memory per rank (the trainer's own
getrusage report) against the targets (in memory: 1.5 x shard bytes + 0.5 GB; streamed:
budget + 0.5 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dint.core.config import parse_size  # noqa: E402
from dint.data.sharding import chunk_grid, rank_chunk_ids  # noqa: E402
from dint.data.store import open_store  # noqa: E402
from dint.distributed.launch import torchrun_command  # noqa: E402


def shard_bytes(store_path: str, nproc: int) -> list[int]:
    info = open_store(store_path).info
    grid = chunk_grid(info)
    point_bytes = info.channels * np.dtype(info.dtype).itemsize
    return [sum(math.prod(grid[i][1]) for i in rank_chunk_ids(info, r, nproc)) * point_bytes for r in range(nproc)]


def run(args, name: str, extra: list[str]) -> dict:
    run_dir = Path(args.out) / name
    command = torchrun_command(
        args.nproc,
        "-m",
        "dint.train",
        "--data.store",
        args.store,
        "--run.dir",
        run_dir,
        "--model.width",
        str(args.width),
        "--model.hidden_layers",
        "3",
        "--teacher.minibatch",
        str(args.minibatch),
        "--train.steps",
        str(args.steps),
        "--train.micro_batch",
        "16384",
        "--data.block_points",
        "16384",
        "--metrics.log_every",
        "5",
        "--eval.sample",
        "100000",
        "--eval.reconstruction",
        "false",
        *extra,
    )
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_with_start"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--minibatch", type=int, default=1 << 20)
    parser.add_argument("--budget", default="256MB")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--out", default="runs/bench_train_memory")
    args = parser.parse_args()

    info = open_store(args.store).info
    shards = shard_bytes(args.store, args.nproc)
    budget = parse_size(args.budget)
    passes = math.ceil(info.num_points / args.minibatch)
    print(
        f"store {args.store}: {'x'.join(map(str, info.shape))}x{info.channels} {info.dtype}, "
        f"{info.num_points / 1e9:.2f} G points; shard per rank {[round(b / 1e6) for b in shards]} MB; "
        f"{passes} mini-batches of {args.minibatch} points per pass"
    )
    print()
    print(
        "| mode | steps | points/s | s per pass (extrapolated) | load s | peak RSS per rank (MB) | target (MB) "
        "| within |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, extra, target in (
        ("in memory", [], 1.5 * max(shards) + 0.5e9),
        (f"streamed, budget {args.budget}", ["--data.memory_budget", args.budget], budget + 0.5e9),
    ):
        s = run(args, name.split(",")[0].replace(" ", "_"), extra)
        seconds_per_step = s["train_seconds"] / s["steps"]
        points_per_second = args.minibatch / seconds_per_step
        peaks = s["peak_rss_mb_per_rank"]
        within = all(p * 1e6 <= target for p in peaks)
        print(
            f"| {name} | {s['steps']} | {points_per_second:,.0f} | {seconds_per_step * passes:,.0f} | "
            f"{s['load_seconds']:.1f} | {', '.join(f'{p:,.0f}' for p in peaks)} | {target / 1e6:,.0f} | "
            f"{'yes' if within else 'no'} |"
        )


if __name__ == "__main__":
    main()
