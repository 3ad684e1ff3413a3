"""Training configuration: a tree of dataclasses filled from TOML, then `--section.key value`.

Every key has a default here; a TOML file and the command line override them in that
order. Anything unknown, mistyped or out of range is a DintError naming the key.
"""

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

import tomli_w

from dint.core.errors import DintError
from dint.core.files import check_input

# The choices of each key, here so that reading a config imports no torch.
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("int", "full", "uniform", "importance")
RATIO_SCHEDULES = ("constant", "linear", "step", "cosine", "reverse-cosine")
INTERVAL_SCHEDULES = ("dense", "incremental", "fixed")
ERRORS = ("l1", "l2")
SCORE_PRECISIONS = ("float32", "float16")
TOPKS = ("auto", "gather", "threshold")
BALANCES = ("none", "alltoall")
LR_SCHEDULES = ("constant", "cosine")
ENGINES = ("ddp", "deepspeed")
COMPILES = ("auto", "on", "off")
COMPILE_BACKENDS = ("inductor", "aot_eager", "cudagraphs", "eager")

# fail(name, problem): report the section's key `name` as wrong, naming where it was set.
Fail = Callable[[str, str], typing.NoReturn]


def _require(fail: Fail, section: Any, *, choices: dict[str, tuple] = {}, positive: tuple = (),
             non_negative: tuple = ()) -> None:
    for name, allowed in choices.items():
        if getattr(section, name) not in allowed:
            fail(name, f"is not one of {', '.join(allowed)}")
    for name in positive:
        if not getattr(section, name) > 0:
            fail(name, "must be > 0")
    for name in non_negative:
        if getattr(section, name) < 0:
            fail(name, "must be >= 0")


@dataclasses.dataclass
class RunConfig:
    dir: str = "runs/default"  # outputs: config.toml, metrics.jsonl, summary.json, model.pt, ...
    device: str = "auto"  # auto: CUDA whenever it is there
    collective_timeout: float = 600.0  # seconds a collective may wait for a rank before the run fails
    keep_freed_memory: bool = True  # glibc keeps memory a step frees for the next (dint.core.resources.keep_freed_memory)

    def validate(self, fail: Fail) -> None:
        _require(fail, self, choices={"device": DEVICES}, positive=("collective_timeout",))
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
    store: str = ""  # a store made by dint-shard
    block_points: int = 16384  # points per forward block in no-grad passes (selection, evaluation)
    domain: list = dataclasses.field(default_factory=list)  # [[lo, hi], ...] per axis; empty: the store's
    memory_budget: str = ""  # per rank, e.g. "512MB"; a larger shard is streamed chunk group by group
    point_cache: str = "1GiB"  # per rank: keep every point's global index and coordinates when they fit ("0": never)

    def validate(self, fail: Fail) -> None:
        _require(fail, self, positive=("block_points",))
        for interval in self.domain:
            if not (isinstance(interval, list) and len(interval) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                            for v in interval)
                    and interval[0] < interval[1]):
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
    width: int = 256
    hidden_layers: int = 5  # sine layers; a linear output layer follows
    w0: float = 30.0
    w0_first: float = 30.0
    init_scale: float = 1.0  # weight scaling (Yeom et al. 2025): every weight but the last layer's times this
    compile: str = "auto"  # torch.compile the model: on, off, or auto: on CUDA only (dint.fields.siren.compile_wanted)
    compile_backend: str = "inductor"  # aot_eager traces without generating code (a quick check of the wiring)

    def validate(self, fail: Fail) -> None:
        _require(fail, self, choices={"compile": COMPILES, "compile_backend": COMPILE_BACKENDS},
                 positive=("width", "hidden_layers", "w0", "w0_first", "init_scale"))
        # A default backend is harmless (a run's resolved config.toml lists every key); another one
        # would be ignored with compilation off.
        if self.compile == "off" and self.compile_backend != ModelConfig.compile_backend:
            fail("compile_backend", 'has no effect with model.compile = "off": set model.compile = "on" or drop the key')


