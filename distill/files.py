"""Atomic file writes: a crash, a kill or a full disk never leaves half a file behind.

Every state file of a run (checkpoints, resume files, metrics, history, cache metadata) is written
to a temporary file in the same folder, flushed to disk, then renamed over the target.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import DistillError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync, then rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DistillError(f"cannot write {path}: {e.strerror}; expected a writable directory") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(e):
            raise _disk_error(path) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _is_disk_full(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _disk_error(path: Path) -> DistillError:
    return DistillError(f"no space left to write {path}; expected free disk space there (nothing "
                        "half-written was kept; free some space and run again, with --resume for a run)")
