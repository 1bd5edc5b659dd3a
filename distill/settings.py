"""How a phase trains, as plain validated settings: schedule, speed, device, teacher cache.

A leaf module: recipes build these and the engine consumes them, so every check lives here, once,
and a recipe reports it under its key path. Each setting validates itself when it is made.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .errors import DistillError, did_you_mean

CACHE_DTYPES = ("float16", "float32")
PRUNE_IMPORTANCES = ("magnitude", "taylor", "lamp")
MAX_WORKERS = 256  # data-loader processes; more only exhausts the machine


@dataclass
class Schedule:
    """How one phase trains: optimizer, learning-rate schedule, epochs and batch size."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"          # sgd | adam | adamw
    momentum: float = 0.9
    nesterov: bool = True           # SGD only; CRD and DKD's reference runs use plain momentum
    weight_decay: float = 5e-4
    scheduler: str = "cosine"       # cosine | step | constant
    milestones: list[int] = field(default_factory=list)  # for step: epochs where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0

    OPTIMIZERS = ("sgd", "adam", "adamw")
    SCHEDULERS = ("cosine", "step", "constant")

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DistillError(f"{key}: expected a positive integer, got {value!r}")
        if not (_finite(self.lr) and self.lr > 0):
            raise DistillError(f"lr: expected a positive number, got {self.lr!r}")
        for key in ("momentum", "weight_decay"):
            value = getattr(self, key)
            if not (_finite(value) and value >= 0):
                raise DistillError(f"{key}: expected a number >= 0, got {value!r}")
        if not (_finite(self.gamma) and self.gamma > 0):
            raise DistillError(f"gamma: expected a positive number, got {self.gamma!r}")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise DistillError(f"warmup_epochs: expected an integer >= 0, got {self.warmup_epochs!r}")
        if any(not isinstance(m, int) or isinstance(m, bool) or m < 0 for m in self.milestones):
            raise DistillError(f"milestones: expected epochs (integers >= 0), got {self.milestones!r}")
        if self.optimizer not in self.OPTIMIZERS:
            raise DistillError(f"optimizer: expected one of {', '.join(self.OPTIMIZERS)}, got {self.optimizer!r}"
                               f"{did_you_mean(self.optimizer, self.OPTIMIZERS)}")
        if self.scheduler not in self.SCHEDULERS:
            raise DistillError(f"scheduler: expected one of {', '.join(self.SCHEDULERS)}, got {self.scheduler!r}"
                               f"{did_you_mean(self.scheduler, self.SCHEDULERS)}")

    def make_optimizer(self, params: Iterable) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay, nesterov=self.nesterov and self.momentum > 0)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def lr_factor(self, epoch: float) -> float:
        """Multiplier of the base learning rate at a (fractional) epoch."""
        if epoch < self.warmup_epochs:  # linear from 0: a fresh net's first steps are its largest
            return epoch / self.warmup_epochs
        if self.scheduler == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))
        if self.scheduler == "step":
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        return 1.0


@dataclass
class Speed:
    """Fast paths for training: mixed precision, memory layout, compilation, the data path."""

    amp: str | None = None          # None | "bf16" | "fp16" (autocast; fp16 uses a GradScaler on CUDA)
    channels_last: bool = False     # NHWC memory layout for conv nets (faster on GPUs and oneDNN)
    compile: bool = False           # torch.compile the training module
    num_workers: int = 0            # DataLoader workers (image folders; in-memory data needs none)
    in_memory: bool = True          # array data: whole batches sliced and augmented on the device

    AMP = ("bf16", "fp16")

    def __post_init__(self) -> None:
        if self.amp not in (None, *self.AMP):
            raise DistillError(f"amp: expected bf16 or fp16 (or no key), got {self.amp!r}")
        if not isinstance(self.num_workers, int) or not 0 <= self.num_workers <= MAX_WORKERS:
            raise DistillError(f"num_workers: expected an integer from 0 to {MAX_WORKERS}, got {self.num_workers!r}")

    def autocast(self, device: torch.device):
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)


def check_device(name: str) -> None:
    """auto, cpu, cuda or cuda:N; whether such a GPU exists is checked when it is used."""
    if name in ("auto", "cpu", "cuda"):
        return
    index = name.removeprefix("cuda:")
    if not (name.startswith("cuda:") and index.isdigit()):
        raise DistillError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for a GPU that is not there is a user error."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DistillError(f"device {device!r} requested but no CUDA GPU is available; expected "
                               "--device cpu or auto")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise DistillError(f"device {device!r} requested but this machine has "
                               f"{torch.cuda.device_count()} GPU(s); expected cuda:0 .. "
                               f"cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


def check_cache(views: int, dtype: str) -> None:
    """The teacher cache's views (fixed augmentations per sample) and storage type."""
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise DistillError(f"cache_views: expected a positive integer, got {views!r}")
    if dtype not in CACHE_DTYPES:
        raise DistillError(f"cache_dtype: expected float16 or float32, got {dtype!r}")


def check_prune(macs: float, importance: str, steps: int, round_to: int = 1) -> None:
    """How `distill.prune` is asked to prune: the MACs fraction to keep, the channel ranking, the
    rounds, and the multiple channel counts are rounded to."""
    if not (_finite(macs) and 0 < macs < 1):
        raise DistillError(f"macs: expected the fraction of the original MACs to keep, strictly between 0 "
                           f"and 1 (0.5 = half), got {macs!r}")
    if importance not in PRUNE_IMPORTANCES:
        raise DistillError(f"importance: expected one of {', '.join(PRUNE_IMPORTANCES)}, got {importance!r}"
                           f"{did_you_mean(importance, PRUNE_IMPORTANCES)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise DistillError(f"steps: expected a positive integer, got {steps!r}")
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise DistillError(f"round_to: expected an integer >= 1 (1 = no rounding), got {round_to!r}")


def check_provider(provider: str) -> None:
    """An ONNX Runtime execution provider this installation has (CPUExecutionProvider always)."""
    import onnxruntime
    available = onnxruntime.get_available_providers()
    if provider not in available:
        raise DistillError(f"latency provider {provider!r} is not available in this ONNX Runtime; expected one "
                           f"of {', '.join(available)}{did_you_mean(str(provider), available)}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
