"""A plain PyTorch loop: the reference for dint's framework overhead (same SIREN, same blocks).

    .venv/bin/python benchmarks/plain_siren.py runs/bench/kodim01.zarr --steps 2000 --width 64 --layers 3 \
        [--teacher full|int] [--micro-batch 16384] [--threads 2]

One process, the whole signal in memory as a coordinate grid, Adam with a cosine decay to 0,
MSE over [-1, 1] targets (or [0, 1]); `int` selects the paper's top-k by |f - y| with dint's schedules.
Prints seconds per step and the final PSNR (over every point) as one JSON line.
"""

import argparse
import json
import math
import time

import torch

from dint.core.config import ModelConfig
from dint.core.resources import keep_freed_memory
from dint.data.sharding import CoordinateMap
from dint.data.store import open_store, to_training
from dint.fields.model import build_model
from dint.teaching.teacher import is_selection_step, ratio_at

parser = argparse.ArgumentParser()
parser.add_argument("store")
parser.add_argument("--steps", type=int, default=2000)
parser.add_argument("--width", type=int, default=64)
parser.add_argument("--layers", type=int, default=3)
parser.add_argument("--teacher", choices=("full", "int"), default="full")
parser.add_argument("--micro-batch", type=int, default=16384)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--eval-every", type=int, default=0, help="print PSNR every N steps (outside the clock)")
parser.add_argument(
    "--bias",
    choices=("model", "torch", "official"),
    default="model",
    help="biases as dint's model makes them, PyTorch's default, or U(-w_bound, w_bound)",
)
parser.add_argument("--eta-min", type=float, default=0.0, help="the cosine decay's floor")
parser.add_argument(
    "--target-range",
    choices=("symmetric", "unit"),
    default="symmetric",
    help="fit targets in [-1, 1] (dint) or [0, 1] (the official INT code's data_range 0)",
)
parser.add_argument(
    "--malloc-defaults",
    action="store_true",
    help="leave glibc's allocator as it is (dint's run.keep_freed_memory = false)",
)
args = parser.parse_args()
keep_freed_memory(not args.malloc_defaults)  # the same engineering as dint's default

torch.set_num_threads(args.threads)
store = open_store(args.store)
info = store.info
values = torch.from_numpy(store.read_region((0,) * info.ndim, info.shape).reshape(-1, info.channels))
targets = to_training(values.float(), info.value_range)
span = 2.0  # of the targets: PSNR is over it
if args.target_range == "unit":
    targets, span = (targets + 1.0) / 2.0, 1.0
grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in info.shape], indexing="ij"), -1).reshape(-1, info.ndim)
coords = CoordinateMap(info, torch.device("cpu"))(grid)
torch.manual_seed(args.seed)
model = build_model(ModelConfig(width=args.width, hidden_layers=args.layers), info)
with torch.no_grad():  # the init under test, layer by layer
    for layer in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
        fan_in = layer.weight.shape[1]
        if args.bias == "torch":
            layer.bias.uniform_(-1 / fan_in**0.5, 1 / fan_in**0.5)
        elif args.bias == "official":
            layer.bias.uniform_(-layer.weight.abs().max().item(), layer.weight.abs().max().item())
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=args.eta_min)
n, chosen = coords.shape[0], torch.arange(coords.shape[0])


@torch.no_grad()
def psnr(clamped: bool = False) -> float:
    """Over every point; `clamped`: of the predictions clipped to the targets' range first."""
    low = -1.0 if args.target_range == "symmetric" else 0.0
    fitted = (lambda c: model(c).clamp(low, low + span)) if clamped else model
    mse = sum(
        (fitted(c) - t).double().square().sum().item()
        for c, t in zip(coords.split(args.micro_batch), targets.split(args.micro_batch))
    ) / (n * info.channels)
    return 10 * math.log10(span**2 / mse)


started = time.perf_counter()
for step in range(args.steps):
    if args.teacher == "int" and is_selection_step(step, args.steps, "incremental", 1):
        with torch.no_grad():
            errors = torch.cat(
                [
                    (model(c) - t).abs().sum(1)
                    for c, t in zip(coords.split(args.micro_batch), targets.split(args.micro_batch))
                ]
            )
        chosen = errors.topk(round(ratio_at(step, args.steps, 0.2, "step") * n), sorted=False).indices
    optimizer.zero_grad(set_to_none=True)
    for part in chosen.split(args.micro_batch):
        loss = (model(coords[part]) - targets[part]).square().mean(1).sum() / chosen.shape[0]
        loss.backward()
    optimizer.step()
    schedule.step()
    if args.eval_every and (step + 1) % args.eval_every == 0:
        paused = time.perf_counter()
        print(
            json.dumps(
                {
                    "step": step + 1,
                    "seconds": round(paused - started, 2),
                    "psnr": round(psnr(), 3),
                    "psnr_clamped": round(psnr(clamped=True), 3),
                }
            )
        )
        started += time.perf_counter() - paused
seconds = time.perf_counter() - started
print(
    json.dumps(
        {
            "teacher": args.teacher,
            "steps": args.steps,
            "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / args.steps, 5),
            "final_psnr": round(psnr(), 3),
        }
    )
)
