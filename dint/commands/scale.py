"""`dint scale`: how one config scales with the number of ranks (and nodes).

For each size the config trains with torchrun (fresh run, evaluations outside the clock),
and its summary and metrics give one record: points trained per second, seconds per step
split into its parts, bytes each rank sends per step, imbalance, speed-up and efficiency
against the smallest size, and the training time to a target PSNR.

Strong scaling trains the same signal at every size. Weak scaling trains a signal whose
points grow with the ranks: `data.store` names one store per size with `{ranks}` in it
(docs/scaling.md: how the stores are made), so each rank holds about as many points at every size.
Efficiency is throughput per rank against the smallest size's in both modes: for strong
scaling that is the usual speed-up / ranks, for weak scaling the inverse ratio of step times.

`nodes` > 1 starts that many torchrun agents on this machine meeting at a c10d rendezvous
on 127.0.0.1, each with ranks / nodes processes: the multi-node code path on one machine.
On a cluster, run each size with launch/ (Slurm, run_train.sh) and build the report from
the run folders with `dint scale --from`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dint.commands.bench import time_to_reach
from dint.commands.report import COUNT, NUMBER, NUMBERS, POSITIVE, TEXT, checked_curve, entry, read_run_files
from dint.core.config import FIELD_KEYS, load_config
from dint.core.errors import DintError
from dint.core.files import check_outside_inputs, claim_folder, hold_folder, shown, write_outputs
from dint.distributed.launch import torchrun_command

# The step's parts, as dint.train's timers measure them on rank 0 (seconds per step).
PARTS = ("score", "topk_merge", "balance", "forward_backward", "allreduce", "optimizer")


def run_size(
    config: str | None, overrides: dict[str, str], ranks: int, nodes: int, run_dir: Path, threads: int, timeout: float
) -> None:
    """Train once on `ranks` processes over `nodes` local agents; the run's folder holds the results."""
    args = ["-m", "dint.train", *(["--config", config] if config else [])]
    for key, value in {
        **overrides,
        "run.dir": str(run_dir),
        "checkpoint.resume": "never",
        "eval.reconstruction": "false",
    }.items():
        args += [f"--{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    endpoint = f"127.0.0.1:{_free_port()}" if nodes > 1 else None
    commands = [torchrun_command(ranks // nodes, *args, nnodes=nodes, rdzv_endpoint=endpoint) for _ in range(nodes)]
    started = time.monotonic()
    # Each agent in a session of its own, so that whatever stops this command (a timeout,
    # Ctrl-C, SIGTERM) stops the agents and their ranks too, not leave them running.
    agents = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for c in commands
    ]
    try:
        outputs = [agent.communicate(timeout=max(1.0, timeout - (time.monotonic() - started))) for agent in agents]
    except subprocess.TimeoutExpired:
        _stop(agents)
        raise DintError(
            f"the run on {ranks} rank(s), {nodes} node(s) took over --timeout {timeout:g} s; stopped (see {run_dir})"
        ) from None
    except BaseException:
        _stop(agents)
        raise
    failed = [(agent.returncode, err) for agent, (_, err) in zip(agents, outputs) if agent.returncode]
    if failed:
        errors = [line for _, err in failed for line in err.splitlines() if "error:" in line]
        raise DintError(
            f"the run on {ranks} rank(s), {nodes} node(s) failed (exit {failed[0][0]}): "
            + (errors[0].strip() if errors else f"see {run_dir}")
        )


def _stop(agents: list[subprocess.Popen]) -> None:
    """SIGTERM to each agent's session (the agent and its ranks), SIGKILL after 10 s."""
    for agent in agents:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for agent in agents:
        try:
            agent.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_of(run_dir: Path, ranks: int, nodes: int, target: float | None) -> dict:
    """One size's record from a finished run's summary.json and metrics.jsonl."""
    _, lines, summary = read_run_files(run_dir, finished=True)
    try:
        config = load_config(str(run_dir / "config.toml"), {})
    except DintError as e:
        raise DintError(f"{shown(run_dir)}: not a finished dint run ({e})") from None
    summary = checked_summary(summary, lines, run_dir)
    steps, hashgrid = summary["steps"], config.model.field == "hashgrid"
    per_step = lambda key: summary[key] / steps  # noqa: E731
    split = {
        "score": per_step("score_seconds"),
        "topk_merge": per_step("select_seconds") - per_step("score_seconds"),
        "balance": per_step("balance_seconds"),
        "forward_backward": per_step("update_seconds") - per_step("allreduce_seconds") - per_step("optimizer_seconds"),
        "allreduce": per_step("allreduce_seconds"),
        "optimizer": per_step("optimizer_seconds"),
    }
    curve = [
        (line["select_seconds"] + line.get("balance_seconds", 0.0) + line["update_seconds"], line["psnr"])
        for line in lines
        if line.get("psnr") is not None
    ]
    return {
        "ranks": ranks,
        "nodes": nodes,
        "run_dir": str(run_dir),
        "points": summary["points"],
        "steps": steps,
        "final_psnr": summary["final_psnr"],
        "train_seconds": summary["train_seconds"],
        "seconds_per_step": summary["train_seconds"] / steps,
        "points_per_second": summary["points_trained"] / summary["train_seconds"],
        "step_split": split,
        # Each rank's own contribution to the collectives, mean over ranks and steps.
        "select_bytes_per_step": statistics.fmean(summary["select_bytes_per_rank"]) / steps,
        "balance_bytes_per_step": statistics.fmean(summary["balance_bytes_per_rank"]) / steps,
        # The gradient exchange (all of a hash field's table): a summary of before it counted none.
        "gradients_bytes_per_step": statistics.fmean(summary.get("gradients_bytes_per_rank", [0])) / steps,
        "imbalance": statistics.fmean(line["imbalance"] for line in lines),
        "imbalance_before_balance": statistics.fmean(
            max(line["selected_per_rank"]) * ranks / max(1, line["selected"]) for line in lines
        ),
        # What the cost model needs (dint.commands.cost_model).
        "device": summary["device"],
        "params": summary["params"],
        "points_trained": summary["points_trained"],
        "points_scored_per_rank": summary["points_scored_per_rank"],
        "model": [config.model.hidden_layers, config.model.width],
        "field": config.model.field,
        **({"hash": {key: getattr(config.model, key) for key in FIELD_KEYS["hashgrid"]}} if hashgrid else {}),
        "in_features": summary["ndim"],
        "out_features": summary["channels"],
        "topk": config.teacher.topk,
        "balance": config.teacher.balance,
        "time_to_target": time_to_reach(curve, target) if target is not None else None,
    }


# What record_of reads of a run's summary.json, and of each metrics.jsonl line: each checked
# (report.entry) before any arithmetic, so a damaged run is one line naming the file and key.
SUMMARY_KEYS = {
    "steps": POSITIVE,
    "points": POSITIVE,
    "points_trained": POSITIVE,
    "train_seconds": POSITIVE,
    "final_psnr": NUMBER,
    "params": POSITIVE,
    "ndim": COUNT,
    "channels": COUNT,
    "device": TEXT,
    "select_bytes_per_rank": NUMBERS,
    "balance_bytes_per_rank": NUMBERS,
    "points_scored_per_rank": NUMBERS,
    **{f"{part}_seconds": NUMBER for part in ("score", "select", "balance", "update", "allreduce", "optimizer")},
}
LINE_KEYS = {
    "select_seconds": NUMBER,
    "update_seconds": NUMBER,
    "imbalance": POSITIVE,
    "selected": NUMBER,
    "selected_per_rank": NUMBERS,
}


def checked_summary(summary: dict, lines: list[dict], run_dir: Path) -> dict:
    """`summary` once it and `lines` hold what record_of reads, as numbers it can divide by."""
    for key, kind in SUMMARY_KEYS.items():
        entry(summary, shown(run_dir / "summary.json"), key, kind)
    for number, line in enumerate(lines, 1):
        for key, kind in LINE_KEYS.items():
            entry(line, f"{shown(run_dir / 'metrics.jsonl')}, line {number}", key, kind)
    checked_curve(lines, run_dir / "metrics.jsonl", "psnr")
    return summary


def add_relative(records: list[dict]) -> None:
    """Speed-up and efficiency against the smallest size (throughput per rank)."""
    base = min(records, key=lambda r: r["ranks"])
    for r in records:
        r["speedup"] = r["points_per_second"] / base["points_per_second"]
        r["efficiency"] = r["speedup"] * base["ranks"] / r["ranks"]


def scale(
    config: str | None,
    overrides: dict[str, str],
    sizes: list[tuple[int, int]],
    mode: str,
    out: Path,
    threads: int,
    target: float | None,
    timeout: float,
) -> dict:
    store = overrides.get("data.store")
    if mode == "weak" and (store is None or "{ranks}" not in store):
        raise DintError("--mode weak needs --data.store with {ranks} in it: one store per size (docs/scaling.md)")
    with hold_folder(out, "dint scale's outputs", "dint scale writing in this folder"):
        records = []
        for ranks, nodes in sizes:
            run_dir = out / "runs" / f"ranks{ranks}-nodes{nodes}"
            sized = {**overrides, **({"data.store": store.format(ranks=ranks)} if mode == "weak" else {})}
            print(f"dint scale: {ranks} rank(s) on {nodes} node(s) ...", file=sys.stderr, flush=True)
            run_size(config, sized, ranks, nodes, run_dir, threads, timeout)
            records.append(record_of(run_dir, ranks, nodes, None))
        return scaling_report(records, mode, out, target)


def scaling_report(records: list[dict], mode: str, out: Path, target: float | None) -> dict:
    """Fill in the relative figures and the time to target; write scaling.json, .md and the plots."""
    if target is None:  # the smallest size's final PSNR less 0.5 dB: every size should reach it
        target = min(records, key=lambda r: r["ranks"])["final_psnr"] - 0.5
    records = [record_of(Path(r["run_dir"]), r["ranks"], r["nodes"], target) for r in records]
    add_relative(records)
    result = {"mode": mode, "target_psnr": target, "records": sorted(records, key=lambda r: (r["ranks"], r["nodes"]))}
    model = modelled(result["records"])
    claim_folder(out, "dint scale's outputs")
    write_outputs(
        out,
        {
            "scaling.json": lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"),
            "scaling.md": lambda tmp: tmp.write_text(scaling_table(result) + "\n"),
            "scaling.png": lambda tmp: plot_scaling(result, tmp),
            "step_split.png": lambda tmp: plot_split(result, tmp),
            "cost_model.json": lambda tmp: tmp.write_text(json.dumps(model, indent=2) + "\n"),
            "cost_model.md": lambda tmp: tmp.write_text(model["markdown"] + "\n"),
        },
    )
    result["cost_model"] = model
    return result


def modelled(records: list[dict]) -> dict:
    """The cost model fitted on these records: how well it predicts them, and what it predicts
    for the named workloads on 8 to 1024 GPUs."""
    from dint.commands import cost_model

    base = min(records, key=lambda r: r["ranks"])
    io = (base["in_features"], base["out_features"])
    here = cost_model.fit_latency(records)
    check = cost_model.validate(records, *io, tuple(base["model"]), here)
    ratio = base["points_trained"] / base["steps"] / base["points"]
    scored = sum(base["points_scored_per_rank"]) / base["steps"]
    refresh = max(1, round(base["points"] / scored)) if scored else 10**9
    if base.get("field") == "hashgrid":
        table, rows = cost_model.hash_prediction_table(base, *io, ratio, refresh)
    else:
        table, rows = cost_model.prediction_table(base, tuple(base["model"]), *io, ratio, refresh)
    lines = [
        "Fitted on the smallest size; its figures for every measured size (this machine, latency "
        f"{here['intra_latency'] * 1e6:.0f} us per ring step from the measured all-reduce):",
        "",
        "| ranks | measured s/step | modelled s/step |",
        "|---|---|---|",
    ]
    lines += [f"| {c['ranks']} | {c['measured']:.4f} | {c['modelled']:.4f} |" for c in check]
    return {"validation": check, "predictions": rows, "markdown": "\n".join(lines) + "\n\n" + table}


def from_runs(run_dirs: list[Path], mode: str, out: Path, target: float | None) -> dict:
    """The report of runs already made (a cluster's sweep): sizes from their summaries."""
    records = []
    for run_dir in run_dirs:
        check_outside_inputs(out, {"the run folder": run_dir}, f"--out {shown(out)}", holding=False)
        _, _, summary = read_run_files(run_dir, finished=True)
        source = shown(run_dir / "summary.json")
        ranks, nodes = entry(summary, source, "world_size", COUNT), entry(summary, source, "nodes", COUNT, False)
        if not ranks or nodes == 0:
            raise DintError(f"{source}: holds {ranks} ranks on {nodes} nodes (damaged?)")
        records.append(record_of(run_dir, ranks, nodes or 1, None))
    with hold_folder(out, "dint scale's outputs", "dint scale writing in this folder"):
        return scaling_report(records, mode, out, target)


def scaling_table(result: dict) -> str:
    ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
    lines = [
        f"Scaling ({result['mode']}), target PSNR {result['target_psnr']:.2f} dB; the step's parts in ms "
        "(rank 0), bytes a rank sends per step",
        "",
        "| ranks | nodes | points | points/s | speed-up | efficiency | s/step | "
        + " | ".join(PARTS)
        + " | select B/step | balance B/step | gradient B/step | imbalance | final PSNR | time to target (s) |",
        "|" + "---|" * (13 + len(PARTS)),
    ]
    for r in result["records"]:
        split = " | ".join(ms(r["step_split"][p]) for p in PARTS)
        reached = f"{r['time_to_target']:.1f}" if r["time_to_target"] is not None else "not reached"
        lines.append(
            f"| {r['ranks']} | {r['nodes']} | {r['points']:,} | {r['points_per_second']:,.0f} | "
            f"{r['speedup']:.2f} | {r['efficiency']:.0%} | {r['seconds_per_step']:.4f} | {split} | "
            f"{r['select_bytes_per_step']:,.0f} | {r['balance_bytes_per_step']:,.0f} | "
            f"{r.get('gradients_bytes_per_step', 0):,.0f} | {r['imbalance']:.3f} | "
            f"{r['final_psnr']:.2f} | {reached} |"
        )
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(result: dict, path: Path) -> None:
    plt = _pyplot()
    records = result["records"]
    ranks = [r["ranks"] for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(ranks, [r["points_per_second"] for r in records], "o-", label="measured")
    base = records[0]
    left.plot(ranks, [base["points_per_second"] * n / base["ranks"] for n in ranks], ":", color="grey", label="linear")
    left.set(xlabel="ranks", ylabel="points trained per second", title="throughput")
    left.legend()
    right.plot(ranks, [r["efficiency"] * 100 for r in records], "o-")
    right.axhline(100, color="grey", linestyle=":")
    right.set(xlabel="ranks", ylabel="efficiency (%)", title=f"{result['mode']} scaling efficiency", ylim=(0, 110))
    for axes in (left, right):
        axes.set_xticks(ranks)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_split(result: dict, path: Path) -> None:
    plt = _pyplot()
    records = result["records"]
    labels = [f"{r['ranks']}r/{r['nodes']}n" for r in records]
    figure, axes = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(records)
    for part in PARTS:
        heights = [max(0.0, r["step_split"][part]) * 1000 for r in records]
        axes.bar(labels, heights, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set(ylabel="ms per step (rank 0)", title="where a step's time goes")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
