"""distill: make big vision models small, and prove it.

The Python API in one screen:

    from distill import Distiller, Term, Schedule, fit, evaluate, Supervised
    from distill.losses import KDLoss, HintLoss, RKDLoss
    from distill.models import build_model, save_checkpoint, load_checkpoint
"""
from .distiller import Distiller, Term
from .train import Schedule, Supervised, evaluate, fit

__version__ = "0.1.0"
__all__ = ["Distiller", "Schedule", "Supervised", "Term", "evaluate", "fit"]
