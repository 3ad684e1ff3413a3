"""What a run shows while it trains and when it ends (dint.observe), as one component with hooks.

The Trainer calls, in order: `on_step` after every step, `maps_for` before an evaluation and
`on_evaluation` after it, `on_log` for every metrics line, `on_rollback` when it rolls back, and
`on_end` once the run's quality is known. Rank 0 writes; the hooks marked collective run on
every rank. It owns the [metrics] keys that say what is shown (tensorboard, selection_maps,
map_size, plots).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dint.core.config import Config, map_steps
from dint.core.files import read_own, write_outputs
from dint.data.store import SignalInfo
from dint.observe.maps import FieldMaps, SelectionMaps, SignalView, selection_counts
from dint.observe.pictures import (
    PER_ROW,
    compose,
    error_picture,
    save_dint_png,
    selection_panels,
    selection_picture,
    value_picture,
)
from dint.observe.plots import quality_figure, save_figure
from dint.observe.tensorboard import TensorBoardLog


class RunReporting:
    def __init__(
        self,
        config: Config,
        info: SignalInfo,
        run_dir: Path,
        device: torch.device,
        is_main: bool,
        resume_after: int,
        teacher_chooses: bool,
    ):
        c = config.metrics
        self.info, self.run_dir, self.device, self.is_main = info, run_dir, device, is_main
        self.plots, self.tensorboard_folder = c.plots, run_dir / "tensorboard" if c.tensorboard else None
        self.view = SignalView(info, c.map_size)
        self.selection_maps = (
            SelectionMaps(
                self.view,
                map_steps(c.selection_maps, config.train.steps),
                run_dir / "selection.npz",
                is_main,
                resume_after,
            )
            if teacher_chooses and c.selection_maps
            else None
        )
        self.tensorboard = TensorBoardLog(self.tensorboard_folder if is_main else None, resume_after)
        # TensorBoard shows pictures of images, volumes and shapes (their middle slice); audio has selection.png.
        self.tensorboard_pictures = c.tensorboard and info.modality != "audio"
        self.field_maps: tuple[int, dict] | None = None  # (step, maps) of the last evaluation that made them

    def on_step(self, step: int, trained) -> None:
        """After each step: map the selection at the steps selection.png shows (collective)."""
        if self.selection_maps is not None and self.selection_maps.wants(step):
            self.selection_maps.capture(step, trained)

    def maps_for(self, final: bool) -> FieldMaps | None:
        """Maps for an evaluation's forwards to feed, when its pictures are shown: TensorBoard's at
        every evaluation, selection.png's at the final one."""
        wanted = self.tensorboard_pictures or (final and self.selection_maps is not None)
        return FieldMaps(self.view, self.device) if wanted else None

    def on_evaluation(self, step: int, maps: FieldMaps | None, trained) -> None:
        """After an evaluation that fed `maps`; `trained` is the step's selection, or None when
        the teacher chooses nothing (collective)."""
        if maps is None:
            return
        self.field_maps = (step, maps.result())
        if not self.tensorboard_pictures:
            return
        counts = selection_counts(self.view, trained) if trained is not None else None
        if not self.is_main:
            return
        fitted = self.field_maps[1]
        shown = {
            "reconstruction": value_picture(fitted["prediction"], self.view),
            "error": error_picture(fitted["error"], self.view)[0],
        }
        if counts is not None:
            shown["selection"] = selection_picture(counts, self.view)
        if not self.tensorboard.shown_signal:
            shown["signal"] = value_picture(fitted["target"], self.view)
            self.tensorboard.shown_signal = True
        self.tensorboard.pictures(step, shown)

    def on_log(self, record: dict) -> None:
        self.tensorboard.scalars(record)

    def on_rollback(self, step: int) -> None:
        self.tensorboard.rewind(step)

    def on_end(self, selection_runs: list[list[int]]) -> dict[str, str]:
        """selection.png (with selection.json, its panels' boxes), quality.png, and where
        TensorBoard's files are (rank 0); the outputs by name."""
        written, writers = {}, {}
        if self.selection_maps is not None and self.field_maps is not None:
            step, maps = self.field_maps
            panels = selection_panels(self.selection_maps.captured, self.view, maps, step)
            figure, records = compose(panels, per_row=1 if self.view.ndim == 1 else PER_ROW)
            about = {"modality": self.info.modality, "signal_shape": list(self.info.shape), **self.view.described()}
            writers["selection.png"] = lambda tmp: save_dint_png(figure, tmp)
            writers["selection.json"] = lambda tmp: tmp.write_text(json.dumps({**about, "panels": records}, indent=1))
            written.update(selection=self.run_dir / "selection.png", selection_maps=self.run_dir / "selection.npz")
        if self.plots:
            lines = [json.loads(line) for line in (read_own(self.run_dir / "metrics.jsonl") or "").splitlines() if line]
            key = "iou" if self.info.modality == "shape" else "psnr"
            writers["quality.png"] = lambda tmp: save_figure(quality_figure(lines, selection_runs, key), tmp)
            written["quality"] = self.run_dir / "quality.png"
        write_outputs(self.run_dir, writers)
        if self.tensorboard_folder is not None:
            written["tensorboard"] = self.tensorboard_folder
        return {name: str(path) for name, path in written.items()}

    def close(self) -> None:
        self.tensorboard.close()