@dataclasses.dataclass
class TeacherConfig:
    # int: top-k by error; importance: drawn by error, the loss reweighted; uniform: random k; full: every point.
    # The defaults are the fastest teacher measured (README, Measured); configs/paper/ set the paper's INT.
    strategy: str = "importance"
    ratio: float = 0.1  # fraction selected (at the start, with a rising ratio_schedule)
    ratio_schedule: str = "constant"
    interval_schedule: str = "dense"
    interval: int = 1  # steps between selections with interval_schedule = "fixed"
    error: str = "l1"  # per-point error summed over channels: l1 |f - y| or l2 (f - y)^2
    minibatch: int = 0  # points per mini-batch (mini-batch INT, one optimizer step each); 0: whole signal
    random_share: float = 0.2  # of each selection drawn at random (int: from the points the ranking left)
    error_refresh: int = 80  # steps between scoring forwards over every point; between them, reuse the errors
    #                         the training forwards saw (int, importance; whole signal in memory)
    topk: str = "auto"  # how ranks agree on the global top-k: gather candidates, histograms (threshold), or
    #                    auto: gather while its traffic is under 64 MiB a rank (dint.teaching.teacher.select_topk_by)
    balance: str = "none"  # alltoall: selected points move so every rank trains as many (dint.teaching.balance)
    importance_correction: float = 1.0  # importance: weights 1 / p^this; 1 unbiased, 0 none (hard mining), between:
    #                                     soft mining (Kheradmand et al. 2024)
    score_precision: str = "float32"  # float16: the no-grad scoring forward under autocast (README, Speed: what
    #                                   it keeps and loses; bfloat16 scrambled the ranking, so it is not offered)

    def validate(self, fail: Fail) -> None:
        _require(fail, self, choices={"strategy": STRATEGIES, "ratio_schedule": RATIO_SCHEDULES,
                                      "interval_schedule": INTERVAL_SCHEDULES, "error": ERRORS, "topk": TOPKS,
                                      "balance": BALANCES, "score_precision": SCORE_PRECISIONS},
                 positive=("interval", "error_refresh"), non_negative=("minibatch",))
        if not 0.0 < self.ratio <= 1.0:
            fail("ratio", "must be in (0, 1]")
        if not 0.0 <= self.random_share < 1.0:
            fail("random_share", "must be in [0, 1)")
        if not 0.0 <= self.importance_correction <= 1.0:
            fail("importance_correction", "must be in [0, 1]")
        if self.importance_correction != TeacherConfig.importance_correction and self.strategy != "importance":
            fail("importance_correction", f"has no effect with teacher.strategy = \"{self.strategy}\": set "
                 "teacher.strategy = \"importance\" or drop the key")
        # Mini-batches score every selection afresh: the default error_refresh is harmless there,
        # another value would be ignored.
        if self.error_refresh not in (1, TeacherConfig.error_refresh) and self.minibatch:
            fail("error_refresh", "has no effect with teacher.minibatch > 0 (mini-batches score every selection "
                 "afresh): drop the key or set teacher.minibatch = 0")
        if self.strategy == "importance" and self.minibatch:
            fail("strategy", "selects over the whole signal: with teacher.minibatch > 0 set teacher.strategy = "
                 "\"int\", \"uniform\" or \"full\"")
        # A default interval is harmless (a run's resolved config.toml lists every key); another
        # value would be ignored by every schedule but "fixed".
        if self.interval != TeacherConfig.interval and self.interval_schedule != "fixed":
            fail("interval", f"has no effect with teacher.interval_schedule = \"{self.interval_schedule}\": "
                 "set teacher.interval_schedule = \"fixed\" or drop the key")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 5000
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    seed: int = 0
    engine: str = "ddp"  # ddp or deepspeed
    log_every: int = 10  # steps between metrics.jsonl lines (the last step is always logged)
    micro_batch: int = 16384  # points per forward/backward, gradients accumulated; 0: a selection at once
    max_rollbacks: int = 3  # on a non-finite loss: back to the last checkpoint with half the lr, this often

    def validate(self, fail: Fail) -> None:
        _require(fail, self, choices={"lr_schedule": LR_SCHEDULES, "engine": ENGINES},
                 positive=("steps", "lr", "log_every"), non_negative=("micro_batch", "max_rollbacks"))


@dataclasses.dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations; 0: only at the end
    reconstruction: bool = True  # render reconstruction.zarr (+ PNG/WAV/PLY previews) at the end
    sample: int = 0  # evaluate on a fixed random sample of this many points; 0: every point

    def validate(self, fail: Fail) -> None:
        _require(fail, self, non_negative=("every", "sample"))


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints in run.dir/checkpoints; 0: only at the end
    keep: int = 3  # newest complete checkpoints kept
    resume: str = "auto"  # auto: from the newest complete checkpoint in run.dir, if any; never; or a folder

    def validate(self, fail: Fail) -> None:
        _require(fail, self, positive=("keep",), non_negative=("every",))


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def map_steps(entries: list, steps: int) -> list[int]:
    """metrics.selection_maps as steps: an int is a step, "P%" the step P% of the way through."""
    resolved = {entry if isinstance(entry, int) else max(1, round(float(_PERCENT.fullmatch(entry).group(1)) / 100 * steps))
                for entry in entries}
    return sorted(resolved)


