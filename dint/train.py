"""Train one SIREN over a whole store with Implicit Neural Teaching.

    torchrun --standalone --nproc_per_node 8 -m dint.train --config configs/demo.toml
    python -m dint.train --config configs/demo.toml --train.steps 100     # one process

Every rank holds its own chunks of the store (dint.data), scores them, and the teacher's
all-gather turns the local top-k into the exact global selection (dint.teacher). The
update is that of the mean loss over the global selection, whichever ranks hold it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dint.components.checkpoint import save_model
from dint.components.metrics import MetricsLogger
from dint.config import Config, load_config, parse_cli, parse_size
from dint.batching import MiniBatchesInMemory, MiniBatchesStreamed, WholeSignal, WholeSignalStreamed
from dint.data import Shard, ShardStream, chunk_grid, rank_chunk_ids
from dint.distributed.engine import build_engine
from dint.distributed.utils import (all_gather_varlen, all_reduce_max, all_reduce_sum, barrier, destroy_distributed,
                                    init_distributed)
from dint.errors import DintError
from dint.model import Siren
from dint.quality import iou, psnr, ssim
from dint.render import (PREVIEW_MAX_POINTS, create_store, export_previews, inside_threshold, publish,
                         reconstruction_info, render_chunks, staging_path, to_unit)
from dint.store import open_store
from dint.teacher import Selection, Teacher

TRAINING_RANGE = 2.0  # targets live in [-1, 1]; PSNR is taken over that range


def selection_loss(model: torch.nn.Module, *, coords: torch.Tensor, targets: torch.Tensor, global_count: int,
                   world_size: int) -> torch.Tensor:
    """Mean squared error over the *global* selection, as this rank's share of it.

    Engines average gradients over ranks, so each rank's sum is scaled by
    world_size / global_count: the average then equals the gradient of the global mean
    however the selected points fall across ranks (a rank holding none adds zero, but
    still joins the gradient all-reduce). Summed over micro-batches, the same holds.
    """
    per_point = (model(coords) - targets).square().mean(dim=1)
    return per_point.sum() * (world_size / global_count)


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        self.dist = init_distributed(config.run.device)
        self.device = self.dist.device
        self.store = open_store(config.data.store)
        self.info = self.store.info
        if config.data.domain:
            if len(config.data.domain) != self.info.ndim:
                raise DintError(f"data.domain: {len(config.data.domain)} intervals given, the store has "
                                f"{self.info.ndim} axes")
            self.info = dataclasses.replace(self.info, domain=tuple((float(lo), float(hi)) for lo, hi in config.data.domain))
        self.run_dir = Path(config.run.dir)

        started = time.perf_counter()
        self.chunk_ids = rank_chunk_ids(self.info, self.dist.rank, self.dist.world_size)
        self.shard, self.stream = self._hold_shard(parse_size(config.data.memory_budget))
        self.load_seconds = time.perf_counter() - started

        torch.manual_seed(config.train.seed)  # the same initial model on every rank
        m, t, c = config.model, config.train, config.teacher
        self.model = Siren(self.info.ndim, self.info.channels, m.width, m.hidden_layers, m.w0, m.w0_first)
        self.model.to(self.device)
        self.engine = build_engine(t.engine, self.model, self.dist, t.lr, t.steps, t.lr_schedule)
        self.teacher = Teacher(
            strategy=c.strategy, ratio=c.ratio, ratio_schedule=c.ratio_schedule, interval_schedule=c.interval_schedule,
            interval=c.interval, error=c.error, block_points=config.data.block_points, seed=t.seed,
        )
        self.batches = self._plan_batches()
        self.eval_points = self._eval_sample() if config.eval.sample else None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(config.to_toml())
        barrier()
        self.logger = MetricsLogger(self.run_dir / "metrics.jsonl", t.steps, enabled=self.dist.is_main)
        self.select_seconds = self.step_seconds = self.eval_seconds = 0.0

    def _hold_shard(self, budget: int) -> tuple[Shard | None, ShardStream | None]:
        """The rank's shard in memory, or streamed when a rank's share exceeds the budget."""
        grid = chunk_grid(self.info)
        point_bytes = self.info.channels * np.dtype(self.info.dtype).itemsize
        share = sum(math.prod(grid[i][1]) for i in self.chunk_ids) * point_bytes
        # Every rank must take the same branch: stream if any rank's share is over budget.
        streaming = bool(all_reduce_max(torch.tensor([int(budget > 0 and share > budget)], device=self.device)))
        if streaming:
            return None, ShardStream(self.store, self.chunk_ids, self.device, self.info, budget)
        return Shard(self.store, self.chunk_ids, self.device, self.info), None

    def _plan_batches(self):
        steps, minibatch, seed = self.config.train.steps, self.config.teacher.minibatch, self.config.train.seed
        if self.stream is None:
            if minibatch:
                return MiniBatchesInMemory(self.teacher, self.shard, minibatch, steps, seed)
            return WholeSignal(self.teacher, self.shard, steps)
        if minibatch:
            groups = int(all_reduce_max(torch.tensor([len(self.stream)], device=self.device)))
            return MiniBatchesStreamed(self.teacher, self.stream, groups, steps)
        (counts,) = all_gather_varlen(torch.tensor([self.stream.num_points], device=self.device))
        return WholeSignalStreamed(self.teacher, self.stream, counts.tolist())

    def _eval_sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates and targets of this rank's part of a fixed random sample of points."""
        generator = torch.Generator().manual_seed(self.config.train.seed + 1)
        wanted = torch.randint(0, self.info.num_points, (self.config.eval.sample,), generator=generator)
        wanted = wanted.unique().to(self.device)
        coords, targets = [], []
        for shard in [self.shard] if self.shard is not None else self.stream:
            held, local = shard.local_index(wanted)
            coords.append(shard.coords(local))
            targets.append(shard.targets(local))
        return torch.cat(coords), torch.cat(targets)

    # --- the loop --------------------------------------------------------------------------

    def train(self) -> dict:
        steps, log_every, eval_every = self.config.train.steps, self.config.train.log_every, self.config.eval.every
        micro_batch = self.config.train.micro_batch
        wall_start = time.perf_counter()
        for step in range(steps):
            started = self._now()
            selections = self.batches.at(step, self.engine.module)
            if isinstance(selections, list):  # chosen now; a streamed pass is chosen as it goes
                self.select_seconds += self._now() - started
                started = self._now()
            loss = self.engine.step(
                functools.partial(selection_loss, coords=coords, targets=targets, global_count=selection.global_count,
                                  world_size=self.dist.world_size)
                for selection in selections for coords, targets in selection.batches(micro_batch)
            )
            self.step_seconds += self._now() - started

            last = step == steps - 1
            evaluate = eval_every > 0 and (step + 1) % eval_every == 0 and not last
            if evaluate or last or (step + 1) % log_every == 0:
                record = self._record(step, loss, self.batches.current, wall_start)
                if evaluate:
                    record.update(self.evaluate())
                if not last:  # the final line comes with the final evaluation below
                    self.logger.log(record)
            self.logger.advance()

        quality = self.evaluate()
        record.update(quality)
        self.logger.log(record)
        self.logger.close()
        return self.finish(quality, time.perf_counter() - wall_start)

    def _record(self, step: int, loss: torch.Tensor, selection: Selection, wall_start: float) -> dict:
        global_loss = all_reduce_sum(loss.reshape(1).double()) / self.dist.world_size
        return {
            "step": step + 1,
            "wall_seconds": round(time.perf_counter() - wall_start, 4),
            "loss": float(global_loss.item()),
            "psnr": None,
            **({"iou": None} if self.info.modality == "shape" else {}),
            "ratio": selection.ratio,
            "selected": selection.global_count,
            "selected_per_rank": selection.rank_counts,
            "selected_at": selection.step + 1,  # step, or pass with mini-batches
            **({"pass": step // self.batches.steps_per_pass + 1, "minibatch": step % self.batches.steps_per_pass + 1}
               if self.batches.steps_per_pass > 1 else {}),
            "select_seconds": round(self.select_seconds, 4),
            "train_seconds": round(self.step_seconds, 4),
            "lr": self.engine.lr,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """PSNR (and IoU for shapes) from a fresh forward, summed over ranks.

        Over every point of the signal, or over the fixed sample of eval.sample points.
        """
        started = self._now()
        shape = self.info.modality == "shape"
        if shape:  # the surface value in [-1, 1] space, and which side is inside
            surface, above = inside_threshold(self.info)
            lo, hi = self.info.value_range
            level = (surface - lo) * TRAINING_RANGE / (hi - lo) - 1.0
        # [squared error, points, intersection, union], in float64 so large signals sum exactly enough
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for prediction, target in self._eval_batches():
            sums[0] += (prediction - target).double().square().sum()
            sums[1] += target.shape[0]
            if shape:
                inside_p = prediction[:, 0] >= level if above else prediction[:, 0] <= level
                inside_t = target[:, 0] >= level if above else target[:, 0] <= level
                sums[2] += (inside_p & inside_t).sum()
                sums[3] += (inside_p | inside_t).sum()
        all_reduce_sum(sums)
        self.eval_seconds += self._now() - started
        result = {"psnr": psnr(sums[0].item() / (sums[1].item() * self.info.channels), TRAINING_RANGE)}
        if shape:
            result["iou"] = iou(sums[2].item(), sums[3].item())
        return result

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        model, block = self.engine.module, self.config.data.block_points
        if self.eval_points is not None:
            coords, targets = self.eval_points
            for start in range(0, coords.shape[0], block):
                yield model(coords[start : start + block]), targets[start : start + block]
            return
        for shard in [self.shard] if self.shard is not None else self.stream:
            for local in shard.blocks(block):
                yield model(shard.coords(local)), shard.targets(local)

    # --- outputs ---------------------------------------------------------------------------

    def finish(self, quality: dict, wall_seconds: float) -> dict:
        summary = {
            "final_psnr": quality["psnr"],
            **({"iou": quality["iou"]} if "iou" in quality else {}),
            "steps": self.config.train.steps,
            "world_size": self.dist.world_size,
            "teacher": self.config.teacher.strategy,
            "engine": self.config.train.engine,
            "device": str(self.device),
            "store": str(self.store.path),
            "modality": self.info.modality,
            "points": self.info.num_points,
            # Metrics over every point, or over a fixed random sample of them (eval.sample).
            "evaluation": {"sampled": self.eval_points is not None,
                           "points": self.config.eval.sample if self.eval_points is not None else self.info.num_points},
            "streamed": self.stream is not None,
            # Selection and update steps only: no store reading, no evaluation.
            "train_seconds": self.select_seconds + self.step_seconds,
            "select_seconds": self.select_seconds,
            "update_seconds": self.step_seconds,
            "load_seconds": self.load_seconds,
            "eval_seconds": self.eval_seconds,
            "wall_seconds": wall_seconds,
            "outputs": {},
        }
        outputs = summary["outputs"]
        if self.dist.is_main:
            outputs["model"] = str(save_model(self.run_dir / "model.pt", self.engine.module, self.config, self.info))
        if self.config.eval.reconstruction:
            outputs.update(self._reconstruction(summary))
        if self.dist.is_main:
            outputs["metrics"] = str(self.run_dir / "metrics.jsonl")
            outputs["config"] = str(self.run_dir / "config.toml")
            outputs["summary"] = str(self.run_dir / "summary.json")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        barrier()
        return summary

    def _reconstruction(self, summary: dict) -> dict:
        """Every rank renders its own chunks into run.dir/reconstruction.zarr; rank 0 the previews."""
        info = reconstruction_info(self.info)
        dest = self.run_dir / "reconstruction.zarr"
        if self.dist.is_main:
            create_store(info, dest)
        barrier()
        grid = chunk_grid(self.info)
        render_chunks(self.engine.module, info, staging_path(dest), [grid[i] for i in self.chunk_ids], self.device,
                      self.config.data.block_points)
        barrier()
        if not self.dist.is_main:
            return {}
        outputs = {"reconstruction": str(publish(staging_path(dest), dest))}
        outputs.update(export_previews(dest))
        if self.info.modality == "image" and self.info.num_points <= PREVIEW_MAX_POINTS:
            reference = to_unit(self.store.values[...], self.info)
            prediction = to_unit(open_store(dest).values[...], info)
            summary["ssim"] = ssim(reference, prediction, data_range=1.0)
        return outputs

    def _now(self) -> float:
        if self.device.type == "cuda":  # time the GPU work, not its launch
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_only = "--check" in argv
        config_path, overrides = parse_cli([a for a in argv if a != "--check"])
        config = load_config(config_path, overrides)
        if check_only:  # validate config and store, then stop (launch/run_train.sh runs this first)
            open_store(config.data.store)
            return 0
        summary = Trainer(config).train()
    except DintError as e:
        print(f"dint.train: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        destroy_distributed()
    if summary["outputs"]:
        quality = f"final PSNR {summary['final_psnr']:.2f} dB"
        if "ssim" in summary:
            quality += f", SSIM {summary['ssim']:.4f}"
        print(f"dint.train: {quality} after {summary['steps']} steps on {summary['world_size']} rank(s), "
              f"{summary['train_seconds']:.1f} s training")
        print(f"dint.train: outputs in {Path(summary['outputs']['summary']).parent}/: "
              + ", ".join(Path(p).name for p in summary["outputs"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
