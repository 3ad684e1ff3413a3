"""Training configuration: a tree of dataclasses filled from TOML, then `--section.key value`.

Every key has a default here; a TOML file and the command line override them in that
order. Anything unknown, mistyped or out of range is a DintError naming the key.
"""

import dataclasses
import json
import math
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from dint.core.errors import DintError
from dint.core.files import check_input

FIELDS = ("siren", "hashgrid")
# The keys only one field reads (w0 serves both: the SIREN and a hash grid's sine MLP).
FIELD_KEYS = {
    "siren": ("width", "hidden_layers", "w0_first", "init_scale"),
    "hashgrid": (
        "hash_levels",
        "hash_table_size_log2",
        "hash_features",
        "hash_base_resolution",
        "hash_finest_resolution",
        "hash_mlp_width",
        "hash_mlp_layers",
        "hash_activation",
        "hash_table_lr_factor",
    ),
}
# 2^30 entries a level: 4 GiB of float32 features a level at F = 1, beyond any table instant-ngp uses (2^24).
MAX_TABLE_SIZE_LOG2 = 30

# fail(name, problem): report the section's key `name` as wrong, naming where it was set.
Fail = Callable[[str, str], typing.NoReturn]


def key(
    default: Any,
    meaning: str,
    *,
    choices: tuple = (),
    positive: bool = False,
    non_negative: bool = False,
    allowed: str = "",
) -> Any:
    """A config key: its default, one line of meaning, and the checks every value gets (choices,
    > 0, >= 0); `allowed` describes the values a section's own `validate` checks. The same
    metadata makes docs/configuration.md and `dint train --help` (configuration_reference)."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(
        **factory,
        metadata={
            "meaning": meaning,
            "choices": choices,
            "positive": positive,
            "non_negative": non_negative,
            "allowed": allowed,
        },
    )


@dataclasses.dataclass
class RunConfig:
    """Where the run writes and on what it runs."""

    dir: str = key(
        "runs/default", "the run folder: config.toml, metrics.jsonl, summary.json, model.pt, checkpoints, pictures"
    )
    device: str = key("auto", "auto: CUDA whenever it is there", choices=("auto", "cpu", "cuda"))
    collective_timeout: float = key(
        600.0, "seconds a collective may wait for a rank before the run fails", positive=True
    )
    keep_freed_memory: bool = key(
        True, "glibc keeps memory a step frees for the next (dint.core.resources.keep_freed_memory)"
    )

    def validate(self, fail: Fail) -> None:
        if not self.dir.strip():
            fail("dir", "must name a folder")
        run_dir = Path(self.dir)
        if run_dir.exists() and not run_dir.is_dir():
            fail("dir", "is a file, not a folder")
        existing = next((p for p in (run_dir, *run_dir.absolute().parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            fail("dir", f"cannot be created: {existing} is a file")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            fail("dir", f"cannot be written: {existing} is not writable")


@dataclasses.dataclass
class DataConfig:
    """The signal: a store made by `dint shard`, and how much of it a rank holds at once."""

    store: str = key("", "the store (made by dint shard); required")
    block_points: int = key(16384, "points per forward block in no-grad passes (selection, evaluation)", positive=True)
    domain: list = key(
        [],
        "[[lo, hi], ...] per axis: the coordinates training sees; empty: the store's",
        allowed="finite lo < hi for each axis",
    )
    memory_budget: str = key(
        "",
        'per rank, e.g. "512MB": a larger shard is streamed chunk group by group; empty: no budget',
        allowed="a size: bytes, or a number with KB, MB, GB, KiB, MiB, GiB",
    )
    point_cache: str = key(
        "1GiB",
        'per rank: keep every point\'s global index and coordinates when they fit ("0": never)',
        allowed="a size",
    )

    def validate(self, fail: Fail) -> None:
        for interval in self.domain:
            if not (
                isinstance(interval, list)
                and len(interval) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interval)
                and interval[0] < interval[1]
            ):
                fail("domain", "must list [lo, hi] with finite lo < hi for each axis")
        for name in ("memory_budget", "point_cache"):
            try:
                parse_size(getattr(self, name))
            except ValueError:
                fail(name, "is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)")

    @property
    def memory_budget_bytes(self) -> int:
        return parse_size(self.memory_budget)

    @property
    def point_cache_bytes(self) -> int:
        return parse_size(self.point_cache)


@dataclasses.dataclass
class ModelConfig:
    """The field: a SIREN (an MLP with sine activations, the default) or a hash grid (a
    multiresolution hash encoding and a small MLP, docs/architecture.md). The SIREN's keys have
    no effect on a hash grid, nor the hash grid's (hash_*) on a SIREN: another value than the
    default is refused."""

    field: str = key(
        "siren",
        "siren: an MLP with sine activations; hashgrid: instant-ngp's multiresolution hash encoding and a small MLP",
        choices=FIELDS,
    )
    width: int = key(256, "siren: neurons per hidden layer", positive=True)
    hidden_layers: int = key(
        5, "siren: sine layers; a linear output layer follows (5: the paper's 6 layers in all)", positive=True
    )
    w0: float = key(
        30.0,
        "frequency factor of the hidden sine layers (siren; hashgrid with a sine MLP)",
        positive=True,
        allowed='not with model.hash_activation = "relu"',
    )
    w0_first: float = key(30.0, "siren: frequency factor of the first sine layer", positive=True)
    init_scale: float = key(
        1.0, "siren: weight scaling (Yeom et al. 2025): every weight but the last layer's times this", positive=True
    )
    hash_levels: int = key(16, "hashgrid: grid levels, coarsest to finest", positive=True)
    hash_table_size_log2: int = key(
        19,
        "hashgrid: a level holds at most 2^this entries; a finer grid is hashed into them",
        allowed=f"1 to {MAX_TABLE_SIZE_LOG2}",
    )
    hash_features: int = key(2, "hashgrid: features per entry", positive=True)
    hash_base_resolution: int = key(16, "hashgrid: vertices per axis of the coarsest level", allowed=">= 2")
    hash_finest_resolution: int = key(
        0,
        "hashgrid: vertices per axis of the finest level; 0: the signal's samples per axis (levels grow "
        "geometrically in between)",
        non_negative=True,
        allowed="0, or at least model.hash_base_resolution",
    )
    hash_mlp_width: int = key(64, "hashgrid: neurons per hidden layer of the MLP after the encoding", positive=True)
    hash_mlp_layers: int = key(2, "hashgrid: hidden layers of that MLP; a linear output layer follows", positive=True)
    hash_activation: str = key(
        "auto",
        "hashgrid: the MLP's activation; auto: sine for audio, relu for the rest (benchmarks/)",
        choices=("auto", "relu", "sine"),
    )
    hash_table_lr_factor: float = key(
        10.0, "hashgrid: the table's learning rate is train.lr times this (the MLP's is train.lr)", positive=True
    )
    compile: str = key("auto", "torch.compile the model: on, off, or auto: on CUDA only", choices=("auto", "on", "off"))
    compile_backend: str = key(
        "inductor",
        "torch.compile's backend; aot_eager traces without generating code",
        choices=("inductor", "aot_eager", "cudagraphs", "eager"),
        allowed='only with model.compile other than "off"',
    )

    def validate(self, fail: Fail) -> None:
        # A default backend is harmless (a run's resolved config.toml lists every key); another one
        # would be ignored with compilation off.
        if self.compile == "off" and self.compile_backend != ModelConfig.compile_backend:
            fail(
                "compile_backend", 'has no effect with model.compile = "off": set model.compile = "on" or drop the key'
            )
        # The same for the keys of the field not chosen: a default is harmless, another value ignored.
        other = "hashgrid" if self.field == "siren" else "siren"
        for name in FIELD_KEYS[other]:
            if getattr(self, name) != getattr(ModelConfig, name):
                fail(
                    name,
                    f'has no effect with model.field = "{self.field}": set model.field = "{other}" or drop the key',
                )
        if self.field == "siren":
            return
        if self.hash_activation == "relu" and self.w0 != ModelConfig.w0:
            fail("w0", 'has no effect with model.hash_activation = "relu": set it to "sine" or drop the key')
        if not 1 <= self.hash_table_size_log2 <= MAX_TABLE_SIZE_LOG2:
            fail(
                "hash_table_size_log2",
                f"must be 1 to {MAX_TABLE_SIZE_LOG2} (2 to 2^{MAX_TABLE_SIZE_LOG2} entries a level)",
            )
        if self.hash_base_resolution < 2:
            fail("hash_base_resolution", "must be >= 2 (a level has at least 2 vertices per axis)")
        if 0 < self.hash_finest_resolution < self.hash_base_resolution:
            fail(
                "hash_finest_resolution",
                f"is below model.hash_base_resolution = {self.hash_base_resolution}: the finest level cannot be "
                "coarser than the coarsest (0: the signal's own resolution)",
            )


@dataclasses.dataclass
class TeacherConfig:
    """Which points each step trains on. The defaults are dint's default teacher, the fastest
    measured (benchmarks/); configs/paper/ set the paper's INT."""

    strategy: str = key(
        "importance",
        "int: top-k by error; importance: drawn by error, the loss reweighted; uniform: random k; full: every point",
        choices=("int", "full", "uniform", "importance"),
        allowed="importance only with teacher.minibatch = 0",
    )
    ratio: float = key(
        0.1, "fraction of the points selected (at the start, with a rising ratio_schedule)", allowed="in (0, 1]"
    )
    ratio_schedule: str = key(
        "constant",
        "how the ratio changes over training",
        choices=("constant", "linear", "step", "cosine", "reverse-cosine"),
    )
    interval_schedule: str = key(
        "dense",
        "how often the teacher selects: every step (dense), ever more rarely "
        "(incremental), or every teacher.interval steps (fixed)",
        choices=("dense", "incremental", "fixed"),
    )
    interval: int = key(
        1,
        'steps between selections with interval_schedule = "fixed"',
        positive=True,
        allowed='only with interval_schedule = "fixed"',
    )
    error: str = key("l1", "per-point error summed over channels: l1 |f - y| or l2 (f - y)^2", choices=("l1", "l2"))
    minibatch: int = key(
        0, "points per mini-batch (mini-batch INT, one optimizer step each); 0: the whole signal", non_negative=True
    )
    random_share: float = key(
        0.2, "share of each selection drawn at random (int: from the points the ranking left)", allowed="in [0, 1)"
    )
    error_refresh: int = key(
        80,
        "steps between scoring forwards over every point; between them the errors the "
        "training forwards saw are reused (int, importance; whole signal in memory)",
        positive=True,
        allowed="only 1 or the default with teacher.minibatch > 0",
    )
    topk: str = key(
        "auto",
        "how ranks agree on the global top-k: gather candidates, histograms (threshold), or "
        "auto: gather while its traffic is under 64 MiB a rank",
        choices=("auto", "gather", "threshold"),
    )
    balance: str = key(
        "none", "alltoall: selected points move so every rank trains as many", choices=("none", "alltoall")
    )
    importance_correction: float = key(
        1.0,
        "importance: loss weights 1 / p^this; 1 unbiased, 0 none (hard "
        "mining), between: soft mining (Kheradmand et al. 2024)",
        allowed='in [0, 1]; only with strategy = "importance"',
    )
    score_precision: str = key(
        "float32", "float16: the no-grad scoring forward under autocast", choices=("float32", "float16")
    )

    def validate(self, fail: Fail) -> None:
        if not 0.0 < self.ratio <= 1.0:
            fail("ratio", "must be in (0, 1]")
        if not 0.0 <= self.random_share < 1.0:
            fail("random_share", "must be in [0, 1)")
        if not 0.0 <= self.importance_correction <= 1.0:
            fail("importance_correction", "must be in [0, 1]")
        if self.importance_correction != TeacherConfig.importance_correction and self.strategy != "importance":
            fail(
                "importance_correction",
                f'has no effect with teacher.strategy = "{self.strategy}": set '
                'teacher.strategy = "importance" or drop the key',
            )
        # Mini-batches score every selection afresh: the default error_refresh is harmless there,
        # another value would be ignored.
        if self.error_refresh not in (1, TeacherConfig.error_refresh) and self.minibatch:
            fail(
                "error_refresh",
                "has no effect with teacher.minibatch > 0 (mini-batches score every selection "
                "afresh): drop the key or set teacher.minibatch = 0",
            )
        if self.strategy == "importance" and self.minibatch:
            fail(
                "strategy",
                "selects over the whole signal: with teacher.minibatch > 0 set teacher.strategy = "
                '"int", "uniform" or "full"',
            )
        # A default interval is harmless (a run's resolved config.toml lists every key); another
        # value would be ignored by every schedule but "fixed".
        if self.interval != TeacherConfig.interval and self.interval_schedule != "fixed":
            fail(
                "interval",
                f'has no effect with teacher.interval_schedule = "{self.interval_schedule}": '
                'set teacher.interval_schedule = "fixed" or drop the key',
            )


