"""Run logging: metrics.jsonl lines and a progress bar, written by rank 0 only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLogger:
    def __init__(self, path: Path, total_steps: int, enabled: bool, resume_after: int | None = None):
        """A fresh metrics.jsonl, or (`resume_after` = the step resumed from) the lines up to that step kept."""
        self.enabled = enabled
        self._file = None
        if enabled:
            kept = []
            if resume_after is not None and path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resume_after]
            self._file = open(path, "w")
            self._file.write("".join(line + "\n" for line in kept))
        show_bar = enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True) if show_bar else None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._bar is not None:
            shown = {k: record[k] for k in ("loss", "psnr", "ratio") if record.get(k) is not None}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
