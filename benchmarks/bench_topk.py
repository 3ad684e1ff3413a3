"""The exact global top-k in one process: gather against threshold, computing cost only.

OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_topk.py [--points 65536,1048576,4194304] [--ratio 0.2]
"""

import argparse
import time

import torch

from dint.teaching.teacher import select_topk, select_topk_threshold

parser = argparse.ArgumentParser()
parser.add_argument("--points", default="65536,1048576,4194304")
parser.add_argument("--ratio", type=float, default=0.2)
parser.add_argument("--calls", type=int, default=5)
args = parser.parse_args()
torch.set_num_threads(2)
print("| points | gather | threshold |\n|---|---|---|")
for n in map(int, args.points.split(",")):
    scores, ids, k = torch.rand(n), torch.arange(n), round(args.ratio * n)
    row = []
    for select in (select_topk, select_topk_threshold):
        select(scores, k, ids.__getitem__)  # warm-up
        started = time.perf_counter()
        for _ in range(args.calls):
            select(scores, k, ids.__getitem__)
        row.append(f"{(time.perf_counter() - started) / args.calls * 1000:.1f} ms")
    print(f"| {n:,} | {row[0]} | {row[1]} |")
