"""Train one field over a whole store with Implicit Neural Teaching: the Trainer.

Every rank holds its own chunks of the store (dint.data.sharding, dint.teaching.plans), scores
them, and the teacher's all-gather turns the local top-k into the exact global selection
(dint.teaching.teacher). The update is that of the mean loss over the global selection,
whichever ranks hold it. `dint train` (dint.commands.train) runs it.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import torch

from dint.core.config import Config, check_against_store
from dint.core.errors import DintError
from dint.core.files import hold_run_folder, write_outputs
from dint.core.resources import keep_freed_memory
from dint.data.sharding import rank_chunk_ids
from dint.data.store import open_store
from dint.distributed.collectives import TRAFFIC, barrier, init_distributed, on_rank0
from dint.fields.model import build_model, check_training_memory, compile_model
from dint.fields.render import PREVIEW_MAX_POINTS, render_reconstruction
from dint.teaching.balance import Balancer
from dint.teaching.plans import build_batch_plan
from dint.teaching.teacher import Teacher
from dint.train.checkpoint import CheckpointManager, RngState, check_run_folder, save_model
from dint.train.engine import build_engine, import_engine_library, needs_process_group
from dint.train.evaluation import Evaluator, reconstruction_ssim
from dint.train.faults import Faults
from dint.train.loss import selection_loss
from dint.train.metrics import MetricsLogger, StepRuns, Timers, run_summary
from dint.train.reporting import RunReporting


class Trainer:
    def __init__(self, config: Config):
        self.config, c = config, config
        keep_freed_memory(c.run.keep_freed_memory)
        import_engine_library(c.train.engine, c.run.device)
        self.dist = init_distributed(c.run.device, c.run.collective_timeout, needs_process_group(c.train.engine))
        self.phase = "start-up"  # named in the message when a collective times out
        self.run_dir = Path(c.run.dir)
        self.store = open_store(c.data.store, held_for="training run reading it")  # released by `release`
        self.info = check_against_store(config, self.store.info)  # with data.domain, if set
        micro = c.train.micro_batch or max(1, self.info.num_points // self.dist.world_size)
        check_training_memory(c.model, self.info, micro, self.dist.device)
        on_rank0(lambda: check_run_folder(config), self.dist.device)  # before loading
        self.timers = Timers(self.dist.device)

        started = time.perf_counter()
        score_timer = self.timers["score"]
        self.teacher = Teacher(c.teacher, block_points=c.data.block_points, seed=c.train.seed, score_timer=score_timer)
        chunk_ids = rank_chunk_ids(self.info, self.dist.rank, self.dist.world_size, self.store.path)
        self.plan = build_batch_plan(
            config, self.info, self.store, chunk_ids, self.teacher, self.dist.device, self.dist.rank
        )
        self.balancer = Balancer(c.teacher.balance if self.plan.eager else "none", self.dist.rank)
        self.trained = None  # what the last step trained, balanced or not (its metrics)
        self.points_trained = 0  # over every rank and step (dint scale's throughput), saved like the timers
        self.load_seconds = time.perf_counter() - started
        self.evaluator = Evaluator(
            c.eval, self.info, self.plan.shards(), self.dist.device, c.data.block_points, c.train.seed, c.train.steps
        )
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
        parts = {"engine": self.engine, "teacher": self.plan, "rng": RngState(self.dist), "trainer": self}
        parts["timers"] = self.timers
        self.checkpoint = CheckpointManager(config, self.info, self.dist, parts, self.faults.saving)
        self.step = self.checkpoint.resume()  # steps done
        if self.dist.is_main:
            write_outputs(self.run_dir, {"config.toml": config.to_toml()})
        barrier()
        shape = self.info.modality == "shape"  # its lines carry an IoU too
        self.metrics = MetricsLogger(
            c.metrics,
            c.train.steps,
            self.run_dir,
            self.dist.is_main,
            self.timers,
            self.plan.steps_per_pass,
            self.step,
            shape,
        )
        self.reporting = RunReporting(
            config, self.info, self.run_dir, self.dist.device, self.dist.is_main, self.step, self.teacher.chooses
        )

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> dict:
        wall_start, steps, record = time.perf_counter(), self.config.train.steps, None
        try:
            while self.step < steps:
                step = self.step = self.step + 1
                self.faults.at_step(step)
                selections = self.teacher.selections
                loss = self.train_step(step)
                if self.teacher.selections != selections:
                    self.selection_steps.add(step)
                self.reporting.on_step(step, self.trained)
                logging = self.metrics.due(step) or self.evaluator.due(step)
                saving = self.checkpoint.due(step, step == steps)
                if (logging or saving) and self._diverged():
                    self.step = self._roll_back(step)
                    continue
                record = None
                if logging:
                    record = self.metrics.record(
                        step, loss, self.trained, self.engine.lr, time.perf_counter() - wall_start
                    )
                    if self.evaluator.due(step):
                        record.update(self.evaluate(step))
                if saving:
                    self.phase = f"step {step}: checkpoint"
                    self.checkpoint.save(step)
                if record is not None and step < steps:  # the last step's line waits for the final quality
                    self.log(record)
                self.metrics.advance()
            quality = self.evaluate(self.step, final=True)
            if record is not None:
                self.log({**record, **quality})
            self.metrics.close()
            return self.finish(quality, time.perf_counter() - wall_start)
        finally:
            self.release()

    def release(self) -> None:
        """Let the run folder and the store go (their locks), once the run's outputs are written."""
        self.reporting.close()
        self.store.release()
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
        micro, ranks = self.config.train.micro_batch, self.dist.world_size
        parts = (
            functools.partial(selection_loss, world_size=ranks, global_count=selection.normalizer, **part)
            for selection in selections
            for part in selection.parts(micro)
        )
        with self.timers["update"]():
            loss = self.engine.step(self.faults.poison(step, parts))
        self.trained = selections[-1] if self.plan.eager else self.plan.current
        self.points_trained += self.trained.global_count
        if self.balancer.active:
            with self.timers["balance"](), TRAFFIC.counting("balance"):
                self.balancer.settle()  # the errors seen at moved points go back before anything reads them
        return loss

    def evaluate(self, step: int, final: bool = False) -> dict:
        """Quality over the signal; the same forwards feed the pictures shown of it (collective)."""
        maps = self.reporting.maps_for(final)
        with self.timers["eval"]():
            quality = self.evaluator(self.engine.module, maps)
            self.reporting.on_evaluation(step, maps, self.trained if self.teacher.chooses else None)
        return quality

    def log(self, record: dict) -> None:
        self.reporting.on_log(record)
        self.metrics.log(record)

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
            raise DintError(
                f"the loss is not finite at step {step} after {limit} rollbacks with the learning "
                "rate halved each time; stopping (lower train.lr, or check the data)"
            )
        rollbacks = self.rollbacks
        restored = self.checkpoint.roll_back()
        self.rollbacks = rollbacks  # the count survives the rollback it caused
        self.metrics.rewind(restored)  # what was logged after it is logged again, once
        self.reporting.on_rollback(restored)
        self.engine.scale_lr(0.5**rollbacks)
        if self.dist.is_main:
            print(
                f"dint.train: warning: the loss is not finite at step {step}: rolled back to step {restored} with "
                f"the learning rate x{0.5**rollbacks:g} (rollback {rollbacks} of {limit})",
                file=sys.stderr,
            )
        return restored

    def state_dict(self) -> dict:
        return dict(
            rollbacks=self.rollbacks, points_trained=self.points_trained, selection_steps=self.selection_steps.runs
        )

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks, self.points_trained = state["rollbacks"], state.get("points_trained", 0)
        self.selection_steps = StepRuns(state.get("selection_steps"))

    # --- the end -----------------------------------------------------------------------------

    def finish(self, quality: dict, wall_seconds: float) -> dict:
        """The run's outputs: model.pt, the reconstruction, pictures and summary.json (collective)."""
        c, run_dir = self.config, self.run_dir
        summary = run_summary(self, quality, wall_seconds)
        outputs = summary["outputs"]
        if self.dist.is_main:
            outputs["model"] = str(save_model(run_dir / "model.pt", self.engine.module, c, self.info))
        if c.eval.reconstruction:
            dest = run_dir / "reconstruction.zarr"
            outputs.update(render_reconstruction(self.engine.module, self.info, dest, self.dist, c.data.block_points))
            if self.dist.is_main and self.info.modality == "image" and self.info.num_points <= PREVIEW_MAX_POINTS:
                summary["ssim"] = reconstruction_ssim(self.store, open_store(dest), self.info)
        if self.dist.is_main:
            outputs.update(self.reporting.on_end(self.selection_steps.runs))
            summary["selection_steps"] = self.selection_steps.runs
            for name in ("metrics.jsonl", "config.toml", "summary.json"):
                outputs[name.split(".")[0]] = str(run_dir / name)
            write_outputs(run_dir, {"summary.json": json.dumps(summary, indent=2) + "\n"})
        barrier()
        return summary
