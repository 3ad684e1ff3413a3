"""Bad configurations: one line on stderr naming the file or flag, the key and the problem; exit 2.

Every row below is a case of tests/config_cases.py; tests/unit/test_config.py runs each one
through dint.commands.train.main in the test process, and this file runs a few as a real
`python -m dint.train` process.

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

Not errors: `metrics.log_every` or `eval.every` larger than `train.steps` (the last step is
always logged and evaluated); `train.micro_batch` with `train.engine = "deepspeed"`; a
`teacher.interval` of 1 (the default, as in every run's resolved config.toml) with any
interval schedule.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from config_cases import ROWS, expected_line, make_store, write_config
from conftest import run_cli

# Rows also run as a real `python -m dint.train`.
IN_SUBPROCESS = ("unknown_key", "infinite_on_command_line", "interval_without_fixed_schedule")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


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
    jobs.append(
        (
            folder,
            "{...}data.domain{...}",
            ["dint.train", "--config", write_config(folder, store, {"data": {"domain": [[-1, 1]]}})],
        )
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: run_cli(*job[2]), jobs))
    for (folder, template, _), result in zip(jobs, results):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert expected_line(template, folder).fullmatch(result.stderr.strip()), result.stderr
        assert not (folder / "run").exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_not_an_error(flag):
    result = run_cli("dint.train", flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dint train --config PATH") and "--section.key" in result.stdout
    assert result.stderr == ""
