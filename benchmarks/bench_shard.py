"""Time dint-shard on a gigapixel tiled BigTIFF: seconds, MB/s and peak memory, as a Markdown table.

    .venv/bin/python benchmarks/bench_shard.py [--size 32768] [--workdir runs/bench_shard] [-- dint-shard options]

The input is the Pluto image tiled and mirrored to SIZE x SIZE (1.07 gigapixels at 32768,
uint8 grey), written as a tiled BigTIFF (tiles of 512, deflate) by tools/make_large_signal.py
into WORKDIR unless it is already there, then converted by the real `dint-shard` in a child
process. MB/s counts raw pixel bytes (height x width x channels x bytes per sample); the
peak memory is the child's maximum resident set size and CPU s its user + system time, read
with resource.getrusage(RUSAGE_CHILDREN) once it has exited (the input is made in this
process, so dint-shard is the only child measured). On a shared machine wall time depends
on the load; CPU s much less. Targets: under 2 minutes and under 2 GB for 1 gigapixel from a
chunk-readable input.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import make_large_signal  # noqa: E402

from dint.core.files import is_dint_store  # noqa: E402
from dint.data.store import open_store  # noqa: E402

PLUTO = REPO.parent / "shared" / "data" / "images" / "pluto" / "pluto_4408x4344_gray.jpg"
TARGET_SECONDS, TARGET_BYTES = 120, 2e9


def shard_command(tiff: Path, store: Path, options: list[str]) -> list[str]:
    script = Path(sys.executable).parent / "dint-shard"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "dint.commands.cli", "shard"]
    return [*base, str(tiff), str(store), "--overwrite", *options]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32768, help="image side in pixels (default 32768: 1.07 gigapixels)")
    parser.add_argument("--source", type=Path, default=PLUTO, help="the image to tile and mirror (default: Pluto)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "runs" / "bench_shard",
        help="where the input TIFF is kept and the store written (default runs/bench_shard)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the store written (it is removed by default)")
    args, options = parser.parse_known_args()
    options = [o for o in options if o != "--"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    tiff = args.workdir / f"{args.source.stem}_{args.size}.tif"
    store = args.workdir / f"{args.source.stem}_{args.size}.zarr"
    if not tiff.exists():
        if not args.source.exists():
            print(f"bench_shard: {args.source} not found (pass --source)", file=sys.stderr)
            return 2
        started = time.perf_counter()
        code = make_large_signal.main(["image", "--source", str(args.source), "--size", str(args.size), str(tiff)])
        if code:
            return code
        print(f"made the input in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    command = shard_command(tiff, store, options)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode:
        print(result.stdout + result.stderr, file=sys.stderr)
        return result.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    opened = open_store(store)
    info = opened.info
    raw = math.prod(opened.values.shape) * opened.values.dtype.itemsize
    on_disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    if not args.keep and is_dint_store(store):  # only the store this tool just made
        shutil.rmtree(store)

    met = seconds < TARGET_SECONDS and peak < TARGET_BYTES
    program = ".venv/bin/dint-shard" if Path(command[0]).name == "dint-shard" else "python -m dint.commands.cli shard"
    paths = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in (tiff, store)]
    print(f"`{program} {shlex.join([*paths, '--overwrite', *options])}` ({os.cpu_count()} CPU cores)\n")
    print(
        "| input | pixels | raw MB | input MB (on disk) | store MB (on disk) | chunks | seconds | MB/s "
        "| CPU s | peak RSS MB | targets (< 120 s, < 2 GB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {tiff.name}: {info.shape[0]}x{info.shape[1]}x{info.channels} {info.dtype}, tiled BigTIFF "
        f"| {math.prod(info.shape) / 1e9:.2f} G | {raw / 1e6:.0f} | {tiff.stat().st_size / 1e6:.0f} "
        f"| {on_disk / 1e6:.0f} | {'x'.join(map(str, info.chunks))} | {seconds:.1f} | {raw / 1e6 / seconds:.0f} "
        f"| {cpu:.0f} | {peak / 1e6:.0f} | {'met' if met else 'MISSED'} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
