"""The one exception type a user should see as a single line (exit code 2), never a traceback,
and the one way a warning is printed."""

import json
import os
import sys
from collections.abc import Sequence


class DintError(Exception):
    """Bad input or configuration: the message names the file, key or value and what is wrong."""

    exit_code = 2

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared  # every rank raises it: rank 0 alone reports it


def escaped(text: str) -> str:
    """`text` with every non-printable character (a newline, an escape sequence) written as its
    escape, so whatever a message quotes (a file name) stays on one line and cannot forge one."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(error: BaseException, limit: int = 200) -> str:
    """What an exception says, as one line of a message: its first line (the lines after it are a
    library's advice or detail), cut to `limit` characters; its type's name when it says nothing."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: object, limit: int = 80) -> str:
    """A value as JSON on one line (repr where JSON cannot say it), cut to `limit` characters,
    for messages that quote what a file holds."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def say(*lines: str) -> None:
    """Print result lines on stdout, each escaped as messages are (`escaped`): a file name in one
    cannot split it or forge another. A table's lines go one by one, their names escaped already."""
    print("\n".join(escaped(line) for line in lines), flush=True)


def warn(message: str) -> None:
    """One warning line on stderr; in a multi-rank run it says which rank."""
    rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else None
    print(
        f"dint: warning: {f'rank {rank}: ' if rank is not None else ''}{escaped(message)}", file=sys.stderr, flush=True
    )


class Stopped(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, Kubernetes, systemd) taken like Ctrl-C: every cleanup that runs
    on an interrupt (staging folders removed, old outputs kept) runs on it too."""

    exit_code = 143


_stopping = False  # a stop signal was taken: the cleanup it started is under way


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Stopped in the main thread, and SIGINT KeyboardInterrupt (call
    it from the main thread). Only the first of them does: a second Ctrl-C or SIGTERM a moment
    later (an impatient user, a scheduler's repeated signal) would otherwise break off the
    cleanup the first one started, and leave half of an output behind."""
    import signal

    def stop(signum, frame):
        global _stopping
        if _stopping:
            return
        _stopping = True
        raise Stopped() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def os_error_line(error: OSError) -> str:
    """An OS error as one line: the path it concerns (escaped) and what the system said."""
    text = escaped(str(error.filename)) if error.filename is not None else ""
    reason = error.strerror or type(error).__name__
    return f"{text}: {reason}" if text else reason


def stopped_line(error: KeyboardInterrupt, left: Sequence[object] = ()) -> tuple[str, int]:
    """What a stopped command says, and its exit code (130 for Ctrl-C, 143 for SIGTERM). `left`:
    the half-written outputs that could not be removed (dint.core.files.remove_unfinished)."""
    what = "stopped by SIGTERM" if isinstance(error, Stopped) else "interrupted"
    if left:
        outcome = (
            f"could not remove the half-written {', '.join(escaped(str(p)) for p in left)} "
            "(the next dint command writing in that folder removes it)"
        )
    else:
        outcome = "nothing half-written was left"
    return f"{what}; {outcome}", Stopped.exit_code if isinstance(error, Stopped) else 130
