"""What a report reads from a run directory, read leniently: a run in progress or an older run is
reported with what it has, and the page says what is missing instead of the report failing."""
from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DistillError
from .predictions import Predictions, read_predictions

GAINS = ("gain", "gain_over_pseudo_labels")  # the student against its baseline, and against pseudo-labels
MODEL_ROLES = ("teacher", "student", "baseline", "pseudo", "pruned")
RUN_FILES = ("recipe.toml", "metrics.json")  # a run directory holds at least one of them


@dataclass
class RunData:
    """One run directory's figures; `notes` lists what could not be read, one line each."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    recipe_text: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    predictions: Predictions | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.metrics.get("recipe") or self.recipe.get("name") or self.path.name)

    @property
    def seeds(self) -> bool:
        """Whether this is the top directory of a multi-seed run (`distill run --seeds K`)."""
        return isinstance(self.metrics.get("seeds"), list) and isinstance(self.metrics.get("runs"), list)

    def roles(self) -> list[str]:
        """The models this run scored, in pipeline order."""
        models = self.metrics.get("models") if self.seeds else self.metrics
        return [r for r in MODEL_ROLES if isinstance(models, dict) and isinstance(models.get(r), dict)]

    def expected_phases(self) -> list[str]:
        """The phases the recipe asks for (the defaults when its recipe.toml is missing)."""
        r = self.recipe
        on = {k: _enabled(r, k, default) for k, default in
              (("baseline", True), ("prune", False), ("export", False), ("bench", False))}
        phases = ["teacher", "student"]
        phases += ["baseline", "gain"] if on["baseline"] else []
        pseudo = r.get("baseline", {}).get("pseudo_labels") if isinstance(r.get("baseline"), dict) else False
        phases += ["pseudo", "gain_over_pseudo_labels"] if pseudo is True else []
        phases += ["pruned"] if on["prune"] else []
        phases += ["export"] if on["export"] else []
        phases += ["bench"] if on["bench"] else []
        return phases

    def missing_phases(self) -> list[str]:
        """Phases the recipe asks for whose results metrics.json does not hold (yet)."""
        if self.seeds:
            done = set(self.roles()) | {g for g in GAINS if g in self.metrics}
            return [p for p in self.expected_phases() if p in (*MODEL_ROLES, *GAINS) and p not in done]
        return [p for p in self.expected_phases() if not isinstance(self.metrics.get(p), dict)]


def _enabled(recipe: dict[str, Any], section: str, default: bool) -> bool:
    table = recipe.get(section)
    value = table.get("enabled", default) if isinstance(table, dict) else default
    return value if isinstance(value, bool) else default


def read_run(path: str | Path) -> RunData:
    """The run directory at `path`; a DistillError when it is not one (no recipe.toml and no
    metrics.json), so `distill report` on a wrong folder is one line."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise DistillError(f"run {path} {what}; expected a run directory (with recipe.toml and metrics.json)")
    if not any((path / name).is_file() for name in RUN_FILES):
        raise DistillError(f"{path} is not a run directory: it holds no recipe.toml and no metrics.json; "
                           "expected the --out of `distill run` (e.g. runs/quickstart)")
    run = RunData(path)
    run.metrics = _json(path / "metrics.json", run.notes) or {}
    recipe = path / "recipe.toml"
    seeds = [name for name in run.metrics.get("runs", []) if plain_name(name)] if run.seeds else []
    if seeds and not recipe.is_file():  # the seeds share one recipe
        recipe = path / seeds[0] / "recipe.toml"
    run.recipe_text, run.recipe = _recipe(recipe, run.notes)
    run.history = _history(path / "history.csv", run.notes)
    if (path / "bench.json").is_file():
        run.bench = _json(path / "bench.json", run.notes)
    run.predictions = read_predictions(path)
    if run.predictions is None and not run.seeds and run.roles():
        run.notes.append("predictions.npz is missing or unreadable (a run made before reports existed?): "
                         "no per-class accuracy or agreement")
    return run


def plain_name(name: object) -> bool:
    """Whether a folder name read from metrics.json stays inside the run directory."""
    return isinstance(name, str) and bool(name) and not any(c in name for c in "/\\\0") and name not in (".", "..")


def _text(path: Path, notes: list[str]) -> str | None:
    if not path.is_file():
        notes.append(f"{path.name} is missing")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        notes.append(f"{path.name} cannot be read ({type(e).__name__})")
        return None


def _json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    text = _text(path, notes)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        notes.append(f"{path.name} is not valid JSON")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path.name} holds no JSON object")
        return None
    return value


def _recipe(path: Path, notes: list[str]) -> tuple[str, dict[str, Any]]:
    text = _text(path, notes)
    if text is None:
        return "", {}
    try:
        return text, tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        notes.append(f"{path.name} is not valid TOML")
        return text, {}


def _history(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """history.csv rows with numbers as floats (empty cells dropped)."""
    if not path.is_file():
        return []
    text = _text(path, notes)
    rows = []
    for row in csv.DictReader((text or "").splitlines()):
        rows.append({k: _number(v) for k, v in row.items() if k and v not in (None, "")})
    return rows


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
