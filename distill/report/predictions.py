"""predictions.npz: every scored model's top class per test image, with the labels and class names.

The report's per-class accuracy and teacher-student agreement need them; metrics.json stays a small
readable summary. One int64 array per role, `labels` and `class_names` (a unicode array, so the file
loads with `allow_pickle=False`). Written atomically, role by role, as the phases finish.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write

PREDICTIONS = "predictions.npz"


@dataclass
class Predictions:
    """The test labels, the class names, and each role's top class per test image (same order)."""

    labels: np.ndarray
    class_names: list[str]
    roles: dict[str, np.ndarray]


def save_predictions(run_path: str | Path, role: str, predicted: np.ndarray, labels: np.ndarray,
                     class_names: list[str]) -> None:
    """Add (or replace) `role`'s predictions in the run's predictions.npz. Roles scored on other
    test labels (another test set: none of this run's) are dropped, never mixed."""
    path = Path(run_path) / PREDICTIONS
    labels = np.asarray(labels, dtype=np.int64)
    old = read_predictions(path.parent)
    roles = {}
    if old is not None and np.array_equal(old.labels, labels):
        roles = dict(old.roles)
    roles[role] = np.asarray(predicted, dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels, class_names=np.array([str(c) for c in class_names], dtype=str),
                        **{f"role_{r}": p for r, p in roles.items()})
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data), size=len(data))


def read_predictions(run_path: str | Path) -> Predictions | None:
    """The run's predictions, or None when there is no readable, consistent file (the report then
    says so): a file is data, so anything unexpected in it is refused, never executed."""
    path = Path(run_path) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = npz["labels"]
            names = [str(c) for c in npz["class_names"].tolist()] if "class_names" in npz else []
            roles = {k.removeprefix("role_"): npz[k] for k in npz.files if k.startswith("role_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    arrays = [labels, *roles.values()]
    if any(a.ndim != 1 or a.dtype.kind not in "iu" or len(a) != len(labels) for a in arrays):
        return None
    classes = max(len(names), int(max((a.max() for a in arrays if len(a)), default=-1)) + 1)
    if any(len(a) and a.min() < 0 for a in arrays) or classes > 100_000:
        return None
    names += [str(i) for i in range(len(names), classes)]
    return Predictions(labels.astype(np.int64), names, {r: p.astype(np.int64) for r, p in roles.items()})
