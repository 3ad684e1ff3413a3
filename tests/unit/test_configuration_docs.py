"""docs/configuration.md and `dint train --help` are generated from the config classes, and stay so."""

import dataclasses
from pathlib import Path

import pytest

from dint.commands.train import USAGE, main
from dint.core.config import MOVED, Config, configuration_reference, load_config
from dint.core.errors import DintError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_page_is_current():
    assert DOCS.read_text() == configuration_reference(), (
        "docs/configuration.md is stale: run `python -m dint.core.config > docs/configuration.md`"
    )


def test_train_help_prints_the_usage_then_the_same_reference(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == USAGE + "\n\n" + configuration_reference()


def test_every_key_is_documented_with_its_default_and_meaning():
    text = configuration_reference()
    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(section.default_factory()):
            row = next(
                (line for line in text.splitlines() if line.startswith(f"| `{section.name}.{field.name}` |")), None
            )
            assert row is not None, f"{section.name}.{field.name} is missing"
            assert field.metadata["meaning"].replace("|", "\\|") in row
            assert len(row.split(" | ")) == 5  # key, type, default, allowed, meaning: no unescaped |


def test_choices_in_the_reference_are_the_ones_validation_enforces(tmp_path):
    row = next(line for line in configuration_reference().splitlines() if line.startswith("| `teacher.topk` |"))
    assert "`auto` `gather` `threshold`" in row
    with pytest.raises(DintError, match="teacher.topk = 'histogram' is not one of auto, gather, threshold"):
        load_config(None, {"data.store": "s.zarr", "teacher.topk": "histogram"})


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_key_names_its_new_name(old):
    with pytest.raises(DintError, match=f"{old} is now {MOVED[old]}"):
        load_config(None, {"data.store": "s.zarr", old: "5"})
    assert load_config(None, {"data.store": "s.zarr", MOVED[old]: "5"}) is not None