@dataclasses.dataclass
class MetricsConfig:
    tensorboard: bool = True  # run.dir/tensorboard/: scalars at logged steps, pictures at evaluations (rank 0)
    # Steps whose selection run.dir/selection.png shows (steps, or "P%" of the run); []: no maps.
    selection_maps: list = dataclasses.field(default_factory=lambda: [1, "25%", "50%", "100%"])
    map_size: int = 512  # longest side of a map or picture, in bins of points (huge signals are binned)
    plots: bool = True  # run.dir/quality.png at the end: quality and loss against steps and seconds

    def validate(self, fail: Fail) -> None:
        _require(fail, self, positive=("map_size",))
        for entry in self.selection_maps:
            is_step = isinstance(entry, int) and not isinstance(entry, bool) and entry >= 1
            is_share = isinstance(entry, str) and (m := _PERCENT.fullmatch(entry)) and 0 < float(m.group(1)) <= 100
            if not (is_step or is_share):
                fail("selection_maps", f"has {entry!r}: each entry is a step (an integer >= 1) or a share of the "
                     "run such as \"25%\"")


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
        """Every section's own checks, then what involves several; `fail("section.key", problem)`."""
        for key, kind in _key_types(self).items():
            if kind is float and not math.isfinite(_get(self, key)):
                fail(key, "must be a finite number")
        for section in _sections():
            getattr(self, section).validate(lambda name, problem, s=section: fail(f"{s}.{name}", problem))
        late = [entry for entry in self.metrics.selection_maps if isinstance(entry, int) and entry > self.train.steps]
        if late:
            fail("metrics.selection_maps", f"has step {late[0]}, past train.steps = {self.train.steps}")
        if self.data.memory_budget_bytes and self.teacher.minibatch == 0 and self.teacher.strategy != "full":
            fail("data.memory_budget", "needs teacher.minibatch > 0 (streaming selects inside each chunk group) "
                 "unless teacher.strategy = \"full\"")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


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
        raise DintError(f"{origin}: {section_name!r} is a section: name a key in it, e.g. --{section_name}."
                        f"{dataclasses.fields(section)[0].name} VALUE")
    types = typing.get_type_hints(type(section))
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
        raise DintError(f"{origins.get('data.store') or source or '--data.store'}: data.store is not set "
                        "(a store made by dint-shard)")


def check_against_store(config: Config, info: Any) -> Any:
    """What only the store (a dint.data.store.SignalInfo) can tell: run after open_store. Returns the
    signal as training sees it (data.domain, when set, replaces the store's domain)."""
    origins = getattr(config, "_origins", {})
    if not config.data.domain:
        return info
    if len(config.data.domain) != info.ndim:
        raise DintError(f"{origins.get('data.domain', 'default')}: data.domain = {config.data.domain!r} gives "
                        f"{len(config.data.domain)} intervals, the store has {info.ndim} axes")
    replaced = dataclasses.replace(info, domain=tuple((float(lo), float(hi)) for lo, hi in config.data.domain))
    problem = replaced.float32_problem()
    if problem is not None and problem[0] == "domain":
        raise DintError(f"{origins.get('data.domain', 'default')}: data.domain = {config.data.domain!r} {problem[1]}")
    return replaced


def _key_types(config: Config) -> dict[str, type]:
    """Every "section.key" and its type."""
    return {f"{section}.{name}": kind
            for section in _sections()
            for name, kind in typing.get_type_hints(type(getattr(config, section))).items()}


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


USAGE = """usage: python -m dint.train --config PATH [--section.key VALUE ...] [--check]
       torchrun --nproc_per_node N -m dint.train --config PATH [--section.key VALUE ...]

Train one SIREN over a dint store with Implicit Neural Teaching. Every key of the config
(sections run, data, model, teacher, train, eval, checkpoint, metrics) can be set in the TOML file
and overridden on the command line, e.g. --train.steps 100 or --teacher.strategy=uniform.

  --config PATH     the TOML config (configs/demo.toml, configs/cpu/, configs/paper/)
  --resume FOLDER   short for --checkpoint.resume FOLDER (auto, never, or a checkpoint folder)
  --check           check the config and the store, then stop
  -h, --help        this help"""


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
