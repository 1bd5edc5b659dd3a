"""Whole batches from in-memory data: one index slice per batch, no per-sample `__getitem__`.

For the models this toolkit produces (small students on small images) a DataLoader's per-sample
transforms and collation cost more than the training step. A dataset that holds its images as one
tensor offers `batch(positions, device, keys=None) -> (images, targets, ...)` and
`batchable = True`: it gathers the rows, moves them to the device as uint8 and augments them there,
per sample, in one go. `IndexBatches` walks a sampler's batches of indices through it, so the batches
(and, under DDP, each rank's shard) are exactly those a DataLoader over the same sampler would give.

Random augmentation draws per-sample parameters with `Draw`: from torch's generator on the batch's
device (training: reproducible from the seed, saved in resume files), or as a pure function of
per-sample integer keys (the teacher cache's fixed views: the same view of a sample is the same image
on any device and in any batch).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, Dataset, Sampler, TensorDataset

MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd and below 2**31: products of 32-bit values stay inside int64


def batchable(dataset: Dataset) -> bool:
    """Whether `dataset` can hand out whole batches by index (`gather`)."""
    return type(dataset) is TensorDataset or bool(getattr(dataset, "batchable", False))


def gather(dataset: Dataset, positions: Tensor, device: torch.device | str = "cpu",
           keys: Tensor | None = None) -> tuple[Any, ...]:
    """The samples at `positions` (a CPU int64 tensor) as one batch on `device`."""
    if type(dataset) is TensorDataset:  # a subclass may augment in __getitem__: it is asked itself
        return tuple(t[positions].to(device, non_blocking=True) for t in dataset.tensors)
    return dataset.batch(positions, torch.device(device), keys=keys)


class NoSingletonBatches(BatchSampler):
    """Batches of `batch_size` indices in the sampler's order, except that a last batch of a single
    sample joins the one before: BatchNorm cannot normalise one sample in training mode."""

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)

    def __iter__(self) -> Iterator[list[int]]:  # a generator: draws its order on first use, as torch's does
        batches = list(super().__iter__())
        if len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] += last
        yield from batches

    def __len__(self) -> int:
        n = super().__len__()
        return n - 1 if n > 1 and len(self.sampler) % self.batch_size == 1 else n


class IndexBatches:
    """An epoch of `dataset`'s batches, drawn by `batch_sampler`'s index lists, on `device`."""

    def __init__(self, dataset: Dataset, batch_sampler: NoSingletonBatches,
                 device: torch.device | str = "cpu") -> None:
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, torch.device(device)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for indices in self.batch_sampler:
            yield gather(self.dataset, torch.as_tensor(indices, dtype=torch.int64), self.device)


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of each element of an int64 tensor of values
    in [0, 2**32): cheap, vectorised, and the same on every device."""
    x = x ^ (x >> 16)
    x = (x * _MIX) & MASK32
    x = x ^ (x >> 16)
    x = (x * _MIX) & MASK32
    return x ^ (x >> 16)


def sample_keys(seed: int, indices: Tensor, view: int) -> Tensor:
    """The key of view `view` of each sample in `indices`: what its random augmentation is drawn from.
    Seed and view each pass through the hash, so no draw of one view repeats a draw of another."""
    base = mix32(torch.tensor([seed & MASK32, view & MASK32]))
    return mix32(mix32(mix32(indices.to(torch.int64) & MASK32) ^ base[0]) ^ base[1])


class Draw:
    """Per-sample random integers for one batch of `n` samples.

    Without `keys`, from torch's random generator of `device`. With `keys` (one int64 per sample),
    the k-th draw of a sample is a hash of (its key, k): a fixed view, whatever batch it is in."""

    def __init__(self, n: int, device: torch.device, keys: Tensor | None = None) -> None:
        self.n, self.device, self.drawn = n, device, 0
        self.keys = None if keys is None else keys.to(device=device, dtype=torch.int64)

    def integers(self, high: int, per_sample: int = 1) -> Tensor:
        """[n, per_sample] integers uniform in [0, high)."""
        if self.keys is None:
            return torch.randint(0, high, (self.n, per_sample), device=self.device)
        counter = torch.arange(self.drawn, self.drawn + per_sample, device=self.device)
        self.drawn += per_sample
        return mix32(self.keys[:, None] ^ mix32(counter + 1)[None, :]) % high


DEVICE_SHARE = 0.25  # of a GPU's free memory: the most one in-memory dataset may take there


def placed(pixels: Tensor, device: torch.device | None, copies: dict[str, Tensor]) -> Tensor:
    """`pixels` on `device`, copied there once (kept in `copies`), or left in host memory when the
    copy would take more than DEVICE_SHARE of the GPU's free memory (then each batch is gathered on
    the host and only its uint8 rows travel)."""
    if device is None or device.type == "cpu":
        return pixels
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    if key not in copies:
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        copies[key] = pixels.to(device) if pixels.nbytes <= DEVICE_SHARE * free else pixels
    return copies[key]


def held(copies: dict[str, Tensor], device: torch.device | None,
         compute: Callable[[], Tensor | None]) -> Tensor | None:
    """A source's pixels computed once on the host (kept in `copies["cpu"]`), then `placed` on
    `device`; None, and nothing kept, when `compute` says the images are not in memory."""
    if "cpu" not in copies:
        pixels = compute()
        if pixels is None:
            return None
        copies["cpu"] = pixels
    return placed(copies["cpu"], device, copies)
