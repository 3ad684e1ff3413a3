"""Bad configurations: one line on stderr naming the file or flag, the key and the problem; exit 2.

What `python -m dint.train --config C.toml [--section.key value ...]` prints, exit code 2,
before any training (no run folder is made). A key set in the file is named by the file
(`C.toml: ...`), one set on the command line by its flag (`--train.lr: ...`). `(known: ...)`
lists every section, or every key of the section.

| Bad configuration | What the user sees |
|---|---|
| config file does not exist | `dint.train: error: C.toml: config file not found` |
| not valid TOML | `dint.train: error: C.toml: not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 7))` |
| unknown section `[modle]` | `dint.train: error: C.toml: unknown section 'modle' (known: run, data, model, ...)` |
| unknown key `[train] stepz` | `dint.train: error: C.toml: unknown key 'train.stepz' (known: train.steps, train.lr, ...)` |
| unknown key on the command line | `dint.train: error: --train.stepz: unknown key 'train.stepz' (known: train.steps, train.lr, ...)` |
| a key outside any section | `dint.train: error: C.toml: 'steps' must be a [section] table, not a single value` |
| a section without a key on the command line | `dint.train: error: --train: 'train' is a section: name a key in it, e.g. --train.steps VALUE` |
| text for a number | `dint.train: error: C.toml: model.width = 'wide' is not a valid int` |
| a fraction for an integer | `dint.train: error: C.toml: train.steps = 10.5 is not a valid int` |
| true/false for an integer | `dint.train: error: C.toml: model.hidden_layers = True is not a valid int` |
| text for a number on the command line | `dint.train: error: --train.lr: train.lr = 'fast' is not a valid float` |
| not true/false for a switch | `dint.train: error: --eval.reconstruction: eval.reconstruction = 'yes' is not a valid bool` |
| not a JSON list on the command line | `dint.train: error: --data.domain: data.domain = '[[0, 1]' is not a valid list` |
| not one of the choices | `dint.train: error: C.toml: teacher.strategy = 'greedy' is not one of int, full, uniform, importance` |
| ratio above 1 | `dint.train: error: C.toml: teacher.ratio = 1.5 must be in (0, 1]` |
| ratio 0 | `dint.train: error: --teacher.ratio: teacher.ratio = 0.0 must be in (0, 1]` |
| negative steps | `dint.train: error: C.toml: train.steps = -5 must be > 0` |
| width 0 | `dint.train: error: C.toml: model.width = 0 must be > 0` |
| a negative count | `dint.train: error: C.toml: eval.sample = -1 must be >= 0` |
| not a number (`nan`) | `dint.train: error: C.toml: train.lr = nan must be a finite number` |
| infinite | `dint.train: error: --model.w0: model.w0 = inf must be a finite number` |
| `teacher.interval` without `interval_schedule = "fixed"` | `dint.train: error: C.toml: teacher.interval = 5 has no effect with teacher.interval_schedule = "dense": set teacher.interval_schedule = "fixed" or drop the key` |
| importance sampling with mini-batches | `dint.train: error: C.toml: teacher.strategy = 'importance' selects over the whole signal: with teacher.minibatch > 0 set teacher.strategy = "int", "uniform" or "full"` |
| error reuse set with mini-batches | `dint.train: error: C.toml: teacher.error_refresh = 5 has no effect with teacher.minibatch > 0 (mini-batches score every selection afresh): drop the key or set teacher.minibatch = 0` |
| a compile backend with compilation off | `dint.train: error: C.toml: model.compile_backend = 'eager' has no effect with model.compile = "off": set model.compile = "on" or drop the key` |
| a random share of 1 | `dint.train: error: C.toml: teacher.random_share = 1.0 must be in [0, 1)` |
| a soft-mining correction above 1 | `dint.train: error: C.toml: teacher.importance_correction = 1.5 must be in [0, 1]` |
| a soft-mining correction without importance sampling | `dint.train: error: C.toml: teacher.importance_correction = 0.5 has no effect with teacher.strategy = "int": set teacher.strategy = "importance" or drop the key` |
| not a size | `dint.train: error: C.toml: data.memory_budget = 'lots' is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)` |
| a memory budget without mini-batches | `dint.train: error: C.toml: data.memory_budget = '1GB' needs teacher.minibatch > 0 (streaming selects inside each chunk group) unless teacher.strategy = "full"` |
| a domain interval with lo >= hi | `dint.train: error: C.toml: data.domain = [[1, -1], [-1, 1]] must list [lo, hi] with finite lo < hi for each axis` |
| a domain with the wrong number of axes (for the store) | `dint.train: error: C.toml: data.domain = [[-1, 1]] gives 1 intervals, the store has 2 axes` (also with `--check`) |
| run folder is a file | `dint.train: error: C.toml: run.dir = 'F' is a file, not a folder` |
| run folder empty | `dint.train: error: C.toml: run.dir = '' must name a folder` |
| no store | `dint.train: error: C.toml: data.store is not set (a store made by dint-shard)` |

Not errors: `train.log_every` or `eval.every` larger than `train.steps` (the last step is
always logged and evaluated); `train.micro_batch` with `train.engine = "deepspeed"`; a
`teacher.interval` of 1 (the default, as in every run's resolved config.toml) with any
interval schedule.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import pytest

import dint.commands.train
from conftest import run_cli, smooth_image
from dint.core.config import check_against_store, load_config
from dint.core.errors import DintError
from dint.data.store import SignalInfo, write_store

BASE = {
    "run": {"device": "cpu"},
    "model": {"width": 16, "hidden_layers": 2},
    "train": {"steps": 20, "log_every": 5},
    "eval": {"reconstruction": False},
}

# (id, what to change in the base config file (section -> {key: value}; a value None removes
#  the key) or the whole file's text, command-line arguments, the line after
#  "dint.train: error: " ({C}: the config file, {R}: the run folder, {...}: any text),
#  the key the line must name)
ROWS = [
    ("config_not_found", None, [], "{C}: config file not found", None),
    ("not_toml", "[train\nsteps = 5\n", [], "{C}: not valid TOML ({...})", None),
    ("unknown_section", {"modle": {"width": 3}}, [], "{C}: unknown section 'modle' (known: {...})", "modle"),
    ("unknown_key", {"train": {"stepz": 5}}, [], "{C}: unknown key 'train.stepz' (known: {...})", "train.stepz"),
    ("unknown_key_on_command_line", {}, ["--train.stepz", "5"],
     "--train.stepz: unknown key 'train.stepz' (known: {...})", "train.stepz"),
    ("key_outside_a_section", 'steps = 5\n[train]\nlr = 0.001\n', [],
     "{C}: 'steps' must be a [section] table, not a single value", "steps"),
    ("section_without_key_on_command_line", {}, ["--train", "5"],
     "--train: 'train' is a section: name a key in it, e.g. --train.steps VALUE", "train"),
    ("text_for_int", {"model": {"width": "wide"}}, [], "{C}: model.width = 'wide' is not a valid int", "model.width"),
    ("fraction_for_int", {"train": {"steps": 10.5}}, [], "{C}: train.steps = 10.5 is not a valid int", "train.steps"),
    ("bool_for_int", {"model": {"hidden_layers": True}}, [],
     "{C}: model.hidden_layers = True is not a valid int", "model.hidden_layers"),
    ("text_for_float_on_command_line", {}, ["--train.lr", "fast"],
     "--train.lr: train.lr = 'fast' is not a valid float", "train.lr"),
    ("text_for_bool_on_command_line", {}, ["--eval.reconstruction", "yes"],
     "--eval.reconstruction: eval.reconstruction = 'yes' is not a valid bool", "eval.reconstruction"),
    ("bad_list_on_command_line", {}, ["--data.domain", "[[0, 1]"],
     "--data.domain: data.domain = '[[0, 1]' is not a valid list", "data.domain"),
    ("unknown_choice", {"teacher": {"strategy": "greedy"}}, [],
     "{C}: teacher.strategy = 'greedy' is not one of int, full, uniform, importance", "teacher.strategy"),
    ("ratio_above_one", {"teacher": {"ratio": 1.5}}, [], "{C}: teacher.ratio = 1.5 must be in (0, 1]", "teacher.ratio"),
    ("ratio_zero_on_command_line", {}, ["--teacher.ratio", "0"],
     "--teacher.ratio: teacher.ratio = 0.0 must be in (0, 1]", "teacher.ratio"),
    ("negative_steps", {"train": {"steps": -5}}, [], "{C}: train.steps = -5 must be > 0", "train.steps"),
    ("width_zero", {"model": {"width": 0}}, [], "{C}: model.width = 0 must be > 0", "model.width"),
    ("negative_count", {"eval": {"sample": -1}}, [], "{C}: eval.sample = -1 must be >= 0", "eval.sample"),
    ("nan", "nan", [], "{C}: train.lr = nan must be a finite number", "train.lr"),
    ("infinite_on_command_line", {}, ["--model.w0", "inf"], "--model.w0: model.w0 = inf must be a finite number",
     "model.w0"),
    ("interval_without_fixed_schedule", {"teacher": {"interval": 5}}, [],
     '{C}: teacher.interval = 5 has no effect with teacher.interval_schedule = "dense": set '
     'teacher.interval_schedule = "fixed" or drop the key', "teacher.interval"),
    ("importance_with_minibatches", {"teacher": {"strategy": "importance", "minibatch": 100}}, [],
     "{C}: teacher.strategy = 'importance' selects over the whole signal: with teacher.minibatch > 0 set "
     'teacher.strategy = "int", "uniform" or "full"', "teacher.strategy"),
    ("error_reuse_with_minibatches", {"teacher": {"strategy": "int", "minibatch": 100, "error_refresh": 5}}, [],
     "{C}: teacher.error_refresh = 5 has no effect with teacher.minibatch > 0 (mini-batches score every selection "
     "afresh): drop the key or set teacher.minibatch = 0", "teacher.error_refresh"),
    ("compile_backend_with_compile_off", {"model": {"compile": "off", "compile_backend": "eager"}}, [],
     "{C}: model.compile_backend = 'eager' has no effect with model.compile = \"off\": set model.compile = \"on\" "
     "or drop the key", "model.compile_backend"),
    ("random_share_of_one", {"teacher": {"random_share": 1.0}}, [],
     "{C}: teacher.random_share = 1.0 must be in [0, 1)", "teacher.random_share"),
    ("correction_above_one", {"teacher": {"importance_correction": 1.5}}, [],
     "{C}: teacher.importance_correction = 1.5 must be in [0, 1]", "teacher.importance_correction"),
    ("correction_without_importance", {"teacher": {"strategy": "int", "importance_correction": 0.5}}, [],
     "{C}: teacher.importance_correction = 0.5 has no effect with teacher.strategy = \"int\": set "
     "teacher.strategy = \"importance\" or drop the key", "teacher.importance_correction"),
    ("not_a_size", {"data": {"memory_budget": "lots"}}, [],
     "{C}: data.memory_budget = 'lots' is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB)",
     "data.memory_budget"),
    ("memory_budget_without_minibatch", {"data": {"memory_budget": "1GB"}}, [],
     "{C}: data.memory_budget = '1GB' needs teacher.minibatch > 0 (streaming selects inside each chunk group) "
     'unless teacher.strategy = "full"', "data.memory_budget"),
    ("domain_lo_not_below_hi", {"data": {"domain": [[1, -1], [-1, 1]]}}, [],
     "{C}: data.domain = [[1, -1], [-1, 1]] must list [lo, hi] with finite lo < hi for each axis", "data.domain"),
    ("run_dir_is_a_file", {"run": {"dir": "{F}"}}, [], "{C}: run.dir = '{F}' is a file, not a folder", "run.dir"),
    ("run_dir_empty", {"run": {"dir": ""}}, [], "{C}: run.dir = '' must name a folder", "run.dir"),
    ("store_not_set", {"data": {"store": None}}, [], "{C}: data.store is not set (a store made by dint-shard)",
     "data.store"),
]
# Rows also run as a real `python -m dint.train` (the table itself runs dint.commands.train.main here).
IN_SUBPROCESS = ("unknown_key", "infinite_on_command_line", "interval_without_fixed_schedule")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    info = SignalInfo(modality="image", shape=(48, 40), channels=1, dtype="uint8", value_range=(0.0, 255.0),
                      domain=((-1.0, 1.0), (-1.0, 1.0)), chunks=(16, 16), source_name="smooth.png",
                      source_sha256="0" * 64)
    return write_store(da.from_array(smooth_image(48, 40)), info, tmp_path_factory.mktemp("store") / "S.zarr")


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
                config.setdefault(section, {})[key] = value.replace("{F}", str(a_file)) if isinstance(value, str) \
                    else value
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                   for section, values in config.items())
    if change == "nan":  # TOML's nan has no JSON spelling
        text = text.replace("[train]\n", "[train]\nlr = nan\n")
    path.write_text(text)
    return path


def expected_line(template: str, folder: Path) -> re.Pattern:
    text = "dint.train: error: " + template.replace("{C}", str(folder / "C.toml"))
    text = text.replace("{F}", str(folder / "a_file"))
    return re.compile(".*".join(map(re.escape, text.split("{...}"))))


@pytest.mark.parametrize("row_id, change, args, template, key", ROWS, ids=[row[0] for row in ROWS])
def test_bad_config_is_one_line_naming_the_key(tmp_path, store, capsys, row_id, change, args, template, key):
    config = write_config(tmp_path, store, change)
    code = dint.commands.train.main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and out == "", err
    line = err.strip()
    assert expected_line(template, tmp_path).fullmatch(line), line
    if key is not None:
        assert key in line
    assert not (tmp_path / "run").exists()


def test_bad_configs_through_the_real_command(tmp_path, store):
    """A few rows as a user runs them: a fresh process, its exit code and stderr, no traceback."""
    jobs = []
    for row_id, change, args, template, _ in (row for row in ROWS if row[0] in IN_SUBPROCESS):
        folder = tmp_path / row_id
        folder.mkdir()
        jobs.append((folder, template, ["dint.train", "--config", write_config(folder, store, change), *args]))
    # Only the store can tell this one: it fails as the trainer starts, before the run folder.
    folder = tmp_path / "domain_axes"
    folder.mkdir()
    jobs.append((folder, "{...}data.domain{...}", ["dint.train", "--config",
                                                   write_config(folder, store, {"data": {"domain": [[-1, 1]]}})]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: run_cli(*job[2]), jobs))
    for (folder, template, _), result in zip(jobs, results):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert expected_line(template, folder).fullmatch(result.stderr.strip()), result.stderr
        assert not (folder / "run").exists()


def test_a_domain_for_the_wrong_number_of_axes_names_the_key(tmp_path, store):
    config = write_config(tmp_path, store, {"data": {"domain": [[-1, 1]]}})
    from dint.data.store import open_store

    with pytest.raises(DintError) as caught:
        check_against_store(load_config(config), open_store(store).info)
    assert str(caught.value) == f"{config}: data.domain = [[-1, 1]] gives 1 intervals, the store has 2 axes"
    check_against_store(load_config(config, {"data.domain": "[[-1, 1], [0, 2]]"}), open_store(store).info)


@pytest.mark.parametrize("overrides", [
    {"train.log_every": "1000", "eval.every": "1000"},  # larger than train.steps
    {"train.engine": "deepspeed", "train.micro_batch": "100"},
    {"teacher.interval": "1", "teacher.interval_schedule": "incremental"},  # a resolved config.toml has both
    {"teacher.interval": "7", "teacher.interval_schedule": "fixed"},
    {"data.memory_budget": "0"},  # no budget: nothing to stream
    {"data.memory_budget": "1MB", "teacher.strategy": "full"},
])
def test_settings_that_look_odd_but_are_fine(tmp_path, store, overrides):
    load_config(write_config(tmp_path, store, {}), overrides)


def test_a_runs_resolved_config_loads_again(tmp_path, store):
    config = load_config(write_config(tmp_path, store, {}))
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(config.to_toml())
    assert load_config(resolved).to_dict() == config.to_dict()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_not_an_error(flag):
    result = run_cli("dint.train", flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m dint.train --config PATH") and "--section.key" in result.stdout
    assert result.stderr == ""
