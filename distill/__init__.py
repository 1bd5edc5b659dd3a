"""distill: make big vision models small, and prove it.

The Python API in one screen:

    from distill import Distiller, Term, Schedule, fit, evaluate, Supervised
    from distill.losses import KDLoss, HintLoss, RKDLoss
    from distill.models import build_model, save_checkpoint, load_checkpoint

Names are imported on first use, so `distill --help` (and setting OpenMP variables before torch
loads, as `distill bench` does) stays possible.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {"Distiller": "distiller", "Term": "distiller", "Schedule": "train", "Speed": "train",
            "Supervised": "train", "evaluate": "train", "fit": "train"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
