"""What issue 9's speed features promise: error reuse sees what a fresh forward would, importance
sampling's loss is unbiased, weight scaling is what it says, and `dint bench` is consistent."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import NO_VIEWS, REPO, run_cli

from dint.core.config import TeacherConfig, load_config
from dint.data.sharding import Shard, rank_chunk_ids
from dint.data.store import open_store
from dint.fields.siren import Siren
from dint.teaching.teacher import Offered, Teacher, point_errors


def tiny_config(tmp_path, store, **teacher) -> dict:
    overrides = {
        "data.store": str(store),
        "run.dir": str(tmp_path / "run"),
        "run.device": "cpu",
        "model.width": "16",
        "model.hidden_layers": "2",
        "train.steps": "20",
        "train.micro_batch": "300",
        "eval.reconstruction": "false",
        "checkpoint.resume": "never",
        **{f"metrics.{k}": json.dumps(v) for k, v in NO_VIEWS.items()},
    }
    overrides.update({f"teacher.{k}": str(v) for k, v in teacher.items()})
    return overrides


def test_reused_errors_equal_a_fresh_forward_before_the_update(tmp_path, image_store):
    from dint.train.trainer import Trainer

    trainer = Trainer(
        load_config(
            None, tiny_config(tmp_path, image_store, interval_schedule="dense", error_refresh=4, random_share=0.25)
        )
    )
    plan, kind = trainer.plan, trainer.config.teacher.error
    for step in range(1, 7):  # a refresh at steps 1 and 5, selections from memory in between
        before = copy.deepcopy(trainer.engine.module)
        trainer.train_step(step)
        selection = plan.current
        assert selection.memory is plan.memory and plan.memory.refreshed_at == (0 if step < 5 else 4)
        fresh = point_errors(before, plan.shard, selection.local, 4096, kind)
        remembered = plan.memory.errors[selection.local]
        # The training forward ran in micro-batches of 300, the fresh one in one block: equal to float rounding.
        torch.testing.assert_close(remembered, fresh, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(fresh, point_errors(trainer.engine.module, plan.shard, selection.local, 4096, kind))


def test_importance_weighted_loss_has_an_unbiased_gradient(image_store):
    """Over many draws the mean gradient of the importance-weighted loss equals the gradient of
    the mean loss over every point (within 5 standard errors per parameter), while the same
    draws without the weights miss it by far."""
    from dint.train.loss import selection_loss

    store = open_store(image_store)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), torch.device("cpu"))
    everything = torch.arange(len(shard))
    torch.manual_seed(0)
    model = Siren(2, 1, width=8, hidden_layers=1)
    teacher = Teacher(
        TeacherConfig(strategy="importance", ratio=0.1, ratio_schedule="constant", random_share=0.2),
        block_points=4096,
        seed=3,
    )

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double()

    coords, targets = shard.coords(everything), shard.targets(everything)
    full = gradient((model(coords) - targets).square().mean(dim=1).mean())
    weighted, unweighted = [], []
    for draw in range(1500):  # a new draw at each `progress`
        selection = teacher.select(model, shard, everything, draw, 10_000)
        (part,) = selection.parts(0)
        weighted.append(gradient(selection_loss(model, global_count=selection.normalizer, world_size=1, **part)))
        part.pop("weights")
        unweighted.append(gradient(selection_loss(model, global_count=selection.global_count, world_size=1, **part)))
    for draws, unbiased in ((torch.stack(weighted), True), (torch.stack(unweighted), False)):
        z = (draws.mean(0) - full) / (draws.std(0) / math.sqrt(draws.shape[0]) + 1e-12)
        assert (z.abs().max() < 5) == unbiased, z.abs().max()


def test_draws_are_uniform_new_at_every_step_and_a_function_of_the_point(image_store):
    """The teacher's random draws (dint.teaching.teacher.Offered): uniform over [0, 1) at every step,
    uncorrelated from one step to the next and between points, and a point's draw is the same
    whichever other points are offered with it (so whatever the ranks)."""
    store = open_store(image_store)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), torch.device("cpu"))
    everything = torch.arange(len(shard))
    offered = Offered(shard, everything, seed=5)
    n, steps = len(shard), 300
    draws = torch.stack([offered.draws(step) for step in range(steps)])  # (steps, points)
    assert draws.dtype == torch.float64 and draws.min() >= 0 and draws.max() < 1
    bins = torch.histc(draws, bins=10, min=0, max=1)  # every draw: 10 equal bins
    expected = draws.numel() / 10
    assert ((bins - expected).abs() < 5 * math.sqrt(expected)).all(), bins
    # Each point over the steps: below 0.1 about a tenth of the time (binomial, 5 sigma).
    share = (draws < 0.1).double().mean(0)
    assert (share - 0.1).abs().max() < 5 * math.sqrt(0.09 / steps) + 1 / steps
    # Consecutive steps, and two points over the steps: no correlation (5 sigma).
    after = torch.corrcoef(torch.stack([draws[:-1].flatten(), draws[1:].flatten()]))[0, 1]
    assert abs(after) < 5 / math.sqrt(draws[:-1].numel()), after
    between = torch.corrcoef(draws.T[:40])  # 40 points, each over 300 steps
    assert (between - torch.eye(40)).abs().max() < 5 / math.sqrt(steps) * 1.5
    # A subset offered alone (another rank's candidates) draws what it drew with everything.
    subset = everything[torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 3]]
    assert torch.equal(Offered(shard, subset, seed=5).draws(17), draws[17][subset])
    assert not torch.equal(Offered(shard, everything, seed=6).draws(17), draws[17])


FREED_BYTES_KEPT = """
import ctypes, sys
from dint.core.errors import DintError
from dint.core.resources import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
kept = keep_freed_memory(sys.argv[1] == "keep")
block = libc.malloc(8 << 20)  # 8 MiB, as a step's activations
ctypes.memset(block, 1, 8 << 20)
libc.free(block)
print(kept, libc.mallinfo2().fordblks >= 8 << 20)
if kept:
    try:
        keep_freed_memory(False)
    except DintError as e:
        print(e)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_keeps_a_freed_block_for_reuse():
    """run.keep_freed_memory: with it, 8 MiB freed stay in the heap (glibc's mallinfo2); without it
    (a fresh process) glibc maps such a block and unmaps it when freed. Once set, asking for
    the default in the same process is refused in one line naming the key."""

    def run(mode):
        result = subprocess.run(
            [sys.executable, "-c", FREED_BYTES_KEPT, mode], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    kept = run("keep")
    assert kept[:1] == ["True True"]
    assert kept[1].startswith("run.keep_freed_memory = false: an earlier run in this process already keeps")
    assert run("default") == ["False False"]


def test_a_compiled_model_trains_as_the_eager_one(tmp_path, image_store):
    """model.compile = on really compiles the forward (traced graphs, with aot_eager: no code
    generation, so this stays quick), trains to the eager model's weights within float
    rounding, keeps the eager state_dict keys (checkpoints and model.pt unchanged), and says so."""
    from torch._dynamo.utils import counters

    from dint.train.trainer import Trainer

    runs = {}
    for setting in ("off", "on"):
        overrides = tiny_config(tmp_path / setting, image_store, strategy="importance")
        overrides.update({"model.compile": setting, "train.steps": "6"})
        if setting == "on":
            overrides["model.compile_backend"] = "aot_eager"
        graphs = counters["stats"]["unique_graphs"]
        trainer = Trainer(load_config(None, overrides))
        summary = trainer.train()
        runs[setting] = (summary, trainer.engine.module.state_dict(), counters["stats"]["unique_graphs"] - graphs)
    (eager, eager_state, eager_graphs), (compiled, compiled_state, compiled_graphs) = runs["off"], runs["on"]
    assert eager_graphs == 0 and compiled_graphs >= 2  # a training and a no-grad (scoring) graph at least
    assert (eager["compiled_with"], compiled["compiled_with"]) == (None, "aot_eager")
    assert list(compiled_state) == list(eager_state)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-4, atol=1e-5)
    assert compiled["final_psnr"] == pytest.approx(eager["final_psnr"], abs=0.01)
    saved = torch.load(tmp_path / "on" / "run" / "model.pt", weights_only=True)
    assert list(saved["model"]) == list(eager_state)


