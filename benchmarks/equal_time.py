"""Equal-time quality of a field, in a plain PyTorch loop: what a field reaches in a time budget.

    .venv/bin/python benchmarks/equal_time.py runs/stores/kodim01.zarr --seconds 90 --field hashgrid --lr 1e-2
    .venv/bin/python benchmarks/equal_time.py runs/stores/kodim01.zarr --seconds 90 --field siren --width 64 \
        --layers 3 --lr 1e-3

One process (--threads), the whole signal in memory, batches of --batch points drawn uniformly
at random every step, Adam (constant learning rate unless --schedule cosine-time, a cosine
decay over the time budget), the model built by dint (dint.fields.model.build_model, so the
same field as `dint train`). The clock runs over the steps only; quality (PSNR over every
point on the [-1, 1] training range, and IoU for shapes) is measured outside it, at
--eval-every seconds and at the end. Prints one JSON line per evaluation, then a summary line.

Options for the hash field's engineering, measured in benchmarks/2026-12-07-hash-grid.md:
--table-grad sparse (an Embedding with sparse gradients and SparseAdam for the table) against
dense (the table's gradient a dense tensor, as dint trains it), --adam fused|foreach|loop,
--eps (Adam's epsilon), --table-lr-factor.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from dint.core.config import ModelConfig
from dint.core.resources import keep_freed_memory
from dint.data.sharding import CoordinateMap
from dint.data.store import open_store, to_training
from dint.fields.model import build_model, parameter_count


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time budget")
    parser.add_argument("--max-steps", type=int, default=0, help="stop earlier after this many steps (0: no limit)")
    parser.add_argument("--field", choices=("siren", "hashgrid"), default="hashgrid")
    parser.add_argument("--width", type=int, default=64, help="siren")
    parser.add_argument("--layers", type=int, default=3, help="siren")
    parser.add_argument("--levels", type=int, default=ModelConfig.hash_levels)
    parser.add_argument("--log2", type=int, default=ModelConfig.hash_table_size_log2)
    parser.add_argument("--features", type=int, default=ModelConfig.hash_features)
    parser.add_argument("--base", type=int, default=ModelConfig.hash_base_resolution)
    parser.add_argument("--finest", type=int, default=ModelConfig.hash_finest_resolution)
    parser.add_argument("--mlp-width", type=int, default=ModelConfig.hash_mlp_width)
    parser.add_argument("--mlp-layers", type=int, default=ModelConfig.hash_mlp_layers)
    parser.add_argument("--activation", choices=("auto", "relu", "sine"), default=ModelConfig.hash_activation)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--table-lr-factor", type=float, default=ModelConfig.hash_table_lr_factor)
    parser.add_argument("--eps", type=float, default=None, help="Adam's epsilon (default: Adam's, 1e-8)")
    parser.add_argument("--schedule", choices=("constant", "cosine-time"), default="constant")
    parser.add_argument("--table-grad", choices=("dense", "sparse"), default="dense")
    parser.add_argument("--adam", choices=("fused", "foreach", "loop"), default=None, help="default: the field's own")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=float, default=0.0, help="seconds of training between evaluations")
    parser.add_argument("--block", type=int, default=65536, help="points per no-grad forward when evaluating")
    return parser.parse_args()


def model_config(args: argparse.Namespace) -> ModelConfig:
    if args.field == "siren":
        return ModelConfig(width=args.width, hidden_layers=args.layers)
    return ModelConfig(
        field="hashgrid",
        hash_levels=args.levels,
        hash_table_size_log2=args.log2,
        hash_features=args.features,
        hash_base_resolution=args.base,
        hash_finest_resolution=args.finest,
        hash_mlp_width=args.mlp_width,
        hash_mlp_layers=args.mlp_layers,
        hash_activation=args.activation,
        hash_table_lr_factor=args.table_lr_factor,
    )


def sparse_encode(grid):
    """The hash grid's encode with the table gathered by an Embedding with sparse gradients."""

    def encode(coords: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            index, weights = grid.corner_indices_and_weights(coords)
        rows = F.embedding(index, grid.table, sparse=True)
        return (rows * weights[..., None]).sum(1).flatten(1)

    return encode


def optimizers(model: torch.nn.Module, args: argparse.Namespace) -> list[torch.optim.Optimizer]:
    settings = model.adam_settings(args.lr) if hasattr(model, "adam_settings") else {"params": model.parameters()}
    settings = {"lr": args.lr, **settings}
    if args.eps is not None:
        settings["eps"] = args.eps
    if args.adam is not None:
        settings.pop("fused", None)
        if args.adam == "fused":
            settings["fused"] = True
        else:
            settings["foreach"] = args.adam == "foreach"
    if args.table_grad == "dense" or args.field == "siren":
        return [torch.optim.Adam(**settings)]
    mlp_group, table_group = settings.pop("params")
    sparse = torch.optim.SparseAdam(table_group["params"], lr=table_group["lr"], eps=settings.get("eps", 1e-8))
    return [torch.optim.Adam(**{**settings, "params": [mlp_group]}), sparse]


def main() -> None:
    args = arguments()
    keep_freed_memory(True)
    torch.set_num_threads(args.threads)
    store = open_store(args.store)
    info = store.info
    values = torch.from_numpy(store.read_region((0,) * info.ndim, info.shape).reshape(-1, info.channels))
    targets = to_training(values.float(), info.value_range)
    del values
    n = targets.shape[0]
    coordinates = CoordinateMap(info, torch.device("cpu"))
    shape = torch.tensor(info.shape)
    strides = torch.tensor([math.prod(info.shape[d + 1 :]) for d in range(info.ndim)])

    def coords_of(flat: torch.Tensor) -> torch.Tensor:
        return coordinates(flat[:, None] // strides % shape)

    torch.manual_seed(args.seed)
    config = model_config(args)
    model = build_model(config, info)
    if args.table_grad == "sparse" and args.field == "hashgrid":
        model.encode = sparse_encode(model)
    steppers = optimizers(model, args)
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in steppers]
    generator = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def quality() -> dict:
        squared, inside, union = 0.0, 0, 0
        for start in range(0, n, args.block):
            flat = torch.arange(start, min(n, start + args.block))
            fitted, wanted = model(coords_of(flat)), targets[flat]
            squared += (fitted - wanted).double().square().sum().item()
            if info.modality == "shape":  # occupancy in [-1, 1]: inside above 0
                a, b = fitted > 0, wanted > 0
                inside, union = inside + (a & b).sum().item(), union + (a | b).sum().item()
        mse = squared / (n * info.channels)
        result = {"psnr": round(10 * math.log10(4.0 / mse), 3) if mse > 0 else math.inf}
        if info.modality == "shape":
            result["iou"] = round(inside / max(1, union), 4)
        return result

    step, clock, next_eval = 0, 0.0, args.eval_every or math.inf
    while clock < args.seconds and (not args.max_steps or step < args.max_steps):
        started = time.perf_counter()
        if args.schedule == "cosine-time":
            factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, clock / args.seconds)))
            for opt, lrs in zip(steppers, base_lrs):
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr * factor
        flat = torch.randint(0, n, (args.batch,), generator=generator)
        for opt in steppers:
            opt.zero_grad(set_to_none=True)
        loss = (model(coords_of(flat)) - targets[flat]).square().mean()
        loss.backward()
        for opt in steppers:
            opt.step()
        clock += time.perf_counter() - started
        step += 1
        if clock >= next_eval:
            print(json.dumps({"step": step, "seconds": round(clock, 2), **quality()}), flush=True)
            next_eval += args.eval_every
    print(
        json.dumps(
            {
                "store": args.store,
                "field": args.field,
                "model": {k: v for k, v in vars(config).items() if not k.startswith("compile")},
                "params": parameter_count(config, info),
                "lr": args.lr,
                "table_grad": args.table_grad,
                "adam": args.adam or ("fused" if args.field == "hashgrid" else "loop"),
                "schedule": args.schedule,
                "batch": args.batch,
                "threads": args.threads,
                "steps": step,
                "train_seconds": round(clock, 2),
                "seconds_per_step": round(clock / max(1, step), 5),
                **quality(),
            }
        )
    )


if __name__ == "__main__":
    main()
