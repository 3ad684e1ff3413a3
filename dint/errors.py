"""The one exception type a user should see as a single line (exit code 2), never a traceback,
and the one way a warning is printed."""

import os
import sys


class DintError(Exception):
    """Bad input or configuration: the message names the file, key or value and what is wrong."""

    exit_code = 2

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared  # every rank raises it: rank 0 alone reports it


def warn(message: str) -> None:
    """One warning line on stderr; in a multi-rank run it says which rank."""
    rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else None
    print(f"dint: warning: {f'rank {rank}: ' if rank is not None else ''}{message}", file=sys.stderr, flush=True)
