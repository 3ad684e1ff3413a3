"""Implicit Neural Teaching (Zhang, Luo et al., ICML 2024), spread over ranks.

Algorithm 1 of the paper (greedy INT), at training step t with N points:

    if t is a selection step (is_selection_step):
        e_i = |f_t(x_i) - y_i|  for every point, no gradients        -> point_errors
        S   = the k = ratio_at(t) * N points of largest e_i          -> select_topk
    update f_t on S alone; S is reused until the next selection step

Distributed, each rank scores only its own shard, takes its local top-k, and an
all-gather of those candidates gives every rank the exact global top-k (ties go to the
lower global index), so the selection does not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import torch

from dint.core.config import TeacherConfig
from dint.data.sharding import Shard, hashed_uniform
from dint.distributed.collectives import all_gather_varlen, all_reduce_max, all_reduce_sum, gather_counts

STAGES = 10  # the `step` ratio schedule's stages
DENSE_FRACTION = 0.25  # `incremental`: select every step for this first part of training
PHASE_INTERVALS = (10, 20, 30, 40, 50)  # `incremental`: then these intervals, equal phases


# --- Schedules (plain functions of the step) -------------------------------------------


def ratio_at(step: int, total_steps: int, ratio: float, schedule: str) -> float:
    """Fraction of the points selected at `step`, starting from `ratio` and rising to 1."""
    progress = step / total_steps
    if schedule == "constant":
        return ratio
    if schedule == "linear":
        return ratio + (1.0 - ratio) * progress
    if schedule == "step":
        stage = math.floor(step * STAGES / total_steps)
        return min(1.0, ratio + (1.0 - ratio) * stage / STAGES)
    if schedule == "cosine":  # slow start, slow finish, from ratio up to 1
        return ratio + (1.0 - ratio) * (1.0 - math.cos(math.pi * progress)) / 2.0
    if schedule == "reverse-cosine":  # mirror image: from 1 down to ratio
        return ratio + (1.0 - ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0
    raise ValueError(f"unknown ratio schedule {schedule!r}")


def interval_at(step: int, total_steps: int, schedule: str, interval: int) -> int:
    """Steps between selections in force at `step`."""
    if schedule == "dense":
        return 1
    if schedule == "fixed":
        return interval
    if schedule == "incremental":
        dense_steps = math.floor(DENSE_FRACTION * total_steps)
        if step < dense_steps:
            return 1
        phase_len = (total_steps - dense_steps) / len(PHASE_INTERVALS)
        return PHASE_INTERVALS[min(len(PHASE_INTERVALS) - 1, math.floor((step - dense_steps) / phase_len))]
    raise ValueError(f"unknown interval schedule {schedule!r}")


def is_selection_step(step: int, total_steps: int, schedule: str, interval: int) -> bool:
    every = interval_at(step, total_steps, schedule, interval)
    if schedule != "incremental" or every == 1:
        return step % every == 0
    # Count each phase's intervals from the phase's own first step.
    dense_steps = math.floor(DENSE_FRACTION * total_steps)
    phase_len = (total_steps - dense_steps) / len(PHASE_INTERVALS)
    phase_start = dense_steps + math.ceil(PHASE_INTERVALS.index(every) * phase_len)
    return (step - phase_start) % every == 0


# --- Exact top-k over ranks --------------------------------------------------------------


def worst_first(scores: torch.Tensor) -> torch.Tensor:
    """Scores as the selection compares them: a NaN error counts as the worst (the largest
    finite value, like +inf), not as none."""
    return torch.nan_to_num(scores, nan=torch.finfo(scores.dtype).max)


def topk_ordered(scores: torch.Tensor, k: int, id_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Positions of the k largest scores; among equal scores the lower id wins.

    `id_of(positions)` gives the unique ids of some positions; it is asked only for the
    positions tied at the k-th score, so callers need not build ids for every point.
    """
    scores = worst_first(scores)
    n = scores.shape[0]
    if k >= n:
        return torch.arange(n, device=scores.device)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    kth = torch.topk(scores, k, sorted=False).values.min()
    above = torch.nonzero(scores > kth).squeeze(1)
    tied = torch.nonzero(scores == kth).squeeze(1)
    tied = tied[torch.argsort(id_of(tied))[: k - above.shape[0]]]
    return torch.cat([above, tied])


