"""Process group set-up and the few collectives dint needs.

Under torchrun (RANK set) the process joins a group: nccl when CUDA is used, gloo on CPU.
Without it the same code runs as one process and every collective here is a no-op.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import gc
import os
import sys
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

# Imported before any group exists: this module binds `group=group.WORLD` as default
# arguments when first imported (DDP imports it), and bound to a live group those
# defaults would keep it from ever being freed (see destroy_distributed).
import torch.distributed.nn.functional  # noqa: F401

from dint.core.errors import DintError


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():  # else torch asserts, deep in a first use
        why = (
            "this machine shows no CUDA device"
            if torch.backends.cuda.is_built()
            else "torch here is built without CUDA"
        )
        raise DintError(
            f"device 'cuda' (run.device, or dint render's --device): {why}; "
            "use 'auto' (a GPU where there is one) or 'cpu'",
            shared=True,
        )
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 600.0, group_required: bool = False) -> DistInfo:
    """Join torchrun's group when RANK is set; otherwise run as one process, with a one-rank
    group only when `group_required` (DeepSpeed insists on one)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = pick_device(device, local_rank)
    if not dist.is_initialized() and ("RANK" in os.environ or group_required):
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" in os.environ:
            where = _attempt_store(rank, world_size, timeout)
        else:  # one process: no rendezvous needed
            os.environ.setdefault("LOCAL_RANK", str(local_rank))
            where = {"store": dist.HashStore(), "rank": 0, "world_size": 1}
        dist.init_process_group(
            backend="nccl" if chosen.type == "cuda" else "gloo",
            timeout=timeout,
            device_id=chosen if chosen.type == "cuda" else None,
            **where,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """After an elastic restart, a key space of the attempt's own in torchrun's store.

    torchrun keeps one store across restarts; without a prefix the new processes read
    the addresses the killed ones published and the gloo mesh never connects.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return {"store": dist.PrefixStore(f"dint/attempt-{restart}", store), "rank": rank, "world_size": world_size}


def destroy_distributed() -> None:
    """Leave the group while the interpreter is still fully alive.

    A gloo worker thread drops its reference to a finished collective a moment after the
    caller's wait() returns. If that last drop falls into interpreter shutdown, it needs the
    GIL, cannot get it, and the process aborts ("terminate called without an active
    exception"). Freeing the group here joins those threads first. Callers drop their
    engine before calling this: DDP holds the group too, inside a reference cycle, hence
    the collection.
    """
    if dist.is_initialized():
        # A moment with the GIL released: a gloo worker thread still dropping its last
        # reference to a finished collective (which takes the GIL) does so now, not while the
        # group's destructor holds the GIL and waits for that thread (a deadlock seen once in
        # some hundreds of runs). No collective here: a failing rank may be alone.
        gc.collect()
        time.sleep(0.05)
        deepspeed_comm = sys.modules.get("deepspeed.comm")
        if deepspeed_comm is not None and deepspeed_comm.is_initialized():
            deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's own references to the groups
        else:
            dist.destroy_process_group()
    gc.collect()


class Traffic:
    """Bytes this rank hands to the collectives below, summed by purpose ("select", "balance").

    What a rank sends is its own contribution: the tensor it reduces or gathers, the rows
    it sends to other ranks in an all-to-all. How the backend routes it (rings, trees) is
    not counted. Collectives outside a `counting` block, and every call in one process,
    count nothing.
    """

    def __init__(self):
        self.step: collections.Counter[str] = collections.Counter()  # since new_step()
        self.total: collections.Counter[str] = collections.Counter()
        self._purpose: str | None = None

    @contextlib.contextmanager
    def counting(self, purpose: str) -> Iterator[None]:
        outer, self._purpose = self._purpose, purpose
        try:
            yield
        finally:
            self._purpose = outer

    def add(self, nbytes: int) -> None:
        if self._purpose is not None and dist.is_initialized():
            self.step[self._purpose] += nbytes
            self.total[self._purpose] += nbytes

    def new_step(self) -> None:
        self.step.clear()


TRAFFIC = Traffic()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor for chaining."""
    if dist.is_initialized():
        TRAFFIC.add(_nbytes(tensor))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks, in place."""
    if dist.is_initialized():
        TRAFFIC.add(_nbytes(tensor))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_to_all_rows(tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
    """Rows of `tensor` to other ranks: the first send_counts[0] rows to rank 0, the next
    send_counts[1] to rank 1, ...; returns the rows received, in rank order (recv_counts)."""
    if not dist.is_initialized():
        return tensor
    rank = dist.get_rank()
    received = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    row_bytes = _nbytes(tensor[:1]) if tensor.shape[0] else 0
    TRAFFIC.add(row_bytes * (sum(send_counts) - send_counts[rank]))
    dist.all_to_all_single(received, tensor.contiguous(), recv_counts, send_counts)
    return received


def all_gather_varlen(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate, in rank order, each rank's tensors whose first dimension may differ.

    All tensors of one call must share their first dimension on a rank. Sizes are exchanged
    first, then each tensor is padded to the largest size so one all_gather moves it.
    """
    if not dist.is_initialized():
        return list(tensors)
    world_size = dist.get_world_size()
    device = tensors[0].device
    size = torch.tensor([tensors[0].shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    TRAFFIC.add(_nbytes(size))
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        TRAFFIC.add(_nbytes(padded))
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, sizes)]))
    return gathered


