"""The torch version check and the one line a missing optional package costs."""

import re
from pathlib import Path

import pytest

from dint.core.errors import DintError
from dint.core.packages import MIN_TORCH, check_torch, need


def test_an_old_torch_is_refused_in_one_line():
    with pytest.raises(DintError, match=r"^torch 2\.3\.1 is too old: dint needs torch >= 2\.4") as e:
        check_torch("2.3.1")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("version", ["2.4.0", "2.11.0+cu130", "2.13.0+cpu", "3.0.0a0"])
def test_supported_torch_versions_pass(version):
    check_torch(version)


def test_the_minimum_is_the_one_pyproject_states():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    stated = re.search(r'"torch>=(\d+)\.(\d+)', pyproject)
    assert (int(stated.group(1)), int(stated.group(2))) == MIN_TORCH


def test_a_missing_package_is_one_line_naming_what_needs_it():
    with pytest.raises(DintError, match=r"^no_such_package_dint is not installed: needed for reading meshes$"):
        need("no_such_package_dint", "no_such_package_dint", "reading meshes")
