"""Unlabelled images for the transfer set: the images distillation learns from without labels.

Hinton et al. (2015) note that the transfer set need not be labelled: the teacher's soft targets
are the supervision. Unlabelled images come from two places, both marked with `IGNORE_LABEL`:
- `labelled_per_class`: the training images beyond N per class lose their labels;
- `unlabelled`: an image folder (any nesting, no class folders) or an .npz of images only.
The cross-entropy with the labels skips them per sample; the distillation terms see them all.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DistillError
from ..files import ensure_readable
from ..losses.labels import IGNORE_LABEL
from .batched import batchable, gather, held
from .sources import FolderSource, Raw, TensorSource
from .transforms import Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
EXPECTED = "an image folder (any nesting) or an .npz holding uint8 images as 'x' or 'x_train'"


def labelled_positions(labels: np.ndarray, n: int, seed: int, names: list[str] | None = None) -> np.ndarray:
    """Sorted positions of `n` images of each class, a random stratified choice made from `seed`.

    Every class must have at least `n` images: a class with fewer would be silently
    under-represented among the labels, so that is a DistillError naming the smallest class (by its
    name in `names` when given: after `classes`, label k is the k-th kept class, not class k)."""
    classes, counts = np.unique(labels, return_counts=True)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DistillError(f"labelled_per_class={n!r}; expected a positive integer")
    if n > counts.min():
        smallest = int(classes[counts.argmin()])
        name = repr(names[smallest]) if names else smallest
        raise DistillError(f"labelled_per_class={n} but class {name} has only {counts.min()} training "
                           f"images; expected at most {counts.min()} (the smallest class)")
    order = np.random.default_rng([seed, 2]).permutation(len(labels))
    ordered = labels[order]
    return np.sort(np.concatenate([order[ordered == c][:n] for c in classes]))


def unlabelled_source(path: str | Path, raw: Raw, check_shape: bool) -> Source:
    """The images at `path` as a source whose labels are all IGNORE_LABEL, on `raw`'s pixel scale.

    With `check_shape` (array datasets, fed at their native size) every image must have the
    training images' channel count and height x width; image-folder data is resized anyway."""
    path = Path(path)
    if not path.exists():
        raise DistillError(f"unlabelled images {path} not found; expected {EXPECTED}")
    native = tuple(raw.train.image(0).shape)  # (C, H, W)
    if path.is_dir():
        source = _folder(path, native if check_shape else None)
    elif path.suffix.lower() != ".npz":  # a single image, say: PIL would read it, numpy calls it corrupt
        raise DistillError(f"unlabelled images {path} is a file but not an .npz; expected {EXPECTED} "
                           "(put single images in a folder)")
    else:
        ensure_readable(path, "unlabelled images", EXPECTED)
        source = _npz(path, native if check_shape else None)
    return source if raw.max_value == 255 else Rescaled(source, raw.max_value)


class RepeatedDataset(Dataset):
    """`dataset` cycled to `length` items: a few labelled images, seen as often per epoch as the
    student sees its transfer set, so the hard-label baseline takes as many steps as the student."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, max(length, len(dataset))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    @property
    def batchable(self) -> bool:
        return batchable(self.dataset)

    def batch(self, k: torch.Tensor, device: torch.device, keys: torch.Tensor | None = None) -> tuple:
        return gather(self.dataset, k % len(self.dataset), device, keys)


class JoinedSource:
    """Two sources as one: positions past the first's end are the second's images."""

    def __init__(self, first: Source, second: Source) -> None:
        self.first, self.second, self.offset = first, second, len(first.labels)
        self.labels = np.concatenate([first.labels, second.labels])
        self.copies: dict[str, torch.Tensor] = {}

    def pixels(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Both sources' images as one uint8 tensor, when both are held in memory: joined once, a
        second host copy of the labelled images (small beside what training costs)."""
        def joined() -> torch.Tensor | None:
            first, second = self.first.pixels(), self.second.pixels()
            return None if first is None or second is None else torch.cat([first, second])
        return held(self.copies, device, joined)

    def image(self, i: int) -> torch.Tensor:
        return self.first.image(i) if i < self.offset else self.second.image(i - self.offset)


class Rescaled:
    """A 0..255 source on another dataset's pixel scale (digits' pixels run 0..16)."""

    def __init__(self, source: Source, max_value: float) -> None:
        self.source, self.max_value, self.labels = source, max_value, source.labels
        self.copies: dict[str, torch.Tensor] = {}

    def image(self, i: int) -> torch.Tensor:
        return self._rescale(self.source.image(i))

    def pixels(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Every image rescaled, as one uint8 tensor (computed once), when the source is in memory."""
        def rescaled() -> torch.Tensor | None:
            original = self.source.pixels()
            return None if original is None else self._rescale(original)
        return held(self.copies, device, rescaled)

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * (self.max_value / 255)).round().to(torch.uint8)


def _folder(path: Path, native: tuple[int, ...] | None) -> Source:
    """Every image file under `path`, in sorted order; headers checked against `native` (C, H, W)."""
    from PIL import Image
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    if not files:
        raise DistillError(f"unlabelled folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                           f"expected {EXPECTED}")
    for file in files:
        if not file.is_file():  # a pipe named like an image would block the reader
            raise DistillError(f"{file} is not a regular file; expected image files in {path}")
        if native is None:
            continue
        try:
            with Image.open(file) as im:  # reads the header only
                channels, shape = (1 if im.mode in GREY_MODES else 3), (im.height, im.width)
        except (OSError, ValueError, SyntaxError) as e:
            raise DistillError(f"cannot read image {file} ({type(e).__name__}); expected an image file "
                               "that PIL can open") from e
        _check_like(file, (channels, *shape), native)
    return FolderSource([(str(f), IGNORE_LABEL) for f in files])


def _npz(path: Path, native: tuple[int, ...] | None) -> Source:
    """The images of an .npz (key `x`, else `x_train`) as a uint8 (N, C, H, W) tensor source."""
    try:
        f = np.load(path, allow_pickle=False)  # a .npy renamed .npz loads as an array, not a context manager
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DistillError(f"{path} is a single array, not an npz archive; expected {EXPECTED}")
        with f:
            key = next((k for k in ("x", "x_train") if k in f.files), None)
            if key is None:
                raise DistillError(f"{path} has no array 'x' or 'x_train' (it has "
                                   f"{', '.join(f.files) or 'none'}); expected {EXPECTED}")
            x = f[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DistillError(f"cannot read {path}, the file looks truncated or corrupt ({type(e).__name__}); "
                           f"expected {EXPECTED}") from e
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)) or 0 in x.shape:
        raise DistillError(f"{path}: {key} is {x.dtype} of shape {x.shape}; expected uint8 images (N, H, W) "
                           "or (N, H, W, 1 or 3), at least one")
    images = torch.from_numpy(x)
    images = images[:, None] if x.ndim == 3 else images.permute(0, 3, 1, 2)
    if native is not None:
        _check_like(f"{path}: {key}", tuple(images.shape[1:]), native)
    return TensorSource(images, np.full(len(images), IGNORE_LABEL))


def _check_like(what: object, shape: tuple[int, ...], native: tuple[int, ...]) -> None:
    """Refuse unlabelled images whose (C, H, W) differs from the training images'."""
    if shape != native:
        raise DistillError(f"unlabelled images {what} are {shape[0]}-channel {shape[1]}x{shape[2]}; expected "
                           f"{native[0]}-channel {native[1]}x{native[2]} like the training images")
