"""Array datasets: Keras-layout .npz files and torchvision's own files for the named datasets.

A named dataset is looked up as `<root>/<name>.npz` first (fast, one file, no extra packages),
then as torchvision's files under `<root>/<name>`, downloaded only when allowed.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DistillError
from ..files import ensure_readable
from .sources import Raw, TensorSource

KEYS = ("x_train", "y_train", "x_test", "y_test")
KERAS = "Keras layout: x_train, y_train, x_test, y_test"
LAYOUT = ("Keras layout: uint8 x_train (N, H, W) or (N, H, W, C), integer y_train (N,), "
          "and the same for x_test, y_test")

CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree
orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit
raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split()

# name -> (torchvision class, class names, mean, std); statistics of the training images on [0, 1]
NAMED = {
    "mnist": ("MNIST", [str(i) for i in range(10)], (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
                      (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"],
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", CIFAR100_CLASSES, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn": ("SVHN", [str(i) for i in range(10)], (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def named(name: str, root: Path, path: str | Path | None, download: bool) -> Raw:
    """A named dataset from `path` (an explicit .npz), `<root>/<name>.npz` or torchvision's files."""
    _, class_names, mean, std = NAMED[name]
    file = Path(path) if path is not None else root / f"{name}.npz"
    if path is not None or file.is_file():
        return _raw(file, *read_npz(file), class_names, mean, std)
    return _raw(root / name, *_torchvision(name, root, download), class_names, mean, std)


def npz(path: str | Path | None) -> Raw:
    """Any Keras-layout .npz: classes 0..max label, statistics computed from x_train."""
    if path is None:
        raise DistillError(f"dataset 'npz' needs a path; expected an .npz file in {LAYOUT}")
    x_train, y_train, x_test, y_test = read_npz(Path(path))
    k = int(max(y_train.max(), y_test.max())) + 1
    if k > len(y_train):  # a label of 10**9 would ask for a billion-way classifier
        raise DistillError(f"{path}: label {k - 1} found among {len(y_train)} training images; expected "
                           "labels 0..K-1 that number the classes, with fewer classes than training images")
    untrained = np.setdiff1d(np.arange(k), y_train)  # a class only the test split has is never learnt
    if len(untrained):
        shown = ", ".join(map(str, untrained[:5])) + (", ..." if len(untrained) > 5 else "")
        raise DistillError(f"{path}: no training image has label {shown} ({len(untrained)} of the {k} classes "
                           f"0..{k - 1}); expected labels 0..K-1 that number the classes, each with training images")
    mean, std = _stats(x_train)
    return _raw(Path(path), x_train, y_train, x_test, y_test, [str(i) for i in range(k)], mean, std)


def read_npz(path: Path) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """Validated (x_train, y_train, x_test, y_test), images as uint8 (N, C, H, W) views."""
    if not path.exists():
        raise DistillError(f"npz file {path} not found; expected a file in {LAYOUT}")
    ensure_readable(path, "npz file", f"a file in {LAYOUT}")  # a directory or no permission: not "corrupt"
    corrupt = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DistillError(f"{path} holds a single array, not an npz archive; expected {LAYOUT}")
        with f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise DistillError(f"{path} lacks {', '.join(missing)} (it has "
                                   f"{', '.join(f.files) or 'no arrays'}); expected {LAYOUT}")
            arrays = {k: f[k] for k in KEYS}
    except corrupt as e:
        raise DistillError(f"cannot read {path}, the file looks truncated or corrupt "
                           f"({type(e).__name__}: {e}); expected an npz archive in {LAYOUT}") from e
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise DistillError(f"{path}: x_{split} has dtype {x.dtype}; expected uint8 pixels 0..255")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)) or 0 in x.shape:
            raise DistillError(f"{path}: x_{split} has shape {x.shape}; expected (N, H, W) grey "
                               "or (N, H, W, 1 or 3) channels-last images")
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= 2 ** 31)):
            raise DistillError(f"{path}: y_{split} has shape {y.shape} and dtype {y.dtype}; "
                               "expected non-negative integer labels of shape (N,)")
        if len(x) != len(y):
            raise DistillError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} "
                               "labels; expected one label per image")
        images = torch.from_numpy(x)
        out += [images[:, None] if x.ndim == 3 else images.permute(0, 3, 1, 2), y.astype(np.int64)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DistillError(f"{path}: train images are {tuple(out[0].shape[1:])} (C, H, W) but test "
                           f"images are {tuple(out[2].shape[1:])}; expected the same shape")
    return tuple(out)


def _raw(where: Path, x_train, y_train, x_test, y_test, class_names, mean, std) -> Raw:
    """Check labels and channels against what the dataset should have."""
    top = int(max(y_train.max(), y_test.max()))
    if top >= len(class_names):
        raise DistillError(f"{where}: label {top} found; expected labels 0..{len(class_names) - 1}")
    if len(mean) != x_train.shape[1]:
        raise DistillError(f"{where}: images have {x_train.shape[1]} channels; expected {len(mean)}")
    return Raw(TensorSource(x_train, y_train), TensorSource(x_test, y_test), list(class_names),
               tuple(mean), tuple(std))


def _stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on [0, 1], in chunks so a large file is not copied as floats."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].double().div_(255)
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _torchvision(name: str, root: Path, download: bool):
    """torchvision's own files for `name` under `<root>/<name>`, downloaded if allowed."""
    import torchvision
    tv_class = NAMED[name][0]
    folder = root / name
    missing = (f"dataset {name!r} not found: expected {root / f'{name}.npz'} ({KERAS}) or "
               f"torchvision's {tv_class} files under {folder}; set --data-root or DISTILL_DATA, "
               "or allow downloading")
    if not download and not folder.is_dir():
        raise DistillError(missing)
    cls = getattr(torchvision.datasets, tv_class)
    out = []
    for train in (True, False):
        split = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
        try:
            ds = cls(str(folder), download=download, **split)
        except (RuntimeError, OSError) as e:
            if not download:
                raise DistillError(missing) from e
            reason = " ".join(str(e).split())  # one line: torchvision lists every mirror it tried
            raise DistillError(f"downloading dataset {name!r} into {folder} failed ({reason}); "
                               f"expected network access, or {root / f'{name}.npz'} ({KERAS})") from e
        x = torch.as_tensor(ds.data)  # MNIST-likes (N, H, W), CIFAR (N, H, W, 3), SVHN (N, 3, H, W)
        if x.ndim == 3:
            x = x[:, None]
        elif name != "svhn":
            x = x.permute(0, 3, 1, 2)
        y = ds.labels if name == "svhn" else ds.targets
        out += [x, np.asarray(y, dtype=np.int64)]
    return tuple(out)
