"""Shared test setup: real data from ../shared/data, quiet and deterministic torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "DISTILL_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["DISTILL_DATA"] = str(SHARED_DATA)
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def data_root() -> Path:
    """The folder with mnist.npz / cifar10.npz; tests needing it skip when it is absent."""
    root = Path(os.environ.get("DISTILL_DATA", SHARED_DATA))
    if not (root / "mnist.npz").exists():
        pytest.skip(f"real data not found in {root}")
    return root
