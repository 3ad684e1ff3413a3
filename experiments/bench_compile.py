"""torch.compile against eager for dint's SIREN: the training step and the scoring forward
(benchmarks/2026-12-01-engineering.md, "torch.compile"). One process:

    OMP_NUM_THREADS=2 .venv/bin/python experiments/bench_compile.py          # CPU
    .venv/bin/python experiments/bench_compile.py cuda                           # GPU (tools/gpu_check.sh)

A 3x64 SIREN and Adam; steps of about 6,554 points whose count varies as importance sampling's
does (so the compiled model has dynamic shapes), then no-grad forwards of 16,384 points. Prints
the first 10 steps' seconds (compilation included), then the steady time of a step and of a
scoring block.
"""

import sys
import time

import torch

from dint.core.resources import keep_freed_memory
from dint.fields.siren import Siren


def run(model: torch.nn.Module, label: str, device: torch.device, steps: int = 300) -> None:
    def now() -> float:  # CUDA runs asynchronously: a time is read once the device has finished
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    coords, targets = torch.rand(65536, 2, device=device) * 2 - 1, torch.rand(65536, 3, device=device)
    g = torch.Generator().manual_seed(0)
    start = now()
    for step in range(steps):
        n = 6554 + int(torch.randint(-200, 200, (1,), generator=g))
        chosen = torch.randint(0, 65536, (n,), generator=g).to(device)
        optimizer.zero_grad()
        ((model(coords[chosen]) - targets[chosen]).square().sum() / 65536).backward()
        optimizer.step()
        if step == 9:
            first = now() - start
            steady_start = now()
    per_step = (now() - steady_start) / (steps - 10)
    with torch.no_grad():
        model(coords[:16384])
        scoring_start = now()
        for _ in range(10):
            model(coords[:16384])
        scoring = (now() - scoring_start) / 10
    print(
        f"{label}: first 10 steps {first:.2f} s, then {per_step * 1e3:.2f} ms a step, "
        f"scoring 16384 points {scoring * 1e3:.2f} ms",
        flush=True,
    )


if __name__ == "__main__":
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    keep_freed_memory(True)  # dint's default engineering
    torch.manual_seed(0)
    run(Siren(2, 3, 64, 3), "eager", device)
    compiled = Siren(2, 3, 64, 3)
    compiled.compile(dynamic=True)  # as dint's model.compile does
    run(compiled, "torch.compile (inductor, dynamic shapes)", device)