@dataclasses.dataclass
class TrainConfig:
    """The optimisation: steps, learning rate, update engine."""

    steps: int = key(5000, "optimizer steps", positive=True)
    lr: float = key(1e-3, "Adam's learning rate", positive=True)
    lr_schedule: str = key("cosine", "the learning rate over training", choices=("constant", "cosine"))
    seed: int = key(0, "the initial model and every random draw")
    engine: str = key("ddp", "how gradients are synchronised and the optimizer stepped", choices=("ddp", "deepspeed"))
    zero_stage: int = key(
        0,
        "DeepSpeed's ZeRO stage: 1 divides Adam's state over the ranks, 2 the gradients too; 0: neither",
        choices=(0, 1, 2),
        allowed='only with train.engine = "deepspeed"',
    )
    micro_batch: int = key(
        16384, "points per forward/backward, gradients accumulated; 0: a selection at once", non_negative=True
    )
    max_rollbacks: int = key(
        3, "on a non-finite loss: back to the last checkpoint with half the lr, this often", non_negative=True
    )

    def validate(self, fail: Fail) -> None:
        if self.zero_stage and self.engine != "deepspeed":
            fail(
                "zero_stage",
                f'has no effect with train.engine = "{self.engine}": set it to "deepspeed" or drop the key',
            )


