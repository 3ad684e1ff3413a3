"""How few steps a sampler could need if its scores cost nothing: the ceiling of sampling by error.

    .venv/bin/python experiments/sampling_ceiling.py STORE --out DIR \
        [--samplers uniform,stratified,error,gradient,error@80,gradient@80]
        [--steps 2000 --lr 2e-3 --ratio 0.1] [--focus B]

Trains the same SIREN as `dint bench` (one process, the whole signal in memory, Adam with a
cosine decay to 0) once as `full` (every point, --reference-steps at --reference-lr: the bench's
reference) and once per sampler, and counts the **steps** each sampler needs to reach `full`'s
final PSNR. Scores are computed outside any clock, over every point, so this measures what a
selection rule could save if scoring were free, not what it saves in time:

- uniform: k = ratio * N points at random (dint's `uniform`);
- stratified: one point at random in each run of 1 / ratio consecutive points (raster order);
- error, gradient: each point drawn with probability k * (random_share / N + (1 - random_share)
  * its share of the scores), weighted by 1 / (N p) so the loss is unbiased (dint's
  `importance`, dint.teaching.teacher.inclusion_probability; --importance-correction below 1: dint's
  soft mining, dint.teaching.teacher.importance_weights), the score being the point's error |f - y|
  or the norm of its loss's gradient over every parameter (exact, per point), fresh every step;
- error@R, gradient@R: the same scores refreshed every R steps, and at the trained points
  before their update in between (dint's error reuse, teacher.error_refresh = R).
- error#R, gradient#R: refreshed every R steps only, unchanged in between.

With --focus B, every sampler but `full` weights each trained point's loss by its own error to
the power B, read from the training forward itself (fresh and free), as a weighted mean: with
uniform draws and B = 0.5 the expected gradient is about that of soft mining (draws in
proportion to the error, weights 1 / sqrt(p)), without its draw.

Writes DIR/ceiling.json and DIR/ceiling.md (steps to `full`'s final, and as a share of uniform's).
"""

import argparse
import json
import math
from pathlib import Path

import torch

from dint.core.config import ModelConfig
from dint.core.resources import keep_freed_memory
from dint.data.sharding import CoordinateMap
from dint.data.store import open_store, to_training
from dint.fields.model import build_model
from dint.teaching.teacher import importance_weights, inclusion_probability, per_point_error
from dint.train.metrics import time_to_reach

BLOCK = 16384


def scores(model: torch.nn.Module, coords: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Each point's |f - y| (l1 over channels), or the norm of its loss's gradient over every
    parameter, (f - y)^2 averaged over channels: the sum over Linear layers of
    ||dloss/doutput||^2 * (||input||^2 + 1), exact per point, from one backward to the layer outputs."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    result = torch.empty(coords.shape[0])
    for start in range(0, coords.shape[0], BLOCK):
        c, t = coords[start : start + BLOCK], targets[start : start + BLOCK]
        if kind == "error":
            with torch.no_grad():
                result[start : start + c.shape[0]] = per_point_error(model(c) - t, "l1")
            continue
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o, seen=seen: seen.append((i[0].detach(), o))) for m in linears]
        try:
            loss = (model(c) - t).square().mean(1).sum()
        finally:
            for h in hooks:
                h.remove()
        deltas = torch.autograd.grad(loss, [o for _, o in seen])
        result[start : start + c.shape[0]] = sum(
            d.square().sum(1) * (a.square().sum(1) + 1) for (a, _), d in zip(seen, deltas)
        ).sqrt()
    return result


