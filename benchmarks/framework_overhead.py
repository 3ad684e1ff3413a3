"""dint's framework overhead on one device: seconds per step and points per second of dint's
Trainer against a plain PyTorch loop over the same SIREN, the same signal and the same teacher
(`full`: every point at every step, one forward and backward), eager and compiled, in float32,
TF32 and bfloat16. Part 2 of tools/gpu_check.sh.

    python benchmarks/framework_overhead.py STORE --out DIR [--device cuda] [--width 256 --layers 5]
        [--warmup 10] [--steps 100] [--backend inductor] [--budget 150] [--variants dint:fp32:compiled,...]

A variant is IMPLEMENTATION:PRECISION:MODE: `dint` (the Trainer, as `dint train` runs it, timed
from its step warmup+1 to its last step, so the loop's own bookkeeping counts) or `plain` (the
loop alone, as benchmarks/plain_siren.py); `fp32`, `tf32` (float32 with TF32 matrix products,
torch.set_float32_matmul_precision("high"); CUDA only) or `bf16` (the forward under bfloat16
autocast; the plain loop only: dint trains in float32); `eager` or `compiled` (dint's own
`compile_model`: torch.compile of the forward, dynamic shapes). Each variant starts from the same
initial model (seed 0) with Adam at 1e-3 and a cosine decay over warmup + steps; its first
`warmup` steps (compilation included) are timed apart. PSNR is over every point after the last
step: a precision "holds" where it stays within 0.5 dB of float32's, same implementation and mode.

Each variant appends one JSON line to DIR/overhead.jsonl when it is measured, and DIR/overhead.md
is rewritten with the table so far: a run cut short keeps what it measured. Variants are run in
the order given and none is started once --budget seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch._dynamo

from dint.core.config import ModelConfig, load_config
from dint.data.sharding import Shard, rank_chunk_ids
from dint.data.store import open_store
from dint.fields.model import build_model, compile_model
from dint.fields.quality import psnr
from dint.train.schedule import build_lr_scheduler

DEFAULT_VARIANTS = (
    "dint:fp32:compiled,plain:fp32:compiled,dint:fp32:eager,plain:fp32:eager,"
    "plain:tf32:compiled,dint:tf32:compiled,plain:bf16:compiled,plain:tf32:eager,plain:bf16:eager"
)
HOLDS_DB = 0.5


def sync(device: torch.device) -> float:
    """The time once the device has finished what it was given (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def set_precision(precision: str) -> None:
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")


def run_plain(args, precision: str, compiled: bool, device: torch.device) -> dict:
    store = open_store(args.store)
    info = store.info
    shard = Shard(store, rank_chunk_ids(info, 0, 1), device)
    everything = torch.arange(len(shard), device=device)
    coords, targets = shard.coords(everything), shard.targets(everything)
    n = coords.shape[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=args.width, hidden_layers=args.layers), info).to(device)
    if compiled:
        compile_model(model, ModelConfig(compile="on", compile_backend=args.backend), device)
    total = args.warmup + args.steps
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = build_lr_scheduler(optimizer, total, "cosine")
    lower = precision == "bf16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=lower):
            prediction = model(coords)
        loss = (prediction.float() - targets).square().mean(1).sum() / n  # dint's loss for `full`
        loss.backward()
        optimizer.step()
        schedule.step()

    started = sync(device)
    for _ in range(args.warmup):
        step()
    timed = sync(device)
    for _ in range(args.steps):
        step()
    ended = sync(device)
    with torch.no_grad():
        error = sum(
            (model(c) - t).double().square().sum().item()
            for c, t in zip(coords.split(args.block_points), targets.split(args.block_points))
        )
    return {
        "points": n,
        "warmup_seconds": timed - started,
        "seconds_per_step": (ended - timed) / args.steps,
        "psnr": psnr(error / (n * info.channels), 2.0),
    }


