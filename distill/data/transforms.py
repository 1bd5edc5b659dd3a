"""Tensor transforms and the one Dataset class every split uses.

Images stay uint8 (C, H, W) in memory and become normalised float tensors without PIL round trips:
scale to [0, 1], match the channel count, augment, resize, normalise. The small-image steps are
hand-written because torchvision's generic transforms cost several times more per sample. A
`Pipeline` of them works on one image or on a whole batch (N, C, H, W) at once, drawing each
image's random shift and flip separately (`Draw`): in-memory datasets augment whole batches on the
training device (`distill.data.batched`). One image draws from torch's global RNG, so
`torch.manual_seed` (and DataLoader's per-worker seeding) makes it reproducible. Every step's repr is
its class and settings, never a memory address, so a pipeline's repr describes it the same way in
every process (the teacher cache keys on it).
"""
from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import DistillError
from .batched import Draw

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as in torchvision's rgb_to_grayscale


class Source(Protocol):
    """Where the pixels come from: in-memory tensors, image files, or generated noise."""

    labels: np.ndarray  # one integer label per image

    def image(self, i: int) -> torch.Tensor:  # uint8 (C, H, W)
        ...

    def pixels(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Every image as one uint8 (N, C, H, W) tensor (on `device` when it fits), or None when the
        images are not held in memory (files)."""
        ...


class ImageDataset(Dataset):
    """`source`'s images at `indices` with (possibly relabelled) `targets`, through `transform`.

    When the source is in memory and the transform a `Pipeline`, whole batches are gathered and
    transformed at once on the training device (`batch`)."""

    def __init__(self, source: Source, indices: Sequence[int], targets: Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor]):
        self.source = source
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source.image(int(self.indices[k]))), int(self.targets[k])

    @property
    def batchable(self) -> bool:
        pixels = getattr(self.source, "pixels", None)  # a user's own Source may not have it
        return isinstance(self.transform, Pipeline) and pixels is not None and pixels() is not None

    def content_digest(self) -> str | None:
        """sha256 of every image's pixels and label when the images are held in memory, else None:
        the teacher cache keys on it, so an image edited anywhere in the data rebuilds the cache."""
        pixels = self.source.pixels()
        if pixels is None:
            return None
        h = hashlib.sha256(pixels[self.indices].contiguous().numpy())  # .npz RGB images are channels-last
        h.update(self.targets.numpy())
        return h.hexdigest()

    def batch(self, k: torch.Tensor, device: torch.device,
              keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) of the samples at positions `k` on `device`, augmented there; with `keys`,
        each sample's random augmentation is the one its key draws (`Draw`)."""
        pixels = self.source.pixels(device)
        rows = self.indices[k].to(pixels.device, non_blocking=True)
        images = pixels[rows].to(device, non_blocking=True)
        return (self.transform.batch(images, Draw(len(k), device, keys)),
                self.targets[k].to(device, non_blocking=True))


class Step:
    """A transform whose repr is `Name(setting=value, ...)`: the same in every process. It takes one
    image (C, H, W) or a batch (N, C, H, W); a random step's `batch` draws per image from a `Draw`."""

    def settings(self) -> dict[str, Any]:
        return dict(vars(self))

    def batch(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        return self(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


class ToFloat(Step):
    """uint8 (or 0..max_value) pixels -> float32 in [0, 1]."""

    def __init__(self, max_value: float = 255.0):
        self.max_value = max_value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(self.max_value)


class ToChannels(Step):
    """Grey -> RGB by replication (so ImageNet models eat MNIST), RGB -> grey by luminance."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] == self.channels:
            return x
        if self.channels == 3:
            return x.expand(*x.shape[:-3], 3, -1, -1)
        return F.rgb_to_grayscale(x)


class RandomShift(Step):
    """Shift by up to `pad` pixels each way, filling with zeros: RandomCrop(size, padding=pad)
    at a fraction of the per-sample cost of torchvision's generic version."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.pad, x.shape[-2:]
        i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return nn.functional.pad(x, (p, p, p, p))[..., i:i + h, j:j + w]

    def batch(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Each image of the batch cut from the zero-padded batch at its own offset (i, j)."""
        p, (n, c, h, w) = self.pad, x.shape
        offsets = draw.integers(2 * p + 1, 2)
        rows = (offsets[:, :1] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[:, 1:] + torch.arange(w, device=x.device))[:, None, None, :]
        padded = nn.functional.pad(x, (p, p, p, p))
        flat = (rows * (w + 2 * p) + cols).expand(n, c, h, w).reshape(n, c, h * w)
        return padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


class RandomFlip(Step):
    """Mirror left-right with probability 1/2."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(()) < 0.5 else x

    def batch(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        flip = draw.integers(2).bool().view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class Resize(Step):
    """Bilinear, antialiased resize to `size` x `size`."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.resize_image(x, [self.size, self.size], antialias=True)


class Normalize(Step):
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean, std = check_stats("mean", mean), check_stats("std", std)
        if len(mean) != len(std):
            raise DistillError(f"mean={mean} and std={std}: expected as many values in each (one per channel)")
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.on: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"cpu": (self.mean, self.std)}

    def settings(self) -> dict[str, Any]:  # the exact values: a tensor's repr rounds them
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self.on:
            self.on[key] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self.on[key]
        return (x - mean) / std


class Pipeline(Step):
    """Steps applied in order, to one image or to a batch (each image with its own random draws)."""

    def __init__(self, steps: Sequence[Step]):
        self.steps = list(steps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def batch(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        for step in self.steps:
            x = step.batch(x, draw)
        return x


def check_stats(kind: str, given: Any) -> list[float]:
    """Normalisation `kind` ("mean" or "std") as one float per channel, if every value stays finite
    in float32 (and a std positive): a zero or NaN std turns every image into inf or NaN. They come
    from recipes and from model cards read from checkpoint files, so every pipeline checks them."""
    values = list(given) if isinstance(given, Iterable) and not isinstance(given, str) else [given]
    if not values or not all(_usable_stat(v, positive=kind == "std") for v in values):
        expected = "finite numbers" if kind == "mean" else "positive finite numbers"
        raise DistillError(f"{kind}={given!r}: expected {expected}, one per channel")
    return [float(v) for v in values]


def _usable_stat(value: Any, positive: bool) -> bool:
    """A real number that stays finite (and positive, for a std) in float32."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return False
    limits = torch.finfo(torch.float32)
    return abs(value) <= limits.max and (value >= limits.tiny if positive else True)


def convert_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for a converted channel count (grey -> RGB exact; RGB -> grey a
    luminance-weighted approximation, since the grey image's exact statistics are not known)."""
    if len(values) == channels:
        return tuple(values)
    if channels == 3:
        return tuple(values) * 3
    return (sum(w * v for w, v in zip(LUMA, values)),)


def tensor_pipeline(max_value: float, channels: int, mean: Sequence[float], std: Sequence[float],
                    size: int | None = None, pad: int = 0, flip: bool = False) -> Pipeline:
    """Small-image pipeline: shift by up to `pad` pixels and flip (train only) at the native
    resolution, then resize to `size` x `size` and normalise."""
    steps: list = [ToFloat(max_value), ToChannels(channels)]
    steps += [RandomShift(pad)] if pad else []
    steps += [RandomFlip()] if flip else []
    steps += [Resize(size)] if size else []
    return Pipeline([*steps, Normalize(mean, std)])


def imagenet_pipeline(channels: int, mean: Sequence[float], std: Sequence[float], size: int,
                      train: bool) -> T.Compose:
    """The standard ImageNet recipe: RandomResizedCrop + flip to train, resize to size*256/224
    then centre crop to evaluate."""
    if train:
        geometry = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    return T.Compose([ToFloat(), ToChannels(channels), *geometry, Normalize(mean, std)])
