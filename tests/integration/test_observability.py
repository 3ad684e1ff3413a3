"""What a run shows: TensorBoard event files, selection maps, plots, and `dint report`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, smooth_image, torchrun, write_png
from PIL import Image
from test_train import write_config

STEPS = 30
MAP_STEPS = [1, 10, 20, 30]


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def checkpoint_mask(run_dir: Path, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """The selection in use after `step`, as the checkpoint saved it: one bit per point."""
    state = torch.load(run_dir / "checkpoints" / f"step-{step:08d}" / "state.pt", weights_only=True)
    bits = state["parts"]["teacher"]["bits"].numpy()
    return np.unpackbits(bits, bitorder="little")[: int(np.prod(shape))].reshape(shape).astype(bool)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """Two ranks on a 48x40 photo-like image (chunks split between them), the default teacher,
    checkpoints at the map steps so the teacher's own saved selection can be compared."""
    folder = tmp_path_factory.mktemp("observed")
    png = write_png(folder / "grey.png", smooth_image(48, 40, seed=3))
    store = folder / "grey.zarr"
    assert run_cli("dint.commands.cli", "shard", png, store, "--chunk", "16").returncode == 0
    config = write_config(
        folder / "c.toml",
        store,
        folder / "run",
        teacher={"strategy": "importance", "ratio": 0.2},
        train={"steps": STEPS},
        eval={"every": 10},
        checkpoint={"every": 1, "keep": STEPS},
        metrics={"log_every": 5, "tensorboard": True, "plots": True, "selection_maps": [1, "33%", 20, "100%"]},
    )
    result = torchrun(2, "-m", "dint.train", "--config", config)
    assert result.returncode == 0, result.stderr
    return folder / "run", config, store


def test_selection_maps_show_exactly_what_the_teacher_selected(image_run):
    run_dir = image_run[0]
    saved = np.load(run_dir / "selection.npz")
    assert saved["steps"].tolist() == MAP_STEPS  # "33%" of 30 steps is step 10
    figure = np.asarray(Image.open(run_dir / "selection.png").convert("RGB"))
    layout = json.loads((run_dir / "selection.json").read_text())
    assert layout["bins"] == [48, 40] and layout["points_per_bin"] == 1
    panels = {(p["kind"], p.get("step")): p for p in layout["panels"]}
    assert sorted(panels) == sorted(
        [("selection", s) for s in MAP_STEPS] + [("reconstruction", STEPS), ("error", STEPS)]
    )
    for index, step in enumerate(MAP_STEPS):
        # The selection both ranks trained at `step`, as the teacher's checkpoint of that step holds it.
        mask = checkpoint_mask(run_dir, step, (48, 40))
        assert 0 < mask.sum() < mask.size
        assert np.array_equal(saved["counts"][index] > 0, mask)
        panel = panels[("selection", step)]
        assert panel["selected"] == panel["shown"] == saved["selected"][index] == mask.sum()
        x0, y0, x1, y1 = panel["box"]
        shown = figure[y0:y1, x0:x1]
        expected = np.kron(np.where(mask, 0, 255), np.ones((panel["scale"], panel["scale"]))).astype(np.uint8)
        assert shown.shape[:2] == expected.shape and panel["scale"] == 256 // 48
        assert np.array_equal(shown[..., 0], expected) and np.array_equal(shown[..., 2], expected)  # pixel by pixel
    # Steps 10 and 20 differ (the teacher draws afresh every step): the maps are not one picture repeated.
    assert not np.array_equal(saved["counts"][1], saved["counts"][2])


