"""Fault injection for tests of the recovery paths, set by the DINT_FAULT environment variable.

    DINT_FAULT=nan@12           the loss of step 12 is NaN (once): a divergence to roll back from
    DINT_FAULT=kill@15:1        rank 1 kills itself (SIGKILL) at step 15, in the first attempt only
    DINT_FAULT=hang@10:1        rank 1 stops answering at step 10 (collectives time out)
    DINT_FAULT=save-crash@20    the process dies while writing the checkpoint of step 20
    DINT_FAULT=save-full@20     writing the checkpoint of step 20 fails: no space left on device

Steps count from 1, like metrics.jsonl. Unset, nothing here does anything.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import time
from collections.abc import Callable, Iterable


class Faults:
    def __init__(self, rank: int, spec: str | None = None):
        spec = os.environ.get("DINT_FAULT", "") if spec is None else spec
        self.kind, self.step, self.rank = "", -1, None
        if spec:
            kind, _, rest = spec.partition("@")
            step, _, target = rest.partition(":")
            self.kind, self.step, self.rank = kind, int(step), int(target) if target else None
        self.mine = self.rank is None or self.rank == rank
        # torchrun counts restarts: a killed rank must not kill itself again after resuming.
        self.first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self._spent = False

    def poison(self, step: int, parts: Iterable[Callable]) -> Iterable[Callable]:
        """The loss parts of `step`, made NaN at the fault's step (once): the rest of the time
        the parts themselves, so the step's arithmetic never carries the fault."""
        if not (self.kind == "nan" and step == self.step and self.mine and not self._spent):
            return parts
        self._spent = True
        return (lambda model, part=part: part(model) * math.nan for part in parts)

    def at_step(self, step: int) -> None:
        if step != self.step or not self.mine:
            return
        if self.kind == "kill" and self.first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            while True:
                time.sleep(3600)

    def saving(self, step: int) -> None:
        if step != self.step or not self.mine or not self.first_attempt:
            return
        if self.kind == "save-crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "save-full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
