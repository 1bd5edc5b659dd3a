"""Model zoo and self-describing checkpoints."""
from .checkpoint import ModelCard, atomic_save, load_checkpoint, safe_load, save_checkpoint
from .registry import available_models, build_model, replace_head

__all__ = ["ModelCard", "atomic_save", "available_models", "build_model", "load_checkpoint",
           "replace_head", "safe_load", "save_checkpoint"]