def select_topk(scores: torch.Tensor, k: int, id_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """This rank's part of the global top-k of `scores`; `id_of` gives global indices.

    A rank's members of the global top-k are among its own top-k, so gathering every
    rank's local top-k is enough to know the global k-th score and, for a tie there, the
    highest id that still gets in; each rank then keeps its candidates above that cut.
    """
    scores = worst_first(scores)
    local = topk_ordered(scores, k, id_of)
    cand_scores, cand_ids = scores[local], id_of(local)
    all_scores, all_ids = all_gather_varlen(cand_scores, cand_ids)
    if all_scores.shape[0] <= k:
        return local
    chosen = topk_ordered(all_scores, k, lambda positions: all_ids[positions])
    cut_score = all_scores[chosen].min()
    cut_id = all_ids[chosen][all_scores[chosen] == cut_score].max()
    keep = (cand_scores > cut_score) | ((cand_scores == cut_score) & (cand_ids <= cut_id))
    return local[keep]


_RADIX = 8  # bits per round of the threshold search: histograms of 256 counts
_SIGN = -(1 << 63)


def select_topk_threshold(scores: torch.Tensor, k: int, id_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The same selection as `select_topk`, found without gathering candidates.

    The global k-th score is found by radix select: scores become order-preserving integer
    keys as wide as they are (32 bits for float32 errors), and each round all-reduces a 256-bin
    histogram of the next 8 bits of the keys still in the running, so a rank sends a few
    kilobytes whatever k, the number of points and the number of ranks. When more points tie
    at the k-th score than places are left, the ties are settled the same way on the tied
    points' global ids (lower id first). Returns this rank's positions, ascending.
    """
    scores = worst_first(scores) + 0.0  # -0.0 ties 0.0, as in comparisons
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.double()
    device = scores.device
    total = int(all_reduce_sum(torch.tensor([scores.shape[0]], device=device)).item())
    if k >= total:
        return torch.arange(scores.shape[0], device=device)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    # Order-preserving integer keys, no wider than the scores: float32 errors need 4 rounds.
    if scores.dtype == torch.float32:
        bits = scores.view(torch.int32).to(torch.int64)
        keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed order of the keys = order of the scores
        kth, above, tied_total = _radix_select(keys + (1 << 31), k, largest=True, bits=32)
        kth -= 1 << 31
    else:
        bits = scores.view(torch.int64)
        keys = bits ^ ((bits >> 63) & ~_SIGN)
        kth, above, tied_total = _radix_select(keys ^ _SIGN, k, largest=True)
        kth ^= _SIGN
    chosen = keys >= kth
    if above + tied_total > k:  # more points tied at the k-th score than places left: lower ids first
        chosen = keys > kth
        tied = torch.nonzero(keys == kth).squeeze(1)
        ids = id_of(tied)
        none = torch.zeros(1, dtype=torch.int64, device=device)
        top_id = int(all_reduce_max(ids.max().reshape(1) if ids.numel() else none).item())
        cut, _, _ = _radix_select(ids, k - above, largest=False, bits=max(_RADIX, top_id.bit_length()))
        chosen[tied[ids <= cut]] = True
    return torch.nonzero(chosen).squeeze(1)


def _radix_select(keys: torch.Tensor, rank_k: int, largest: bool, bits: int = 64) -> tuple[int, int, int]:
    """The `rank_k`-th largest (or smallest) of the keys of every rank, as unsigned `bits`-bit
    values held in int64, how many keys of every rank come strictly before it, and how many
    equal it."""
    rounds = -(-bits // _RADIX)
    running, before, value = keys, 0, 0
    for shift in range(_RADIX * (rounds - 1), -1, -_RADIX):
        digits = (running >> shift) & 0xFF
        histogram = all_reduce_sum(torch.bincount(digits, minlength=256).to(torch.int64))
        ordered = histogram.flip(0) if largest else histogram
        reached = before + ordered.cumsum(0)
        index = int(torch.searchsorted(reached, torch.tensor([rank_k], device=reached.device)).item())
        digit = 255 - index if largest else index
        before = int(reached[index].item() - ordered[index].item())
        value |= digit << shift
        running = running[digits == digit]
        equal = int(ordered[index].item())
    return (value - (1 << 64) if value >= 1 << 63 else value), before, equal


GATHER_LIMIT_BYTES = 64 << 20  # topk "auto": gather while a rank receives at most this much


def topk_method(method: str, k: int, world_size: int) -> str:
    """`gather` (every rank's local top-k all-gathered: up to world_size x k (float32 score,
    int64 id) pairs on every rank), `threshold` (histograms: a few kilobytes), or for `auto`
    gather, faster to compute, while its traffic stays under GATHER_LIMIT_BYTES (the same
    choice on every rank, and the same points either way)."""
    if method == "auto":
        return "gather" if world_size * k * 12 <= GATHER_LIMIT_BYTES else "threshold"
    return method


def select_topk_by(method: str, k: int, world_size: int) -> Callable:
    return select_topk_threshold if topk_method(method, k, world_size) == "threshold" else select_topk


# --- The teacher ---------------------------------------------------------------------------


def per_point_error(diff: torch.Tensor, kind: str) -> torch.Tensor:
    """A point's error from its (prediction - target) over channels: l1 |f - y| or l2 (f - y)^2."""
    return diff.abs().sum(dim=1) if kind == "l1" else diff.square().sum(dim=1)


class ErrorMemory:
    """Every point's error as the teacher last saw it (error reuse, as in EVOS).

    A scoring forward over every candidate fills it at refresh steps; in between, each
    training forward writes the errors of the points it trains, before their update, for
    free. Selections between refreshes rank these: the trained points' errors are fresh,
    the others' as old as the last refresh.
    """

    def __init__(self, size: int, device: torch.device, kind: str):
        self.errors = torch.full((size,), math.inf, dtype=torch.float32, device=device)  # unseen: first
        self.refreshed_at: int | None = None
        self.kind = kind

    def remember(self, local: torch.Tensor, diff: torch.Tensor) -> None:
        self.errors[local] = per_point_error(diff.detach(), self.kind)


class Selection:
    """The points a rank trains on until the next selection: local indices into a shard.

    The loss is the sum over the selection of each point's squared error, times its weight
    (1 unless the teacher samples by importance), divided by `normalizer` (the number of
    points selected over all ranks; for importance sampling, of candidates, or with
    importance_correction below 1 the drawn weights' sum: dint.teaching.teacher.importance_weights).
    """

    def __init__(
        self,
        shard: Shard,
        local: torch.Tensor,
        global_count: int,
        rank_counts: list[int],
        ratio: float,
        step: int,
        positions: torch.Tensor | None = None,
        *,
        weights: torch.Tensor | None = None,
        normalizer: int | float | torch.Tensor | None = None,
        memory: ErrorMemory | None = None,
    ):
        self.shard = shard
        self.local = local
        self.positions = positions  # where the chosen points stand among the candidates offered
        self.global_count = global_count  # points selected over all ranks
        self.rank_counts = rank_counts  # points selected on each rank
        self.ratio = ratio
        self.step = step
        self.weights = weights  # per local point, or None: all 1
        self.normalizer = global_count if normalizer is None else normalizer
        self.memory = memory  # where the training forward leaves the errors it sees
        self._whole: dict | None = None

    @property
    def trained_counts(self) -> list[int]:
        """Points each rank trains: its own selection (dint.teaching.balance evens them out)."""
        return self.rank_counts

    def parts(self, micro_batch: int) -> list[dict]:
        """The selected points in micro-batches of at most `micro_batch` (0: one batch), each as
        the keyword arguments of a loss: coords, targets, and weights, local, remember when used.

        The whole selection as one batch (micro_batch 0, or a selection that small) is kept
        for reuse until the next selection; micro-batches are made afresh each step, so no
        float copy of a large selection is kept.
        """
        if micro_batch <= 0 or self.local.shape[0] <= micro_batch:
            if self._whole is None:
                self._whole = self._part(self.local, self.weights)
            return [self._whole]
        weights = (
            self.weights.split(micro_batch)
            if self.weights is not None
            else [None] * math.ceil(self.local.shape[0] / micro_batch)
        )
        return [self._part(local, w) for local, w in zip(self.local.split(micro_batch), weights)]

    def _part(self, local: torch.Tensor, weights: torch.Tensor | None) -> dict:
        part = {"coords": self.shard.coords(local), "targets": self.shard.targets(local)}
        if weights is not None:
            part["weights"] = weights
        if self.memory is not None:
            part.update(local=local, remember=self.memory.remember)
        return part


@torch.no_grad()
def point_errors(
    model: torch.nn.Module,
    shard: Shard,
    candidates: torch.Tensor,
    block_points: int,
    kind: str = "l1",
    precision: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-point error of `model` at the candidate points, one bounded block at a time; with
    `precision`, the forward runs under autocast to that dtype (errors are float32 either way)."""
    errors = torch.empty(candidates.shape[0], dtype=torch.float32, device=shard.device)
    lower = torch.autocast(shard.device.type, dtype=precision) if precision is not None else contextlib.nullcontext()
    with lower:
        for start in range(0, candidates.shape[0], block_points):
            local = candidates[start : start + block_points]
            diff = model(shard.coords(local)).float() - shard.targets(local)
            errors[start : start + local.shape[0]] = per_point_error(diff, kind)
    return errors


def top_draws(
    draws: torch.Tensor,
    count: int,
    available: int,
    select_top: Callable,
    ids_of: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The points `select_top(draws, count, ids_of)` picks, without ranking every draw (collective).

    `available` of the draws over all ranks are uniform in [0, 1) (the others are -1). Only
    those above a cut that lets through count plus a margin of 8 standard deviations are
    ranked: when at least `count` get through over all ranks, the `count` largest draws
    (ties included) are all among them, so the result is the same; else (about never),
    every draw is ranked. Positions come in ascending order.
    """
    share = min(1.0, (count + 8.0 * math.sqrt(count) + 16.0) / max(available, 1))
    above = torch.nonzero(draws >= 1.0 - share).squeeze(1)
    if sum(gather_counts(above.shape[0], draws.device)) < count:
        return select_top(draws, count, ids_of).sort().values
    chosen = torch.zeros(above.shape[0], dtype=torch.bool, device=draws.device)
    chosen[select_top(draws[above], count, lambda positions: ids_of(above[positions]))] = True
    return above[chosen]  # in ascending order, as `above` is


class Offered:
    """The candidates offered to a selection: how many each rank holds, and their random draws.

    A point's draw at a step is u = (a b + c mod 2^53) / 2^53, with b = hashed_uniform(its
    global index, seed) in 53-bit integers, drawn once, and (a odd, c) two numbers a step.
    For every point u is uniform (c is) and independent from step to step, so inclusion
    probabilities stay exact (importance sampling's weights, the random share); the odd
    multiplier a reorders the points at every step, so a step's draws are not a shifted copy
    of another's. Five integer operations a point per step instead of hashing every point
    anew, and a function of global indices only: the same selection on any number of ranks.
    """

    _BITS = 53  # float64's mantissa: every u is exact

    def __init__(self, shard: Shard, candidates: torch.Tensor, seed: int):
        self.shard, self.candidates, self.seed = shard, candidates, seed
        self.counts = gather_counts(candidates.shape[0], candidates.device)

    # Made when first asked for: `full` never draws, and mini-batches never read an error memory.
    @functools.cached_property
    def everything(self) -> bool:
        """Whether the candidates are every point of the shard, in order (no gathering needed)."""
        n = len(self.shard)
        return self.candidates.shape[0] == n and torch.equal(
            self.candidates, torch.arange(n, device=self.candidates.device)
        )

    @functools.cached_property
    def base(self) -> torch.Tensor:
        return (hashed_uniform(self.shard.global_index(self.candidates), self.seed, -1) * 2.0**self._BITS).to(
            torch.int64
        )

    def draws(self, step: int) -> torch.Tensor:
        """Every candidate's uniform [0, 1) draw at `step` (a new float64 tensor)."""
        # The step's numbers are draws of negative ids, which no point has.
        a, c = (hashed_uniform(torch.tensor([-2, -3]), self.seed, step) * 2.0**self._BITS).tolist()
        multiplier = 2 * (int(a) >> 1) + 1
        mixed = (self.base * multiplier).add_(int(c)).bitwise_and_((1 << self._BITS) - 1)
        return mixed.to(torch.float64).mul_(2.0**-self._BITS)


class Teacher:
    """Chooses which points every rank trains on: Algorithm 1's selection, and its schedules.

    `progress / total` is steps / train.steps when selecting over the whole signal, and
    passes / total passes with mini-batches (the schedules advance per pass).
    """

    def __init__(self, config: TeacherConfig, *, block_points: int, seed: int, score_timer=None):
        self.config = config
        self.block_points = block_points
        self.seed = seed
        self.score_timer = score_timer or contextlib.nullcontext  # times the scoring forwards
        self.points_scored = 0  # by this rank's scoring forwards (dint scale's cost model)
        self.selections = 0  # made by this process (the trainer marks the steps where it grows)
        self._last_offered: Offered | None = None

    @property
    def chooses(self) -> bool:
        """False for `full`: its selection is every candidate, made once and never saved."""
        return self.config.strategy != "full"

    def error_memory(self, size: int, device: torch.device) -> ErrorMemory | None:
        """Where a plan keeps its points' errors between refreshes, if this teacher reuses them."""
        c = self.config
        reuses = c.strategy in ("int", "importance") and c.error_refresh > 1 and not c.minibatch
        return ErrorMemory(size, device, c.error) if reuses else None

    def must_select(self, last: int | None, progress: int, total: int) -> bool:
        """Whether to select now, when the selection in use was made at `last` (None: none yet).

        Algorithm 1: S is reused until the next selection step.
        """
        if last is None:
            return True
        c = self.config
        return self.chooses and last != progress and is_selection_step(progress, total, c.interval_schedule, c.interval)

    def select(
        self,
        model: torch.nn.Module,
        shard: Shard,
        candidates: torch.Tensor,
        progress: int,
        total: int,
        memory: ErrorMemory | None = None,
    ) -> Selection:
        """The points every rank trains on, chosen among the candidates of every rank together.

        `candidates` are local indices into `shard`; every rank calls this together, each
        with its own candidates (possibly none). The choice depends on the points' global
        indices and errors only, never on how they are spread over ranks:

        - full: every candidate;
        - uniform: k drawn at random;
        - int: the k of largest error (Algorithm 1), of which a `random_share` is instead
          drawn at random from the rest (EVOS, NINT);
        - importance: each point drawn with a probability growing with its error, mixed
          with `random_share` of uniform probability, expected count k, and weighted by the
          inverse of that probability so the loss (and its gradient) is unbiased, or by a power
          of it below 1 (`importance_correction`, Soft Mining's soft correction).
        """
        device, c = candidates.device, self.config
        self.selections += 1
        offered = self._offered(shard, candidates)
        total_candidates = sum(offered.counts)
        ratio, weights, normalizer = 1.0, None, None
        if not self.chooses:
            positions = torch.arange(candidates.shape[0], device=device)
        else:
            ratio = ratio_at(progress, total, c.ratio, c.ratio_schedule)
            k = min(total_candidates, max(1, round(ratio * total_candidates)))
            ids_of = lambda positions: shard.global_index(candidates[positions])  # noqa: E731
            select_top = select_topk_by(c.topk, k, len(offered.counts))
            if c.strategy == "uniform":
                positions = top_draws(offered.draws(progress), k, total_candidates, select_top, ids_of)
            elif c.strategy == "int":
                errors = self._errors(model, shard, candidates, progress, memory)
                drawn = round(c.random_share * k)
                positions = select_top(errors, k - drawn, ids_of)
                if drawn:  # the rest at random among the points the ranking left
                    random = offered.draws(progress)
                    random[positions] = -1.0  # below every draw
                    positions = torch.cat(
                        [positions, top_draws(random, drawn, total_candidates - (k - drawn), select_top, ids_of)]
                    )
            else:
                errors = self._errors(model, shard, candidates, progress, memory)
                probability = inclusion_probability(errors, k, total_candidates, c.random_share)
                positions = torch.nonzero(offered.draws(progress) < probability).squeeze(1)
                weights, normalizer = importance_weights(
                    probability, positions, total_candidates, c.importance_correction
                )
            if c.strategy == "int":  # in the candidates' own order (the others already are): what a resume rebuilds
                positions = positions.sort().values
        counts = gather_counts(positions.shape[0], device)
        return Selection(
            shard,
            candidates[positions],
            sum(counts),
            counts,
            ratio,
            progress,
            positions,
            weights=weights,
            normalizer=normalizer,
            memory=memory,
        )

    def _offered(self, shard: Shard, candidates: torch.Tensor) -> Offered:
        """What a selection needs to know of its candidates besides their errors, kept while
        the same candidates come back (the whole signal, at every selection)."""
        if self._last_offered is None or self._last_offered.candidates is not candidates:
            self._last_offered = Offered(shard, candidates, self.seed)
        return self._last_offered

    def _errors(
        self, model: torch.nn.Module, shard: Shard, candidates: torch.Tensor, progress: int, memory: ErrorMemory | None
    ) -> torch.Tensor:
        """The candidates' errors: a scoring forward at refresh steps, else what memory holds."""
        if (
            memory is not None
            and memory.refreshed_at is not None
            and progress - memory.refreshed_at < self.config.error_refresh
        ):
            return memory.errors if self._offered(shard, candidates).everything else memory.errors[candidates]
        with self.score_timer():
            low = torch.float16 if self.config.score_precision == "float16" else None
            errors = point_errors(model, shard, candidates, self.block_points, self.config.error, low)
        self.points_scored += candidates.shape[0]
        if memory is not None:
            memory.errors[candidates] = errors
            memory.refreshed_at = progress
        return errors


def importance_weights(
    probability: torch.Tensor, positions: torch.Tensor, total: int, correction: float
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """The drawn points' loss weights 1 / p^correction, and what the weighted sum of their
    losses is divided by (collective).

    correction 1 (importance sampling): divided by the number of candidates, the loss and its
    gradient are unbiased. Below 1 (soft mining) the loss leans towards the points of large
    error, which the draw already favours, and is their weighted mean: divided by the sum of
    the drawn weights over every rank (at 0, the drawn points' plain mean), kept on the device
    as a float64 scalar so the step does not wait for it. Only the drawn points are touched,
    so this costs no pass over every candidate.
    """
    drawn = probability[positions]
    if correction == 1.0:
        return drawn.reciprocal(), total
    weights = drawn.pow(-correction)  # each at least 1: a draw that took no point anywhere divides by 1
    return weights, all_reduce_sum(weights.sum(dtype=torch.float64).reshape(1)).clamp_(min=1.0).reshape(())


def inclusion_probability(errors: torch.Tensor, k: int, total: int, uniform_share: float) -> torch.Tensor:
    """Each point's probability of being drawn (float32): k times a mix of its share of all the
    errors and of the uniform 1 / total, at most 1 (collective).

    Errors are quantised to integers against the global maximum before summing, so the sum,
    and with it every probability, is exact and the same on any number of ranks. The maximum
    and the sum stay on the device (no wait for them on a GPU); the arithmetic is float64 where
    a Python number would be, then float32, as before.
    """
    # A NaN error counts as the largest, as in the top-k: such a point is drawn for sure.
    largest = torch.finfo(torch.float32).max
    errors = torch.nan_to_num(errors.float(), nan=largest, posinf=largest)
    top = all_reduce_max(errors.max().reshape(1) if errors.numel() else errors.new_zeros(1)).double()
    scale = torch.where(top > 0, 2.0**24 / top, torch.zeros_like(top)).float()
    quanta = torch.floor(errors * scale)
    mass = all_reduce_sum(quanta.sum(dtype=torch.int64).reshape(1)).double()
    # No error anywhere (mass 0, every quantum 0): every point gets the uniform k / total.
    share = torch.where(mass > 0, k * (1.0 - uniform_share) / mass, 0.0).float()
    base = torch.where(mass > 0, k * uniform_share / total, min(1.0, k / total)).float()
    return quanta.mul_(share).add_(base).clamp_(max=1.0)
