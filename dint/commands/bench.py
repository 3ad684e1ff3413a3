"""`dint bench`: time to quality, every teacher, one run.

Each teacher trains the same signal in turn, with the same config, seed, step budget,
threads and engineering; only the teacher's settings differ. Quality (PSNR, or IoU for
shapes) over the whole signal is measured every `eval_every` steps, outside the timed
region: a run's clock is its training time (selection and update), nothing else.

`dint bench --from A --from B ...` makes one table of several finished benches (one per
signal): mean and spread over the signals (summary_table).

A teacher is a name and settings: a preset (TEACHERS) or `name:section.key=value;...`,
e.g. `default:model.init_scale=1` for the default teacher without weight scaling. A value
`xF` multiplies the config's own value by F: `default:train.steps=x2;train.lr=x2` is the
default teacher given twice the steps and twice the learning rate of the other rows.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from dint.core.config import TeacherConfig, load_config
from dint.core.errors import DintError, escaped
from dint.core.files import check_input, hold_folder, write_outputs
from dint.distributed.collectives import on_rank0
from dint.observe.plots import quality_vs_time
from dint.train.metrics import quality_curve, time_to_reach

REFERENCE = "full"

# Every preset sets the whole teacher section, so a row means the same whatever the config says.
_PAPER_INT = {
    "strategy": "int",
    "ratio": 0.2,
    "ratio_schedule": "step",
    "interval_schedule": "incremental",
    "interval": 1,
    "error": "l1",
    "random_share": 0.0,
    "error_refresh": 1,
}
TEACHERS: dict[str, dict[str, object]] = {
    "full": {"teacher.strategy": "full"},
    "int": {f"teacher.{k}": v for k, v in _PAPER_INT.items()},  # the paper's INT, exactly
    "uniform": {**{f"teacher.{k}": v for k, v in _PAPER_INT.items()}, "teacher.strategy": "uniform"},
    # The defaults of every teacher key but minibatch (how the signal is split, not how it is taught).
    "default": {f"teacher.{k}": v for k, v in TeacherConfig().__dict__.items() if k != "minibatch"},
}


def parse_teacher(spec: str) -> tuple[str, dict[str, str]]:
    """`name` or `name:section.key=value;section.key=value` -> (label, overrides as text)."""
    name, _, extra = spec.partition(":")
    if name not in TEACHERS:
        raise DintError(
            f"--teachers: unknown teacher {name!r} (known: {', '.join(TEACHERS)}; add settings as "
            "name:section.key=value;...)"
        )
    settings = {key: _text(value) for key, value in TEACHERS[name].items()}
    for item in filter(None, extra.split(";")):
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise DintError(f"--teachers: {item!r} in {spec!r} is not section.key=value")
        settings[key.strip()] = value.strip()
    return spec, settings


def _text(value: object) -> str:
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


def relative_settings(config_path: str | None, overrides: dict[str, str], settings: dict[str, str]) -> dict[str, str]:
    """Settings with every `xF` value replaced by F times the config's value (an int stays an int)."""
    relative = {k: v for k, v in settings.items() if v.startswith("x")}
    if not relative:
        return settings
    base = load_config(config_path, overrides).to_dict()
    resolved = dict(settings)
    for key, value in relative.items():
        section, _, name = key.partition(".")
        current = base.get(section, {}).get(name)
        try:
            factor = float(value[1:])
        except ValueError:
            factor = math.nan
        if not math.isfinite(factor):
            raise DintError(f"{key}={value}: x must be followed by a finite number, e.g. x2")
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise DintError(f"{key}={value}: {key} is not a number in the config")
        scaled = current * factor
        if not math.isfinite(scaled):
            raise DintError(f"{key}={value}: {factor:g} times {current:g} is not a finite number")
        resolved[key] = str(round(scaled) if isinstance(current, int) else scaled)
    return resolved


def run_config(
    config_path: str | None, overrides: dict[str, str], settings: dict[str, str], run_dir: Path, eval_every: int
):
    """The config of one teacher's run (its `xF` settings resolved), checked as load_config checks it."""
    settings = relative_settings(config_path, overrides, settings)
    return load_config(
        config_path,
        {
            **overrides,
            **settings,
            "run.dir": str(run_dir),
            "eval.every": str(eval_every),
            "checkpoint.resume": "never",
            "eval.reconstruction": "false",
        },
    )


def run_one(
    config_path: str | None, overrides: dict[str, str], settings: dict[str, str], run_dir: Path, eval_every: int
) -> dict:
    """Train once; the run's summary and its quality curve [(train seconds, quality)]."""
    from dint.train.trainer import Trainer

    config = run_config(config_path, overrides, settings, run_dir, eval_every)
    trainer = Trainer(config)
    summary = trainer.train()
    key = "iou" if trainer.info.modality == "shape" else "psnr"
    curve = quality_curve(trainer.metrics.history, key)
    step_curve = quality_curve(trainer.metrics.history, key, by="step")
    return {"summary": summary, "curve": curve, "step_curve": step_curve, "quality_key": key, "config": config}


