"""The real Teacher on real Shards: the selection does not depend on the number of ranks.

A 48x40 grey store chunked 16x16 is split over 1 (in this process), 2 and 3 ranks
(torchrun, gloo); a 16x20 one (2 chunks) leaves a rank with no point at all. For `int`,
`uniform` and `full`, the selected points (decoded from their coordinates to global indices),
their coordinates and their targets must be identical for every world size, and the counts
must be round(ratio * N).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, smooth_image, torchrun, write_png

from dint.data.store import open_store

WORKER = Path(__file__).parent / "workers" / "teacher_worker.py"
H, W = 48, 40
N = H * W
WORLD_SIZES = (1, 2, 3)
# Paper schedules with ratio 0.2 over 100 steps: `step` at 0 -> 0.2, at 55 -> stage 5 -> 0.6;
# `linear` at 37 -> 0.2 + 0.8 * 0.37 = 0.496.
EXPECTED_RATIO = {
    "int_step0": 0.2,
    "int_step55": 0.6,
    "int_linear37_l2": 0.496,
    "int_ties_step0": 0.2,
    "int_ties_linear37": 0.496,
    "uniform_step0": 0.2,
    "uniform_step55": 0.6,
    "uniform_linear37": 0.496,
    "full_step0": 1.0,
}
EXPECTED_COUNT = {
    "int_step0": 384,
    "int_step55": 1152,
    "int_linear37_l2": 952,
    "int_ties_step0": 384,
    "int_ties_linear37": 952,
    "uniform_step0": 384,
    "uniform_step55": 1152,
    "uniform_linear37": 952,
    "full_step0": N,
}


def load_worker():
    spec = importlib.util.spec_from_file_location("teacher_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_H, TINY_W = 16, 20  # chunks 16x16 and 16x4: with 3 ranks, one rank holds nothing
TINY_N = TINY_H * TINY_W
TINY_COUNT = {"int_step0": 64, "int_ties_step55": 192, "uniform_step55": 192, "full_step0": TINY_N}


def make_store(folder: Path, height: int, width: int, seed: int, levels: int = 256) -> Path:
    image = smooth_image(height, width, seed=seed) // (256 // levels) * (256 // levels)
    png = write_png(folder / f"smooth{height}x{width}.png", image)
    store = folder / f"smooth{height}x{width}.zarr"
    result = run_cli("dint.commands.cli", "shard", png, store, "--chunk", "16")
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("teacher_store"), H, W, seed=0)  # the image_store image


@pytest.fixture(scope="module")
def runs(store_path, tmp_path_factory) -> dict[int, dict]:
    tiny = make_store(store_path.parent, TINY_H, TINY_W, seed=1, levels=8)  # many ties
    out = {1: load_worker().run(str(store_path), str(tiny), 0, 1)}
    for world in WORLD_SIZES[1:]:
        path = tmp_path_factory.mktemp(f"teacher{world}") / "result.json"
        result = torchrun(world, WORKER, store_path, tiny, path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        out[world] = json.loads(path.read_text())
    for world, data in out.items():
        assert data["world_size"] == world
        assert [c["name"] for c in data["cases"]] == list(EXPECTED_RATIO)
        assert [c["name"] for c in data["tiny"]["cases"]] == list(TINY_COUNT)
    return out


def global_index_of(coords: list[list[float]], shape=(H, W)) -> list[int]:
    """Decode coordinates (domain [-1, 1] end to end on each axis) to C-order flat indices."""
    height, width = shape
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    y = np.rint((c[:, 0] + 1) * (height - 1) / 2).astype(np.int64)
    x = np.rint((c[:, 1] + 1) * (width - 1) / 2).astype(np.int64)
    assert np.abs((c[:, 0] + 1) * (height - 1) / 2 - y).max(initial=0) < 1e-3  # on the grid
    assert np.abs((c[:, 1] + 1) * (width - 1) / 2 - x).max(initial=0) < 1e-3
    return (y * width + x).tolist()


def rows(case: dict, shape=(H, W)) -> list[tuple]:
    """(global index, coords, targets) of every selected point, sorted by global index."""
    ids = global_index_of(case["coords"], shape)
    return sorted(zip(ids, map(tuple, case["coords"]), map(tuple, case["targets"])))


def tie_rule_selection(all_rows: list[tuple], k: int) -> list[int]:
    """Zero model: error = |target|. The k largest, ties to the lower global index."""
    errors = np.asarray([abs(r[2][0]) for r in all_rows], dtype=np.float32)
    order = sorted(range(len(errors)), key=lambda g: (-errors[g], g))
    assert errors[order[k]] == errors[order[k - 1]]  # the tie straddles the cut: the rule decides
    return sorted(order[:k])


def case_of(data: dict, name: str) -> dict:
    (case,) = [c for c in data["cases"] if c["name"] == name]
    return case


def test_store_and_shards_are_as_assumed(runs):
    for world, data in runs.items():
        assert data["num_points"] == N and data["shape"] == [H, W]
        assert len(data["shard_sizes"]) == world and sum(data["shard_sizes"]) == N
        assert all(size > 0 for size in data["shard_sizes"])
        # the shards together hold every point exactly once
        assert sorted(data["shard_global_index"]) == list(range(N))
    # with 2 ranks, rank 0's points are not one contiguous range of global indices
    sizes, index = runs[2]["shard_sizes"], runs[2]["shard_global_index"]
    first = index[: sizes[0]]
    assert max(first) - min(first) + 1 > len(first)
    # with 3 ranks, a rank's local order (chunk after chunk) is not the global order
    sizes, index = runs[3]["shard_sizes"], runs[3]["shard_global_index"]
    assert index[: sizes[0]] != sorted(index[: sizes[0]])


@pytest.mark.parametrize("name", list(EXPECTED_RATIO))
def test_selection_counts(runs, name):
    for world, data in runs.items():
        case = case_of(data, name)
        assert case["ratio"] == pytest.approx(EXPECTED_RATIO[name], abs=1e-12)
        assert case["step"] in (0, 37, 55)
        assert len(case["rank_counts"]) == world
        assert case["global_count"] == sum(case["rank_counts"]) == EXPECTED_COUNT[name]
        assert EXPECTED_COUNT[name] == round(case["ratio"] * N)
        assert len(case["coords"]) == len(case["targets"]) == case["global_count"]
        # rank_counts[r] is the number of points rank r really holds in its Selection
        assert case["rank_counts"] == [case["owner"].count(r) for r in range(world)]


@pytest.mark.parametrize("name", list(EXPECTED_RATIO))
def test_selection_is_independent_of_world_size(runs, name):
    reference = rows(case_of(runs[1], name))
    assert len({r[0] for r in reference}) == len(reference) == EXPECTED_COUNT[name]
    for world in WORLD_SIZES[1:]:
        got = rows(case_of(runs[world], name))
        assert [r[0] for r in got] == [r[0] for r in reference], f"{name}: world {world} selects other points"
        assert got == reference, f"{name}: world {world} gives other coordinates or targets"


def test_selected_points_belong_to_their_rank(runs):
    for world in WORLD_SIZES[1:]:
        data = runs[world]
        bounds = np.cumsum([0] + data["shard_sizes"])
        holder = {}
        for rank in range(world):
            for g in data["shard_global_index"][bounds[rank] : bounds[rank + 1]]:
                holder[g] = rank
        for case in data["cases"]:
            ids = global_index_of(case["coords"])
            assert [holder[g] for g in ids] == case["owner"], case["name"]


def test_selected_targets_are_the_store_values(runs, store_path):
    store = open_store(store_path)
    lo, hi = store.info.value_range
    values = np.asarray(store.values[...], dtype=np.float64).reshape(N, -1)
    expected = (values - lo) * 2.0 / (hi - lo) - 1.0
    for data in runs.values():
        for case in data["cases"]:
            ids = global_index_of(case["coords"])
            np.testing.assert_allclose(np.asarray(case["targets"]), expected[ids], atol=1e-6, err_msg=case["name"])


@pytest.mark.parametrize("name, kind", [("int_step0", "l1"), ("int_step55", "l1"), ("int_linear37_l2", "l2")])
def test_int_selects_the_largest_errors(runs, store_path, name, kind):
    """Computed here in one batch over the whole signal: the k points of largest error."""
    worker = load_worker()
    model = worker.make_model(2, 1)
    store = open_store(store_path)
    lo, hi = store.info.value_range
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid = torch.stack([y.reshape(-1), x.reshape(-1)], dim=1).to(torch.float64)
    coords = (-1.0 + grid * torch.tensor([2.0 / (H - 1), 2.0 / (W - 1)], dtype=torch.float64)).to(torch.float32)
    values = torch.from_numpy(np.asarray(store.values[...], dtype=np.float64).reshape(N, -1))
    targets = ((values - lo) * 2.0 / (hi - lo) - 1.0).to(torch.float32)
    with torch.no_grad():
        diff = (model(coords) - targets).to(torch.float64)
    errors = diff.abs().sum(1) if kind == "l1" else diff.square().sum(1)
    k = EXPECTED_COUNT[name]
    ranked = torch.sort(errors, descending=True).values
    # a clear gap at the cut, so one-ulp differences between batchings cannot move it
    assert ranked[k - 1] - ranked[k] > 1e-5
    expected = sorted(torch.topk(errors, k).indices.tolist())
    assert [r[0] for r in rows(case_of(runs[1], name))] == expected
    # and every selected point is at least as bad as every point left out
    chosen = torch.zeros(N, dtype=torch.bool)
    chosen[expected] = True
    assert errors[chosen].min() >= errors[~chosen].max()


@pytest.mark.parametrize("name", ["int_ties_step0", "int_ties_linear37"])
def test_int_ties_go_to_the_lower_global_index(runs, name):
    """A model that outputs 0: the error is |target|, with many exact ties at the cut.

    The targets, exactly as the teacher trains on them (float32), come from the `full`
    selection, which holds every point.
    """
    everything = rows(case_of(runs[1], "full_step0"))
    assert [r[0] for r in everything] == list(range(N))
    expected = tie_rule_selection(everything, EXPECTED_COUNT[name])
    for world in WORLD_SIZES:
        assert [r[0] for r in rows(case_of(runs[world], name))] == expected, f"world {world}"


def test_uniform_draws_new_points_each_step_spread_over_chunks(runs):
    first = {r[0] for r in rows(case_of(runs[1], "uniform_step0"))}
    later = {r[0] for r in rows(case_of(runs[1], "uniform_step55"))}
    # independent draws: the 384 of step 0 are not all inside the 1152 of step 55
    assert not first <= later
    # and not the same as int's choice
    assert first != {r[0] for r in rows(case_of(runs[1], "int_step0"))}
    # about 20% of each 16x16 chunk (the 16x8 chunks too)
    ids = np.asarray(sorted(first))
    chunk = (ids // W // 16) * 3 + (ids % W) // 16
    per_chunk = np.bincount(chunk, minlength=9)
    sizes = np.array([256, 256, 128] * 3)
    fraction = per_chunk / sizes
    assert fraction.min() > 0.08 and fraction.max() < 0.35, fraction


def test_selection_steps_follow_strategy_and_interval(store_path):
    worker = load_worker()
    store = open_store(store_path)
    shard = worker.make_shard(store, 0, 1)
    model = worker.make_model(2, 1)
    teacher = worker.make_teacher("int", "step", "l1")  # fixed interval 5
    # A first selection at step 0, then each selection is reused until the next selection step.
    assert [s for s in range(12) if teacher.must_select(0 if s else None, s, 12)] == [0, 5, 10]
    assert not teacher.must_select(5, 5, 12)  # a selection made at this step is not made again
    full = worker.make_teacher("full", "step", "l1")
    selection = full.select(model, shard, torch.arange(len(shard)), 0, 12)
    assert selection.global_count == N and selection.ratio == 1.0
    assert [s for s in range(12) if full.must_select(0 if s else None, s, 12)] == [0]


def test_a_rank_with_no_points(runs):
    """The tiny store has 2 chunks: with 3 ranks one rank (rank 0 here) holds nothing."""
    tiny = {world: data["tiny"] for world, data in runs.items()}
    assert 0 in tiny[3]["shard_sizes"]
    empty = tiny[3]["shard_sizes"].index(0)
    for data in tiny.values():
        assert data["shape"] == [TINY_H, TINY_W] and sum(data["shard_sizes"]) == TINY_N
        assert sorted(data["shard_global_index"]) == list(range(TINY_N))
    everything = rows(case_of(tiny[1], "full_step0"), (TINY_H, TINY_W))
    assert [r[0] for r in everything] == list(range(TINY_N))
    for name, count in TINY_COUNT.items():
        reference = rows(case_of(tiny[1], name), (TINY_H, TINY_W))
        if name == "int_ties_step55":
            assert [r[0] for r in reference] == tie_rule_selection(everything, count)
        for world, data in tiny.items():
            case = case_of(data, name)
            assert case["global_count"] == sum(case["rank_counts"]) == count, (world, name)
            assert case["rank_counts"] == [case["owner"].count(r) for r in range(world)]
            assert rows(case, (TINY_H, TINY_W)) == reference, (world, name)
        assert case_of(tiny[3], name)["rank_counts"][empty] == 0


# --- the newer teachers: random share, importance sampling, error reuse -----------------------

NEW_NAMES = [
    "int_share_step0",
    "int_share_ties55",
    "int_share_ties55_threshold",
    "importance_step0",
    "importance_step55",
    "importance_soft_step0",
    "reuse_step1",
]


def new_case(data: dict, name: str) -> dict:
    (case,) = [c for c in data["new"] if c["name"] == name]
    return case


@pytest.mark.parametrize("name", NEW_NAMES)
def test_newer_teachers_select_the_same_on_every_world_size(runs, name):
    reference = sorted(zip(global_index_of(new_case(runs[1], name)["coords"]), new_case(runs[1], name)["weights"]))
    assert len(reference) == new_case(runs[1], name)["global_count"] > 0
    for world in WORLD_SIZES[1:]:
        case = new_case(runs[world], name)
        got = sorted(zip(global_index_of(case["coords"]), case["weights"]))
        assert got == reference, f"{name}: world {world} selects other points or weights"
        assert case["rank_counts"] == [case["owner"].count(r) for r in range(world)]


@pytest.mark.parametrize(
    "name, share, plain_name", [("int_share_step0", 0.5, "int_step0"), ("int_share_ties55", 0.3, "int_ties_step0")]
)
def test_random_share_ranks_the_rest_and_draws_the_share(runs, name, share, plain_name):
    """k points in all: round((1 - share) k) of largest error, the others drawn at random from
    the rest, so fewer of them are among plain INT's k than all of them."""
    case = new_case(runs[1], name)
    k = round(case["ratio"] * N)
    assert case["global_count"] == k
    picked = set(global_index_of(case["coords"]))
    if plain_name == "int_step0":  # the same model, step and k: plain INT's k hold the ranked part
        plain = {r[0] for r in rows(case_of(runs[1], plain_name))}
        assert k - round(share * k) <= len(picked & plain) < k


