"""What each optimizer step trains on: the whole signal, or mini-batches of it.

Four plans, one per combination of mode and memory:

| plan                 | shard held        | a step trains on                                 |
|----------------------|-------------------|--------------------------------------------------|
| WholeSignal          | in memory         | the teacher's selection over the whole signal    |
| MiniBatchesInMemory  | in memory         | the selection inside mini-batch (step % count)   |
| MiniBatchesStreamed  | one group at once | the selection inside the group read for the step |
| WholeSignalStreamed  | one group at once | every point (teacher "full"), group after group  |

With mini-batches a pass is `count` steps, and the teacher's ratio and interval schedules
advance per pass; between selection passes a mini-batch reuses its last selection, kept
as a packed bit mask over the mini-batch's points (one bit per point).

`build_batch_plan` picks the plan from the config and the size of the rank's share.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import torch

from dint.core.config import Config
from dint.core.errors import DintError, warn
from dint.core.resources import available_memory, human, local_ranks
from dint.data.sharding import MiniBatches, Shard, ShardStream, chunk_grid
from dint.data.store import SignalInfo, Store, _is_finite, _is_int
from dint.distributed.collectives import all_reduce_max, all_reduce_sum, gather_counts
from dint.teaching.teacher import Selection, Teacher


class BatchPlan(Protocol):
    steps_per_pass: int  # optimizer steps in a pass over the signal (1 without mini-batches)
    eager: bool  # at() chooses every selection before returning; False: chosen as it is iterated
    streamed: bool  # the rank's points are read group by group, not held in memory
    current: Selection | None  # the selection of the last step (for its metrics)

    def at(self, step: int, model: torch.nn.Module) -> Iterable[Selection]:
        """The selections the optimizer step `step` (from 0) trains on."""

    def shards(self) -> Iterable[Shard]:
        """The rank's points, in memory at once or group after group (evaluation)."""

    def state_dict(self) -> dict:
        """The selections in use, the same whatever the number of ranks (collective)."""

    def load_state_dict(self, state: dict) -> None:
        """Forget every selection made, then restore those of `state` (may be {})."""


def build_batch_plan(
    config: Config,
    info: SignalInfo,
    store: Store,
    chunk_ids: list[int],
    teacher: Teacher,
    device: torch.device,
    rank: int = 0,
) -> BatchPlan:
    """The plan for the rank's chunks: in memory, or streamed when any rank's share is over
    data.memory_budget; over the whole signal, or in mini-batches (teacher.minibatch)."""
    steps, minibatch, budget = config.train.steps, config.teacher.minibatch, config.data.memory_budget_bytes
    point_bytes = info.channels * np.dtype(info.dtype).itemsize
    grid = chunk_grid(info)
    points = sum(math.prod(grid[i][1]) for i in chunk_ids)
    share = points * point_bytes
    counts = gather_counts(points, device)
    idle = [r for r, count in enumerate(counts) if count == 0]
    if idle and idle[0] == rank:  # said once, by the first idle rank
        warn(
            f"rank(s) {', '.join(map(str, idle))} hold no point and train nothing: the store has {len(grid)} "
            f"chunk(s) for {len(counts)} ranks (shard it with a smaller --chunk)"
        )
    if budget == 0:  # no budget set: the machine's memory is the budget
        budget = _budget_from_memory(config, share, device)
    # Every rank must take the same branch: stream if any rank's share is over budget.
    if not all_reduce_max(torch.tensor([int(budget > 0 and share > budget)], device=device)):
        shard = Shard(store, chunk_ids, device, info)
        shard.cache_points(config.data.point_cache_bytes)
        if minibatch:
            return MiniBatchesInMemory(teacher, shard, minibatch, steps, config.train.seed)
        return WholeSignal(teacher, shard, steps)
    # A group is a mini-batch (when set) and at most a third of the budget (ShardStream).
    group_bytes = budget // 3
    if minibatch:
        group_bytes = min(group_bytes, minibatch * point_bytes)
    stream = ShardStream(store, chunk_ids, device, info, group_bytes)
    if minibatch:
        groups = int(all_reduce_max(torch.tensor([len(stream)], device=device)))
        return MiniBatchesStreamed(teacher, stream, groups, steps)
    return WholeSignalStreamed(teacher, stream, counts)


