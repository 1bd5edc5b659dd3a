"""A few samples of a dataset as one batch: for export checks, int8 calibration and Taylor pruning."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


def take_batch(dataset: Dataset, n: int, shuffle: bool = False, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(images, labels) of `n` samples: the first ones in order, or a seeded random draw."""
    count = min(n, len(dataset))
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
             if shuffle else range(count))
    items = [dataset[i] for i in order]
    return torch.stack([x for x, *_ in items]), torch.as_tensor([int(y) for _, y, *_ in items])