def test_tensorboard_holds_the_logged_scalars_and_pictures(image_run):
    run_dir = image_run[0]
    lines = lines_of(run_dir)
    board = events(run_dir)
    for key, tag in (
        ("loss", "train/loss"),
        ("ratio", "teacher/ratio"),
        ("selected", "teacher/selected"),
        ("imbalance", "teacher/imbalance"),
        ("lr", "train/lr"),
        ("train_seconds", "time/train_seconds"),
    ):
        scalars = board.Scalars(tag)
        assert [s.step for s in scalars] == [line["step"] for line in lines], tag
        np.testing.assert_allclose([s.value for s in scalars], [line[key] for line in lines], rtol=1e-6, atol=1e-7)
    psnr = board.Scalars("quality/psnr")
    assert [s.step for s in psnr] == [10, 20, 30]
    np.testing.assert_allclose(
        [s.value for s in psnr], [line["psnr"] for line in lines if line["psnr"] is not None], rtol=1e-6
    )
    wall = [s.wall_time for s in board.Scalars("train/loss")]
    assert wall == sorted(wall) and wall[-1] > wall[0]  # against wall time too
    images = board.Tags()["images"]
    assert sorted(images) == ["pictures/error", "pictures/reconstruction", "pictures/selection", "pictures/signal"]
    assert [e.step for e in board.Images("pictures/reconstruction")] == [10, 20, 30]
    # The selection picture at step 20 is the teacher's selection at step 20.
    picture = board.Images("pictures/selection")[1]
    assert picture.step == 20 and (picture.width, picture.height) == (40, 48)
    import io

    shown = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("L"))
    assert np.array_equal(shown == 0, checkpoint_mask(run_dir, 20, (48, 40)))


