"""Train one SIREN over a whole store with Implicit Neural Teaching.

    torchrun --standalone --nproc_per_node 8 -m dint.train --config configs/demo.toml
    python -m dint.train --config configs/demo.toml --train.steps 100     # one process

Every rank holds its own chunks of the store (dint.data), scores them, and the teacher's
all-gather turns the local top-k into the exact global selection (dint.teacher). The
update is that of the mean loss over the global selection, whichever ranks hold it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dint.components.checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint, save_model
from dint.components.faults import Faults
from dint.components.metrics import MetricsLogger
from dint.config import Config, check_against_store, load_config, parse_cli, parse_size
from dint.batching import MiniBatchesInMemory, MiniBatchesStreamed, WholeSignal, WholeSignalStreamed
from dint.data import Shard, ShardStream, chunk_grid, rank_chunk_ids
from dint.distributed.engine import build_engine, import_engine_library
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
        import_engine_library(config.train.engine, config.run.device)
        self.dist = init_distributed(config.run.device, config.run.collective_timeout)
        self.phase = "start-up"  # named in the message when a collective times out
        self.device = self.dist.device
        self.store = open_store(config.data.store)
        self.info = self.store.info
        check_against_store(config, self.info)
        if config.data.domain:
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
        self.faults = Faults(self.dist.rank)
        self.select_seconds = self.step_seconds = self.eval_seconds = 0.0
        self.start_step, self.rollbacks = 0, 0
        self.initial_state = self.state_dict(with_teacher=False)  # the rollback target before any checkpoint
        resumed = self._resume()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(config.to_toml())
        barrier()
        self.logger = MetricsLogger(self.run_dir / "metrics.jsonl", t.steps, enabled=self.dist.is_main,
                                    resume_after=self.start_step if resumed else None)

    def _hold_shard(self, budget: int) -> tuple[Shard | None, ShardStream | None]:
        """The rank's shard in memory, or streamed when a rank's share exceeds the budget."""
        grid = chunk_grid(self.info)
        point_bytes = self.info.channels * np.dtype(self.info.dtype).itemsize
        share = sum(math.prod(grid[i][1]) for i in self.chunk_ids) * point_bytes
        # Every rank must take the same branch: stream if any rank's share is over budget.
        streaming = bool(all_reduce_max(torch.tensor([int(budget > 0 and share > budget)], device=self.device)))
        if streaming:
            # A group is a mini-batch (when set) and at most a third of the budget (ShardStream).
            group_bytes = budget // 3
            if self.config.teacher.minibatch:
                group_bytes = min(group_bytes, self.config.teacher.minibatch * point_bytes)
            return None, ShardStream(self.store, self.chunk_ids, self.device, self.info, group_bytes)
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
        every = self.config.checkpoint.every
        wall_start = time.perf_counter()
        step = first_step = self.start_step
        self.logger.advance(step)
        while step < steps:
            self.faults.at_step(step)
            loss = self.train_step(step)
            if self._diverged():
                step = self._roll_back(step)
                continue

            last = step == steps - 1
            evaluate = eval_every > 0 and (step + 1) % eval_every == 0 and not last
            if evaluate or last or (step + 1) % log_every == 0:
                record = self._record(step, loss, self.batches.current, wall_start)
                if evaluate:
                    record.update(self.evaluate())
                if not last:  # the final line comes with the final evaluation below
                    self.logger.log(record)
            if last or (every and (step + 1) % every == 0):
                self.save_checkpoint(step + 1)
            self.logger.advance()
            step += 1

        quality = self.evaluate()
        if steps > first_step:
            record.update(quality)
            self.logger.log(record)
        self.logger.close()
        return self.finish(quality, time.perf_counter() - wall_start)

    def train_step(self, step: int) -> torch.Tensor:
        """Choose the points (when the teacher says so) and take one optimizer step on them."""
        self.phase = f"step {step + 1}: selection"
        started = self._now()
        selections = self.batches.at(step, self.engine.module)
        if isinstance(selections, list):  # chosen now; a streamed pass is chosen as it goes
            self.select_seconds += self._now() - started
            started = self._now()
        self.phase = f"step {step + 1}: gradient all-reduce"
        poison = math.nan if self.faults.nan_loss(step) else 1.0  # an injected divergence, in tests
        loss = self.engine.step(
            functools.partial(selection_loss, coords=coords, targets=targets, world_size=self.dist.world_size,
                              global_count=selection.global_count * poison)
            for selection in selections for coords, targets in selection.batches(self.config.train.micro_batch)
        )
        self.step_seconds += self._now() - started
        return loss

    # --- recovery --------------------------------------------------------------------------

    def _diverged(self) -> bool:
        # Gradients are averaged over ranks, so a non-finite loss on any rank leaves the
        # parameters of every rank non-finite alike: all ranks agree without a collective.
        return not bool(torch.stack([p.isfinite().all() for p in self.engine.module.parameters()]).all())

    def _roll_back(self, step: int) -> int:
        """Back to the newest checkpoint (or the start) with the learning rate halved."""
        self.rollbacks += 1
        limit = self.config.train.max_rollbacks
        if self.rollbacks > limit:
            raise DintError(f"the loss is not finite at step {step + 1} after {limit} rollbacks with the learning "
                            "rate halved each time; stopping (lower train.lr, or check the data)")
        rollbacks = self.rollbacks
        found = newest_checkpoint(self.run_dir, self._warn) if self.config.checkpoint.resume != "never" else None
        self.load_state_dict(found[1] if found else self.initial_state)
        self.rollbacks = rollbacks
        scale = 0.5**rollbacks
        scheduler = self.engine.scheduler
        scheduler.base_lrs = [self.config.train.lr * scale for _ in scheduler.base_lrs]
        for group, base, factor in zip(self.engine.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        self._warn(f"the loss is not finite at step {step + 1}: rolled back to step {self.start_step} with the "
                   f"learning rate x{scale:g} (rollback {rollbacks} of {limit})")
        return self.start_step

    def _resume(self) -> bool:
        mode = self.config.checkpoint.resume
        if mode == "never":
            return False
        if mode == "auto":
            found = newest_checkpoint(self.run_dir, self._warn)
            if found is None:
                return False
            path, state = found
        else:
            path = Path(mode)
            state = load_checkpoint(path)
        self._check_compatible(path, state)
        self.load_state_dict(state)
        if self.dist.is_main:
            print(f"dint.train: resuming from {path} (step {self.start_step})", file=sys.stderr)
        return True

    def _check_compatible(self, path: Path, state: dict) -> None:
        saved, info = state["signal"], self.info
        if saved["source"]["sha256"] != info.source_sha256 or tuple(saved["shape"]) != info.shape \
                or saved["channels"] != info.channels:
            raise DintError(f"{path}: checkpoint is of another signal ({saved['source']['name']}, shape "
                            f"{tuple(saved['shape'])}), not of {self.store.path}; use another run.dir or "
                            "--checkpoint.resume never")
        for key in ("width", "hidden_layers"):
            if state["config"]["model"][key] != getattr(self.config.model, key):
                raise DintError(f"{path}: checkpoint has model.{key} = {state['config']['model'][key]}, the config "
                                f"says {getattr(self.config.model, key)}: the model's shape cannot change on resume")

    def state_dict(self, with_teacher: bool = True) -> dict:
        """Everything a resume needs, the same whatever the number of ranks (collective)."""
        (rng,) = all_gather_varlen(torch.get_rng_state()[None].to(self.device))
        return {
            "step": self.start_step,
            "model": {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items()},
            "optimizer": copy.deepcopy(self.engine.optimizer.state_dict()),
            "scheduler": self.engine.scheduler.state_dict(),
            "teacher": self.batches.state_dict() if with_teacher else {},
            "rng": rng.cpu(),
            "rollbacks": self.rollbacks,
            "seconds": {"select": self.select_seconds, "update": self.step_seconds, "eval": self.eval_seconds},
            "config": self.config.to_dict(),
            "signal": self.info.to_attrs(),
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self.engine.module.load_state_dict(state["model"])
        self.engine.optimizer.load_state_dict(state["optimizer"])
        self.engine.scheduler.load_state_dict(state["scheduler"])
        self.batches = self._plan_batches()  # fresh: no selection made after the checkpoint survives
        self.batches.load_state_dict(state["teacher"])
        rng = state["rng"]
        # A row of the gathered states; cloned, since set_rng_state misreads a view at an offset.
        torch.set_rng_state(rng[self.dist.rank if rng.shape[0] == self.dist.world_size else 0].cpu().clone())
        self.start_step, self.rollbacks = state["step"], state["rollbacks"]
        seconds = state["seconds"]
        self.select_seconds, self.step_seconds, self.eval_seconds = seconds["select"], seconds["update"], seconds["eval"]

    def save_checkpoint(self, next_step: int) -> None:
        self.phase = f"step {next_step}: checkpoint"
        self.start_step = next_step  # what state_dict records as the step to run next
        state = self.state_dict()
        failure = None
        if self.dist.is_main:
            try:
                save_checkpoint(self.run_dir, next_step, state, self.config.checkpoint.keep,
                                before_manifest=lambda: self.faults.saving(next_step))
            except DintError as e:
                failure = e
        # Every rank stops together when rank 0 could not save.
        if all_reduce_max(torch.tensor([int(failure is not None)], device=self.device)).item():
            raise failure or DintError("checkpoint not saved (see rank 0)", shared=True)

    def _warn(self, message: str) -> None:
        if self.dist.is_main:
            print(f"dint.train: warning: {message}", file=sys.stderr)

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
            "update_seconds": round(self.step_seconds, 4),
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
            "peak_rss_mb_per_rank": self._peak_rss_per_rank(),
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
            whole = ((0,) * self.info.ndim, self.info.shape)  # read_region: retries, and one line if it fails
            reference = to_unit(self.store.read_region(*whole), self.info)
            prediction = to_unit(open_store(dest).read_region(*whole), info)
            summary["ssim"] = ssim(reference, prediction, data_range=1.0)
        return outputs

    def _peak_rss_per_rank(self) -> list[float]:
        """Each rank's peak resident memory so far, in MB (Linux reports ru_maxrss in KiB)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
        (peaks,) = all_gather_varlen(torch.tensor([peak], dtype=torch.float64, device=self.device))
        return [round(p, 1) for p in peaks.tolist()]

    def _now(self) -> float:
        if self.device.type == "cuda":  # time the GPU work, not its launch
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = int(os.environ.get("RANK", 0))
    trainer = None
    try:
        check_only = "--check" in argv
        config_path, overrides = parse_cli([a for a in argv if a != "--check"])
        config = load_config(config_path, overrides)
        if check_only:  # validate config and store, then stop (launch/run_train.sh runs this first)
            check_against_store(config, open_store(config.data.store).info)
            return 0
        trainer = Trainer(config)
        summary = trainer.train()
    except DintError as e:
        if rank == 0 or not e.shared:  # an error every rank sees is printed once
            print(f"dint.train: error: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:  # a collective broke: say which rank saw it, and where, in one line
        text = str(e).lower()
        phase = trainer.phase if trainer is not None else "start-up"
        if "timed out" in text or "timeout" in text:
            print(f"dint.train: error: rank {rank}: {phase} timed out after {config.run.collective_timeout} s "
                  "waiting for another rank (run.collective_timeout)", file=sys.stderr)
            return 1
        if "connection" in text or "peer" in text:
            print(f"dint.train: error: rank {rank}: another rank went away during {phase}", file=sys.stderr)
            return 1
        raise
    finally:
        trainer = None  # the engine holds the process group; release it before the group is destroyed
        destroy_distributed()
    if summary["outputs"]:
        quality = f"final PSNR {summary['final_psnr']:.2f} dB"
        if "ssim" in summary:
            quality += f", SSIM {summary['ssim']:.4f}"
        if "iou" in summary:
            quality += f", IoU {summary['iou']:.4f}"
        print(f"dint.train: {quality} after {summary['steps']} steps on {summary['world_size']} rank(s), "
              f"{summary['train_seconds']:.1f} s training")
        print(f"dint.train: outputs in {Path(summary['outputs']['summary']).parent}/: "
              + ", ".join(Path(p).name for p in summary["outputs"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