def gather_counts(count: int, device: torch.device) -> list[int]:
    """Every rank's `count`, in rank order (one all-gather of a fixed size)."""
    if not dist.is_initialized():
        return [count]
    value = torch.tensor([count], dtype=torch.int64, device=device)
    counts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    TRAFFIC.add(_nbytes(value))
    dist.all_gather(counts, value)
    return torch.cat(counts).tolist()


def shared_token(device: torch.device) -> str:
    """Rank 0's staging token (dint.core.files.new_token: host, pid, random), the same on every rank:
    names a staging folder all ranks write, stale once rank 0's process is gone."""
    from dint.core.files import new_token

    host, pid, random = new_token().split(".")
    token = torch.tensor([int(host, 16), int(pid), int(random, 16)], dtype=torch.int64)
    if dist.is_initialized():
        token = token.to(device)
        dist.broadcast(token, src=0)
    host, pid, random = (int(v) for v in token.tolist())
    return f"{host:08x}.{pid}.{random:08x}"


def broadcast_text(text: str, device: torch.device) -> str:
    """Rank 0's `text` on every rank (as bytes in a tensor: nothing is unpickled)."""
    if not dist.is_initialized():
        return text
    data = torch.tensor(list(text.encode()), dtype=torch.uint8) if dist.get_rank() == 0 else torch.zeros(0)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = (
        data.to(device) if dist.get_rank() == 0 else torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    )
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode()


def on_rank0(action, device: torch.device):
    """Run `action` on rank 0 alone; when it raises a DintError, every rank raises it (rank 0
    reports it), so no rank is left waiting for one that stopped. Returns rank 0's result
    (None on the others)."""
    from dint.core.errors import DintError

    result, message = None, ""
    if int(os.environ.get("RANK", 0)) == 0:
        try:
            result = action()
        except DintError as e:
            message = str(e)
    message = broadcast_text(message, device)
    if message:
        raise DintError(message, shared=True)
    return result


def collective_failure(error: RuntimeError, phase: str, timeout_s: float | None) -> str | None:
    """One line for a collective that broke (a rank timed out or went away), naming this rank
    and what it was doing; None for any other error. torch raises these as RuntimeError (gloo)
    or its DistBackendError subclass (nccl), told apart only by their text."""
    rank = os.environ.get("RANK", "0")
    text = str(error).lower()
    if "timed out" in text or "timeout" in text:
        return f"rank {rank}: {phase} timed out after {timeout_s} s waiting for another rank (run.collective_timeout)"
    if "connection" in text or "peer" in text:
        return f"rank {rank}: another rank went away during {phase}"
    return None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
