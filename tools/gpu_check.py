"""The small steps of tools/gpu_check.sh that are easier in Python: what the machine has, one rank's
process group, the figures of finished runs, and how many bench steps fit a budget.

    python tools/gpu_check.py environment OUT.json [--cuda]   # exit 1: something the checks need is missing
    torchrun --standalone --nproc_per_node 1 tools/gpu_check.py group OUT.json [--cuda]
    python tools/gpu_check.py runs OUT.md RUN_DIR...          # one row per finished run (summary.json)
    python tools/gpu_check.py resumed RUN_DIR LOG REFERENCE_RUN OUT.json
    python tools/gpu_check.py steps OVERHEAD.jsonl VARIANT SECONDS FACTOR LEAST MOST ROUND UNMEASURED
    python tools/gpu_check.py scale SCALING.json OUT.json   # the compute term dint scale measured

Each prints one line (the part's headline) besides what it writes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
from pathlib import Path

# What the checks import beyond torch, and the optional packages left off the GPU machine.
NEEDED = [
    "numpy",
    "zarr",
    "numcodecs",
    "dask",
    "typer",
    "tomli_w",
    "yaml",
    "PIL",
    "skimage",
    "scipy",
    "matplotlib",
    "tensorboard",
    "tqdm",
]
OPTIONAL = [
    ("deepspeed", "deepspeed", 'train.engine = "deepspeed"'),
    ("trimesh", "trimesh", "reading meshes"),
    ("nibabel", "nibabel", "reading NIfTI volumes"),
    ("SimpleITK", "SimpleITK", "reading MetaImage volumes"),
    ("imagecodecs", "imagecodecs", "reading 16-bit PNG images"),
    ("distributed", "distributed", "dint shard --scheduler (dask.distributed)"),
]


def environment(out: Path, cuda: bool) -> int:
    import torch

    from dint.core.errors import DintError
    from dint.core.packages import check_torch, need
    from dint.distributed.collectives import pick_device

    found, problems = {}, []
    for name in NEEDED:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError as e:
            problems.append(f"{name} cannot be imported: {e}")
    try:
        check_torch()
    except DintError as e:
        problems.append(str(e))
    if "numpy" in found and int(found["numpy"].split(".")[0]) < 2:
        problems.append(f"numpy {found.get('numpy')}: zarr 3 needs numpy >= 2.0")
    optional = {}
    for module, package, needed_for in OPTIONAL:
        try:
            need(module, package, needed_for)
            optional[package] = "installed"
        except DintError as e:
            optional[package] = str(e)  # the one line its absence costs
    device = pick_device("auto", 0)
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_chosen": str(device),
        "packages": found,
        "optional": optional,
        "paths": {name: getattr(sys.modules.get(name), "__file__", None) for name in ("torch", "zarr", "numpy")},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    if cuda and device.type != "cuda":
        problems.append(f"no CUDA device: dint chose {device} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    facts["problems"] = problems
    out.write_text(json.dumps(facts, indent=2) + "\n")
    for problem in problems:
        print(f"gpu_check: {problem}", file=sys.stderr)
    where = facts["gpu"]["name"] if "gpu" in facts else "CPU"
    print(
        f"python {facts['python']}, torch {facts['torch']} (CUDA {facts['torch_cuda']}), {where}; "
        f"dint chose {device}; zarr {found.get('zarr')}, numpy {found.get('numpy')}; "
        f"left behind: {', '.join(p for p, line in optional.items() if line != 'installed') or 'nothing'}"
    )
    return 1 if problems else 0


def group(out: Path, cuda: bool) -> int:
    """One rank under torchrun: dint's device choice and process group (nccl on CUDA), a collective."""
    import time

    import torch
    import torch.distributed as dist

    from dint.distributed.collectives import all_reduce_sum, destroy_distributed, init_distributed

    started = time.perf_counter()
    info = init_distributed("auto", 120.0)
    joined = time.perf_counter()
    value = torch.tensor([float(info.rank + 1)], device=info.device)
    all_reduce_sum(value)
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    facts = {
        "world_size": info.world_size,
        "device": str(info.device),
        "backend": dist.get_backend(),
        "all_reduce": value.item(),
        "init_seconds": round(joined - started, 3),
        "collective_seconds": round(time.perf_counter() - joined, 3),
    }
    destroy_distributed()
    expected = sum(range(1, info.world_size + 1))
    wrong = []
    if facts["all_reduce"] != expected:
        wrong.append(f"all_reduce gave {facts['all_reduce']}, not {expected}")
    if cuda and (info.device.type != "cuda" or facts["backend"] != "nccl"):
        wrong.append(f"expected nccl on CUDA, got {facts['backend']} on {info.device}")
    if info.rank == 0:
        out.write_text(json.dumps({**facts, "problems": wrong}, indent=2) + "\n")
        print(
            f"{facts['backend']} on {facts['device']}, {info.world_size} rank(s): joined in "
            f"{facts['init_seconds']} s, all_reduce {'ok' if not wrong else 'WRONG'}"
        )
    for problem in wrong:
        print(f"gpu_check: {problem}", file=sys.stderr)
    return 1 if wrong else 0


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def runs(out: Path, run_dirs: list[Path]) -> int:
    """A table of finished runs: teacher, device, compiled, steps, PSNR, train s, s/step, points/s."""
    lines = [
        "| run | teacher | device | compiled | steps | final PSNR | train s | s/step | points trained/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = []
    for run_dir in run_dirs:
        try:
            s = summary_of(run_dir)
        except (OSError, ValueError):
            lines.append(f"| {run_dir.name} | not finished | | | | | | | | |")
            continue
        done.append((run_dir.name, s))
        lines.append(
            f"| {run_dir.name} | {s['teacher']} | {s['device']} | {s['compiled_with'] or 'no'} | {s['steps']} | "
            f"{s['final_psnr']:.2f} | {s['train_seconds']:.2f} | {s['train_seconds'] / s['steps']:.5f} | "
            f"{s['points_trained'] / max(s['train_seconds'], 1e-9):,.0f} | {s['wall_seconds']:.1f} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print(
        f"{len(done)} of {len(run_dirs)} runs finished: "
        + ", ".join(f"{name} {s['final_psnr']:.2f} dB" for name, s in done)
    )
    return 0 if len(done) == len(run_dirs) else 1


def resumed(run_dir: Path, log: Path, reference: Path, out: Path) -> int:
    """Did the run resume from a checkpoint and finish, and how close is it to one never stopped?"""
    text = log.read_text(errors="replace")
    line = next((x for x in text.splitlines() if "resuming from" in x), None)
    s = summary_of(run_dir)
    facts = {"resumed": line, "steps": s["steps"], "final_psnr": s["final_psnr"], "device": s["device"]}
    problems = [] if line else ["the run never resumed from a checkpoint"]
    try:
        r = summary_of(reference)
        facts["uninterrupted_psnr"] = r["final_psnr"]
        facts["difference_db"] = s["final_psnr"] - r["final_psnr"]
        if abs(facts["difference_db"]) > 0.5:
            problems.append(f"resumed {s['final_psnr']:.3f} dB against {r['final_psnr']:.3f} uninterrupted")
    except (OSError, ValueError):
        facts["uninterrupted_psnr"] = None
    if not math.isfinite(s["final_psnr"]):
        problems.append("final PSNR is not finite")
    facts["problems"] = problems
    out.write_text(json.dumps(facts, indent=2) + "\n")
    shown = f"{facts['difference_db']:+.3f} dB against uninterrupted" if "difference_db" in facts else "no reference"
    print(f"{(line or 'never resumed').removeprefix('dint.train: ')}; {s['final_psnr']:.2f} dB ({shown})")
    for problem in problems:
        print(f"gpu_check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def steps(
    overhead: Path, variant: str, seconds: float, factor: float, least: int, most: int, round_to: int, unmeasured: int
) -> int:
    """Steps of a bench of teachers costing `factor` times `variant`'s measured step that fit
    `seconds`; `unmeasured` when part 2 measured nothing."""
    per_step = None
    if overhead.is_file():
        for line in overhead.read_text().splitlines():
            row = json.loads(line)
            if row.get("variant") == variant and "seconds_per_step" in row:
                per_step = row["seconds_per_step"]
    if per_step is None:
        fitting, why = unmeasured, f"no {variant} figure: a guess"
    else:
        fitting, why = int(seconds / (factor * per_step)), f"{seconds:g} s / ({factor:g} x {per_step:.5f} s)"
    chosen = max(least, min(most, fitting // round_to * round_to))
    print(chosen)
    print(f"gpu_check: bench steps {chosen} ({why}, kept in [{least}, {most}])", file=sys.stderr)
    return 0


def scale_figures(scaling: Path, out: Path) -> int:
    """The measured compute term of `dint scale` at 1 rank: points/s, the step's split, and the
    SIREN's achieved FLOP/s against the cost model's assumed GPU rate (dint.commands.cost_model)."""
    from dint.commands.cost_model import GPU_EFFICIENCY, GPU_PEAK_FLOPS
    from dint.fields.siren import siren_macs

    record = json.loads(scaling.read_text())["records"][0]
    layers, width = record["model"]
    macs = siren_macs(record["in_features"], record["out_features"], layers, width)
    train = record["step_split"]["forward_backward"]
    trained_per_step = record["points_trained"] / record["steps"]
    # A forward is 2 FLOP per multiply-add; the backward about twice the forward.
    flops = 6 * macs * trained_per_step / train if train > 0 else float("nan")
    facts = {
        "device": record["device"],
        "model": record["model"],
        "points_per_second": record["points_per_second"],
        "seconds_per_step": record["seconds_per_step"],
        "step_split": record["step_split"],
        "train_points_per_second": trained_per_step / train if train > 0 else None,
        "achieved_flops": flops,
        "assumed_flops": GPU_PEAK_FLOPS * GPU_EFFICIENCY,
    }
    out.write_text(json.dumps(facts, indent=2) + "\n")
    print(
        f"{record['device']}: {record['points_per_second']:,.0f} points trained/s, "
        f"{record['seconds_per_step'] * 1e3:.2f} ms a step (forward+backward {train * 1e3:.2f} ms: "
        f"{flops / 1e12:.3g} TFLOP/s; the cost model assumes {facts['assumed_flops'] / 1e12:.2f} for an H100)"
    )
    return 0


def main(argv: list[str]) -> int:
    command, *rest = argv
    cuda = "--cuda" in rest
    rest = [a for a in rest if a != "--cuda"]
    if command == "environment":
        return environment(Path(rest[0]), cuda)
    if command == "group":
        return group(Path(rest[0]), cuda)
    if command == "runs":
        return runs(Path(rest[0]), [Path(p) for p in rest[1:]])
    if command == "resumed":
        return resumed(*map(Path, rest[:4]))
    if command == "steps":
        path, variant, seconds, factor, *counts = rest
        return steps(Path(path), variant, float(seconds), float(factor), *map(int, counts))
    if command == "scale":
        return scale_figures(Path(rest[0]), Path(rest[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main(sys.argv[1:]))
