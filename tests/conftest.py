"""Shared test setup: real data from ../shared/data, quiet and deterministic torch."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning OpenMP threads

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and lose much to them on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
