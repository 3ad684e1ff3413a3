"""The torchrun command line, for the tools and tests that start training jobs."""

from __future__ import annotations

import sys


def torchrun_command(
    nproc: int, *args, nnodes: int = 1, rdzv_endpoint: str | None = None, python: str = sys.executable
) -> list[str]:
    """`python -m torch.distributed.run` starting `nproc` processes running `args` (a script, or
    "-m" and a module, and its arguments): one node standalone, or a node of `nnodes` meeting
    at `rdzv_endpoint` (c10d)."""
    if nnodes == 1 and rdzv_endpoint is None:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    return [python, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", *map(str, args)]