def bench(
    config_path: str | None,
    overrides: dict[str, str],
    teachers: list[str],
    repeats: int,
    out: Path,
    eval_every: int,
    is_main: bool,
) -> dict:
    """Train with each teacher in turn into `out`, held (rank 0) for the bench: one writer there.
    The config, then every teacher's, is checked before any trains or anything is written."""
    specs = [parse_teacher(t) for t in teachers]
    if REFERENCE not in [label for label, _ in specs]:
        specs.insert(0, parse_teacher(REFERENCE))
    device = _checked_device(config_path, overrides)
    for label, settings in specs:
        try:
            run_config(config_path, overrides, settings, _run_dir(out, label, 0), eval_every)
        except DintError as e:
            raise DintError(f"--teachers {label}: {e}") from None
    held = on_rank0(lambda: hold_folder(out, "dint bench's outputs", "dint bench writing in this folder"), device)
    try:
        return _bench_runs(config_path, overrides, specs, repeats, out, eval_every, is_main)
    finally:
        if held is not None:
            held.close()


def _bench_runs(
    config_path: str | None,
    overrides: dict[str, str],
    specs: list[tuple[str, dict[str, str]]],
    repeats: int,
    out: Path,
    eval_every: int,
    is_main: bool,
) -> dict:
    runs, config_dict = [], None
    for repeat in range(repeats):
        reference = None
        for label, settings in sorted(specs, key=lambda s: s[0] != REFERENCE):  # the reference first
            settings = relative_settings(config_path, overrides, settings)
            result = run_one(config_path, overrides, settings, _run_dir(out, label, repeat), eval_every)
            summary, curve, key = result["summary"], result["curve"], result["quality_key"]
            final = summary["iou"] if key == "iou" else summary["final_psnr"]
            if label == REFERENCE:
                reference = final
            config_dict = config_dict or {k: v for k, v in result["config"].to_dict().items() if k != "teacher"}
            runs.append(
                {
                    "teacher": label,
                    "settings": settings,
                    "repeat": repeat,
                    f"final_{key}": final,
                    "train_seconds": summary["train_seconds"],
                    "select_seconds": summary["select_seconds"],
                    "update_seconds": summary["update_seconds"],
                    "steps": summary["steps"],
                    "curve": [[round(t, 4), q] for t, q in curve],
                    "curve_steps": [step for step, _ in result["step_curve"]],
                    "time_to_reference": time_to_reach(curve, reference),
                    # Steps do not move with the machine's speed or load: a comparison free of timing noise.
                    "steps_to_reference": time_to_reach(result["step_curve"], reference),
                }
            )
    result = {"config": config_dict, "reference": REFERENCE, "quality": key, "runs": runs}
    if is_main:  # into the folder claimed above
        write_outputs(
            out,
            {
                "bench.json": lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"),
                "bench.md": lambda tmp: tmp.write_text(bench_table(result) + "\n"),
                "quality_vs_time.png": lambda tmp: plot(result, tmp),
            },
        )
    return result


def _checked_device(config_path: str | None, overrides: dict[str, str]):
    """The device the runs use (the one collectives before the first run go through), once the
    config and its store are checked as `dint train --check` checks them."""
    from dint.core.config import check_against_store
    from dint.data.store import open_store
    from dint.distributed.collectives import pick_device

    config = load_config(config_path, overrides)
    check_against_store(config, open_store(config.data.store).info)
    return pick_device(config.run.device, int(os.environ.get("LOCAL_RANK", 0)))


