"""The bad configurations of tests/integration/test_bad_configs.py's table, as cases (ROWS), and
their helpers: shared by tests/unit/test_config.py (every row through dint.commands.train.main in
the test process) and tests/integration/test_bad_configs.py (a few rows as a real process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dask.array as da
from conftest import smooth_image

from dint.data.store import SignalInfo, write_store

BASE = {
    "run": {"device": "cpu"},
    "model": {"width": 16, "hidden_layers": 2},
    "train": {"steps": 20},
    "eval": {"reconstruction": False},
    "metrics": {"log_every": 5},
}

# The model section of a hash grid: BASE's SIREN keys dropped.
HASH = {"field": "hashgrid", "width": None, "hidden_layers": None}

# (id, what to change in the base config file (section -> {key: value}; a value None removes
#  the key) or the whole file's text, command-line arguments, the line after
#  "dint.train: error: " ({C}: the config file, {R}: the run folder, {...}: any text),
#  the key the line must name)
ROWS = [
    ("config_not_found", None, [], "{C}: config file not found", None),
    ("not_toml", "[train\nsteps = 5\n", [], "{C}: not valid TOML ({...})", None),
    ("unknown_section", {"modle": {"width": 3}}, [], "{C}: unknown section 'modle' (known: {...})", "modle"),
    ("unknown_key", {"train": {"stepz": 5}}, [], "{C}: unknown key 'train.stepz' (known: {...})", "train.stepz"),
    (
        "unknown_key_on_command_line",
        {},
        ["--train.stepz", "5"],
        "--train.stepz: unknown key 'train.stepz' (known: {...})",
        "train.stepz",
    ),
    (
        "key_outside_a_section",
        "steps = 5\n[train]\nlr = 0.001\n",
        [],
        "{C}: 'steps' must be a [section] table, not a single value",
        "steps",
    ),
    (
        "section_without_key_on_command_line",
        {},
        ["--train", "5"],
        "--train: 'train' is a section: name a key in it, e.g. --train.steps VALUE",
        "train",
    ),
    ("text_for_int", {"model": {"width": "wide"}}, [], "{C}: model.width = 'wide' is not a valid int", "model.width"),
    ("fraction_for_int", {"train": {"steps": 10.5}}, [], "{C}: train.steps = 10.5 is not a valid int", "train.steps"),
    (
        "bool_for_int",
        {"model": {"hidden_layers": True}},
        [],
        "{C}: model.hidden_layers = True is not a valid int",
        "model.hidden_layers",
    ),
    (
        "text_for_float_on_command_line",
        {},
        ["--train.lr", "fast"],
        "--train.lr: train.lr = 'fast' is not a valid float",
        "train.lr",
    ),
    (
        "text_for_bool_on_command_line",
        {},
        ["--eval.reconstruction", "yes"],
        "--eval.reconstruction: eval.reconstruction = 'yes' is not a valid bool",
        "eval.reconstruction",
    ),
    (
        "bad_list_on_command_line",
        {},
        ["--data.domain", "[[0, 1]"],
        "--data.domain: data.domain = '[[0, 1]' is not a valid list",
        "data.domain",
    ),
    (
        "unknown_choice",
        {"teacher": {"strategy": "greedy"}},
        [],
        "{C}: teacher.strategy = 'greedy' is not one of int, full, uniform, importance",
        "teacher.strategy",
    ),
    ("ratio_above_one", {"teacher": {"ratio": 1.5}}, [], "{C}: teacher.ratio = 1.5 must be in (0, 1]", "teacher.ratio"),
    (
        "ratio_zero_on_command_line",
        {},
        ["--teacher.ratio", "0"],
        "--teacher.ratio: teacher.ratio = 0.0 must be in (0, 1]",
        "teacher.ratio",
    ),
    ("negative_steps", {"train": {"steps": -5}}, [], "{C}: train.steps = -5 must be > 0", "train.steps"),
    ("width_zero", {"model": {"width": 0}}, [], "{C}: model.width = 0 must be > 0", "model.width"),
    ("negative_count", {"eval": {"sample": -1}}, [], "{C}: eval.sample = -1 must be >= 0", "eval.sample"),
    ("nan", "nan", [], "{C}: train.lr = nan must be a finite number", "train.lr"),
    (
        "infinite_on_command_line",
        {},
        ["--model.w0", "inf"],
        "--model.w0: model.w0 = inf must be a finite number",
        "model.w0",
    ),
    (
        "interval_without_fixed_schedule",
        {"teacher": {"interval": 5}},
        [],
        '{C}: teacher.interval = 5 has no effect with teacher.interval_schedule = "dense": set '
        'teacher.interval_schedule = "fixed" or drop the key',
        "teacher.interval",
    ),
    (
        "importance_with_minibatches",
        {"teacher": {"strategy": "importance", "minibatch": 100}},
        [],
        "{C}: teacher.strategy = 'importance' selects over the whole signal: with teacher.minibatch > 0 set "
        'teacher.strategy = "int", "uniform" or "full"',
        "teacher.strategy",
    ),
    (
        "error_reuse_with_minibatches",
        {"teacher": {"strategy": "int", "minibatch": 100, "error_refresh": 5}},
        [],
        "{C}: teacher.error_refresh = 5 has no effect with teacher.minibatch > 0 (mini-batches score every selection "
        "afresh): drop the key or set teacher.minibatch = 0",
        "teacher.error_refresh",
    ),
    (
        "compile_backend_with_compile_off",
        {"model": {"compile": "off", "compile_backend": "eager"}},
        [],
        '{C}: model.compile_backend = \'eager\' has no effect with model.compile = "off": set model.compile = "on" '
        "or drop the key",
        "model.compile_backend",
    ),
    (
        "random_share_of_one",
        {"teacher": {"random_share": 1.0}},
        [],
        "{C}: teacher.random_share = 1.0 must be in [0, 1)",
        "teacher.random_share",
    ),
    (
        "correction_above_one",
        {"teacher": {"importance_correction": 1.5}},
        [],
        "{C}: teacher.importance_correction = 1.5 must be in [0, 1]",
        "teacher.importance_correction",
    ),
    (
        "correction_without_importance",
        {"teacher": {"strategy": "int", "importance_correction": 0.5}},
        [],
        '{C}: teacher.importance_correction = 0.5 has no effect with teacher.strategy = "int": set '
        'teacher.strategy = "importance" or drop the key',
        "teacher.importance_correction",
    ),
    (
        "not_a_size",
        {"data": {"memory_budget": "lots"}},
        [],
        "{C}: data.memory_budget = 'lots' is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)",
        "data.memory_budget",
    ),
    (
        "memory_budget_without_minibatch",
        {"data": {"memory_budget": "1GB"}},
        [],
        "{C}: data.memory_budget = '1GB' needs teacher.minibatch > 0 (streaming selects inside each chunk group) "
        'unless teacher.strategy = "full"',
        "data.memory_budget",
    ),
    (
        "domain_lo_not_below_hi",
        {"data": {"domain": [[1, -1], [-1, 1]]}},
        [],
        "{C}: data.domain = [[1, -1], [-1, 1]] must list [lo, hi] with finite lo < hi for each axis",
        "data.domain",
    ),
    (
        "hash_levels_zero",
        {"model": {**HASH, "hash_levels": 0}},
        [],
        "{C}: model.hash_levels = 0 must be > 0",
        "model.hash_levels",
    ),
    (
        "hash_table_of_2_to_the_40",
        {"model": HASH},
        ["--model.hash_table_size_log2", "40"],
        "--model.hash_table_size_log2: model.hash_table_size_log2 = 40 must be 1 to 30 (2 to 2^30 entries a level)",
        "model.hash_table_size_log2",
    ),
    (
        "hash_finest_below_base",
        {"model": {**HASH, "hash_base_resolution": 32, "hash_finest_resolution": 8}},
        [],
        "{C}: model.hash_finest_resolution = 8 is below model.hash_base_resolution = 32: the finest level cannot "
        "be coarser than the coarsest (0: the signal's own resolution)",
        "model.hash_finest_resolution",
    ),
    (
        "hash_key_for_a_siren",
        {"model": {"hash_levels": 8}},
        [],
        '{C}: model.hash_levels = 8 has no effect with model.field = "siren": set model.field = "hashgrid" or '
        "drop the key",
        "model.hash_levels",
    ),
    (
        "siren_key_for_a_hash_grid",
        {"model": {"field": "hashgrid", "hidden_layers": None}},
        [],
        '{C}: model.width = 16 has no effect with model.field = "hashgrid": set model.field = "siren" or drop the key',
        "model.width",
    ),
    (
        "w0_for_a_relu_mlp",
        {"model": {**HASH, "hash_activation": "relu", "w0": 10.0}},
        [],
        '{C}: model.w0 = 10.0 has no effect with model.hash_activation = "relu": set it to "sine" or drop the key',
        "model.w0",
    ),
    (
        "hash_table_that_cannot_fit",
        {"model": {**HASH, "hash_table_size_log2": 30, "hash_finest_resolution": 1000000}},
        [],
        "model.hash_levels = 16, model.hash_table_size_log2 = 30, model.hash_features = 2 ({...} parameters: "
        "the table and its gradient and Adam's state, and a micro-batch's gathered features) needs {...} of "
        "memory; {...} is available{...}",
        "model.hash_table_size_log2",
    ),
    ("run_dir_is_a_file", {"run": {"dir": "{F}"}}, [], "{C}: run.dir = '{F}' is a file, not a folder", "run.dir"),
    ("run_dir_empty", {"run": {"dir": ""}}, [], "{C}: run.dir = '' must name a folder", "run.dir"),
    (
        "store_not_set",
        {"data": {"store": None}},
        [],
        "{C}: data.store is not set (a store made by dint-shard)",
        "data.store",
    ),
]


def make_store(folder: Path) -> Path:
    """S.zarr in `folder`: a 48x40 grey image chunked 16x16, written in this process."""
    info = SignalInfo(
        modality="image",
        shape=(48, 40),
        channels=1,
        dtype="uint8",
        value_range=(0.0, 255.0),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        chunks=(16, 16),
        source_name="smooth.png",
        source_sha256="0" * 64,
    )
    return write_store(da.from_array(smooth_image(48, 40)), info, folder / "S.zarr")


def write_config(folder: Path, store: Path, change) -> Path:
    """C.toml in `folder`: the base config (run folder `folder/run`) with `change` applied."""
    path = folder / "C.toml"
    if change is None:
        return path  # a config file that does not exist
    a_file = folder / "a_file"
    a_file.write_text("not a folder")
    if isinstance(change, str) and change != "nan":
        path.write_text(change)
        return path
    config = json.loads(json.dumps(BASE))
    config["run"]["dir"] = str(folder / "run")
    config["data"] = {"store": str(store)}
    for section, values in ({} if change == "nan" else change).items():
        for key, value in values.items():
            if value is None:
                del config[section][key]
            else:
                config.setdefault(section, {})[key] = (
                    value.replace("{F}", str(a_file)) if isinstance(value, str) else value
                )
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
        for section, values in config.items()
    )
    if change == "nan":  # TOML's nan has no JSON spelling
        text = text.replace("[train]\n", "[train]\nlr = nan\n")
    path.write_text(text)
    return path


def expected_line(template: str, folder: Path) -> re.Pattern:
    text = "dint.train: error: " + template.replace("{C}", str(folder / "C.toml"))
    text = text.replace("{F}", str(folder / "a_file"))
    return re.compile(".*".join(map(re.escape, text.split("{...}"))))
