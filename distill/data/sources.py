"""Where images come from: in-memory uint8 tensors, image folders, or generated noise.

Each loader returns a `Raw`: train and test `Source`s plus what the model needs to know (class
names, normalisation). Nothing here selects, splits or augments; `load_data` does that.
"""
from __future__ import annotations

import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from ..errors import DistillError
from .batched import held, placed
from .transforms import Source, convert_stats

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3051,), (0.3761,)  # of digits' 1347 training images on [0, 1]


@dataclass
class Raw:
    """A dataset's official train/test sources, before any selection or split."""

    train: Source
    test: Source
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_value: float = 255.0  # pixel value that maps to 1.0


class TensorSource:
    """Images held in memory as one uint8 (N, C, H, W) tensor, usually a view of the loaded array."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.copies: dict[str, torch.Tensor] = {}

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]

    def pixels(self, device: torch.device | None = None) -> torch.Tensor:
        """Every image as one uint8 tensor, on `device` when it fits there (see `placed`)."""
        return placed(self.images, device, self.copies)


class FolderSource:
    """Image files decoded on demand (ImageNet does not fit in memory).

    A file that cannot be decoded (truncated, corrupt, not an image, or a decompression bomb: a
    small file that claims more than PIL's MAX_IMAGE_PIXELS) is a DistillError naming it, also
    inside a DataLoader worker; a bomb is refused from its header, before anything is decoded.
    """

    def __init__(self, samples: list[tuple[str, int]]):
        self.paths = [p for p, _ in samples]
        self.labels = np.array([c for _, c in samples], dtype=np.int64)

    def pixels(self, device: torch.device | None = None) -> None:
        """None: image files are decoded one by one, in DataLoader workers."""
        return None

    def image(self, i: int) -> torch.Tensor:
        from PIL import Image
        path = self.paths[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    return F.pil_to_tensor(_eight_bit(im).convert("RGB"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DistillError(f"image {path} is too large to decode ({_first_line(e)}); expected at most "
                               f"{Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb, or an image to "
                               "shrink first)") from e
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
            raise DistillError(f"cannot read image {path} ({_first_line(e)}); expected an image file that "
                               "PIL can open, complete and not corrupt") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class FakeSource:
    """Deterministic random images, generated on demand, that a model can still learn: each is
    the average of its class's fixed random template and its own random noise."""

    MAX_IN_MEMORY = 2 ** 26  # bytes: small fake data is generated once and batched like an array dataset

    def __init__(self, n: int, shape: tuple[int, int, int], num_classes: int, seed: int, split: int):
        self.shape, self.seed, self.split = shape, seed, split
        rng = np.random.default_rng([seed, split])
        self.labels = rng.permutation(np.arange(n) % num_classes)
        self.copies: dict[str, torch.Tensor] = {}

    def pixels(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Every image as one uint8 tensor (generated once) when they take at most MAX_IN_MEMORY bytes."""
        if len(self.labels) * math.prod(self.shape) > self.MAX_IN_MEMORY:
            return None
        return held(self.copies, device, lambda: torch.stack([self.image(i) for i in range(len(self.labels))]))

    def _noise(self, *key: int) -> torch.Tensor:
        seed = np.random.SeedSequence([self.seed, *key]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, 256, self.shape, generator=g, dtype=torch.int16)

    def image(self, i: int) -> torch.Tensor:
        template = self._noise(0, int(self.labels[i]))
        return ((template + self._noise(1 + self.split, i)) // 2).to(torch.uint8)


def fake(num_classes: int, channels: int, size: int, seed: int,
         n_train: int = 1000, n_test: int = 200) -> Raw:
    """FakeData-like stand-in for ImageNet-size recipes (ImageNet statistics)."""
    if num_classes < 1 or channels not in (1, 3) or size < 1:
        raise DistillError(f"fake data needs num_classes >= 1, channels 1 or 3 and image_size >= 1; "
                           f"got {num_classes}, {channels}, {size}")
    shape = (channels, size, size)
    return Raw(FakeSource(n_train, shape, num_classes, seed, 0),
               FakeSource(n_test, shape, num_classes, seed, 1),
               [f"class{i}" for i in range(num_classes)],
               convert_stats(IMAGENET_MEAN, channels), convert_stats(IMAGENET_STD, channels))


def imagefolder(path: str | Path | None) -> Raw:
    """`path`/train and `path`/test (or val) folders of class folders, ImageNet statistics."""
    from torchvision.datasets import ImageFolder
    layout = "a folder with train/ and val/ (or test/) subfolders, each holding one folder per class"
    if path is None or not Path(path).is_dir():
        raise DistillError(f"image folder {path} not found; expected {layout}")
    root = Path(path)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    for d in (root / "train", test_dir):
        if not d.is_dir():
            raise DistillError(f"image folder {root} has no {d.name}/ subfolder; expected {layout}")
    try:
        train, test = ImageFolder(str(root / "train")), ImageFolder(str(test_dir))
    except FileNotFoundError as e:
        raise DistillError(f"no images found: {e}; expected one folder per class holding image "
                           "files") from e
    for file, _ in (*train.samples, *test.samples):
        if not Path(file).is_file():  # a pipe or a device named like an image would block the reader
            raise DistillError(f"{file} is not a regular file; expected image files in the class folders")
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DistillError(f"class folders differ between {root / 'train'} and {test_dir}: "
                           f"only in train {only_train}, only in {test_dir.name} {only_test}; "
                           "expected the same class folders in both")
    return Raw(FolderSource(train.samples), FolderSource(test.samples), list(train.classes),
               IMAGENET_MEAN, IMAGENET_STD)


def digits() -> Raw:
    """scikit-learn's 8x8 digits (1797 images, pixels 0..16) in a fixed stratified split:
    1347 train / 450 test, chosen with seed 0 whatever the run's seed."""
    from sklearn.datasets import load_digits

    from .splits import split
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8))[:, None]
    y = d.target.astype(np.int64)
    train, test = split(y, 450, seed=0)
    return Raw(TensorSource(x[train], y[train]), TensorSource(x[test], y[test]),
               [str(i) for i in range(10)], DIGITS_MEAN, DIGITS_STD, max_value=16.0)


def _eight_bit(im):
    """16- and 32-bit greyscale scaled to 0..255: PIL's convert("RGB") clips them, turning almost
    every pixel of a 16-bit scan white."""
    if im.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return im
    from PIL import Image
    pixels = np.asarray(im, dtype=np.float64)
    top = 65535.0 if im.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else pixels.max()
    return Image.fromarray(np.clip(pixels / max(top, 1e-12) * 255, 0, 255).round().astype(np.uint8), "L")
