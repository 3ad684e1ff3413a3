"""TensorBoard event files in run.dir/tensorboard/, written by rank 0 (metrics.tensorboard).

Scalars at every logged step (TensorBoard's "relative" axis shows them against wall time),
pictures at evaluations. A run from its start replaces the event files an earlier run left
in the folder (as it replaces metrics.jsonl); a resumed run purges the events logged after its checkpoint by the
run it continues (SummaryWriter's purge_step), so no step shows twice. Event files are
append-only records with checksums: a killed run leaves files TensorBoard reads up to the
last whole record.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from dint.core.files import naming, own_folder

# metrics.jsonl key -> TensorBoard tag
SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "psnr": "quality/psnr",
    "iou": "quality/iou",
    "ratio": "teacher/ratio",
    "selected": "teacher/selected",
    "imbalance": "teacher/imbalance",
    "train_seconds": "time/train_seconds",
    "select_seconds": "time/select_seconds",
    "balance_seconds": "time/balance_seconds",
    "update_seconds": "time/update_seconds",
}


def _quiet_writer_threads() -> None:
    """TensorBoard writes events in a thread of its own, whose failure (a full disk) it raises
    again at the next call of this process, where it is named and reported in one line: the
    thread does not print a traceback of it too."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    report = threading.excepthook
    if getattr(report, "quiet_for", None) is _AsyncWriterThread:
        return

    def hook(args) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            report(args)

    hook.quiet_for = _AsyncWriterThread
    threading.excepthook = hook


class TensorBoardLog:
    def __init__(self, folder: Path | None, resume_after: int = 0):
        """Writes into `folder` (None: writes nothing); `resume_after`: the step a resume starts after.
        A write that fails (a full disk) raises an OSError naming `folder`."""
        self.writer, self.folder = None, folder
        self.after = resume_after  # steps up to this one are shown already: nothing is added at them
        self.shown_signal = False  # the signal's own picture is shown once a process
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            own_folder(Path(folder))  # never a link out of the run folder
            _quiet_writer_threads()
            with naming(folder):
                if not resume_after:  # a run from its start replaces what an earlier run logged here
                    for old in Path(folder).glob("events.out.tfevents.*"):
                        old.unlink()

                self.writer = SummaryWriter(
                    str(folder), purge_step=resume_after + 1 if resume_after else None, flush_secs=30
                )

    def rewind(self, step: int) -> None:
        """A rollback to `step`: hide what was logged after it (as a resume does), it comes again."""
        if self.writer is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        with naming(self.folder):
            writer = self.writer._get_file_writer()  # what SummaryWriter itself does for purge_step
            writer.add_event(Event(step=step + 1, file_version="brain.Event:2"))
            writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
        self.after = step

    def scalars(self, record: dict) -> None:
        if self.writer is None or record["step"] <= self.after:
            return
        with naming(self.folder):
            for key, tag in SCALARS.items():
                if record.get(key) is not None:
                    self.writer.add_scalar(tag, record[key], record["step"])

    def pictures(self, step: int, pictures: dict[str, np.ndarray]) -> None:
        """{name: HxWx3 uint8} under the tag pictures/name."""
        if self.writer is None or step <= self.after:
            return
        with naming(self.folder):
            for name, picture in pictures.items():
                self.writer.add_image(f"pictures/{name}", picture, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            with naming(self.folder):
                self.writer.close()
