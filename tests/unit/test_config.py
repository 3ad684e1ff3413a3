"""Configuration in one process (dint.core.config): defaults, then a TOML file, then
`--section.key value`; anything unknown, mistyped or out of range is one line naming the key.

The table of bad configurations (tests/integration/test_bad_configs.py, its cases in tests/config_cases.py)
runs here through dint.commands.train.main, in the test process; the integration file runs a few
of its rows as a real process.
"""

from __future__ import annotations

import dataclasses

import pytest
from config_cases import ROWS, expected_line, make_store, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

import dint.commands.train
from dint.core.config import (
    Config,
    ModelConfig,
    check_against_store,
    load_config,
    map_steps,
    parse_cli,
    parse_size,
)
from dint.core.errors import DintError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


# --- The table of bad configurations, through the command's main() ---------------------------


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


def test_a_domain_for_the_wrong_number_of_axes_names_the_key(tmp_path, store):
    config = write_config(tmp_path, store, {"data": {"domain": [[-1, 1]]}})
    from dint.data.store import open_store

    with pytest.raises(DintError) as caught:
        check_against_store(load_config(config), open_store(store).info)
    assert str(caught.value) == f"{config}: data.domain = [[-1, 1]] gives 1 intervals, the store has 2 axes"
    check_against_store(load_config(config, {"data.domain": "[[-1, 1], [0, 2]]"}), open_store(store).info)


@pytest.mark.parametrize(
    "overrides",
    [
        {"metrics.log_every": "1000", "eval.every": "1000"},  # larger than train.steps
        {"train.engine": "deepspeed", "train.micro_batch": "100"},
        {"teacher.interval": "1", "teacher.interval_schedule": "incremental"},  # a resolved config.toml has both
        {"teacher.interval": "7", "teacher.interval_schedule": "fixed"},
        {"data.memory_budget": "0"},  # no budget: nothing to stream
        {"data.memory_budget": "1MB", "teacher.strategy": "full"},
    ],
)
def test_settings_that_look_odd_but_are_fine(tmp_path, store, overrides):
    load_config(write_config(tmp_path, store, {}), overrides)


def test_a_runs_resolved_config_loads_again(tmp_path, store):
    config = load_config(write_config(tmp_path, store, {}))
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(config.to_toml())
    assert load_config(resolved).to_dict() == config.to_dict()


# --- load_config: defaults, the file, then the command line -----------------------------------


def test_the_file_overrides_the_defaults_and_the_command_line_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[data]\nstore = "S.zarr"\n[train]\nsteps = 50\nlr = 1\n[teacher]\nratio = 0.3\n'
        '[metrics]\nselection_maps = [1, "50%"]\n'
    )
    config = load_config(
        path,
        {"train.steps": "70", "eval.reconstruction": "FALSE", "data.domain": "[[0, 1], [0, 2.5]]", "model.w0": "15"},
    )
    assert config.train.steps == 70 and config.teacher.ratio == 0.3 and config.eval.reconstruction is False
    assert config.train.lr == 1.0 and type(config.train.lr) is float  # an integer in TOML for a float key
    assert config.data.domain == [[0, 1], [0, 2.5]] and config.model.w0 == 15.0
    assert config.metrics.selection_maps == [1, "50%"]
    assert config.model.width == ModelConfig().width  # untouched keys keep their defaults
    assert config._origins == {
        "data.store": str(path),
        "train.steps": "--train.steps",
        "train.lr": str(path),
        "teacher.ratio": str(path),
        "metrics.selection_maps": str(path),
        "eval.reconstruction": "--eval.reconstruction",
        "data.domain": "--data.domain",
        "model.w0": "--model.w0",
    }


def test_only_the_store_is_required():
    config = load_config(None, {"data.store": "S.zarr"})
    expected = Config()
    expected.data.store = "S.zarr"
    assert config.to_dict() == expected.to_dict()
    with pytest.raises(DintError, match=r"^--data.store: data.store is not set \(a store made by dint-shard\)$"):
        load_config(None)


