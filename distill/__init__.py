"""distill: make big vision models small, and prove it.

The Python API in one screen:

    from distill import Distiller, Term, Schedule, fit, evaluate, Supervised
    from distill.losses import KDLoss, HintLoss, RKDLoss
    from distill.models import build_model, save_checkpoint, load_checkpoint

OpenMP threads are told to wait passively (unless OMP_WAIT_POLICY is already set): spinning threads
steal the cores their partners need on a busy machine, which made eager latency many times worse in
benchmarks/speed. libgomp reads the variable once, when torch loads, so it is set before torch.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .distiller import Distiller, Term  # noqa: E402  (after the OpenMP setting)
from .settings import Schedule, Speed  # noqa: E402
from .train import Supervised, evaluate, fit  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Distiller", "Schedule", "Speed", "Supervised", "Term", "evaluate", "fit"]
