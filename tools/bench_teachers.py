"""Compare teachers (int, full, uniform) on one config: quality and time, as a Markdown table.

    .venv/bin/python tools/bench_teachers.py --config configs/demo.toml --nproc 2 [--section.key value ...]

Each strategy is a separate torchrun job with the same config, seed and step count; the
table reports the final PSNR/SSIM and the seconds spent in selection and in updates
(summary.json's train_seconds excludes reading the store and evaluation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from dint.distributed.launch import torchrun_command


def run(config: str, nproc: int, strategy: str, run_dir: Path, overrides: list[str]) -> dict:
    command = torchrun_command(nproc, "-m", "dint.train", "--config", config, "--teacher.strategy", strategy,
                               "--run.dir", run_dir, *overrides)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_teachers")
    parser.add_argument("--strategies", default="full,int,uniform")
    args, overrides = parser.parse_known_args()
    rows = []
    for strategy in args.strategies.split(","):
        s = run(args.config, args.nproc, strategy, Path(args.out) / strategy, overrides)
        rows.append((strategy, s["final_psnr"], s.get("ssim"), s["train_seconds"], s["select_seconds"],
                     s["update_seconds"]))
    full_seconds = next((r[3] for r in rows if r[0] == "full"), None)
    print(f"| teacher | final PSNR (dB) | SSIM | train s | selection s | update s | time vs full |")
    print("|---|---|---|---|---|---|---|")
    for name, psnr, ssim, train, select, update in rows:
        ratio = f"{train / full_seconds:.2f}x" if full_seconds else "-"
        ssim_text = f"{ssim:.4f}" if ssim is not None else "-"
        print(f"| {name} | {psnr:.2f} | {ssim_text} | {train:.1f} | {select:.1f} | {update:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