def test_quality_plot_has_its_panels(image_run):
    from dint.observe.plots import quality_figure
    from dint.train.metrics import StepRuns

    run_dir = image_run[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    with Image.open(run_dir / "quality.png") as written:
        assert written.format == "PNG" and written.text["Software"] == "dint" and written.size[0] > 1000
    assert StepRuns(summary["selection_steps"]).steps() == list(range(1, STEPS + 1))  # importance: every step
    lines = lines_of(run_dir)
    figure = quality_figure(lines, summary["selection_steps"], "psnr")
    by_step, by_time, loss, loss_by_time, ratio = figure.axes
    assert [a.get_title() for a in (by_step, by_time, loss, loss_by_time)] == [
        "PSNR against steps",
        "PSNR against training time",
        "loss against steps",
        "loss against training time",
    ]
    evaluated = [line for line in lines if line["psnr"] is not None]
    assert by_step.lines[0].get_xdata().tolist() == [line["step"] for line in evaluated]
    assert by_time.lines[0].get_xdata().tolist() == [line["train_seconds"] for line in evaluated]
    assert loss.lines[0].get_ydata().tolist() == [line["loss"] for line in lines] and loss.get_yscale() == "log"
    assert loss_by_time.lines[0].get_xdata().tolist() == [line["train_seconds"] for line in lines]
    assert ratio.get_ylabel() == "ratio selected" and ratio.lines[0].get_ydata().tolist() == [0.2] * len(lines)
    ticks = by_step.collections[0]  # one tick per selection step
    assert len(ticks.get_segments()) == STEPS


def test_a_resumed_run_shows_every_step_once(tmp_path, image_run):
    """Killed at step 25 after the checkpoint of 24, resumed: TensorBoard and the maps show each
    step once, and the same as the uninterrupted run."""
    uninterrupted, config, _ = image_run
    run_dir = tmp_path / "run"
    crashed = torchrun(
        2, "-m", "dint.train", "--config", config, "--run.dir", run_dir, extra_env={"DINT_FAULT": "kill@25:1"}
    )
    assert crashed.returncode != 0 and (run_dir / "tensorboard").is_dir()
    assert np.load(run_dir / "selection.npz")["steps"].tolist() == [1, 10, 20]
    resumed = torchrun(2, "-m", "dint.train", "--config", config, "--run.dir", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    board, lines = events(run_dir), lines_of(run_dir)
    steps = [s.step for s in board.Scalars("train/loss")]
    assert steps == list(range(5, STEPS + 1, 5))  # none twice, none lost
    np.testing.assert_allclose([s.value for s in board.Scalars("train/loss")], [line["loss"] for line in lines])
    again, first = np.load(run_dir / "selection.npz"), np.load(uninterrupted / "selection.npz")
    assert again["steps"].tolist() == MAP_STEPS and np.array_equal(again["counts"], first["counts"])


def test_dint_report_compares_runs(tmp_path, image_run):
    from dint.core.files import RUN_LOCK, exclusive

    finished = image_run[0]
    # A run still training: its lines so far (the last one half written), no summary, its lock held.
    running = tmp_path / "running"
    running.mkdir()
    shutil.copy(finished / "config.toml", running)
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    with exclusive(running / RUN_LOCK, "training run in this folder"):
        result = run_cli("dint.commands.cli", "report", finished, running, "--plot", tmp_path / "cmp.png")
    assert result.returncode == 0, result.stderr
    rows = [row for row in result.stdout.splitlines() if row.startswith(f"| {tmp_path}") or row.startswith("| /")]
    assert len(rows) == 2
    final = json.loads((finished / "summary.json").read_text())["final_psnr"]
    assert f"| finished | importance | {STEPS} of {STEPS} | {final:.4g} |" in rows[0]
    assert f"| training | importance | 20 of {STEPS} |" in rows[1]
    # The time to the best PSNR both reached (the running run's latest, at step 20).
    step20 = json.loads(lines[3])
    assert f"s to {step20['psnr']:.2f} dB" in result.stdout and rows[1].endswith(f"| {step20['train_seconds']:.1f} |")
    with Image.open(tmp_path / "cmp.png") as plot:
        assert plot.format == "PNG" and plot.text["Software"] == "dint"
    # Stopped (no process holds it) once the lock is gone; the plot of dint's own is replaced.
    again = run_cli("dint.commands.cli", "report", running, "--plot", tmp_path / "cmp.png")
    assert again.returncode == 0 and "| stopped |" in again.stdout


def test_dint_report_refuses_what_is_not_a_run_in_one_line(tmp_path, image_run):
    not_a_run = tmp_path / "photos"
    not_a_run.mkdir()
    result = run_cli("dint.commands.cli", "report", not_a_run, "--no-plot")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "config.toml: not found" in result.stderr
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(mine)
    result = run_cli("dint.commands.cli", "report", image_run[0], "--plot", mine)
    assert result.returncode == 2 and "was not made by dint" in result.stderr
    assert Image.open(mine).size == (4, 4)  # left as it was
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left


def test_every_view_can_be_switched_off(tmp_path, image_run):
    _, config, _ = image_run
    run_dir = tmp_path / "quiet"
    result = run_cli(
        "dint.train",
        "--config",
        config,
        "--run.dir",
        run_dir,
        "--train.steps",
        "5",
        "--metrics.tensorboard",
        "false",
        "--metrics.selection_maps",
        "[]",
        "--metrics.plots",
        "false",
    )
    assert result.returncode == 0, result.stderr
    names = {p.name for p in run_dir.iterdir()}
    assert not names & {"tensorboard", "selection.png", "selection.npz", "selection.json", "quality.png"}
    assert "summary.json" in names


def test_a_rollback_logs_every_step_once(tmp_path, image_run):
    """A NaN at step 17 is found at step 20 and rolls back to the checkpoint of 10: the lines
    and events of steps 11-20 logged before it are replaced, not repeated."""
    _, config, _ = image_run
    run_dir = tmp_path / "run"
    result = run_cli(
        "dint.train",
        "--config",
        config,
        "--run.dir",
        run_dir,
        "--checkpoint.every",
        "10",
        "--metrics.selection_maps",
        "[]",
        "--metrics.plots",
        "false",
        extra_env={"DINT_FAULT": "nan@17"},
    )
    assert result.returncode == 0, result.stderr
    assert "rolled back to step 10" in result.stderr
    lines = lines_of(run_dir)
    assert [line["step"] for line in lines] == list(range(5, STEPS + 1, 5))
    loss = events(run_dir).Scalars("train/loss")
    assert [s.step for s in loss] == list(range(5, STEPS + 1, 5))
    np.testing.assert_allclose([s.value for s in loss], [line["loss"] for line in lines], rtol=1e-6)
    assert all(np.isfinite(s.value) for s in loss)


def test_a_fresh_run_in_the_same_folder_replaces_the_events(tmp_path, image_run):
    """checkpoint.resume = "never" trains afresh in an existing run folder (as `make demo` does):
    TensorBoard shows that run's steps once, not the earlier run's beside them."""
    _, config, _ = image_run
    run_dir = tmp_path / "run"
    for _ in range(2):
        result = run_cli(
            "dint.train",
            "--config",
            config,
            "--run.dir",
            run_dir,
            "--train.steps",
            "10",
            "--checkpoint.resume",
            "never",
            "--checkpoint.every",
            "0",
            "--metrics.selection_maps",
            "[]",
            "--metrics.plots",
            "false",
        )
        assert result.returncode == 0, result.stderr
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [s.step for s in events(run_dir).Scalars("train/loss")] == [5, 10]
