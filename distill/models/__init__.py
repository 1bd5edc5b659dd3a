"""Model zoo and self-describing checkpoints."""
from ..files import atomic_save
from .checkpoint import ModelCard, finite_weights, load_checkpoint, save_checkpoint
from .ensemble import Ensemble
from .loading import read_state_dict, safe_load
from .registry import available_models, build_model, replace_head

__all__ = ["Ensemble", "ModelCard", "atomic_save", "available_models", "build_model", "finite_weights",
           "load_checkpoint",
           "read_state_dict", "replace_head", "safe_load", "save_checkpoint"]
