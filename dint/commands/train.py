"""`dint train` (and `python -m dint.train`, `torchrun ... -m dint.train`): one training run.

The same code runs in one process or under torchrun; every error is one line and an exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dint.core.config import check_against_store, configuration_reference, load_config, parse_cli
from dint.core.errors import DintError, escaped, os_error_line, say, stop_on_sigterm, stopped_line
from dint.core.files import remove_unfinished
from dint.core.packages import check_torch
from dint.data.store import open_store
from dint.distributed.collectives import collective_failure, destroy_distributed
from dint.train.checkpoint import check_run_folder
from dint.train.trainer import Trainer

USAGE = """usage: dint train --config PATH [--section.key VALUE ...] [--check]
       python -m dint.train --config PATH [--section.key VALUE ...]
       torchrun --nproc_per_node N -m dint.train --config PATH [--section.key VALUE ...]

Train one field over a dint store with Implicit Neural Teaching. Every key of the config
(sections run, data, model, teacher, train, eval, checkpoint, metrics) can be set in the TOML file
and overridden on the command line, e.g. --train.steps 100 or --teacher.strategy=uniform.

  --config PATH     the TOML config (configs/demo.toml, configs/cpu/, configs/paper/)
  --resume FOLDER   short for --checkpoint.resume FOLDER (auto, never, or a checkpoint folder)
  --check           check the config and the store, then stop
  -h, --help        this help, then every key of the config (docs/configuration.md)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(USAGE + "\n\n" + configuration_reference(), end="")
        return 0
    trainer, config = None, None
    stop_on_sigterm()  # torchrun, Slurm and timeout stop ranks with SIGTERM: clean up as on Ctrl-C
    try:
        check_torch()
        check_only = "--check" in argv
        config_path, overrides = parse_cli([a for a in argv if a != "--check"])
        config = load_config(config_path, overrides)
        if check_only:  # validate config and store, then stop (launch/run_train.sh runs this first)
            check_against_store(config, open_store(config.data.store).info)
            check_run_folder(config)
            return 0
        trainer = Trainer(config)
        summary = trainer.train()
    except DintError as e:
        if os.environ.get("RANK", "0") == "0" or not e.shared:  # an error every rank sees is printed once
            print(f"dint.train: error: {escaped(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"dint.train: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        line, code = stopped_line(e, remove_unfinished())
        print(f"dint.train: {line}", file=sys.stderr)
        return code
    except RuntimeError as e:  # a collective broke: say which rank saw it, and where, in one line
        message = collective_failure(
            e, trainer.phase if trainer is not None else "start-up", config.run.collective_timeout if config else None
        )
        if message is None:
            raise
        print(f"dint.train: error: {message}", file=sys.stderr)
        return 1
    finally:
        trainer = None  # the engine holds the process group; release it before the group is destroyed
        destroy_distributed()
        remove_unfinished()  # however it ended, no half-written output stays behind
    if summary["outputs"]:
        quality = f"final PSNR {summary['final_psnr']:.2f} dB"
        quality += f", SSIM {summary['ssim']:.4f}" if "ssim" in summary else ""
        quality += f", IoU {summary['iou']:.4f}" if "iou" in summary else ""
        say(
            f"dint.train: {quality} after {summary['steps']} steps on {summary['world_size']} rank(s), "
            f"{summary['train_seconds']:.1f} s training"
        )
        say(
            f"dint.train: outputs in {Path(summary['outputs']['summary']).parent}/: "
            + ", ".join(Path(p).name for p in summary["outputs"].values())
        )
    return 0