@dataclasses.dataclass
class EvalConfig:
    """Quality (PSNR, and IoU for shapes) of the field over the signal."""

    every: int = key(0, "steps between evaluations; 0: only at the end", non_negative=True)
    reconstruction: bool = key(True, "render reconstruction.zarr (and PNG/WAV/PLY previews) at the end")
    sample: int = key(0, "evaluate on a fixed random sample of this many points; 0: every point", non_negative=True)


@dataclasses.dataclass
class CheckpointConfig:
    """Checkpoints in run.dir/checkpoints: what survives a killed run."""

    every: int = key(0, "steps between checkpoints; 0: only at the end", non_negative=True)
    keep: int = key(3, "newest complete checkpoints kept", positive=True)
    resume: str = key(
        "auto", "auto: from the newest complete checkpoint in run.dir, if any; never; or a checkpoint folder"
    )


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def map_steps(entries: list, steps: int) -> list[int]:
    """metrics.selection_maps as steps: an int is a step, "P%" the step P% of the way through."""
    resolved = {
        entry if isinstance(entry, int) else max(1, round(float(_PERCENT.fullmatch(entry).group(1)) / 100 * steps))
        for entry in entries
    }
    return sorted(resolved)


@dataclasses.dataclass
class MetricsConfig:
    """What a run logs and shows: metrics.jsonl, TensorBoard, selection maps, plots."""

    log_every: int = key(10, "steps between metrics.jsonl lines (the last step is always logged)", positive=True)
    tensorboard: bool = key(True, "run.dir/tensorboard/: scalars at logged steps, pictures at evaluations")
    selection_maps: list = key(
        [1, "25%", "50%", "100%"],
        'steps whose selection run.dir/selection.png shows (steps, or "P%" of the run); []: no maps',
        allowed='steps >= 1 up to train.steps, or shares such as "25%"',
    )
    map_size: int = key(
        512, "longest side of a map or picture, in bins of points (huge signals are binned)", positive=True
    )
    plots: bool = key(True, "run.dir/quality.png at the end: quality and loss against steps and seconds")

    def validate(self, fail: Fail) -> None:
        for entry in self.selection_maps:
            is_step = isinstance(entry, int) and not isinstance(entry, bool) and entry >= 1
            is_share = isinstance(entry, str) and (m := _PERCENT.fullmatch(entry)) and 0 < float(m.group(1)) <= 100
            if not (is_step or is_share):
                fail(
                    "selection_maps",
                    f'has {entry!r}: each entry is a step (an integer >= 1) or a share of the run such as "25%"',
                )