def test_float16_scoring_stays_near_float32_and_the_teacher_uses_it(image_store):
    store = open_store(image_store)
    shard = Shard(store, rank_chunk_ids(store.info, 0, 1), torch.device("cpu"))
    everything = torch.arange(len(shard))
    torch.manual_seed(0)
    model = Siren(2, 1, width=32, hidden_layers=3)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    coords, targets = shard.coords(everything), shard.targets(everything)
    for _ in range(100):  # a partly trained model: errors spread as during training
        optimizer.zero_grad()
        (model(coords) - targets).square().mean().backward()
        optimizer.step()
    exact = point_errors(model, shard, everything, 4096)
    low = point_errors(model, shard, everything, 4096, precision=torch.float16)
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # it did run in float16
    # float16's rounding: about 0.0005 on average; up to about 0.016 where the first layer's w0 = 30
    # multiplies pre-activations near 0.5, whose float16 step is 2^-11 (benchmarks/2026-12-01-engineering.md)
    deviation = (low - exact).abs()
    assert deviation.mean().item() < 2e-3 and deviation.max().item() < 0.05
    config = TeacherConfig(
        strategy="int",
        ratio=0.1,
        ratio_schedule="constant",
        interval_schedule="dense",
        random_share=0.0,
        error_refresh=1,
        score_precision="float16",
    )
    selection = Teacher(config, block_points=4096, seed=0).select(model, shard, everything, 0, 100)
    top = lambda errors: set(torch.topk(errors, selection.global_count).indices.tolist())  # noqa: E731
    assert set(selection.local.tolist()) == top(low) != top(exact)