def test_importance_sampling_draws_about_k_and_weighs_by_inverse_probability(runs):
    for name in ("importance_step0", "importance_step55"):
        case = new_case(runs[1], name)
        k = round(case["ratio"] * N)
        assert case["normalizer"] == N  # the loss divides by every candidate, not by the draw's size
        assert abs(case["global_count"] - k) < 4 * k**0.5 + 5  # Poisson sampling: about k
        weights = np.asarray(case["weights"])
        assert (weights >= 1.0 - 1e-6).all()  # 1 / probability, probability <= 1
    # the siren's larger errors are drawn more often: weights vary with the point
    assert np.ptp(new_case(runs[1], "importance_step0")["weights"]) > 0.5


def test_soft_mining_draws_the_same_points_and_weighs_them_less(runs):
    """importance_correction 0.5: the same draw as importance sampling (the weights do not change
    which points are drawn), each weight the square root of the unbiased one, and on every
    world size the loss divided by the sum of the weights drawn on every rank: a weighted mean."""
    soft, unbiased = new_case(runs[1], "importance_soft_step0"), new_case(runs[1], "importance_step0")
    assert soft["coords"] == unbiased["coords"]
    np.testing.assert_allclose(soft["weights"], np.sqrt(unbiased["weights"]), rtol=1e-6)
    for world in WORLD_SIZES:
        case = new_case(runs[world], "importance_soft_step0")
        assert case["normalizer"] == pytest.approx(sum(case["weights"]), rel=1e-9)
        assert case["normalizer"] == pytest.approx(soft["normalizer"], rel=1e-9)


def test_reuse_selects_from_the_remembered_errors(runs):
    """Step 1 selects without a scoring forward: the points the zero model erred on most among
    those it "trained" at step 0, and the rest as the siren scored them at step 0."""
    case = new_case(runs[1], "reuse_step1")
    assert case["global_count"] == round(case["ratio"] * N)
    assert set(global_index_of(case["coords"])) != {r[0] for r in rows(case_of(runs[1], "int_step0"))}


def test_the_threshold_top_k_selects_what_the_gather_selects(runs):
    for world in WORLD_SIZES:
        gather, threshold = (new_case(runs[world], name) for name in ("int_share_ties55", "int_share_ties55_threshold"))
        assert sorted(global_index_of(threshold["coords"])) == sorted(global_index_of(gather["coords"]))
        assert threshold["rank_counts"] == gather["rank_counts"]