def _run_dir(out: Path, label: str, repeat: int) -> Path:
    return out / "runs" / f"{_slug(label)}-{repeat}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def mean_spread(values: list[float], digits: int = 2, none: str = "never", alone: bool = True) -> str:
    """Mean ± half the range (`none` for no values; a single value alone unless `alone` is False)."""
    if not values:
        return none
    mean = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2
    return f"{mean:.{digits}f}" if len(values) == 1 and alone else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def bench_table(result: dict) -> str:
    """Teacher, final quality (mean ± half the range over repeats), seconds, share of time in
    selection, time to the reference's final quality, and speed-up against the reference."""
    key = result["quality"]
    by_teacher: dict[str, list[dict]] = {}
    for run in result["runs"]:
        by_teacher.setdefault(run["teacher"], []).append(run)
    reference_seconds = statistics.fmean(r["train_seconds"] for r in by_teacher[result["reference"]])
    lines = [
        f"| teacher | final {key} | train s | s/step | selection share | time to {result['reference']}'s "
        f"final {key} (s) | speed-up vs {result['reference']} | steps to it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for teacher, runs in by_teacher.items():
        reached = [r["time_to_reference"] for r in runs if r["time_to_reference"] is not None]
        seconds = statistics.fmean(r["train_seconds"] for r in runs)
        speedup = f"{reference_seconds / statistics.fmean(reached):.2f}x" if len(reached) == len(runs) else "—"
        steps = [r.get("steps_to_reference") for r in runs]
        steps = mean_spread(steps, digits=0) if None not in steps else "not reached"
        lines.append(
            f"| {escaped(teacher)} | {mean_spread([r[f'final_{key}'] for r in runs])} | {seconds:.1f} | "
            f"{seconds / runs[0]['steps']:.4f} | "
            f"{statistics.fmean(r['select_seconds'] / max(r['train_seconds'], 1e-9) for r in runs):.1%} | "
            f"{mean_spread(reached) if len(reached) == len(runs) else 'not reached'} | {speedup} | {steps} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    colours, curves = {}, []
    for run in result["runs"]:
        colour = colours.setdefault(run["teacher"], f"C{len(colours) % 10}")
        curves.append(
            {
                "curve": run["curve"],
                "colour": colour,
                "alpha": 0.9 if run["repeat"] == 0 else 0.4,
                "label": run["teacher"] if run["repeat"] == 0 else None,
            }
        )
    reference = [r[f"final_{result['quality']}"] for r in result["runs"] if r["teacher"] == result["reference"]]
    line = None
    if reference and all(math.isfinite(q) for q in reference):
        line = (statistics.fmean(reference), f"{result['reference']}'s final")
    quality_vs_time(curves, path, result["quality"], line)


def read_bench(folder: Path) -> dict:
    """bench.json of a finished `dint bench`, checked enough for summary_table."""
    path = Path(folder) / "bench.json"
    try:
        check_input(path, "bench result")
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise DintError(f"{path}: not found (a folder written by dint bench)") from None
    except (OSError, ValueError) as e:
        raise DintError(f"{path}: unreadable ({e})") from None
    if not (
        isinstance(result, dict)
        and isinstance(result.get("runs"), list)
        and result.get("quality")
        and all(isinstance(r, dict) and "teacher" in r for r in result["runs"])
    ):
        raise DintError(f"{path}: not a dint bench result (no runs)")
    return result


def summary_table(benches: list[dict], margin: float = 0.5, uniform: str = "uniform") -> str:
    """One table from several benches (one per signal). Per teacher: the final quality, the
    training seconds, the share of time in selection, and the time to `full`'s final as a
    fraction of `full`'s training time, of `uniform`'s and of `int`'s time to it (each
    signal's own ratio, then mean ± half the range over signals; "—" where no run reached it);
    the time to `full`'s final less `margin` as a fraction of `full`'s own time to it; and the
    steps to `full`'s final over the `uniform` row's (free of timing noise)."""
    teachers = list(dict.fromkeys(run["teacher"] for bench in benches for run in bench["runs"]))
    key = benches[0]["quality"]

    def runs_of(bench: dict, teacher: str) -> list[dict]:
        return [r for r in bench["runs"] if r["teacher"] == teacher]

    def mean_of(bench: dict, teacher: str, field: str) -> float | None:
        values = [r.get(field) for r in runs_of(bench, teacher)]
        return None if not values or None in values else statistics.fmean(values)

    def time_to_margin(bench: dict, teacher: str) -> float | None:
        target = mean_of(bench, REFERENCE, f"final_{key}") - margin
        times = [time_to_reach([tuple(p) for p in r["curve"]], target) for r in runs_of(bench, teacher)]
        return None if None in times else statistics.fmean(times)

    def spread(values: list[float], digits: int = 2) -> str:
        return mean_spread(values, digits, none="—", alone=False)

    shown = f"{uniform.split(':')[0]}'s{'*' if ':' in uniform else ''}"
    lines = [
        f"| teacher | final {key} | train s | selection share | time to full's final / full's time | "
        f"/ {shown} | / int's | reached on | time to full's final - {margin:g} / full's | "
        f"steps to full's final / {shown} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for teacher in teachers:
        finals, seconds, shares, vs = [], [], [], {"full": [], "uniform": [], "int": []}
        reached, near, steps = 0, [], []
        for bench in benches:
            mine_steps, uniform_steps = (mean_of(bench, t, "steps_to_reference") for t in (teacher, uniform))
            if mine_steps is not None and uniform_steps:  # benches before steps_to_reference existed: none
                steps.append(mine_steps / uniform_steps)
            mine_near, full_near = time_to_margin(bench, teacher), time_to_margin(bench, REFERENCE)
            if mine_near is not None and full_near:
                near.append(mine_near / full_near)
            finals.append(mean_of(bench, teacher, f"final_{key}"))
            seconds.append(mean_of(bench, teacher, "train_seconds"))
            shares.append(statistics.fmean(r["select_seconds"] / r["train_seconds"] for r in runs_of(bench, teacher)))
            mine = mean_of(bench, teacher, "time_to_reference")
            if mine is None:
                continue
            reached += 1
            vs["full"].append(mine / mean_of(bench, REFERENCE, "train_seconds"))
            for other, label in (("uniform", uniform), ("int", "int")):
                theirs = mean_of(bench, label, "time_to_reference")
                if theirs:
                    vs[other].append(mine / theirs)
        lines.append(
            f"| {escaped(teacher)} | {spread(finals)} | {spread(seconds, 1)} | "
            f"{spread([100 * s for s in shares], 1)} % | "
            f"{spread(vs['full'])} | {spread(vs['uniform'])} | {spread(vs['int'])} | {reached} of {len(benches)} | "
            f"{spread(near)} ({len(near)} of {len(benches)}) | {spread(steps)} |"
        )
    return "\n".join(lines)
