"""Shared test helpers: real subprocesses for the CLIs and torchrun, small generated signals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# `make test` runs two test processes side by side (pytest -n 2 on two cores), and ranks get
# one thread each: torch inside a test process takes one thread too, not a contended share.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from dint.distributed.launch import torchrun_command

REPO = Path(__file__).resolve().parent.parent
# Tests of other features leave out a run's pictures (TensorBoard, selection maps, quality.png:
# about half a second a run, a minute over the suite); test_observability.py and
# test_modalities.py test them, with the defaults.
NO_VIEWS = {"tensorboard": False, "plots": False, "selection_maps": []}
NO_VIEWS_ARGS = ["--metrics.tensorboard", "false", "--metrics.plots", "false", "--metrics.selection_maps", "[]"]
NO_VIEWS_TOML = "[metrics]\ntensorboard = false\nplots = false\nselection_maps = []\n"

SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(
    *args: str, timeout: float = 120, cwd: Path | None = None, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` (e.g. run_cli("dint.commands.cli", "info", path)) in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=_env(extra_env),
    )


def torchrun(
    nproc: int, *args: str, timeout: float = 300, cwd: Path | None = None, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    """Start `nproc` real processes with torchrun (gloo on CPU) running `args`."""
    return subprocess.run(
        torchrun_command(nproc, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=_env(extra_env),
    )


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def smooth_image(height: int, width: int, channels: int = 1, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth, learnable test image (sums of low-frequency sines), full dtype range."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    planes = []
    for _ in range(channels):
        a, b, c, d = rng.uniform(1, 4, size=4)
        planes.append(np.sin(a * x + b * y) * np.cos(c * x - d * y))
    image = (np.stack(planes, axis=-1) + 1) / 2
    top = np.iinfo(dtype).max
    return np.round(image * top).astype(dtype)


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)
    return path


def make_image_store(folder: Path) -> Path:
    """A 48x40 grey store chunked 16x16: 3x3 chunks, the last column 8 wide."""
    png = write_png(folder / "smooth.png", smooth_image(48, 40))
    store = folder / "smooth.zarr"
    result = run_cli("dint.commands.cli", "shard", png, store, "--chunk", "16")
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="session")
def sharded_smooth_image(tmp_path_factory) -> Path:
    """make_image_store's store, sharded once per test process."""
    return make_image_store(tmp_path_factory.mktemp("smooth"))


@pytest.fixture
def image_store(tmp_path: Path, sharded_smooth_image: Path) -> Path:
    """A test's own copy of make_image_store's store (and its PNG) in tmp_path: dint-shard runs
    once per test process, not once per test (tests of sharding shard for themselves)."""
    shutil.copy2(sharded_smooth_image.parent / "smooth.png", tmp_path / "smooth.png")
    return Path(shutil.copytree(sharded_smooth_image, tmp_path / "smooth.zarr"))


def smooth_image_info(sha: str = "0" * 64):
    """The description of make_image_store's signal: a 48x40 grey image chunked 16x16."""
    from dint.data.store import SignalInfo

    return SignalInfo(
        modality="image",
        shape=(48, 40),
        channels=1,
        dtype="uint8",
        value_range=(0.0, 255.0),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        chunks=(16, 16),
        source_name="smooth.png",
        source_sha256=sha,
    )


def write_smooth_store(dest: Path) -> Path:
    """make_image_store's store at `dest`, written in this process (no CLI process)."""
    import dask.array as da

    from dint.data.store import write_store

    return write_store(da.from_array(smooth_image(48, 40)), smooth_image_info(), dest)


def cube_obj(path: Path) -> Path:
    """A unit cube as an OBJ mesh at `path`."""
    corners = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    faces = [
        (1, 3, 4),
        (1, 4, 2),
        (5, 6, 8),
        (5, 8, 7),
        (1, 2, 6),
        (1, 6, 5),
        (3, 7, 8),
        (3, 8, 4),
        (1, 5, 7),
        (1, 7, 3),
        (2, 4, 8),
        (2, 8, 6),
    ]
    path.write_text(
        "".join(f"v {x} {y} {z}\n" for x, y, z in corners) + "".join(f"f {a} {b} {c}\n" for a, b, c in faces)
    )
    return path
