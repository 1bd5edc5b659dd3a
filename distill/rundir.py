"""The files of one run directory, and the rules for starting, reusing and resuming one.

A run directory is the unit users share (see ARCHITECTURE.md):

    recipe.toml        the resolved recipe (after --set)
    teacher.pt student.pt baseline.pt [pruned.pt]   self-describing checkpoints
    history.csv        per-epoch metrics of every phase
    metrics.json       final metrics per role, the gain, the cache, export and bench summaries
    .ROLE.resume.pt    end-of-epoch state of a phase in progress (removed when it finishes)

Every file here is written atomically (distill.files).
"""
from __future__ import annotations

import csv
import io
import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import DistillError
from .files import atomic_write_text
from .recipe import recipe_from_dict, to_toml


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

    def prepare(self, recipe_text: str, resume: bool) -> None:
        """Start a new run here, or check that `--resume` continues the same recipe."""
        if self.path.exists() and not self.path.is_dir():
            raise DistillError(f"output {self.path} is a file; expected a directory for the run")
        started = self.recipe.exists()
        if started and not resume:
            raise DistillError(f"run directory {self.path} already holds a run; expected --resume to "
                               "continue it, or a new --out")
        if started and resume and _resolved(self.recipe.read_text()) != recipe_text:
            raise DistillError(f"run directory {self.path} was started with a different recipe; "
                               f"expected the same recipe and --set values to resume (see {self.recipe})")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise DistillError(f"cannot write to run directory {self.path}: {e.strerror}; expected a "
                               "writable --out directory") from e
        atomic_write_text(self.recipe, recipe_text)

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json of an earlier part of this run ({} when there is none yet)."""
        if not self.metrics.exists():
            return {}
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

    def write(self, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """metrics.json and history.csv (every phase's per-epoch rows, one header for all)."""
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.history, buf.getvalue())


def _resolved(recipe_text: str) -> str:
    """A stored recipe.toml as this version resolves it: a run started before a new key (with its
    default) was added still counts as the same recipe. Text that no longer validates stays as is."""
    try:
        return to_toml(recipe_from_dict(tomllib.loads(recipe_text)))
    except (tomllib.TOMLDecodeError, DistillError):
        return recipe_text
