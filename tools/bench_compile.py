"""torch.compile against eager for dint's SIREN: the training step and the scoring forward
(README, Speed: "torch.compile"). One process:

    OMP_NUM_THREADS=2 .venv/bin/python tools/bench_compile.py

A 3x64 SIREN and Adam; steps of about 6,554 points whose count varies as importance sampling's
does (so the compiled model has dynamic shapes), then no-grad forwards of 16,384 points. Prints
the first 10 steps' seconds (compilation included), then the steady time of a step and of a
scoring block.
"""

import time

import torch

from dint.model import Siren
from dint.resources import keep_freed_memory


def run(model: torch.nn.Module, label: str, steps: int = 300) -> None:
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    coords, targets = torch.rand(65536, 2) * 2 - 1, torch.rand(65536, 3)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        n = 6554 + int(torch.randint(-200, 200, (1,), generator=g))
        chosen = torch.randint(0, 65536, (n,), generator=g)
        optimizer.zero_grad()
        ((model(coords[chosen]) - targets[chosen]).square().sum() / 65536).backward()
        optimizer.step()
        if step == 9:
            first, steady_start = time.perf_counter() - start, time.perf_counter()
    per_step = (time.perf_counter() - steady_start) / (steps - 10)
    with torch.no_grad():
        model(coords[:16384])
        scoring_start = time.perf_counter()
        for _ in range(10):
            model(coords[:16384])
        scoring = (time.perf_counter() - scoring_start) / 10
    print(f"{label}: first 10 steps {first:.2f} s, then {per_step * 1e3:.2f} ms a step, "
          f"scoring 16384 points {scoring * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    keep_freed_memory(True)  # dint's default engineering
    torch.manual_seed(0)
    run(Siren(2, 3, 64, 3), "eager")
    run(torch.compile(Siren(2, 3, 64, 3), dynamic=True), "torch.compile (inductor, dynamic shapes)")
