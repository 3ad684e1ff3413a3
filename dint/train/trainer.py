"""Train one SIREN over a whole store with Implicit Neural Teaching.

    torchrun --standalone --nproc_per_node 8 -m dint.train --config configs/demo.toml
    python -m dint.train --config configs/demo.toml --train.steps 100     # one process

Every rank holds its own chunks of the store (dint.teaching.plans, dint.data.sharding), scores them, and the
teacher's all-gather turns the local top-k into the exact global selection (dint.teaching.teacher).
The update is that of the mean loss over the global selection, whichever ranks hold it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

from dint.teaching.balance import Balancer
from dint.teaching.plans import build_batch_plan
from dint.train.checkpoint import CheckpointManager, RngState, save_model
from dint.train.faults import Faults
from dint.train.metrics import MetricsLogger, StepRuns, Timers, bytes_per_rank, peak_rss_mb_per_rank
from dint.observe.pictures import (PER_ROW, compose, error_picture, save_png, selection_panels,
                                      selection_picture, value_picture)
from dint.observe.plots import quality_figure, save_figure
from dint.observe.tensorboard import TensorBoardLog
from dint.core.config import USAGE, Config, check_against_store, load_config, map_steps, parse_cli
from dint.data.sharding import rank_chunk_ids
from dint.train.engine import build_engine, import_engine_library, needs_process_group
from dint.distributed.collectives import (TRAFFIC, barrier, collective_failure, destroy_distributed, gather_counts,
                                    init_distributed, on_rank0)
from dint.core.errors import DintError, escaped, os_error_line, stop_on_sigterm, stopped_line
from dint.core.files import RUN_LOCK, check_claimable, claim_folder, exclusive, write_outputs
from dint.train.evaluation import Evaluator
from dint.observe.maps import FieldMaps, SelectionMaps, SignalView, selection_counts
from dint.fields.siren import build_model, compile_model, training_bytes
from dint.fields.quality import ssim
from dint.core.resources import keep_freed_memory, local_ranks, require_memory
from dint.fields.render import PREVIEW_MAX_POINTS, render_reconstruction
from dint.data.store import open_store, to_unit
from dint.teaching.teacher import Teacher

def hold_run_folder(run_dir: Path) -> contextlib.ExitStack:
    """Claim `run_dir` for dint (dint.core.files.claim_folder) and lock it for this run; the lock
    goes when the returned stack closes or the process ends."""
    claim_folder(run_dir, "a training run")
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(run_dir / RUN_LOCK, "training run in this folder"))
    return stack


def selection_loss(model: torch.nn.Module, *, coords: torch.Tensor, targets: torch.Tensor,
                   global_count: int | float | torch.Tensor,
                   world_size: int, weights: torch.Tensor | None = None, local: torch.Tensor | slice | None = None,
                   remember=None) -> torch.Tensor:
    """Mean squared error over the *global* selection, as this rank's share of it.

    Engines average gradients over ranks, so each rank's sum is scaled by
    world_size / global_count: the average then equals the gradient of the global mean
    however the selected points fall across ranks (a rank holding none adds zero, but
    still joins the gradient all-reduce). Summed over micro-batches, the same holds.
    `weights` (importance sampling) weigh each point; `remember(local, f - y)` keeps the
    errors this forward saw, before the update (error reuse).
    """
    diff = model(coords) - targets
    if remember is not None:
        remember(local, diff)
    per_point = diff.square().mean(dim=1)
    if weights is not None:
        per_point = per_point * weights
    scale = world_size / global_count  # a device scalar for soft mining: cast as a Python number would be
    return per_point.sum() * (scale.to(per_point.dtype) if isinstance(scale, torch.Tensor) else scale)


class Trainer:
    def __init__(self, config: Config):
        self.config, c = config, config
        keep_freed_memory(c.run.keep_freed_memory)
        import_engine_library(c.train.engine, c.run.device)
        self.dist = init_distributed(c.run.device, c.run.collective_timeout, needs_process_group(c.train.engine))
        self.phase = "start-up"  # named in the message when a collective times out
        self.run_dir = Path(c.run.dir)
        self.store = open_store(c.data.store)
        self.info = check_against_store(config, self.store.info)  # with data.domain, if set
        # Refused before anything is loaded: a model that cannot fit (model.width = 1e6, say).
        micro = c.train.micro_batch or max(1, self.info.num_points // self.dist.world_size)
        require_memory(training_bytes(c.model, self.info, micro),
                       f"model.width = {c.model.width}, model.hidden_layers = {c.model.hidden_layers} (weights, gradients, "
                       f"Adam's state and a micro-batch's activations)", local_ranks(), self.dist.device)
        on_rank0(lambda: check_claimable(self.run_dir, "a training run"), self.dist.device)  # before loading
        self.timers = Timers(self.dist.device)

        started = time.perf_counter()
        self.teacher = Teacher(c.teacher, block_points=c.data.block_points, seed=c.train.seed,
                               score_timer=self.timers["score"])
        chunk_ids = rank_chunk_ids(self.info, self.dist.rank, self.dist.world_size)
        self.plan = build_batch_plan(config, self.info, self.store, chunk_ids, self.teacher, self.dist.device,
                                     self.dist.rank)
        self.balancer = Balancer(c.teacher.balance if self.plan.eager else "none", self.dist.rank)
        self.trained = None  # what the last step trained, balanced or not (its metrics)
        self.points_trained = 0  # over every rank and step (dint scale's throughput), saved like the timers
        self.load_seconds = time.perf_counter() - started
        self.evaluator = Evaluator(c.eval, self.info, self.plan.shards(), self.dist.device, c.data.block_points,
                                   c.train.seed)
        # The run folder is dint's (made, adopted empty, or made by dint before) and this run's
        # alone until it ends: rank 0 holds its lock. Made only now, once the data has loaded.
        self.run_folder = on_rank0(lambda: hold_run_folder(self.run_dir), self.dist.device)

        torch.manual_seed(c.train.seed)  # the same initial model on every rank
        model = build_model(c.model, self.info).to(self.dist.device)
        self.compiled = compile_model(model, c.model, self.dist.device)
        self.engine = build_engine(c.train, model, self.dist, self.timers)
        self.faults = Faults(self.dist.rank)
        self.rollbacks = 0
        self.selection_steps = StepRuns()  # where the teacher selected (quality.png marks them); checkpointed
        self.checkpoint = CheckpointManager(
            c.checkpoint, self.run_dir, self.dist, run_config=config, info=self.info,
            parts={"engine": self.engine, "teacher": self.plan, "rng": RngState(self.dist), "trainer": self,
                   "timers": self.timers},
            before_manifest=self.faults.saving)
        self.step = self.checkpoint.resume()  # steps done
        if self.dist.is_main:
            (self.run_dir / "config.toml").write_text(config.to_toml())
        barrier()
        self.metrics = MetricsLogger(config, self.run_dir / "metrics.jsonl", self.dist.is_main, self.step,
                                     shape=self.info.modality == "shape")
        # What a run shows (dint.components: maps, pictures, plots, tensorboard); rank 0 writes.
        self.view = SignalView(self.info, c.metrics.map_size)
        self.selection_maps = SelectionMaps(self.view, map_steps(c.metrics.selection_maps, c.train.steps),
                                            self.run_dir / "selection.npz", self.dist.is_main, self.step) \
            if self.teacher.chooses and c.metrics.selection_maps else None
        self.tensorboard = TensorBoardLog(self.run_dir / "tensorboard" if c.metrics.tensorboard and self.dist.is_main
                                          else None, self.step)
        # TensorBoard shows pictures of images, volumes and shapes (their middle slice); audio has selection.png.
        self.tensorboard_pictures = c.metrics.tensorboard and self.info.modality != "audio"
        self.field_maps: tuple[int, dict] | None = None  # (step, maps) of the last evaluation that made them

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> dict:
        wall_start, steps, quality = time.perf_counter(), self.config.train.steps, None
        while self.step < steps:
            step = self.step = self.step + 1
            self.faults.at_step(step)
            selections = self.teacher.selections
            loss = self.train_step(step)
            if self.teacher.selections != selections:
                self.selection_steps.add(step)
            if self.selection_maps is not None and self.selection_maps.wants(step):
                self.selection_maps.capture(step, self.trained)
            last = step == steps
            logging, saving = self.metrics.should_log(step), self.checkpoint.due(step, last)
            if (logging or saving) and self._diverged():
                self.step = self._roll_back(step)
                continue
            if logging:
                record = self.metrics.record(step, loss, self.trained, self.plan.steps_per_pass, self.timers,
                                             self.engine.lr, time.perf_counter() - wall_start)
                if self.metrics.should_evaluate(step):
                    record.update(self.evaluate(step, pictures=self.tensorboard_pictures))
            if saving:
                self.phase = f"step {step}: checkpoint"
                self.checkpoint.save(step)
            if last:
                quality = self.evaluate(step, pictures=self.final_pictures)
                record.update(quality)
            if logging:
                self.tensorboard.scalars(record)
                self.metrics.log(record)
            self.metrics.advance()
        self.metrics.close()
        try:
            return self.finish(quality or self.evaluate(steps, pictures=self.final_pictures),
                               time.perf_counter() - wall_start)
        finally:
            self.release()

    def release(self) -> None:
        """Let the run folder go (its lock), once the run's outputs are written."""
        self.tensorboard.close()
        if self.run_folder is not None:
            self.run_folder.close()

    def train_step(self, step: int) -> torch.Tensor:
        """Choose the points (when the teacher says so) and take one optimizer step on them."""
        self.phase = f"step {step}: selection"
        model = self.engine.module
        TRAFFIC.new_step()
        if self.plan.eager:
            with self.timers["select"](), TRAFFIC.counting("select"):
                selections = self.plan.at(step - 1, model)
            if self.balancer.active:
                self.phase = f"step {step}: balancing"
                with self.timers["balance"](), TRAFFIC.counting("balance"):
                    selections = self.balancer(selections)
        else:  # a streamed pass is chosen group by group, inside the update
            selections = self.plan.at(step - 1, model)
        self.phase = f"step {step}: gradient all-reduce"
        parts = (functools.partial(selection_loss, world_size=self.dist.world_size, global_count=selection.normalizer,
                                   **part)
                 for selection in selections for part in selection.parts(self.config.train.micro_batch))
        with self.timers["update"]():
            loss = self.engine.step(self.faults.poison(step, parts))
        self.trained = selections[-1] if self.plan.eager else self.plan.current
        self.points_trained += self.trained.global_count
        if self.balancer.active:
            with self.timers["balance"](), TRAFFIC.counting("balance"):
                self.balancer.settle()  # the errors seen at moved points go back before anything reads them
        return loss

    # --- recovery ----------------------------------------------------------------------------

    def _diverged(self) -> bool:
        # Gradients are averaged over ranks, so a non-finite loss on any rank leaves the
        # parameters of every rank non-finite alike, and they stay so: read at logging and
        # checkpoint steps only, all ranks agree without a collective.
        return not bool(torch.stack([p.isfinite().all() for p in self.engine.module.parameters()]).all())

    def _roll_back(self, step: int) -> int:
        """Back to the newest checkpoint of this run (or its start) with the learning rate halved."""
        self.rollbacks, limit = self.rollbacks + 1, self.config.train.max_rollbacks
        if self.rollbacks > limit:
            raise DintError(f"the loss is not finite at step {step} after {limit} rollbacks with the learning "
                            "rate halved each time; stopping (lower train.lr, or check the data)")
        rollbacks = self.rollbacks
        restored = self.checkpoint.roll_back()
        self.rollbacks = rollbacks  # the count survives the rollback it caused
        self.metrics.rewind(restored)  # what was logged after it is logged again, once
        self.tensorboard.rewind(restored)
        self.engine.scale_lr(0.5**rollbacks)
        if self.dist.is_main:
            print(f"dint.train: warning: the loss is not finite at step {step}: rolled back to step {restored} with "
                  f"the learning rate x{0.5**rollbacks:g} (rollback {rollbacks} of {limit})", file=sys.stderr)
        return restored

    def state_dict(self) -> dict:
        return {"rollbacks": self.rollbacks, "points_trained": self.points_trained,
                "selection_steps": self.selection_steps.runs}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks, self.points_trained = state["rollbacks"], state.get("points_trained", 0)
        self.selection_steps = StepRuns(state.get("selection_steps"))

    # --- what is reported --------------------------------------------------------------------

    @property
    def final_pictures(self) -> bool:
        """Whether the last evaluation also maps the fit (selection.png, TensorBoard)."""
        return self.selection_maps is not None or self.tensorboard_pictures

    def evaluate(self, step: int, pictures: bool = False) -> dict:
        """Quality over the signal; with `pictures`, the same forwards also map the fit, and
        TensorBoard gets its pictures (collective)."""
        maps = FieldMaps(self.view, self.dist.device) if pictures else None
        with self.timers["eval"]():
            quality = self.evaluator(self.engine.module, maps)
            if maps is not None:
                self.field_maps = (step, maps.result())
                if self.tensorboard_pictures:
                    self._picture_tensorboard(step)
        return quality

    def _picture_tensorboard(self, step: int) -> None:
        counts = selection_counts(self.view, self.trained) if self.teacher.chooses and self.trained is not None else None
        if not self.dist.is_main:
            return
        maps = self.field_maps[1]
        shown = {"reconstruction": value_picture(maps["prediction"], self.view),
                 "error": error_picture(maps["error"], self.view)[0]}
        if counts is not None:
            shown["selection"] = selection_picture(counts, self.view)
        if not self.tensorboard.shown_signal:
            shown["signal"] = value_picture(maps["target"], self.view)
            self.tensorboard.shown_signal = True
        self.tensorboard.pictures(step, shown)

    def finish(self, quality: dict, wall_seconds: float) -> dict:
        c, seconds = self.config, self.timers.state_dict()
        summary = {
            "final_psnr": quality["psnr"], **({"iou": quality["iou"]} if "iou" in quality else {}),
            "steps": c.train.steps, "world_size": self.dist.world_size,
            "nodes": self.dist.world_size // local_ranks(), "teacher": c.teacher.strategy,
            "engine": c.train.engine, "device": str(self.dist.device),
            "compiled_with": c.model.compile_backend if self.compiled else None, "store": str(self.store.path),
            "modality": self.info.modality, "points": self.info.num_points,
            "ndim": self.info.ndim, "channels": self.info.channels,
            "params": sum(p.numel() for p in self.engine.module.parameters()),
            "evaluation": self.evaluator.described,
            "streamed": self.plan.streamed,
            # Selection and update steps only: no store reading, no evaluation.
            "train_seconds": seconds["select"] + seconds["balance"] + seconds["update"],
            "points_trained": self.points_trained,
            # Points through each rank's scoring forwards since this process started (not saved in checkpoints).
            "points_scored_per_rank": gather_counts(self.teacher.points_scored, self.dist.device),
            "select_seconds": seconds["select"], "balance_seconds": seconds["balance"],
            "update_seconds": seconds["update"],
            # Parts of the above: scoring forwards (in select), gradient all-reduce and optimizer (in update).
            "score_seconds": seconds["score"], "allreduce_seconds": seconds["allreduce"],
            "optimizer_seconds": seconds["optimizer"],
            **bytes_per_rank(TRAFFIC.total, self.dist.device),
            "load_seconds": self.load_seconds, "eval_seconds": seconds["eval"], "wall_seconds": wall_seconds,
            "peak_rss_mb_per_rank": peak_rss_mb_per_rank(self.dist.device),
            "outputs": {},
        }
        outputs = summary["outputs"]
        if self.dist.is_main:
            outputs["model"] = str(save_model(self.run_dir / "model.pt", self.engine.module, c, self.info))
        if c.eval.reconstruction:
            dest = self.run_dir / "reconstruction.zarr"
            outputs.update(render_reconstruction(self.engine.module, self.info, dest, device=self.dist.device,
                                                 rank=self.dist.rank, world_size=self.dist.world_size,
                                                 block_points=c.data.block_points))
            if self.dist.is_main and self.info.modality == "image" and self.info.num_points <= PREVIEW_MAX_POINTS:
                whole = ((0,) * self.info.ndim, self.info.shape)  # read_region: retries, and one line if it fails
                reference = to_unit(self.store.read_region(*whole), self.info)
                summary["ssim"] = ssim(reference, to_unit(open_store(dest).read_region(*whole), self.info),
                                       data_range=1.0)
        if self.dist.is_main:
            outputs.update(self.write_pictures())
            summary["selection_steps"] = self.selection_steps.runs
            for name in ("metrics.jsonl", "config.toml", "summary.json"):
                outputs[name.split(".")[0]] = str(self.run_dir / name)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        barrier()
        return summary


    def write_pictures(self) -> dict[str, str]:
        """selection.png (with selection.json, its panels' boxes), quality.png, and where
        TensorBoard's files are (rank 0, at the end)."""
        c, written, writers = self.config, {}, {}
        if self.selection_maps is not None and self.field_maps is not None:
            step, maps = self.field_maps
            panels = selection_panels(self.selection_maps.captured, self.view, maps, step)
            figure, records = compose(panels, per_row=1 if self.view.ndim == 1 else PER_ROW)
            about = {"modality": self.info.modality, "signal_shape": list(self.info.shape), **self.view.described()}
            writers["selection.png"] = lambda tmp: save_png(figure, tmp)
            writers["selection.json"] = lambda tmp: tmp.write_text(json.dumps({**about, "panels": records}, indent=1))
            written.update(selection=self.run_dir / "selection.png", selection_maps=self.run_dir / "selection.npz")
        if c.metrics.plots:
            lines = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]
            key = "iou" if self.info.modality == "shape" else "psnr"
            writers["quality.png"] = lambda tmp: save_figure(quality_figure(lines, self.selection_steps.runs, key), tmp)
            written["quality"] = self.run_dir / "quality.png"
        write_outputs(self.run_dir, writers)
        if c.metrics.tensorboard:
            written["tensorboard"] = self.run_dir / "tensorboard"
        return {name: str(path) for name, path in written.items()}
