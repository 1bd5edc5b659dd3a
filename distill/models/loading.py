"""Reading weight files safely: `torch.load(weights_only=True)`, and errors a user can act on.

No pickled code runs: a file holding anything but tensors and plain data is refused, naming what it
asked for. The lowest layer of `distill.models`: checkpoints and pretrained weights both read here.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import DistillError
from ..files import ensure_readable, unreadable

FORMAT = "distill-checkpoint/1"
EXPECTED = "a file written by distill or torch.save"


def safe_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; unsafe or broken files become a DistillError.

    A missing file, a directory and a file without read permission are named as such: only
    content torch cannot parse is called corrupt.
    """
    path = ensure_readable(path, "checkpoint", EXPECTED)
    try:
        with warnings.catch_warnings():  # torch warns before refusing a non-torch pickle: one line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if unsafe is None:  # garbage bytes, or a pickle torch cannot even parse safely
            raise _corrupt(path, e) from e
        raise DistillError(f"refusing to load {path}: it holds objects other than tensors and plain "
                           f"data, which could run code when unpickled ({unsafe[:160]}); expected "
                           "weights saved as tensors and plain data") from e
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:  # changed since the check above
        raise unreadable(path, "checkpoint", EXPECTED, e) from e
    except Exception as e:  # a truncated or foreign file fails in many ways, all of them "corrupt"
        raise _corrupt(path, e) from e


def _corrupt(path: Path, e: Exception) -> DistillError:
    return DistillError(f"checkpoint {path} cannot be read: it is truncated, corrupt or not a torch file "
                        f"({type(e).__name__}); expected a complete file written by torch.save")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a distill checkpoint or of a plain saved state dict."""
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["state_dict"]
    for key in ("state_dict", "model"):  # {"state_dict"|"model": ..., "epoch": ...} (RepDistiller, mdistiller)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DistillError(f"{path} holds no state dict; expected a distill checkpoint or torch.save(model.state_dict())")
    return obj
