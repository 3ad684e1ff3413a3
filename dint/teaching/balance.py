"""Balanced ranks: after the exact global selection, selected points move so every rank
trains the same number (teacher.balance = "alltoall").

The selection falls where the errors are, so one rank may hold most of it, and with DDP
every step waits for the slowest rank. The loss is a sum over the global selection
(dint.train.trainer.selection_loss), so which rank trains a point does not change the update:
only the float summation order differs.

The plan is a pure function of the per-rank counts, which every rank already has: rank r
keeps min(count_r, target_r) of its points (the first ones) and the surplus points of all
ranks, in rank order, fill the ranks short of their target, in rank order. Only the
surplus moves, each point once, with its coordinates, targets and importance weight. With
error reuse, the errors the receiving rank's training forward sees go back to the rank
that holds the point (`settle`, after the update), so the error memory, and every later
selection, is what it would be without balancing.
"""

from __future__ import annotations

import torch

from dint.distributed.collectives import all_to_all_rows
from dint.teaching.teacher import Selection, per_point_error


def balanced_counts(counts: list[int]) -> list[int]:
    """What each rank trains: the total split evenly, the first ranks one more."""
    total, world_size = sum(counts), len(counts)
    return [total // world_size + (r < total % world_size) for r in range(world_size)]


def transfer_plan(counts: list[int]) -> list[list[int]]:
    """moves[r][s]: points rank r sends to rank s (surplus, in rank order, to the ranks short
    of their target, in rank order)."""
    targets, world_size = balanced_counts(counts), len(counts)
    moves = [[0] * world_size for _ in range(world_size)]
    givers = [[r, c - t] for r, (c, t) in enumerate(zip(counts, targets)) if c > t]
    takers = [[s, t - c] for s, (c, t) in enumerate(zip(counts, targets)) if t > c]
    g = 0
    for s, need in takers:
        while need:
            r, spare = givers[g]
            moved = min(spare, need)
            moves[r][s] += moved
            need -= moved
            givers[g][1] -= moved
            if givers[g][1] == 0:
                g += 1
    return moves


def _spans(count: int, size: int) -> list[tuple[int, int]]:
    step = size if 0 < size < count else max(count, 1)
    return [(start, min(count, start + step)) for start in range(0, count, step)]


def _joined(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return second if not first.shape[0] else first if not second.shape[0] else torch.cat([first, second])


class BalancedSelection:
    """What a rank trains after balancing: the points of its selection it keeps, then the
    points received from other ranks; trained like a Selection (same `parts`)."""

    def __init__(self, selection: Selection, rank: int):
        self.source = selection
        counts = selection.rank_counts
        moves = transfer_plan(counts)
        self.trained_counts = balanced_counts(counts)
        sent, received = moves[rank], [moves[r][rank] for r in range(len(counts))]
        keep = counts[rank] - sum(sent)
        self.kept = selection.local[:keep]
        self.kept_weights = selection.weights[:keep] if selection.weights is not None else None
        self.sent = selection.local[keep:]  # in rank order of their destinations
        self.sent_counts, self.received_counts = sent, received
        shard = selection.shard
        rows = [shard.coords(self.sent), shard.targets(self.sent).to(torch.float32)]
        if selection.weights is not None:
            rows.append(selection.weights[keep:].reshape(-1, 1))
        moved = all_to_all_rows(torch.cat(rows, dim=1), sent, received)
        ndim, channels = rows[0].shape[1], rows[1].shape[1]
        self.received_coords = moved[:, :ndim]
        self.received_targets = moved[:, ndim : ndim + channels]
        self.received_weights = moved[:, ndim + channels] if selection.weights is not None else None
        self.memory = selection.memory
        # The errors the training forward sees at the received points, to send back (error reuse).
        self.returned = (
            torch.zeros(moved.shape[0], dtype=torch.float32, device=moved.device) if self.memory is not None else None
        )

    # Selection's interface, as the trainer and the metrics use it.
    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def parts(self, micro_batch: int) -> list[dict]:
        """Kept points, then received ones, in micro-batches of at most `micro_batch` (0: one
        batch), as Selection.parts gives them. A micro-batch may hold both: balanced ranks then
        run as many forward/backward passes as each other, not one more for a few received
        points (a pass's fixed cost is milliseconds on a CPU, and every rank waits for the last)."""
        shard, kept = self.source.shard, self.kept.shape[0]
        parts = []
        for start, stop in _spans(kept + self.received_coords.shape[0], micro_batch):
            own, received = slice(start, min(stop, kept)), slice(max(start - kept, 0), max(stop - kept, 0))
            local = self.kept[own]
            part = {
                "coords": _joined(shard.coords(local), self.received_coords[received]),
                "targets": _joined(shard.targets(local), self.received_targets[received]),
            }
            if self.kept_weights is not None:
                part["weights"] = _joined(self.kept_weights[own], self.received_weights[received])
            if self.memory is not None:
                part.update(local=slice(start, stop), remember=self._remember)
            parts.append(part)
        if not parts:  # a rank with nothing to train still joins the update
            part = {"coords": shard.coords(self.kept), "targets": shard.targets(self.kept)}
            if self.kept_weights is not None:
                part["weights"] = self.kept_weights
            parts.append(part)
        return parts

    def _remember(self, span: slice, diff: torch.Tensor) -> None:
        """The errors a part's forward saw: kept points' into the error memory, received points'
        kept to be sent home."""
        kept = self.kept.shape[0]
        split = min(max(kept - span.start, 0), diff.shape[0])  # the part's kept points come first
        if split:
            self.memory.remember(self.kept[span.start : span.start + split], diff[:split])
        if split < diff.shape[0]:
            self.returned[span.start + split - kept : span.stop - kept] = per_point_error(
                diff[split:].detach(), self.memory.kind
            )

    def settle(self) -> None:
        """The received points' errors back to the ranks that hold them (collective)."""
        if self.memory is None:
            return
        back = all_to_all_rows(self.returned, self.received_counts, self.sent_counts)
        self.memory.errors[self.sent] = back


class Balancer:
    """teacher.balance: "none" trains each rank's own selection; "alltoall" evens it out."""

    def __init__(self, kind: str, rank: int):
        self.kind, self.rank = kind, rank
        self._source: Selection | None = None
        self._balanced: BalancedSelection | None = None

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def __call__(self, selections: list[Selection]) -> list:
        if not self.active:
            return selections
        return [self._balance(selection) for selection in selections]

    def _balance(self, selection: Selection):
        if selection is not self._source:  # a new selection; a reused one keeps its balanced points
            self._source, self._balanced = selection, BalancedSelection(selection, self.rank)
        return self._balanced

    def settle(self) -> None:
        """After the update: the errors seen at moved points go home (collective)."""
        if self._balanced is not None:
            self._balanced.settle()
