"""Shard the real signals and run every configs/cpu/*.toml with 2 ranks; print a Markdown table.

    .venv/bin/python benchmarks/run_cpu_configs.py [--only image_kodak,shape_armadillo] [--nproc 2]

Each config names its store and the exact `dint-shard` command in its header comment
("# Store:  ..."); that command is run when the store is missing. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import tomllib

from dint.distributed.launch import torchrun_command

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def shard_command(config_path: Path) -> list[str]:
    for line in config_path.read_text().splitlines():
        if line.startswith("# Store:"):
            words = shlex.split(line.removeprefix("# Store:").strip())
            return [str(VENV_BIN / words[0]), *words[1:]]
    raise SystemExit(f"{config_path}: no '# Store:' line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    configs = sorted((REPO / "configs" / "cpu").glob("*.toml"))
    if args.only:
        configs = [c for c in configs if c.stem in args.only.split(",")]
    rows = []
    for config_path in configs:
        config = tomllib.loads(config_path.read_text())
        store = REPO / config["data"]["store"]
        if not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(shard_command(config_path), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        subprocess.run(
            torchrun_command(args.nproc, "-m", "dint.train", "--config", config_path, "--checkpoint.resume", "never"),
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        s = json.loads((REPO / config["run"]["dir"] / "summary.json").read_text())
        quality = f"PSNR {s['final_psnr']:.2f} dB"
        if "ssim" in s:
            quality += f", SSIM {s['ssim']:.3f}"
        if "iou" in s:
            quality += f", IoU {s['iou']:.3f}"
        rows.append(
            (
                config_path.stem,
                s["modality"],
                f"{s['points']:,}",
                s["steps"],
                quality,
                f"{s['train_seconds']:.0f}",
                f"{wall:.0f}",
            )
        )
    print("| config | signal | points | steps | quality | train s | wall s (with start-up) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
