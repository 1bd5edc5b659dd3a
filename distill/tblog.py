"""TensorBoard scalars of a training phase, one epoch at a time (`[log] tensorboard = true`).

`fit` knows nothing of TensorBoard: it calls `on_epoch(record)` after every epoch, and an
`EpochScalars` given as that callback writes the record's numbers. The `tensorboard` package is an
optional extra (`pip install 'distill[tensorboard]'`); `require_tensorboard` says so in one line.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .errors import DistillError

NOT_SCALARS = {"phase", "epoch", "seconds", "train_accuracy", "val_accuracy", "lr", "skipped_steps"}


def require_tensorboard() -> None:
    """Refuse, before any training, a run that asks for TensorBoard scalars without the package."""
    if importlib.util.find_spec("tensorboard") is None:
        raise DistillError("log.tensorboard = true needs the tensorboard package, which is not installed; "
                           "expected `pip install 'distill[tensorboard]'` (or `pip install tensorboard`), "
                           "or log.tensorboard = false")


class EpochScalars:
    """An `on_epoch` callback: each loss term (loss/TERM, loss/total), accuracy/train and
    accuracy/val, lr, images_per_second and skipped_steps at step = epoch, under `log_dir`.

    The event file is flushed after every epoch (TensorBoard shows a phase while it trains) and
    closed after the last one (`epochs`)."""

    def __init__(self, log_dir: str | Path, images: int, epochs: int) -> None:
        self.log_dir, self.images, self.epochs = Path(log_dir), images, epochs
        self.writer: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        step = int(record.get("epoch", 0))
        for name, value in scalars(record, self.images).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        if step >= self.epochs:
            self.writer.close()
            self.writer = None


def scalars(record: dict[str, Any], images: int) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch's history row."""
    out = {f"loss/{'total' if k == 'loss' else k}": float(v) for k, v in record.items()
           if k not in NOT_SCALARS and _number(v)}
    for key, tag in (("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"), ("lr", "lr"),
                     ("skipped_steps", "skipped_steps")):
        if _number(record.get(key)):
            out[tag] = float(record[key])
    if _number(record.get("seconds")) and record["seconds"] > 0:
        out["images_per_second"] = images / record["seconds"]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