# Keys that moved: the old name gets one line naming the new one.
MOVED = {"train.log_every": "metrics.log_every"}


@dataclasses.dataclass
class Config:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def validate(self, fail: Callable[[str, str], typing.NoReturn]) -> None:
        """Every key's own checks (its metadata), every section's, then what involves several;
        `fail("section.key", problem)`."""
        for key_name, kind in _key_types(self).items():
            if kind is float and not math.isfinite(_get(self, key_name)):
                fail(key_name, "must be a finite number")
            if kind is int and not -(2**63) <= _get(self, key_name) < 2**63:  # torch's int64: seeds, counts
                fail(key_name, "is out of range (a 64-bit integer: -2**63 to 2**63 - 1)")
        for section in _sections():
            part = getattr(self, section)
            for field in dataclasses.fields(part):
                value, meta = getattr(part, field.name), field.metadata
                if meta["choices"] and value not in meta["choices"]:
                    fail(f"{section}.{field.name}", f"is not one of {', '.join(meta['choices'])}")
                if meta["positive"] and not value > 0:
                    fail(f"{section}.{field.name}", "must be > 0")
                if meta["non_negative"] and value < 0:
                    fail(f"{section}.{field.name}", "must be >= 0")
            if hasattr(part, "validate"):
                part.validate(lambda name, problem, s=section: fail(f"{s}.{name}", problem))
        late = [entry for entry in self.metrics.selection_maps if isinstance(entry, int) and entry > self.train.steps]
        if late:
            fail("metrics.selection_maps", f"has step {late[0]}, past train.steps = {self.train.steps}")
        if self.data.memory_budget_bytes and self.teacher.minibatch == 0 and self.teacher.strategy != "full":
            fail(
                "data.memory_budget",
                "needs teacher.minibatch > 0 (streaming selects inside each chunk group) "
                'unless teacher.strategy = "full"',
            )


