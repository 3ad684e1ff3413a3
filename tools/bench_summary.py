"""One table from several `dint bench` runs (one per signal): mean and spread over the signals.

    .venv/bin/python tools/bench_summary.py runs/bench/kodim01 runs/bench/kodim02 ... [--out table.md]

Per teacher: the final PSNR, the training seconds, the share of time in selection, and the
time to `full`'s final PSNR as a fraction of `full`'s training time, of `uniform`'s and of
`int`'s time to it (each signal's own ratio first, then the mean and spread over signals;
"—" where no run reached it). Spread is half the range. A column gives the time to `full`'s
final PSNR less `--margin M` dB as a fraction of `full`'s own time to that PSNR, and the last
the steps to `full`'s final PSNR as a fraction of the uniform row's (free of timing noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dint.commands.bench import time_to_reach


def mean_spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--uniform", default="uniform", help="the row the '/ uniform's' column divides by, e.g. "
                        "a uniform teacher with the same settings as the teacher compared")
    args = parser.parse_args()
    benches = [json.loads((folder / "bench.json").read_text()) for folder in args.folders]
    teachers = list(dict.fromkeys(run["teacher"] for bench in benches for run in bench["runs"]))
    key = benches[0]["quality"]

    def runs_of(bench: dict, teacher: str) -> list[dict]:
        return [r for r in bench["runs"] if r["teacher"] == teacher]

    def mean_of(bench: dict, teacher: str, field: str) -> float | None:
        values = [r.get(field) for r in runs_of(bench, teacher)]
        return None if not values or None in values else statistics.fmean(values)

    def time_to_margin(bench: dict, teacher: str) -> float | None:
        target = mean_of(bench, "full", f"final_{key}") - args.margin
        times = [time_to_reach([tuple(p) for p in r["curve"]], target) for r in runs_of(bench, teacher)]
        return None if None in times else statistics.fmean(times)

    uniform = f"{args.uniform.split(':')[0]}'s{'*' if ':' in args.uniform else ''}"
    lines = [f"| teacher | final {key} | train s | selection share | time to full's final / full's time | "
             f"/ {uniform} | / int's | reached on | time to full's final - {args.margin:g} / full's | "
             f"steps to full's final / {uniform} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for teacher in teachers:
        finals, seconds, shares, vs = [], [], [], {"full": [], "uniform": [], "int": []}
        reached, near, steps = 0, [], []
        for bench in benches:
            mine_steps, uniform_steps = (mean_of(bench, t, "steps_to_reference") for t in (teacher, args.uniform))
            if mine_steps is not None and uniform_steps:  # benches before steps_to_reference existed: none
                steps.append(mine_steps / uniform_steps)
            mine_near, full_near = time_to_margin(bench, teacher), time_to_margin(bench, "full")
            if mine_near is not None and full_near:
                near.append(mine_near / full_near)
            finals.append(mean_of(bench, teacher, f"final_{key}"))
            seconds.append(mean_of(bench, teacher, "train_seconds"))
            shares.append(statistics.fmean(r["select_seconds"] / r["train_seconds"] for r in runs_of(bench, teacher)))
            mine = mean_of(bench, teacher, "time_to_reference")
            if mine is None:
                continue
            reached += 1
            vs["full"].append(mine / mean_of(bench, "full", "train_seconds"))
            for other, label in (("uniform", args.uniform), ("int", "int")):
                theirs = mean_of(bench, label, "time_to_reference")
                if theirs:
                    vs[other].append(mine / theirs)
        lines.append(f"| {teacher} | {mean_spread(finals)} | {mean_spread(seconds, 1)} | "
                     f"{mean_spread([100 * s for s in shares], 1)} % | {mean_spread(vs['full'])} | "
                     f"{mean_spread(vs['uniform'])} | {mean_spread(vs['int'])} | {reached} of {len(benches)} | "
                     f"{mean_spread(near)} ({len(near)} of {len(benches)}) | {mean_spread(steps)} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
