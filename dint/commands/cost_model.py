"""A cost model of one training step on W ranks, fitted from `dint scale`'s measured terms.

    step(W) = score + select + balance + train + all-reduce + optimizer

    score       t_score   * N/W / refresh          scoring forwards, amortised over refresh steps
    select      t_select  * N/W                     local ranking and drawing over the rank's points
                + gather:    allgather(12 k_local) + t_select * r N   (every rank merges W x k_local)
                  threshold: 4 x allreduce(2 KiB)                    (radix rounds of float32 errors)
    balance     alltoall(16 * moved)                moved = the surplus, (1 - 1/imbalance) r N / W
    train       t_train   * r N / W                 forward and backward on the rank's share
    all-reduce  allreduce(4 P)                      the gradients (ZeRO 1/2: reduce-scatter + all-gather, as many bytes)
    optimizer   t_opt     * P                       (ZeRO 1/2: t_opt * P / W, each rank its share)

with N points, a mean share r of them trained per step, k_local = r N / W, P parameters,
and for the collectives the usual alpha-beta terms on W ranks: allreduce(n) = the faster of a
ring, 2 (W-1) alpha + 2 (W-1)/W n / B, and a tree, 2 log2(W) alpha + 2 n / B;
allgather(m per rank) = (W-1) (alpha + m / B); alltoall(m per rank) = (W-1) alpha + m / B.
Alpha and B are the intra-node figures up to one node of GPUs and the inter-node ones beyond
(the slowest link of a ring sets its pace).

The per-point compute rates come from a measured run (seconds per point of the measured
SIREN, scaled to another SIREN by its multiply-adds per point), or, for a GPU not measured,
from its datasheet peak at an assumed efficiency: both are stated in the output.

A hash-grid field (dint.fields.hashgrid) has few multiply-adds a point but many parameters:
its table. Its per-point rates are the measured field's (the same levels, features and MLP),
and the table, whose size follows the workload, is where the cost of data parallelism goes:
every step exchanges 4 bytes a parameter of it, and Adam updates every entry (the gradient is
dense). On a GPU not measured, a point costs the MLP's multiply-adds at the FP32 rate above and
its L x 2^d gathered entries as random 32-byte reads of HBM, and Adam 28 bytes a parameter
(fused: weight, gradient and two moments read, three written), both at an assumed share of
the datasheet bandwidth.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

from dint.core.config import ModelConfig
from dint.fields.hashgrid import hashgrid_params
from dint.fields.siren import siren_macs, siren_params
from dint.teaching.teacher import topk_method

# Interconnect assumptions (per GPU, one direction). Sources:
#   NVLink 4 on H100 SXM: 900 GB/s bidirectional per GPU (NVIDIA H100 datasheet), so 450 GB/s.
#   InfiniBand NDR: 400 Gb/s = 50 GB/s per port, one ConnectX-7 per GPU as in a DGX H100
#   (NVIDIA DGX H100 datasheet).
#   Latencies: NCCL's per-hop latency for small messages is some microseconds inside a node
#   and about twice that across IB (NCCL tuning defaults, nccl/src/graph/tuning.cc); we take
#   10 us and 20 us per ring step, rounded up.
INTERCONNECT = {
    "gpus_per_node": 8,
    "intra_bandwidth": 450e9,
    "inter_bandwidth": 50e9,
    "intra_latency": 10e-6,
    "inter_latency": 20e-6,
}
# An H100 SXM's FP32 peak (non-tensor) is 67 TFLOP/s (NVIDIA H100 datasheet); a SIREN's small
# matrices reach a fraction of it: 25% assumed until tools/gpu_check.sh measures it.
GPU_PEAK_FLOPS, GPU_EFFICIENCY = 67e12, 0.25

# The H100 SXM's HBM3: 3.35 TB/s (NVIDIA H100 datasheet); random 32-byte gathers and Adam's
# streams reach a share of it: 50% assumed until a GPU run measures the hash field.
HBM_BANDWIDTH, HBM_EFFICIENCY = 3.35e12, 0.5
GATHER_BYTES = 32  # one random read of a table entry: an HBM sector
ADAM_BYTES = 28  # fused Adam in float32: weight, gradient, two moments read; weight, two moments written
# The hash field's table in the predictions: instant-ngp's for its gigapixel image (Müller et al. 2022,
# section 5.1: 2^24 entries a level).
HASH_TABLE_SIZE_LOG2 = 24

WORKLOADS = {  # name: (points, channels)
    "1-gigapixel image (32768^2, grey)": (32768 * 32768, 1),
    "1024^3 volume": (1024**3, 1),
}
PAPER_SIREN = (5, 256)  # hidden sine layers, width
GPU_COUNTS = (8, 64, 256, 1024)


@dataclasses.dataclass
class Rates:
    """Seconds per point (or parameter) of each compute term, for a SIREN of `macs` per point."""

    score: float  # scoring forward, per point
    select: float  # ranking / drawing, per point of the rank
    train: float  # forward + backward, per trained point
    optimizer: float  # per parameter
    macs: int
    source: str

    def scaled_to(self, macs: int) -> Rates:
        """The same device on a SIREN of `macs` multiply-adds per point (compute-bound terms scale)."""
        f = macs / self.macs
        return Rates(self.score * f, self.select, self.train * f, self.optimizer, macs, self.source)


def rates_from_record(record: dict, macs: int) -> Rates:
    """Per-point rates from a measured `dint scale` record (rank 0's timers and points)."""
    steps, ranks, split = record["steps"], record["ranks"], record["step_split"]
    scored = max(1, record["points_scored_per_rank"][0])
    trained_per_rank = record["points_trained"] / ranks / steps
    local_points = record["points"] / ranks
    return Rates(
        score=split["score"] * steps / scored,
        select=split["topk_merge"] / local_points,
        train=split["forward_backward"] / max(1.0, trained_per_rank),
        optimizer=split["optimizer"] / record["params"],
        macs=macs,
        source=f"measured: {ranks} rank(s), {record['device']}",
    )


def gpu_datasheet_rates(macs: int, cpu: Rates) -> Rates:
    """An H100-class GPU from its datasheet peak at GPU_EFFICIENCY (2 FLOP per multiply-add;
    backward twice the forward). Ranking and the optimizer keep the CPU's per-point ratio to
    the forward, an assumption as rough as the efficiency."""
    forward = 2 * macs / (GPU_PEAK_FLOPS * GPU_EFFICIENCY)
    ratio = forward / cpu.score if cpu.score > 0 else 0.0
    return Rates(
        score=forward,
        select=cpu.select * ratio,
        train=3 * forward,
        optimizer=cpu.optimizer * ratio,
        macs=macs,
        source=f"modelled: H100 SXM FP32 peak {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s at {GPU_EFFICIENCY:.0%}",
    )


def _link(world: int, net: dict) -> tuple[float, float]:
    inside = world <= net["gpus_per_node"]
    return (net["intra_latency"], net["intra_bandwidth"]) if inside else (net["inter_latency"], net["inter_bandwidth"])


def allreduce_seconds(nbytes: float, world: int, net: dict) -> float:
    """The faster of a ring (bandwidth-optimal) and a tree (latency 2 log2 W steps), as NCCL picks."""
    if world == 1:
        return 0.0
    alpha, bandwidth = _link(world, net)
    ring = 2 * (world - 1) * alpha + 2 * (world - 1) / world * nbytes / bandwidth
    tree = 2 * math.ceil(math.log2(world)) * alpha + 2 * nbytes / bandwidth
    return min(ring, tree)


def allgather_seconds(per_rank_bytes: float, world: int, net: dict) -> float:
    if world == 1:
        return 0.0
    alpha, bandwidth = _link(world, net)
    return (world - 1) * (alpha + per_rank_bytes / bandwidth)


def alltoall_seconds(per_rank_bytes: float, world: int, net: dict) -> float:
    if world == 1:
        return 0.0
    alpha, bandwidth = _link(world, net)
    return (world - 1) * alpha + per_rank_bytes / bandwidth


def step_seconds(
    rates: Rates,
    world: int,
    points: int,
    params: int,
    ratio: float,
    refresh: int,
    topk: str,
    imbalance: float,
    net: dict,
    zero_stage: int = 0,
) -> dict[str, float]:
    """The modelled step on `world` ranks, by part (seconds); `zero_stage` 1 or 2: DeepSpeed's ZeRO
    divides the optimizer's work over the ranks and exchanges the gradients in as many bytes."""
    local = points / world
    k_local = ratio * local
    select = rates.select * local
    if topk == "gather":
        select += allgather_seconds(12 * k_local, world, net) + rates.select * ratio * points
    else:
        select += 4 * allreduce_seconds(2048, world, net)
    moved = (1 - 1 / imbalance) * k_local
    return {
        "score": rates.score * local / refresh,
        "select": select,
        "balance": alltoall_seconds(16 * moved, world, net) if imbalance > 1 else 0.0,
        "train": rates.train * k_local,
        "allreduce": allreduce_seconds(4 * params, world, net),
        "optimizer": rates.optimizer * params / (world if zero_stage else 1),
    }


def predict(
    rates: Rates,
    points: int,
    params: int,
    ratio: float,
    refresh: int,
    imbalance: float,
    worlds=GPU_COUNTS,
    net: dict | None = None,
    zero_stage: int = 0,
) -> list[dict]:
    """Step time and efficiency at each world size, with each top-k method. Efficiency is the
    ideal step (compute only, divided evenly, no communication) over the modelled one."""
    net = net or INTERCONNECT
    rows = []
    for world in worlds:
        for topk in ("gather", "threshold"):
            parts = step_seconds(rates, world, points, params, ratio, refresh, topk, imbalance, net, zero_stage)
            ideal = (
                rates.score * points / refresh + rates.select * points + rates.train * ratio * points
            ) / world + rates.optimizer * params / (world if zero_stage else 1)
            total = sum(parts.values())
            rows.append(
                {
                    "world": world,
                    "topk": topk,
                    "step_seconds": total,
                    "parts": parts,
                    "gradient_bytes": 4 * params,
                    "efficiency": ideal / total,
                    "points_per_second": ratio * points / total,
                }
            )
    return rows


def prediction_table(
    record: dict, config_model: tuple[int, int], in_features: int, out_features: int, ratio: float, refresh: int
) -> tuple[str, list[dict]]:
    """README-ready tables: the named workloads at the paper's SIREN on 8-1024 GPUs."""
    measured_macs = siren_macs(in_features, out_features, *config_model)
    measured = rates_from_record(record, measured_macs)
    on_gpu = str(record["device"]).startswith("cuda")

    def gpu_rates(macs: int) -> Rates:  # a GPU measured, or the datasheet's from this CPU's proportions
        return measured.scaled_to(macs) if on_gpu else gpu_datasheet_rates(macs, measured.scaled_to(macs))

    lines = [
        "Modelled, not measured (dint.commands.cost_model). Compute rates: "
        f"{measured.source}, scaled to the paper's SIREN {PAPER_SIREN[0]}x{PAPER_SIREN[1]} by multiply-adds"
        + ("" if on_gpu else f"; GPU: {gpu_datasheet_rates(measured_macs, measured).source}")
        + ". Interconnect: NVLink "
        f"{INTERCONNECT['intra_bandwidth'] / 1e9:.0f} GB/s and {INTERCONNECT['intra_latency'] * 1e6:.0f} us inside "
        f"a node of {INTERCONNECT['gpus_per_node']}, InfiniBand {INTERCONNECT['inter_bandwidth'] / 1e9:.0f} GB/s "
        f"and {INTERCONNECT['inter_latency'] * 1e6:.0f} us between nodes. Mean trained share {ratio:.2f}, "
        f"scoring every {refresh} steps, imbalance 1 (balanced ranks).",
        "",
        "| workload | GPUs | top-k | step (ms) | points trained/s | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name, (points, channels) in WORKLOADS.items():
        ndim = 2 if "image" in name else 3
        macs = siren_macs(ndim, channels, *PAPER_SIREN)
        params = siren_params(ndim, channels, *PAPER_SIREN)
        for row in predict(gpu_rates(macs), points, params, ratio, refresh, 1.0):
            rows.append({"workload": name, **row})
            lines.append(
                f"| {name} | {row['world']} | {row['topk']} | {row['step_seconds'] * 1000:,.1f} | "
                f"{row['points_per_second']:,.3g} | {row['efficiency']:.0%} |"
            )
    return "\n".join(lines), rows


def hash_config(record: dict, table_size_log2: int = HASH_TABLE_SIZE_LOG2) -> ModelConfig:
    """The measured hash field (record["hash"]: dint scale's record of its model keys) with another table."""
    return ModelConfig(field="hashgrid", **{**record["hash"], "hash_table_size_log2": table_size_log2})


def hash_gpu_rates(config: ModelConfig, ndim: int, channels: int, cpu: Rates) -> Rates:
    """An H100-class GPU on the hash field: the MLP's multiply-adds at GPU_PEAK_FLOPS x
    GPU_EFFICIENCY and L x 2^d random gathers at HBM_BANDWIDTH x HBM_EFFICIENCY a point (the
    backward scatters as many: 3 x the forward), Adam's ADAM_BYTES a parameter; ranking keeps the
    CPU's ratio to the forward."""
    fan_in, macs = config.hash_levels * config.hash_features, 0
    for _ in range(config.hash_mlp_layers):
        macs, fan_in = macs + fan_in * config.hash_mlp_width, config.hash_mlp_width
    macs += fan_in * channels
    bandwidth = HBM_BANDWIDTH * HBM_EFFICIENCY
    forward = 2 * macs / (GPU_PEAK_FLOPS * GPU_EFFICIENCY) + config.hash_levels * 2**ndim * GATHER_BYTES / bandwidth
    ratio = forward / cpu.score if cpu.score > 0 else 0.0
    return Rates(
        score=forward,
        select=cpu.select * ratio,
        train=3 * forward,
        optimizer=ADAM_BYTES / bandwidth,
        macs=macs,
        source=f"modelled: H100 SXM, FP32 {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s at {GPU_EFFICIENCY:.0%}, HBM "
        f"{HBM_BANDWIDTH / 1e12:.2f} TB/s at {HBM_EFFICIENCY:.0%}",
    )


def hash_prediction_table(
    record: dict, in_features: int, out_features: int, ratio: float, refresh: int
) -> tuple[str, list[dict]]:
    """The named workloads with the measured hash field at HASH_TABLE_SIZE_LOG2 entries a level on
    8-1024 GPUs, with DDP and with ZeRO 1 (Adam's state and work divided): the table's gradient
    exchange is the term that grows with it."""
    measured = rates_from_record(record, 1)
    on_gpu = str(record["device"]).startswith("cuda")
    config = hash_config(record)
    lines = [
        "Modelled, not measured (dint.commands.cost_model). The hash field measured "
        f"({config.hash_levels} levels x {config.hash_features} features, MLP {config.hash_mlp_layers}x"
        f"{config.hash_mlp_width}) with 2^{HASH_TABLE_SIZE_LOG2} entries a level, instant-ngp's gigapixel "
        f"table. Compute rates: {measured.source}"
        + ("" if on_gpu else f"; GPU: {hash_gpu_rates(config, 2, 1, measured).source}")
        + f". Interconnect as above. Mean trained share {ratio:.2f}, scoring every {refresh} steps.",
        "",
        "| workload | parameters | gradient bytes a step | GPUs | engine | step (ms) | of which gradient exchange (ms) "
        "| optimizer (ms) | efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name, (points, channels) in WORKLOADS.items():
        ndim = 2 if "image" in name else 3
        side = round(points ** (1 / ndim))
        params = hashgrid_params(config, SimpleNamespace(shape=(side,) * ndim, ndim=ndim, channels=channels))
        rates = measured if on_gpu else hash_gpu_rates(config, ndim, channels, measured)
        for zero_stage, engine in ((0, "DDP"), (1, "ZeRO 1")):
            for row in predict(rates, points, params, ratio, refresh, 1.0, zero_stage=zero_stage):
                if row["topk"] != "threshold":  # the table's exchange does not depend on the top-k method
                    continue
                rows.append({"workload": name, "engine": engine, "params": params, **row})
                lines.append(
                    f"| {name} | {params:,} | {4 * params:,} | {row['world']} | {engine} | "
                    f"{row['step_seconds'] * 1000:,.1f} | {row['parts']['allreduce'] * 1000:,.1f} | "
                    f"{row['parts']['optimizer'] * 1000:,.1f} | {row['efficiency']:.0%} |"
                )
    return "\n".join(lines), rows


def validate(
    records: list[dict], in_features: int, out_features: int, config_model: tuple[int, int], net: dict
) -> list[dict]:
    """The model fitted on the smallest measured size, predicting every measured size."""
    base = min(records, key=lambda r: r["ranks"])
    macs = siren_macs(in_features, out_features, *config_model)
    rates = rates_from_record(base, macs)
    out = []
    for r in records:
        ratio = r["points_trained"] / r["steps"] / r["points"]
        scored = sum(r["points_scored_per_rank"]) / r["steps"]
        refresh = max(1, round(r["points"] / scored)) if scored else 10**9
        topk = topk_method(r["topk"], round(ratio * r["points"]), r["ranks"])
        parts = step_seconds(
            rates,
            r["ranks"],
            r["points"],
            r["params"],
            ratio,
            refresh,
            topk,
            max(1.0, r["imbalance_before_balance"]) if r["balance"] == "alltoall" else 1.0,
            net,
        )
        out.append({"ranks": r["ranks"], "measured": r["seconds_per_step"], "modelled": sum(parts.values())})
    return out


def fit_latency(records: list[dict]) -> dict:
    """This machine's collectives (gloo over loopback): alpha from the measured gradient
    all-reduce, whose few kilobytes make it latency-bound; bandwidth taken as unlimited."""
    multi = [r for r in records if r["ranks"] > 1]
    alpha = min((r["step_split"]["allreduce"] / (2 * (r["ranks"] - 1)) for r in multi), default=0.0)
    return {
        "gpus_per_node": 10**9,
        "intra_bandwidth": math.inf,
        "inter_bandwidth": math.inf,
        "intra_latency": alpha,
        "inter_latency": alpha,
    }
