"""The files of one run directory, and the rules for starting, reusing and resuming one.

A run directory is the unit users share (see ARCHITECTURE.md):

    recipe.toml        the resolved recipe (after --set)
    teacher.pt student.pt baseline.pt [pseudo.pt pruned.pt]   self-describing checkpoints
    history.csv        per-epoch metrics of every phase
    metrics.json       final metrics per role, the gain, the cache, export and bench summaries
    predictions.npz    each scored model's top class per test image, the labels and class names
    report.html        the run as one self-contained page (distill.report), refreshed after each phase
    tb/ROLE/           TensorBoard scalars per phase, when the recipe sets [log] tensorboard = true
    .ROLE.resume.pt    end-of-epoch state of a phase in progress (removed when it finishes)
    .lock              who holds the directory: one process per run directory at a time
    seed-N/            with several seeds: one such run directory per seed; the top level then
                       holds recipe.toml and the pooled metrics.json

Every file here but `.lock` is written atomically (distill.files). Only a run's own files are
reused: a directory that holds run files but no recipe.toml belongs to no run this one can continue.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import socket
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DistillError
from .files import atomic_write_text, ensure_readable
from .recipe import recipe_from_dict, to_toml

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None  # type: ignore[assignment]

ROLES = ("teacher", "student", "baseline", "pseudo", "pruned")
EXPORTED = ("student", "pruned")  # roles the export phase writes ONNX files for
REPORTS = ("metrics.json", "history.csv", "bench.json", "bench.md", "bench.png", "teacher_cache",
           "predictions.npz", "report.html", "tb")


class RunDir:
    """Paths of one run's files, and reading and writing its metrics and history."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe = self.path / "recipe.toml"
        self.history = self.path / "history.csv"
        self.metrics = self.path / "metrics.json"

    def checkpoint(self, role: str) -> Path:
        return self.path / f"{role}.pt"

    def resume_file(self, role: str) -> Path:
        return self.path / f".{role}.resume.pt"

    def seed_dir(self, seed: int) -> Path:
        """The run directory of one seed of a multi-seed run."""
        return self.path / f"seed-{seed}"

    def files(self) -> list[Path]:
        """Every file (and folder) a run may write here, and so may reuse on --resume."""
        names = [self.recipe.name, *REPORTS]
        names += [p.name for role in ROLES for p in (self.checkpoint(role), self.resume_file(role))]
        names += [f"{role}{kind}.onnx" for role in EXPORTED for kind in ("", ".int8")]
        return [self.path / name for name in names]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run directory until the block ends: a second process (a second `--resume` on
        the same --out) is refused, naming the holder. The kernel releases the lock when the holder
        exits, also when it crashes or is killed, so a lock is never stale."""
        self._create()
        where = self.path / ".lock"
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DistillError(f"cannot write to run directory {self.path}: {e.strerror}; expected a "
                               "writable --out directory") from e
        try:
            if _locked(fd, where):
                written = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                holder = written.splitlines()[0] if written else "an unknown process"  # one line, whatever is there
                raise DistillError(f"run directory {self.path} is in use by another distill process "
                                   f"({holder}); expected one process per run directory: wait for it to "
                                   "finish or stop it, then run again (with --resume), or use another --out")
            started = dt.datetime.now().isoformat(timespec="seconds")
            with contextlib.suppress(OSError):  # who holds it is only for the message: a full disk may refuse it
                os.ftruncate(fd, 0)  # the lock is on this inode, so the file is rewritten in place
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def prepare(self, recipe_text: str, resume: bool) -> None:
        """Check that a new run may start here, or that `--resume` continues the same recipe.
        Nothing is written but the folder itself: `begin` records the recipe once the preflight
        passed, so a recipe that fails it can be fixed and run again into the same --out."""
        self._create()
        started = self.recipe.exists()
        if started and not resume:
            raise DistillError(f"run directory {self.path} already holds a run; expected --resume to "
                               "continue it, or a new --out")
        if started and resume and _resolved(self._stored_recipe()) != recipe_text:
            raise DistillError(f"run directory {self.path} was started with a different recipe; "
                               f"expected the same recipe and --set values to resume (see {self.recipe})")
        foreign = [p.name for p in self.files() if p.exists()]
        if not started and foreign:
            raise DistillError(f"run directory {self.path} holds {', '.join(foreign)} but no recipe.toml, so "
                               "they belong to no run this one can continue (nothing there is reused); "
                               "expected a new or empty --out")
        if resume and not started:  # a mistyped --out would otherwise start again from nothing
            raise DistillError(f"--resume: run directory {self.path} holds no run to continue (no recipe.toml); "
                               "expected the --out of an interrupted run, or no --resume to start a new one")

    def _stored_recipe(self) -> str:
        """The text of this run's recipe.toml, or one line saying why it cannot be read."""
        expected = "the recipe.toml this run wrote: restore it, or start a new --out"
        ensure_readable(self.recipe, "run recipe", expected)
        try:
            return self.recipe.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DistillError(f"run recipe {self.recipe} cannot be read ({type(e).__name__}); expected "
                               f"{expected}") from e

    def begin(self, recipe_text: str) -> None:
        """Record the resolved recipe: from now on this directory holds this run."""
        atomic_write_text(self.recipe, recipe_text)

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DistillError(f"output {self.path} is a file; expected a directory for the run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DistillError(f"cannot write to run directory {self.path}: {e.strerror}; expected a "
                               "writable --out directory") from e

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json of an earlier part of this run ({} when there is none yet)."""
        if not self.metrics.exists():
            return {}
        ensure_readable(self.metrics, "metrics file",
                        "the JSON this run wrote: delete it and run again with --resume")
        try:
            metrics = json.loads(self.metrics.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DistillError(f"{self.metrics} cannot be read ({type(e).__name__}); expected the JSON this "
                               "run wrote: delete it and run again with --resume (it is rebuilt from the "
                               "checkpoints)") from e
        if not isinstance(metrics, dict):
            raise DistillError(f"{self.metrics} holds {type(metrics).__name__}, not a JSON object; expected "
                               "the metrics this run wrote: delete it and run again with --resume")
        return metrics

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")

    def write(self, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """metrics.json and history.csv (every phase's per-epoch rows, one header for all)."""
        self.write_metrics(metrics)
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.history, buf.getvalue())


def _locked(fd: int, where: Path) -> bool:
    """Take an exclusive lock on `fd` without waiting; True when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as e:  # a filesystem without flock (some network mounts): run unguarded
        warnings.warn(f"cannot lock {where} ({e.strerror}): nothing stops a second process from using "
                      "this run directory at the same time", stacklevel=3)
    return False


def _resolved(recipe_text: str) -> str:
    """A stored recipe.toml as this version resolves it: a run started before a new key (with its
    default) was added still counts as the same recipe. Text that no longer validates stays as is."""
    try:
        return to_toml(recipe_from_dict(tomllib.loads(recipe_text)))
    except (tomllib.TOMLDecodeError, DistillError):
        return recipe_text
