"""Run dint.train's main(), then report which gloo threads are still alive in this process.

usage: train_exit_worker.py OUT_DIR TRAIN_ARGS...   (writes OUT_DIR/rank-N.json)
A thread left behind means the group outlived main(): a gloo thread may then drop its last
collective during interpreter shutdown and abort the process (what the test guards).
"""

import contextlib
import json
import os
import sys
from pathlib import Path

from dint.commands.train import main


def gloo_threads() -> list[str]:
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        with contextlib.suppress(OSError):  # the thread ended while we looked
            names.append(comm.read_text().strip())
    return sorted(name for name in names if "gloo" in name)


if __name__ == "__main__":
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    code = main(argv)
    rank = int(os.environ["RANK"])
    (out / f"rank-{rank}.json").write_text(json.dumps({"exit_code": code, "gloo_threads": gloo_threads()}))
    sys.exit(code)
