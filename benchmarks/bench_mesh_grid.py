"""Time `dint-shard` of meshes to occupancy (or SDF) grids: seconds and peak memory per run.

Each run is the real CLI (`python -m dint.commands.cli shard MESH DEST --resolution R --field F`) in a
fresh subprocess; its peak resident memory is that child's own ru_maxrss (os.wait4), so runs
do not mix. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_mesh_grid.py                       # bunny, R = 256 and 512
    .venv/bin/python benchmarks/bench_mesh_grid.py --mesh ../shared/data/meshes/dragon.ply \\
        --mesh ../shared/data/meshes/armadillo.obj --resolution 256 --field sdf
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dint.core.files import is_dint_store

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MESH = REPO.parent / "shared" / "data" / "meshes" / "bunny.ply"


def run_shard(mesh: Path, resolution: int, field: str, workdir: Path) -> dict:
    dest = workdir / f"{mesh.stem}-{resolution}-{field}.zarr"
    command = [
        sys.executable,
        "-m",
        "dint.commands.cli",
        "shard",
        str(mesh),
        str(dest),
        "--resolution",
        str(resolution),
        "--field",
        field,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    # wait4 gives this child's own resource usage (RUSAGE_CHILDREN would be the max over all runs).
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    out, err = child.stdout.read().decode(), child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{err}")
    attrs = json.loads((dest / "zarr.json").read_text())["attributes"]["dint"]
    on_disk = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    if is_dint_store(dest):  # only the store this tool just made
        shutil.rmtree(dest)
    extra = attrs["extra"]
    return {
        "mesh": mesh.name,
        "faces": extra["faces"],
        "watertight": extra["watertight"],
        "R": resolution,
        "field": field,
        "points": resolution**3,
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "store_mb": on_disk / 2**20,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "cli_says": out.strip().splitlines()[-1] if out.strip() else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", type=Path, action="append", help=f"mesh file (repeatable; default {DEFAULT_MESH})")
    parser.add_argument(
        "--resolution", type=int, action="append", help="grid points per axis (repeatable; default 256, 512)"
    )
    parser.add_argument("--field", choices=("occupancy", "sdf"), default="occupancy")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are written (then removed)")
    args = parser.parse_args()
    meshes = args.mesh or [DEFAULT_MESH]
    resolutions = args.resolution or [256, 512]
    for mesh in meshes:
        if not mesh.is_file():
            raise SystemExit(f"{mesh}: not found")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [run_shard(mesh, r, args.field, Path(tmp)) for mesh in meshes for r in resolutions]
    print(f"dint-shard of meshes, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}\n")
    print("| mesh | faces | watertight | R | field | points | seconds | CPU seconds | peak RSS (MB) | store (MB) |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mesh']} | {row['faces']:,} | {'yes' if row['watertight'] else 'no'} | {row['R']} | "
            f"{row['field']} | {row['points']:,} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
            f"{row['peak_rss_mb']:.0f} | {row['store_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