def configuration_reference() -> str:
    """Every key of every section: type, default, allowed values and meaning, as Markdown
    (docs/configuration.md is this text; `dint train --help` prints it after the usage)."""
    lines = [
        "# Configuration",
        "",
        "Generated from `dint/core/config.py` (`python -m dint.core.config > docs/configuration.md`); a test",
        "fails when this file is stale, and `dint train --help` prints the same text after its usage.",
        "Every key has a default; a TOML file (`--config C.toml`, one `[section]` table each) overrides",
        "the defaults, and `--section.key value` on the command line overrides both. A run writes the",
        "resolved config to `run.dir/config.toml`.",
        "",
    ]
    for section in _sections():
        kind = type(getattr(Config(), section))
        lines += [
            f"## [{section}]",
            "",
            (kind.__doc__ or "").strip().replace("\n    ", " "),
            "",
            "| key | type | default | allowed | meaning |",
            "|---|---|---|---|---|",
        ]
        for field in dataclasses.fields(kind):
            meta, default = field.metadata, getattr(kind(), field.name)
            allowed = [" ".join(f"`{c}`" for c in meta["choices"])] if meta["choices"] else []
            allowed += ["> 0"] if meta["positive"] else [">= 0"] if meta["non_negative"] else []
            allowed += [meta["allowed"]] if meta["allowed"] else []
            shown = json.dumps(default) if not isinstance(default, bool) else str(default).lower()
            cells = [
                "`" + section + "." + field.name + "`",
                typing.get_type_hints(kind)[field.name].__name__,
                f"`{shown}`",
                "; ".join(allowed) or "any",
                meta["meaning"],
            ]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    moved = ", ".join(f"`{old}` is now `{new}`" for old, new in MOVED.items())
    lines += ["## Moved keys", "", f"{moved}: the old name is refused in one line that names the new one.", ""]
    return "\n".join(lines)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512MB", "1.5 GiB" (0 for ""); ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if text.strip() == "":
        return 0
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _set(config: Config, key: str, value: Any, origin: str, from_text: bool, origins: dict[str, str]) -> None:
    section_name, _, field_name = key.partition(".")
    section = getattr(config, section_name, None) if section_name in _sections() else None
    if section is None:
        raise DintError(f"{origin}: unknown section {section_name!r} (known: {', '.join(_sections())})")
    if not field_name:
        raise DintError(
            f"{origin}: {section_name!r} is a section: name a key in it, e.g. --{section_name}."
            f"{dataclasses.fields(section)[0].name} VALUE"
        )
    types = typing.get_type_hints(type(section))
    if key in MOVED:
        raise DintError(f"{origin}: {key} is now {MOVED[key]}: rename the key")
    if field_name not in types:
        known = ", ".join(f"{section_name}.{f}" for f in types)
        raise DintError(f"{origin}: unknown key {key!r} (known: {known})")
    setattr(section, field_name, _coerce(value, types[field_name], key, origin, from_text))
    origins[key] = origin


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(value: Any, kind: type, key: str, origin: str, from_text: bool) -> Any:
    try:
        if kind is list:
            value = json.loads(value) if from_text else value
            if not isinstance(value, list):
                raise ValueError
            return value
        if from_text:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            return kind(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise ValueError
    except ValueError:  # json.JSONDecodeError is one too
        raise DintError(f"{origin}: {key} = {value!r} is not a valid {kind.__name__}") from None


def validate(config: Config, origins: dict[str, str], source: str | None = None) -> None:
    """Check ranges, choices and contradictions; `origins` says where each key was set, and
    `source` (the config file, if any) names a key left unset, for the message."""

    def fail(key: str, problem: str) -> typing.NoReturn:
        raise DintError(f"{origins.get(key, 'default')}: {key} = {_get(config, key)!r} {problem}")

    config.validate(fail)
    if not config.data.store:
        raise DintError(
            f"{origins.get('data.store') or source or '--data.store'}: data.store is not set "
            "(a store made by dint-shard)"
        )


def check_against_store(config: Config, info: Any) -> Any:
    """What only the store (a dint.data.store.SignalInfo) can tell: run after open_store. Returns the
    signal as training sees it (data.domain, when set, replaces the store's domain)."""
    origins = getattr(config, "_origins", {})
    if config.eval.sample > info.num_points:
        raise DintError(
            f"{origins.get('eval.sample', 'default')}: eval.sample = {config.eval.sample} is more than the "
            f"{info.num_points:,} points of the store: set 0 to evaluate every point"
        )
    if not config.data.domain:
        return info
    if len(config.data.domain) != info.ndim:
        raise DintError(
            f"{origins.get('data.domain', 'default')}: data.domain = {config.data.domain!r} gives "
            f"{len(config.data.domain)} intervals, the store has {info.ndim} axes"
        )
    replaced = dataclasses.replace(info, domain=tuple((float(lo), float(hi)) for lo, hi in config.data.domain))
    problem = replaced.float32_problem()
    if problem is not None and problem[0] == "domain":
        raise DintError(f"{origins.get('data.domain', 'default')}: data.domain = {config.data.domain!r} {problem[1]}")
    return replaced


def _key_types(config: Config) -> dict[str, type]:
    """Every "section.key" and its type."""
    return {
        f"{section}.{name}": kind
        for section in _sections()
        for name, kind in typing.get_type_hints(type(getattr(config, section))).items()
    }


def _get(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at `path`, then `overrides` ({"train.steps": "100"})."""
    config, origins = Config(), {}
    if path is not None:
        path = Path(path)
        try:
            check_input(path, "config file")
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DintError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DintError(f"{path}: cannot read config ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise DintError(f"{path}: not valid TOML ({e})") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise DintError(f"{path}: {section!r} must be a [section] table, not a single value")
            for name, value in table.items():
                _set(config, f"{section}.{name}", value, str(path), False, origins)
    for key, value in (overrides or {}).items():
        _set(config, key, value, f"--{key}", True, origins)
    validate(config, origins, None if path is None else str(path))
    config._origins = origins  # for check_against_store's messages; not a key
    return config


def parse_cli(argv: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--config PATH` and any number of `--section.key value` (or `--section.key=value`)."""
    config_path, overrides = None, {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise DintError(f"unexpected argument {arg!r} (use --config PATH and --section.key value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if not args:
                raise DintError(f"--{key} needs a value")
            value = args.pop(0)
        if key == "config":
            config_path = value
        elif key == "resume":  # the short form of --checkpoint.resume
            overrides["checkpoint.resume"] = value
        else:
            overrides[key] = value
    return config_path, overrides


if __name__ == "__main__":
    print(configuration_reference(), end="")
