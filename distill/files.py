"""Files in and out: atomic writes, outputs that never land on inputs, readable inputs, free space.

Every state file of a run (checkpoints, resume files, metrics, history, cache metadata) is written
to a temporary file in the same folder, flushed to disk, then renamed over the target: a crash, a
kill or a full disk never leaves half a file behind. Commands check before any slow work that no
output is one of their input files, and readers say "missing", "a directory" or "permission
denied" for what is exactly that, never "corrupt".
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import DistillError

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any], size: int | None = None) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync, then rename it over `path`.

    `size` (bytes, when the caller knows it) goes into the error a full disk gives.
    """
    path = Path(path)
    with disk_full_is_one_line(path, size):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        except OSError as e:
            if is_disk_full(e):
                raise
            raise DistillError(f"cannot write {path}: {e.strerror}; expected a writable directory") from e
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except IsADirectoryError as e:  # the rename found a folder where the file goes
            Path(tmp).unlink(missing_ok=True)
            raise DistillError(f"cannot write {path}: it is a directory; expected a file there (move the "
                               "folder away)") from e
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def disk_full_is_one_line(path: PathLike, size: int | None = None) -> Iterator[None]:
    """Turn a full disk (or quota) while writing `path` into one DistillError naming the file and,
    when known, the bytes it needed; the caller removes its partial files."""
    try:
        yield
    except BaseException as e:
        if is_disk_full(e) and not isinstance(e, DistillError):  # an inner writer may have said it already
            raise _disk_error(Path(path), size) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), size=len(data))


def atomic_save(obj: Any, path: PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f), size=tensor_bytes(obj))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in `obj` (nested dicts, lists and tuples): about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def human_bytes(n: float) -> str:
    """1536 -> '1.5 kB', 3e9 -> '3.0 GB' (decimal units, as `df -H` prints)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def ensure_free_space(path: PathLike, nbytes: int) -> None:
    """Refuse before writing `nbytes` at `path` when its filesystem has less free space.

    Needed where a full disk is not an error but a crash: writing to a memory map whose file
    cannot grow kills the process with SIGBUS. `path` need not exist yet.
    """
    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(where).free
    if nbytes > free:
        raise DistillError(f"not enough free disk space for {path}: it needs {human_bytes(nbytes)} but only "
                           f"{human_bytes(free)} are free there; expected at least {human_bytes(nbytes)} free "
                           "(free some space, or write somewhere else)")


def refuse_overwrite(outputs: Iterable[tuple[str, PathLike]], inputs: Iterable[PathLike]) -> None:
    """Refuse an output that is one of the inputs: the same path, a symlink to it, or a hard link.

    `outputs` are (what, path) pairs such as ("--output", "s.onnx"); call it before any slow work,
    so that a mistyped `-o` never replaces the file being read.
    """
    existing = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    for what, out in outputs:
        out = Path(out)
        for source in existing:
            if _same_file(out, source):
                raise DistillError(f"{what} {out} is the input file {source}; expected an output path "
                                   "that is not an input (writing it would destroy the input)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def ensure_readable(path: PathLike, what: str, expected: str) -> Path:
    """`path` as a Path, after refusing a missing file, a directory or one without read permission.

    Readers call it first, so that those never come out as "truncated or corrupt".
    """
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"{what} {path} is a directory; expected {expected}")
    if not path.exists():
        raise DistillError(f"{what} {path} does not exist; expected {expected}")
    if not path.is_file():  # a pipe or a device: opening it could block forever
        raise DistillError(f"{what} {path} is not a regular file; expected {expected}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise unreadable(path, what, expected, e) from e
    return path


def unreadable(path: PathLike, what: str, expected: str, e: OSError) -> DistillError:
    """The error for a file that exists but cannot be opened (permission denied, a special file...)."""
    return DistillError(f"{what} {path} cannot be opened: {e.strerror or type(e).__name__}; expected {expected} "
                        "that you can read")


def is_disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an exception it was raised from, says the disk (or a quota) is full."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _disk_error(path: Path, size: int | None) -> DistillError:
    needed = f" ({human_bytes(size)} to write)" if size else ""
    return DistillError(f"no space left on the disk to write {path}{needed}; expected free disk space there "
                        "(nothing half-written was kept; free some space and run again, with --resume for a run)")