def test_the_command_line_can_mend_the_file_and_is_checked_after_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nstore = "S.zarr"\n[teacher]\nratio = 1.5\n')
    assert load_config(path, {"teacher.ratio": "0.5"}).teacher.ratio == 0.5  # checked once both are read
    with pytest.raises(DintError) as caught:
        load_config(path, {"train.steps": "10"})
    assert str(caught.value) == f"{path}: teacher.ratio = 1.5 must be in (0, 1]"
    path.write_text('[data]\nstore = "S.zarr"\n')
    with pytest.raises(DintError) as caught:
        load_config(path, {"teacher.ratio": "2"})
    assert str(caught.value) == "--teacher.ratio: teacher.ratio = 2.0 must be in (0, 1]"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("checkpoint.keep", "0", "--checkpoint.keep: checkpoint.keep = 0 must be > 0"),
        ("checkpoint.every", "-1", "--checkpoint.every: checkpoint.every = -1 must be >= 0"),
        ("metrics.map_size", "0", "--metrics.map_size: metrics.map_size = 0 must be > 0"),
        ("run.collective_timeout", "0", "--run.collective_timeout: run.collective_timeout = 0.0 must be > 0"),
        ("data.block_points", "many", "--data.block_points: data.block_points = 'many' is not a valid int"),
        ("train.steps", "1e3", "--train.steps: train.steps = '1e3' is not a valid int"),
        ("teacher.error", "l3", "--teacher.error: teacher.error = 'l3' is not one of l1, l2"),
        (
            "train.lr_schedule",
            "linear",
            "--train.lr_schedule: train.lr_schedule = 'linear' is not one of constant, cosine",
        ),
        (
            "data.point_cache",
            "1 XB",
            "--data.point_cache: data.point_cache = '1 XB' is not a size (bytes, or a number "
            "with KB, MB, GB, KiB, MiB, GiB)",
        ),
        (
            "data.domain",
            "[[0, Infinity], [0, 1]]",
            "--data.domain: data.domain = [[0, inf], [0, 1]] must list [lo, hi] with finite lo < hi for each axis",
        ),
        ("data.domain", '{"lo": 0}', "--data.domain: data.domain = {'lo': 0} is not a valid list"),
        (
            "metrics.selection_maps",
            "[0]",
            "--metrics.selection_maps: metrics.selection_maps = [0] has 0: each entry is a "
            'step (an integer >= 1) or a share of the run such as "25%"',
        ),
        ("metrics.selection_maps", '["150%"]', "has '150%': each entry is a step"),
        ("metrics.selection_maps", "[true]", "has True: each entry is a step"),
        (
            "metrics.selection_maps",
            "[6000]",
            "--metrics.selection_maps: metrics.selection_maps = [6000] has step 6000, past train.steps = 5000",
        ),
        (
            "model.hidden",
            "3",
            "--model.hidden: unknown key 'model.hidden' (known: model.field, model.width, model.hidden_layers, ",
        ),
        (
            "models.width",
            "3",
            "--models.width: unknown section 'models' (known: run, data, model, teacher, train, eval, "
            "checkpoint, metrics)",
        ),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(key, value, message):
    with pytest.raises(DintError) as caught:
        load_config(None, {"data.store": "S.zarr", key: value})
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"--{key}: ")


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(
        [
            "train.steps",
            "train.lr",
            "train.micro_batch",
            "teacher.ratio",
            "teacher.strategy",
            "teacher.topk",
            "teacher.balance",
            "teacher.random_share",
            "teacher.error_refresh",
            "model.width",
            "model.init_scale",
            "data.memory_budget",
            "data.domain",
            "eval.sample",
            "checkpoint.keep",
        ]
    ),
    value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    | st.integers(-(2**64), 2**64).map(str)
    | st.floats().map(repr),
)
def test_any_config_value_is_accepted_or_refused_naming_the_key(key, value):
    try:
        load_config(None, {"data.store": "S.zarr", key: value})
    except DintError as e:
        assert key in str(e), (key, value, str(e))


def test_check_against_store_gives_the_signal_as_training_sees_it(tmp_path, store):
    from dint.data.store import open_store

    info = open_store(store).info
    assert check_against_store(load_config(None, {"data.store": str(store)}), info) is info  # no data.domain
    replaced = check_against_store(
        load_config(None, {"data.store": str(store), "data.domain": "[[0, 4], [-2, 2]]"}), info
    )
    assert replaced.domain == ((0.0, 4.0), (-2.0, 2.0))
    assert dataclasses.replace(replaced, domain=info.domain) == info  # nothing else changed


# --- The command line ---------------------------------------------------------------------------


def test_parse_cli_reads_the_config_and_every_override():
    assert parse_cli([]) == (None, {})
    assert parse_cli(
        [
            "--config",
            "c.toml",
            "--train.steps",
            "5",
            "--teacher.strategy=uniform",
            "--resume",
            "never",
            "--data.domain=[[0, 1]]",
            "--run.dir",
            "--odd",
        ]
    ) == (
        "c.toml",
        {
            "train.steps": "5",
            "teacher.strategy": "uniform",
            "checkpoint.resume": "never",
            "data.domain": "[[0, 1]]",
            "run.dir": "--odd",
        },
    )
    assert parse_cli(["--config=a.toml", "--config", "b.toml"])[0] == "b.toml"  # the last one counts


@pytest.mark.parametrize(
    "argv, message",
    [
        (["c.toml"], "unexpected argument 'c.toml' (use --config PATH and --section.key value)"),
        (["--train.steps"], "--train.steps needs a value"),
        (["--config", "c.toml", "-x", "1"], "unexpected argument '-x'"),
    ],
)
def test_parse_cli_refuses_what_it_cannot_read(argv, message):
    with pytest.raises(DintError) as caught:
        parse_cli(argv)
    assert str(caught.value).startswith(message)


# --- Sizes and selection-map steps --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [
        ("", 0),
        ("   ", 0),
        ("0", 0),
        ("1073741824", 2**30),
        ("512MB", 512 * 10**6),
        ("512mb", 512 * 10**6),
        ("1.5 GiB", 3 * 2**29),
        (" 2 KB ", 2000),
        ("1kib", 1024),
        ("3b", 3),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        (".5KiB", 512),
        ("1.0000001KB", 1000),  # whole bytes, rounded down
    ],
)
def test_parse_size_reads_bytes_and_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1 XB", "-1MB", "1e3", "MB", "1,5GB", "1 2", "1GB extra", "0x10"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "entries, steps, expected",
    [
        ([1, "25%", "50%", "100%"], 200, [1, 50, 100, 200]),
        (["100%", 7, "10%"], 30, [3, 7, 30]),  # sorted
        (["50%", 100, "100%", 200], 200, [100, 200]),  # a share landing on a listed step counts once
        (["0.1%"], 100, [1]),  # never step 0
        (["33.3%"], 10, [3]),
        (["35%"], 10, [4]),  # rounded to the nearest step
        ([], 100, []),
    ],
)
def test_map_steps_turns_shares_into_steps(entries, steps, expected):
    assert map_steps(entries, steps) == expected