def _budget_from_memory(config: Config, share: int, device: torch.device) -> int:
    """Without data.memory_budget: 0 (hold the share in memory) when every rank's share fits in
    half the memory available to it, else a budget to stream within (mini-batches, `full`),
    else a refusal (collective: every rank decides alike)."""
    have = available_memory() // local_ranks()
    too_big = int(all_reduce_max(torch.tensor([int(share > have // 2)], device=device)))
    if not too_big:
        return 0
    if config.teacher.minibatch or config.teacher.strategy == "full":
        if int(os.environ.get("RANK", 0)) == 0:
            warn(
                f"a rank's share of the store is over half the {human(have)} of memory available to each rank: "
                f"streamed within data.memory_budget = {human(have // 2)}"
            )
        return have // 2
    raise DintError(
        f"{config.data.store}: a rank's share of the store ({human(share)} here) does not fit in half the "
        f"{human(have)} of memory available to each of the {local_ranks()} rank(s) on this machine; set "
        "teacher.minibatch (mini-batch INT streams its groups), use more ranks, or set data.memory_budget",
        shared=True,
    )


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool vector as bytes, 8 entries per byte."""
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-mask.shape[0]) % 8)).reshape(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (padded * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, length: int) -> torch.Tensor:
    bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] & bits) != 0).reshape(-1)[:length]


def global_bits(ids: torch.Tensor, num_points: int) -> torch.Tensor:
    """A bit per point of the whole signal, set for `ids` of every rank (an all-reduce).

    Disjoint bits add up like an OR, so the sum over ranks is the union: the same mask
    whatever the number of ranks, N / 8 bytes.
    """
    bits = torch.zeros((num_points + 7) // 8, dtype=torch.uint8, device=ids.device)
    bits.index_add_(0, ids >> 3, torch.ones_like(ids, dtype=torch.uint8) << (ids & 7).to(torch.uint8))
    return all_reduce_sum(bits)


def global_values(ids: torch.Tensor, values: torch.Tensor, num_points: int) -> torch.Tensor:
    """A float per point of the whole signal, `values` at `ids` of every rank, 0 elsewhere (an
    all-reduce: each point is held by one rank)."""
    dense = torch.zeros(num_points, dtype=values.dtype, device=values.device)
    dense[ids] = values
    return all_reduce_sum(dense)


def check_saved_selections(state: object, num_points: int, count: int) -> None:
    """Refuse (ValueError) saved selections not of the form state_dict writes, before any of it
    is used: they index every point of the signal, so a mask or an array of another length
    would fail on some ranks only and leave the ranks at different collectives. `count`: the
    mini-batches (1 without)."""
    if not isinstance(state, dict):
        raise ValueError(f"the saved selections are {type(state).__name__}, not a dict")
    if not state:
        return
    arrays = {
        "bits": ((num_points + 7) // 8, torch.uint8),
        "weights": (num_points, torch.float32),
        "errors": (num_points, torch.float32),
    }
    for key, (length, dtype) in arrays.items():
        if key not in state and key != "bits":
            continue
        value = state.get(key)
        if not (isinstance(value, torch.Tensor) and tuple(value.shape) == (length,) and value.dtype == dtype):
            raise ValueError(f"the saved selections' {key!r} is not {length} values of {dtype}")
    selections = state.get("selections")
    if not (
        isinstance(selections, dict)
        and selections
        and all(
            _is_int(index)
            and 0 <= index < count
            and isinstance(numbers, (list, tuple))
            and len(numbers) == 3
            and _is_int(numbers[0])
            and _is_finite(numbers[1])
            and _is_int(numbers[2])
            for index, numbers in selections.items()
        )
    ):
        raise ValueError(f"the saved selections are not (count, ratio, step) for mini-batches 0 to {count - 1}")
    for key, valid in (("normalizer", _is_finite), ("refreshed_at", _is_int)):
        if key in state and not valid(state[key]):
            raise ValueError(f"the saved selections' {key!r} = {state[key]!r} is not a number")


def bits_at(bits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Whether each id's bit is set."""
    return ((bits[ids >> 3] >> (ids & 7).to(torch.uint8)) & 1).bool()


class WholeSignal:
    """Selections over the rank's whole shard, renewed when the teacher says so."""

    steps_per_pass, eager, streamed = 1, True, False

    def __init__(self, teacher: Teacher, shard: Shard, total_steps: int):
        self.teacher, self.shard, self.total_steps = teacher, shard, total_steps
        self.everything = torch.arange(len(shard), device=shard.device)
        self.current: Selection | None = None
        self.memory = teacher.error_memory(len(shard), shard.device)

    def at(self, step: int, model: torch.nn.Module) -> Iterable[Selection]:
        if self.teacher.must_select(self.current and self.current.step, step, self.total_steps):
            self.current = self.teacher.select(model, self.shard, self.everything, step, self.total_steps, self.memory)
        return [self.current]

    def shards(self) -> Iterable[Shard]:
        return [self.shard]

    def state_dict(self) -> dict:
        if self.current is None or not self.teacher.chooses:
            return {}
        every_id = self.shard.global_index(self.everything)
        bits = global_bits(every_id[self.current.local], self.shard.info.num_points)
        state = {
            "bits": bits.cpu(),
            "selections": {0: (self.current.global_count, self.current.ratio, self.current.step)},
        }
        if self.current.weights is not None:  # importance weights, by global index (N floats)
            state["weights"] = global_values(
                every_id[self.current.local], self.current.weights, self.shard.info.num_points
            ).cpu()
            state["normalizer"] = float(self.current.normalizer)  # a plain number in the checkpoint
        if self.memory is not None:  # the errors seen so far, by global index (N floats)
            state["errors"] = global_values(every_id, self.memory.errors, self.shard.info.num_points).cpu()
            state["refreshed_at"] = self.memory.refreshed_at
        return state

    def load_state_dict(self, state: dict) -> None:
        check_saved_selections(state, self.shard.info.num_points, 1)
        self.current = None
        self.memory = self.teacher.error_memory(len(self.shard), self.shard.device)
        if not state:
            return
        global_count, ratio, made = state["selections"][0]
        every_id = self.shard.global_index(self.everything)
        local = self.everything[bits_at(state["bits"].to(self.shard.device), every_id)]
        weights = state["weights"].to(self.shard.device)[every_id[local]] if "weights" in state else None
        if self.memory is not None and "errors" in state:
            self.memory.errors = state["errors"].to(self.shard.device)[every_id]
            self.memory.refreshed_at = state["refreshed_at"]
        self.current = Selection(
            self.shard,
            local,
            global_count,
            gather_counts(local.shape[0], local.device),
            ratio,
            made,
            weights=weights,
            normalizer=state.get("normalizer"),
            memory=self.memory,
        )


class _ReusedSelections:
    """Per mini-batch: the last selection as a packed mask over its candidates."""

    def __init__(self, teacher: Teacher, count: int, passes: int):
        self.teacher, self.count, self.passes = teacher, count, passes
        self.saved: dict[int, tuple[torch.Tensor, int, list[int], float, int]] = {}
        self.current: Selection | None = None

    def select(self, index: int, step: int, model, shard: Shard, candidates: torch.Tensor) -> Selection:
        pass_index = step // self.count
        saved = self.saved.get(index)
        if self.teacher.must_select(saved and saved[4], pass_index, self.passes):
            selection = self.teacher.select(model, shard, candidates, pass_index, self.passes)
            if self.teacher.chooses:
                mask = torch.zeros(candidates.shape[0], dtype=torch.bool, device=candidates.device)
                mask[selection.positions] = True
                self.saved[index] = (
                    pack_mask(mask),
                    selection.global_count,
                    selection.rank_counts,
                    selection.ratio,
                    pass_index,
                )
        else:
            packed, global_count, rank_counts, ratio, made = saved
            local = candidates[unpack_mask(packed, candidates.shape[0])]
            selection = Selection(shard, local, global_count, rank_counts, ratio, made)
        self.current = selection
        return selection

    def clear(self) -> None:
        self.saved, self.current = {}, None

    def state_dict(self, ids_of, num_points: int) -> dict:
        """Every mini-batch's last selection as one global bit mask, plus its numbers.

        `ids_of(index)`: the global indices of mini-batch `index`'s candidates on this rank.
        """
        if not self.saved:
            return {}
        ids = []
        for index, (packed, *_) in sorted(self.saved.items()):
            candidates = ids_of(index)
            ids.append(candidates[unpack_mask(packed, candidates.shape[0])])
        bits = global_bits(torch.cat(ids), num_points)
        return {
            "bits": bits.cpu(),
            "selections": {index: (count, ratio, made) for index, (_, count, _, ratio, made) in self.saved.items()},
        }

    def load_state_dict(self, state: dict, shard: Shard, points_of) -> None:
        check_saved_selections(state, shard.info.num_points, self.count)
        self.clear()
        if not state:
            return
        bits = state["bits"].to(shard.device)
        for index, (_, ratio, made) in sorted(state["selections"].items()):
            self.restore(index, bits, shard, points_of(index), ratio, made)

    def restore(
        self, index: int, bits: torch.Tensor, shard: Shard, candidates: torch.Tensor, ratio: float, made: int
    ) -> None:
        """Mini-batch `index`'s selection from the global bit mask (collective: counts per rank)."""
        mask = bits_at(bits, shard.global_index(candidates))
        counts = gather_counts(int(mask.sum()), mask.device)
        self.saved[index] = (pack_mask(mask), sum(counts), counts, ratio, made)


class MiniBatchesInMemory:
    eager, streamed = True, False

    def __init__(self, teacher: Teacher, shard: Shard, minibatch: int, total_steps: int, seed: int):
        count = max(1, math.ceil(shard.info.num_points / minibatch))
        self.shard, self.plan = shard, MiniBatches(shard, count, seed)
        self.steps_per_pass = count
        self.reused = _ReusedSelections(teacher, count, math.ceil(total_steps / count))

    @property
    def current(self) -> Selection | None:
        return self.reused.current

    def at(self, step: int, model: torch.nn.Module) -> Iterable[Selection]:
        index = step % self.steps_per_pass
        return [self.reused.select(index, step, model, self.shard, self.plan.points(index))]

    def shards(self) -> Iterable[Shard]:
        return [self.shard]

    def state_dict(self) -> dict:
        return self.reused.state_dict(
            lambda index: self.shard.global_index(self.plan.points(index)), self.shard.info.num_points
        )

    def load_state_dict(self, state: dict) -> None:
        self.reused.load_state_dict(state, self.shard, self.plan.points)


class MiniBatchesStreamed:
    """Mini-batch b of a pass is the b-th chunk group of every rank's stream."""

    eager, streamed = True, True

    def __init__(self, teacher: Teacher, stream: ShardStream, count: int, total_steps: int):
        self.stream, self.steps_per_pass = stream, count
        self.reused = _ReusedSelections(teacher, count, math.ceil(total_steps / count))
        self._groups: Iterator[Shard] | None = None
        self._empty: Shard | None = None
        self._restored: dict[int, tuple[float, int]] = {}
        self._restored_bits: torch.Tensor | None = None

    @property
    def current(self) -> Selection | None:
        return self.reused.current

    def at(self, step: int, model: torch.nn.Module) -> Iterable[Selection]:
        index = step % self.steps_per_pass
        if index == 0 or self._groups is None:  # a new pass, or one resumed in its middle
            self._groups = self.stream.iter_from(index)
        group = next(self._groups, None) or self._empty_shard()  # ranks with fewer groups join empty
        everything = torch.arange(len(group), device=group.device)
        if index in self._restored:  # from a checkpoint: applied when the group is in memory
            self.reused.restore(index, self._restored_bits, group, everything, *self._restored.pop(index))
        return [self.reused.select(index, step, model, group, everything)]

    def shards(self) -> Iterable[Shard]:
        return self.stream

    def state_dict(self) -> dict:
        """The groups' last selections as one global bit mask (the points of a group found by
        index arithmetic alone, without reading it)."""
        layouts = [
            Shard(self.stream.store, ids, self.stream.device, self.stream.info, read=False)
            for ids in self.stream.groups
        ]
        return self.reused.state_dict(lambda index: self._points_of(layouts, index), self.stream.info.num_points)

    def load_state_dict(self, state: dict) -> None:
        check_saved_selections(state, self.stream.info.num_points, self.steps_per_pass)
        self.reused.clear()
        self._groups, self._restored, self._restored_bits = None, {}, None
        if state:
            self._restored_bits = state["bits"].to(self.stream.device)
            self._restored = {index: (ratio, made) for index, (_, ratio, made) in state["selections"].items()}

    def _points_of(self, layouts: list[Shard], index: int) -> torch.Tensor:
        """Global indices of group `index`'s points (none where this rank has fewer groups)."""
        if index >= len(layouts):
            return torch.zeros(0, dtype=torch.int64, device=self.stream.device)
        return layouts[index].global_index(torch.arange(len(layouts[index]), device=layouts[index].device))

    def _empty_shard(self) -> Shard:
        if self._empty is None:
            self._empty = Shard(self.stream.store, [], self.stream.device, self.stream.info)
        return self._empty


class WholeSignalStreamed:
    """Teacher "full" over a streamed shard: a step runs through every group of the pass."""

    steps_per_pass, eager, streamed = 1, False, True

    def __init__(self, teacher: Teacher, stream: ShardStream, rank_counts: list[int]):
        self.stream, self.rank_counts = stream, rank_counts
        self.current: Selection | None = None

    def at(self, step: int, model: torch.nn.Module) -> Iterator[Selection]:
        total, yielded = sum(self.rank_counts), False
        for group in self.stream:
            self.current = Selection(
                group, torch.arange(len(group), device=group.device), total, self.rank_counts, 1.0, step
            )
            yielded = True
            yield self.current
        if not yielded:  # a rank with no chunk still joins the update, with nothing
            empty = Shard(self.stream.store, [], self.stream.device, self.stream.info)
            self.current = Selection(
                empty, torch.zeros(0, dtype=torch.int64, device=empty.device), total, self.rank_counts, 1.0, step
            )
            yield self.current

    def shards(self) -> Iterable[Shard]:
        return self.stream

    def state_dict(self) -> dict:
        return {}  # every point, every step: nothing chosen to remember

    def load_state_dict(self, state: dict) -> None:
        self.current = None