def run_dint(args, precision: str, compiled: bool, device: torch.device, work: Path) -> dict:
    from dint.train.trainer import Trainer

    run_dir = work / f"dint-{precision}-{'compiled' if compiled else 'eager'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    total = args.warmup + args.steps
    overrides = {
        "data.store": args.store,
        "data.block_points": str(args.block_points),
        "run.dir": str(run_dir),
        "run.device": device.type,
        "model.width": str(args.width),
        "model.hidden_layers": str(args.layers),
        "model.compile": "on" if compiled else "off",
        "teacher.strategy": "full",
        "train.micro_batch": "0",
        "train.steps": str(total),
        "checkpoint.resume": "never",
        "eval.reconstruction": "false",
        "metrics.tensorboard": "false",
        "metrics.plots": "false",
        "metrics.selection_maps": "[]",
    }
    if compiled:
        overrides["model.compile_backend"] = args.backend
    started = time.perf_counter()
    trainer = Trainer(load_config(None, overrides))
    built = time.perf_counter()
    marks: dict[str, float] = {}
    train_step = trainer.train_step

    def timed_step(step: int):
        if step == 1:
            marks["first"] = sync(device)
        if step == args.warmup + 1:
            marks["start"] = sync(device)
        loss = train_step(step)
        if step == total:
            marks["end"] = sync(device)
        return loss

    trainer.train_step = timed_step  # the loop's bookkeeping between steps stays inside the span
    summary = trainer.train()
    finished = time.perf_counter()
    return {
        "points": summary["points"],
        "startup_seconds": built - started,
        "warmup_seconds": marks["start"] - marks["first"],
        "seconds_per_step": (marks["end"] - marks["start"]) / args.steps,
        # The step's own parts as dint's timers see them (selection and update), over every step.
        "timed_seconds_per_step": summary["train_seconds"] / total,
        "finish_seconds": finished - marks["end"],
        "psnr": summary["final_psnr"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | s/step | points/s | dint / plain | first steps (s) | PSNR (dB) | precision holds |",
        "|---|---|---|---|---|---|---|",
    ]
    by_name = {r["variant"]: r for r in rows if "seconds_per_step" in r}
    for r in rows:
        if "seconds_per_step" not in r:
            lines.append(f"| {r['variant']} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        impl, precision, mode = r["variant"].split(":")
        plain = by_name.get(f"plain:{precision}:{mode}") if impl == "dint" else None
        fp32 = by_name.get(f"{impl}:fp32:{mode}")
        holds = ""
        if precision != "fp32" and fp32 is not None:
            holds = "yes" if r["psnr"] >= fp32["psnr"] - HOLDS_DB else "no"
            holds += f" ({r['psnr'] - fp32['psnr']:+.2f} dB)"
        ratio = f"{r['seconds_per_step'] / plain['seconds_per_step']:.2f}x" if plain is not None else ""
        lines.append(
            f"| {r['variant']} | {r['seconds_per_step']:.5f} | {r['points_per_second']:,.0f} | {ratio} | "
            f"{r['warmup_seconds']:.1f} | {r['psnr']:.2f} | {holds} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict]) -> str:
    """One line: dint against the plain loop, compiled and eager, float32; the fastest variant."""
    by_name = {r["variant"]: r for r in rows if "seconds_per_step" in r}
    parts = []
    for mode in ("compiled", "eager"):
        mine, plain = by_name.get(f"dint:fp32:{mode}"), by_name.get(f"plain:fp32:{mode}")
        if mine and plain:
            ratio = mine["seconds_per_step"] / plain["seconds_per_step"]
            parts.append(
                f"{mode}: dint {mine['seconds_per_step'] * 1e3:.2f} ms a step ({mine['points_per_second'] / 1e6:.2f} M "
                f"points/s), plain {plain['seconds_per_step'] * 1e3:.2f} ms ({ratio:.2f}x)"
            )
    if by_name:
        best = min(by_name.values(), key=lambda r: r["seconds_per_step"])
        parts.append(f"fastest {best['variant']} {best['seconds_per_step'] * 1e3:.2f} ms")
    return "; ".join(parts) or "nothing measured"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--out", type=Path, required=True, help="folder for overhead.jsonl and overhead.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--block-points", type=int, default=262144)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generated)")
    parser.add_argument("--budget", type=float, default=math.inf, help="seconds after which no variant starts")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    # Every variant compiles the same forward (precisions and autocast are guarded): room for all.
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    args.out.mkdir(parents=True, exist_ok=True)
    lines, md = args.out / "overhead.jsonl", args.out / "overhead.md"
    lines.write_text("")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"SIREN {args.layers}x{args.width} on {args.store}, teacher `full`, {args.steps} steps timed after "
        f"{args.warmup}; {where}, torch {torch.__version__}, compile backend {args.backend}\n\n"
    )
    rows, began = [], time.perf_counter()
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        impl, precision, mode = variant.split(":")
        row = {"variant": variant, "device": where, "torch": torch.__version__, "model": [args.layers, args.width]}
        if time.perf_counter() - began > args.budget:
            row["skipped"] = f"skipped: past the {args.budget:g} s budget"
        elif precision == "tf32" and device.type != "cuda":
            row["skipped"] = "skipped: TF32 is CUDA's"
        elif precision == "bf16" and impl == "dint":
            row["skipped"] = "skipped: dint trains in float32"
        else:
            set_precision(precision)
            try:
                if impl == "plain":
                    row.update(run_plain(args, precision, mode == "compiled", device))
                else:
                    row.update(run_dint(args, precision, mode == "compiled", device, args.out / "runs"))
                row["points_per_second"] = row["points"] / row["seconds_per_step"]
            except Exception as e:  # one variant failing (a backend missing) leaves the others
                row["error"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            finally:
                set_precision("fp32")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        with lines.open("a") as f:
            f.write(json.dumps(row) + "\n")
        md.write_text(header + table(rows) + "\n")
        shown = (
            row.get("skipped")
            or row.get("error")
            or (
                f"{row['seconds_per_step'] * 1e3:.2f} ms a step, {row['points_per_second']:,.0f} points/s, "
                f"PSNR {row['psnr']:.2f} dB (first {args.warmup} steps {row['warmup_seconds']:.1f} s)"
            )
        )
        print(f"{variant}: {shown}", flush=True)
    shutil.rmtree(args.out / "runs", ignore_errors=True)
    print(headline(rows))
    if any("error" in r for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