def curve_time(curve, target):
    """The first time the curve reaches target, linear between evaluations (written out again here)."""
    for (t0, q0), (t1, q1) in zip([(0.0, -math.inf)] + curve, curve):
        if q1 >= target:
            return t1 if q0 == -math.inf or q0 >= target else t0 + (t1 - t0) * (target - q0) / (q1 - q0)
    return None


def test_dint_bench_on_a_tiny_signal(tmp_path, image_store):
    out = tmp_path / "bench"
    result = run_cli(
        "dint.commands.cli",
        "bench",
        "--teachers",
        "int,uniform:teacher.ratio=0.5",
        "--out",
        out,
        "--eval-every",
        "5",
        "--repeats",
        "2",
        *sum(([f"--{k}", v] for k, v in tiny_config(tmp_path, image_store).items()), []),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    bench = json.loads((out / "bench.json").read_text())
    assert bench["reference"] == "full" and bench["quality"] == "psnr"
    assert sorted({r["teacher"] for r in bench["runs"]}) == ["full", "int", "uniform:teacher.ratio=0.5"]
    assert len(bench["runs"]) == 6 and {r["repeat"] for r in bench["runs"]} == {0, 1}
    assert bench["config"]["train"]["steps"] == 20
    for run in bench["runs"]:
        assert set(run) >= {
            "teacher",
            "settings",
            "repeat",
            "final_psnr",
            "train_seconds",
            "select_seconds",
            "update_seconds",
            "curve",
            "curve_steps",
            "time_to_reference",
            "steps_to_reference",
        }
        assert [len(point) for point in run["curve"]] == [2, 2, 2, 2]
        assert run["curve_steps"] == [5, 10, 15, 20]
        assert run["curve"][-1][1] == pytest.approx(run["final_psnr"])
        assert run["select_seconds"] + run["update_seconds"] == pytest.approx(run["train_seconds"])
        reference = next(r for r in bench["runs"] if r["teacher"] == "full" and r["repeat"] == run["repeat"])
        expected = curve_time(run["curve"], reference["final_psnr"])
        by_steps = curve_time([[s, q] for s, (_, q) in zip(run["curve_steps"], run["curve"])], reference["final_psnr"])
        if expected is None:
            assert run["time_to_reference"] is None and run["steps_to_reference"] is None
        else:
            assert run["time_to_reference"] == pytest.approx(expected)
            assert run["steps_to_reference"] == pytest.approx(by_steps)
    # Training is deterministic: a repeat takes the same steps to the reference, whatever its seconds.
    for teacher in {r["teacher"] for r in bench["runs"]}:
        first, second = (r for r in bench["runs"] if r["teacher"] == teacher)
        assert first["steps_to_reference"] == second["steps_to_reference"]
        assert [q for _, q in first["curve"]] == [q for _, q in second["curve"]]
    assert next(r for r in bench["runs"] if r["teacher"] == "int")["settings"]["teacher.strategy"] == "int"
    table = (out / "bench.md").read_text()
    assert table.startswith("| teacher | final psnr |") and len(table.strip().splitlines()) == 2 + 3
    assert table.splitlines()[0].endswith("| steps to it |")
    full_row = next(line for line in table.splitlines() if line.startswith("| full |"))
    full_steps = next(r["steps_to_reference"] for r in bench["runs"] if r["teacher"] == "full")
    assert full_row.endswith(f"| {full_steps:.0f} ± 0 |")
    from PIL import Image

    assert Image.open(out / "quality_vs_time.png").size[0] > 300


def test_bench_summary_divides_steps_by_the_uniform_rows(tmp_path):
    """`dint bench --from`'s last column: each signal's steps to `full`'s final over the
    uniform row's, then mean ± half the range; "—" where a signal lacks the figure."""

    def run(teacher, steps, seconds):
        return {
            "teacher": teacher,
            "repeat": 0,
            "final_psnr": 30.0,
            "train_seconds": 10.0,
            "select_seconds": 1.0,
            "curve": [[seconds, 30.0]],
            "time_to_reference": seconds,
            "steps_to_reference": steps,
        }

    folders = []
    for name, default_steps in (("a", 900.0), ("b", 700.0)):
        folder = tmp_path / name
        folder.mkdir()
        runs = [run("full", 1000.0, 10.0), run("uniform:x", 1000.0, 5.0), run("default", default_steps, 4.0)]
        if name == "b":
            runs[0].pop("steps_to_reference")  # a bench written before the field existed
        (folder / "bench.json").write_text(json.dumps({"reference": "full", "quality": "psnr", "runs": runs}))
        folders.append(folder)
    out = tmp_path / "summary"
    result = run_cli(
        "dint.commands.cli",
        "bench",
        *(arg for f in folders for arg in ("--from", f)),
        "--uniform",
        "uniform:x",
        "--out",
        out,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, _, *rows = result.stdout.strip().splitlines()[:-1]
    assert (out / "summary.md").read_text().strip() == "\n".join([header, _, *rows])
    assert header.endswith("| steps to full's final / uniform's* |")
    cells = {row.split("|")[1].strip(): row.split("|")[-2].strip() for row in rows}
    assert cells == {"full": "1.00 ± 0.00", "uniform:x": "1.00 ± 0.00", "default": "0.80 ± 0.10"}


def test_audio_trains_with_the_default_domain(tmp_path):
    """A speech-like second at 16 kHz, sharded and trained without tuning, gets a signal; the
    same with the old [-1, 1] time axis does not."""
    import numpy as np
    from scipy.io import wavfile

    t = np.arange(16000) / 16000
    pitch = 140 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
    voice = sum(np.sin(2 * np.pi * np.cumsum(h * pitch) / 16000) / h for h in range(1, 20))
    wave = (voice * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) / 3.0 * 12000).astype(np.int16)
    wavfile.write(tmp_path / "speech.wav", 16000, wave)
    store = tmp_path / "speech.zarr"
    assert run_cli("dint.commands.cli", "shard", tmp_path / "speech.wav", store).returncode == 0
    ((lo, hi),) = open_store(store).info.domain
    assert hi == -lo == pytest.approx(15999 * 0.02 / 30 / 2)
    psnr = {}
    for name, extra in (("default", []), ("unit", ["--data.domain", "[[-1, 1]]"])):
        args = sum(([f"--{k}", v] for k, v in tiny_config(tmp_path / name, store).items()), [])
        result = run_cli(
            "dint.train",
            *args,
            "--model.width",
            "64",
            "--model.hidden_layers",
            "3",
            "--train.steps",
            "200",
            *extra,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        psnr[name] = json.loads((tmp_path / name / "run" / "summary.json").read_text())["final_psnr"]
    assert psnr["default"] > psnr["unit"] + 5, psnr