def psnr(model: torch.nn.Module, coords: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        mse = (
            sum(
                (model(c) - t).double().square().sum().item() for c, t in zip(coords.split(BLOCK), targets.split(BLOCK))
            )
            / targets.numel()
        )
    return 10 * math.log10(4.0 / mse)  # targets span [-1, 1]


def train(
    sampler: str, steps: int, lr: float, coords: torch.Tensor, targets: torch.Tensor, info, args: argparse.Namespace
) -> list[tuple[int, float]]:
    """PSNR every args.eval_every steps of one run that trains on the points `sampler` picks."""
    n = coords.shape[0]
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(width=args.width, hidden_layers=args.layers), info)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    draws = torch.Generator().manual_seed(1000 + args.seed)
    k, cell = round(args.ratio * n), round(1 / args.ratio)
    reuse = "#" not in sampler  # "@R": the trained points' scores kept in between; "#R": refreshes only
    kind, _, refresh = sampler.replace("#", "@").partition("@")
    refresh, memory, curve = int(refresh or 1), None, []
    for step in range(steps):
        weights = None
        if sampler == "full":
            chosen = torch.arange(n)
        elif sampler == "uniform":
            chosen = torch.randperm(n, generator=draws)[:k]
        elif sampler == "stratified":
            runs = n // cell
            chosen = torch.arange(runs) * cell + torch.randint(cell, (runs,), generator=draws)
        else:
            if step % refresh == 0:
                memory = scores(model, coords, targets, kind)
            probability = inclusion_probability(memory, k, n, args.random_share)
            chosen = torch.nonzero(torch.rand(n, generator=draws, dtype=torch.float64) < probability).squeeze(1)
            weights, normalizer = importance_weights(probability, chosen, n, args.importance_correction)
            weights = weights / normalizer
            if refresh > 1 and reuse:  # the trained points' scores before their update, as error reuse sees them
                memory[chosen] = scores(model, coords[chosen], targets[chosen], kind)
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, chosen.shape[0], BLOCK):
            part = chosen[start : start + BLOCK]
            per_point = (model(coords[part]) - targets[part]).square().mean(1)
            if args.focus and sampler != "full":  # its own fresh error, free from this forward
                focus = per_point.detach().sqrt().pow(args.focus)
                per_point = per_point * focus / focus.mean()
            loss = (
                per_point.sum() / chosen.shape[0]
                if weights is None
                else (per_point * weights[start : start + BLOCK]).sum()
            )
            loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, psnr(model, coords, targets)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samplers", default="uniform,stratified,error,gradient,error@80,gradient@80")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--random-share", type=float, default=0.2)
    parser.add_argument(
        "--importance-correction",
        type=float,
        default=1.0,
        help="weights 1 / p^a; below 1 the loss is their weighted mean (dint's soft mining)",
    )
    parser.add_argument(
        "--focus",
        type=float,
        default=0.0,
        help="weight each trained point's loss by its own error to this power (a weighted mean)",
    )
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--reference-lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory(True)
    torch.set_num_threads(args.threads)
    store = open_store(args.store)
    info = store.info
    values = store.read_region((0,) * info.ndim, info.shape).reshape(-1, info.channels)
    targets = to_training(torch.from_numpy(values).float(), info.value_range)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in info.shape], indexing="ij"), -1).reshape(-1, info.ndim)
    coords = CoordinateMap(info, torch.device("cpu"))(grid)

    reference = train("full", args.reference_steps, args.reference_lr, coords, targets, info, args)
    target = reference[-1][1]
    runs = []
    for sampler in args.samplers.split(","):
        curve = train(sampler, args.steps, args.lr, coords, targets, info, args)
        runs.append(
            {
                "sampler": sampler,
                "final_psnr": curve[-1][1],
                "steps_to_reference": time_to_reach(curve, target),
                "curve": curve,
            }
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    base = next((r["steps_to_reference"] for r in runs if r["sampler"] == "uniform"), None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceiling.json").write_text(
        json.dumps(
            {
                "store": args.store,
                "args": vars(args),
                "reference_psnr": target,
                "reference_curve": reference,
                "runs": runs,
            },
            indent=1,
        )
    )
    lines = [
        f"`full` ({args.reference_steps} steps, lr {args.reference_lr:g}) ends at {target:.2f} dB; "
        f"samplers at ratio {args.ratio:g}, {args.steps} steps, lr {args.lr:g}, scores free.",
        "",
        "| sampler | final PSNR | steps to full's final | / uniform's |",
        "|---|---|---|---|",
    ]
    for r in runs:
        s = r["steps_to_reference"]
        share = f"{s / base:.2f}" if s and base else "—"
        lines.append(f"| {r['sampler']} | {r['final_psnr']:.2f} | {f'{s:.0f}' if s else 'never'} | {share} |")
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
