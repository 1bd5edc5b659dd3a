"""`load_data`: one call from a dataset name to train / val / test datasets a model can eat.

Order of operations, all deterministic for a given `seed`:
official train/test -> `classes` (keep and relabel 0..k-1) -> `train_limit` / `test_limit`
(the first N in data order, stratified) -> `per_class` (N random training images of each class)
-> `val_fraction` (a random stratified hold-out from what is left of train) -> `labelled_per_class`
(N random labelled images of each class; the rest of train becomes unlabelled) -> `unlabelled`
(extra images without labels). Subsets keep the data's order. The test set is never used for choices.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import DistillError, did_you_mean
from . import arrays, sources, splits
from .transforms import ImageDataset, Source, check_stats, convert_stats, imagenet_pipeline, tensor_pipeline
from .unlabelled import IGNORE_LABEL, JoinedSource, labelled_positions, unlabelled_source

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn",
                             "npz", "imagefolder", "fake")
MAX_IMAGE_SIZE = 4096  # pixels a side: a 100000-pixel square would need 40 GB per float image
# train-time augmentation: (random-crop padding in pixels, horizontal flip); others get none
AUGMENT = {"cifar10": (4, True), "cifar100": (4, True), "svhn": (4, False), "fake": (0, True)}


@dataclass
class DataBundle:
    """The splits of one dataset and what a model needs to know to consume them."""

    train: Dataset              # labelled images, with train-time augmentation when augment=True
    val: Dataset | None         # carved from train, never augmented; None when val_fraction == 0
    test: Dataset               # the official test split, never used for choices
    train_plain: Dataset        # the same samples as `train`, without augmentation
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    transfer: Dataset | None = None        # what the student distils on: `train` and the unlabelled
    transfer_plain: Dataset | None = None  # images (label IGNORE_LABEL); `train` when there are none

    def __post_init__(self) -> None:
        self.transfer = self.train if self.transfer is None else self.transfer
        self.transfer_plain = self.train_plain if self.transfer_plain is None else self.transfer_plain

    @property
    def unlabelled(self) -> int:
        """How many images of the transfer set have no label."""
        return len(self.transfer) - len(self.train)


def data_root(root: str | Path | None = None) -> Path:
    """`root` (--data-root), else $DISTILL_DATA, else ~/.cache/distill/data."""
    return Path(root or os.environ.get("DISTILL_DATA") or "~/.cache/distill/data").expanduser()


def load_data(name: str, *, root: str | Path | None = None, path: str | Path | None = None,
              val_fraction: float = 0.0, augment: bool = True, image_size: int | None = None,
              channels: int | None = None, download: bool = False, seed: int = 0,
              train_limit: int | None = None, test_limit: int | None = None,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
              classes: list[int] | None = None, per_class: int | None = None, jitter: int = 0,
              num_classes: int | None = None, labelled_per_class: int | None = None,
              unlabelled: str | Path | None = None) -> DataBundle:
    """Load dataset `name` (one of DATASETS) as a DataBundle.

    `path`: the .npz file for 'npz' (or instead of the data root for a named dataset), the folder
    for 'imagefolder'. `image_size` resizes to a square (imagefolder default 224, crops as in the
    ImageNet recipe; fake default 224). `channels` 1 or 3 converts grey <-> RGB. `jitter` > 0 shifts
    training images by up to that many pixels (Hinton's jitter), replacing CIFAR/SVHN's pad-4 crop.
    `num_classes` sets the class count of 'fake' (default 10; 1000 train and 200 test images) and
    is checked against the data for the others. `mean`/`std` override the dataset's normalisation.
    `labelled_per_class` keeps the labels of N random training images per class (from `seed`) and
    moves the others into the unlabelled part of `transfer`; `unlabelled` adds the images of a
    folder or an .npz there (see `distill.data.unlabelled`).
    """
    if name not in DATASETS:
        raise DistillError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; "
                           f"expected one of {', '.join(DATASETS)}")
    _check_args(val_fraction=val_fraction, image_size=image_size, channels=channels,
                train_limit=train_limit, test_limit=test_limit, per_class=per_class, jitter=jitter,
                num_classes=num_classes, seed=seed, labelled_per_class=labelled_per_class)
    if name == "imagefolder" and jitter:
        raise DistillError("jitter does not apply to 'imagefolder', whose training images are "
                           "already randomly cropped; expected jitter=0")
    if name == "fake":
        raw = sources.fake(num_classes or 10, channels or 3, image_size or 224, seed)
    elif name == "imagefolder":
        raw = sources.imagefolder(path)
    elif name == "digits":
        raw = sources.digits()
    elif name == "npz":
        raw = arrays.npz(path)
    else:
        raw = arrays.named(name, data_root(root), path, download)

    channels = channels or len(raw.mean)
    mean = _stats("mean", mean, convert_stats(raw.mean, channels), channels)
    std = _stats("std", std, convert_stats(raw.std, channels), channels)
    class_names = raw.class_names if classes is None else _check_classes(classes, raw.class_names)
    if len(class_names) < 2:
        raise DistillError(f"dataset {name!r} has {len(class_names)} class ({', '.join(class_names)}); expected at "
                           "least 2 classes to tell apart (check classes, or the data's labels)")
    if num_classes is not None and num_classes != len(class_names):
        raise DistillError(f"dataset {name!r} has {len(class_names)} classes, not num_classes="
                           f"{num_classes}; expected them to match")
    train, val, test = _select(raw, classes, train_limit, test_limit, per_class, val_fraction, seed)
    train, transfer_source, transfer = _unlabelled(raw, train, labelled_per_class, unlabelled, seed,
                                                   check_shape=name != "imagefolder", names=class_names)

    if name == "imagefolder":
        size = image_size or 224
        eval_tf = imagenet_pipeline(channels, mean, std, size, train=False)
        train_tf = imagenet_pipeline(channels, mean, std, size, train=True) if augment else eval_tf
        input_shape = (channels, size, size)
    else:
        native = tuple(raw.train.image(0).shape[-2:])
        size = image_size if image_size and (image_size, image_size) != native else None
        pad, flip = AUGMENT.get(name, (0, False))
        pad = jitter or pad
        side = size or min(native)
        if jitter >= side:
            raise DistillError(f"jitter={jitter} shifts {side}-pixel images out of the frame; expected "
                               f"fewer than {side} pixels")
        eval_tf = tensor_pipeline(raw.max_value, channels, mean, std, size)
        train_tf = (tensor_pipeline(raw.max_value, channels, mean, std, size, pad, flip)
                    if augment and (pad or flip) else eval_tf)
        input_shape = (channels, *((image_size, image_size) if image_size else native))
    return DataBundle(train=ImageDataset(raw.train, *train, train_tf),
                      val=ImageDataset(raw.train, *val, eval_tf) if val else None,
                      test=ImageDataset(raw.test, *test, eval_tf),
                      train_plain=ImageDataset(raw.train, *train, eval_tf),
                      num_classes=len(class_names), input_shape=input_shape, mean=mean, std=std,
                      class_names=list(class_names),
                      transfer=ImageDataset(transfer_source, *transfer, train_tf) if transfer else None,
                      transfer_plain=ImageDataset(transfer_source, *transfer, eval_tf) if transfer else None)


Part = tuple[np.ndarray, np.ndarray]  # (positions in a source, labels after relabelling)


def _select(raw: sources.Raw, classes: list[int] | None, train_limit: int | None,
            test_limit: int | None, per_class: int | None, val_fraction: float,
            seed: int) -> tuple[Part, Part | None, Part]:
    """(train, val, test) positions and labels, in the order the module docstring gives."""
    def subset(part: Part, keep: np.ndarray) -> Part:
        return part[0][keep], part[1][keep]

    train, test = _keep_classes(raw.train.labels, classes), _keep_classes(raw.test.labels, classes)
    if train_limit is not None and train_limit < len(train[0]):
        train = subset(train, splits.stratified(train[1], train_limit))
    if test_limit is not None and test_limit < len(test[0]):
        test = subset(test, splits.stratified(test[1], test_limit))
    if per_class is not None:
        order = np.random.default_rng([seed, 1]).permutation(len(train[0]))
        train = subset(train, splits.per_class(train[1], per_class, order))
    for split, part in (("training", train), ("test", test)):
        if len(part[0]) == 0:
            raise DistillError(f"no {split} images of classes {classes}; expected at least one")
    if not val_fraction:
        return train, None, test
    n_val = round(val_fraction * len(train[0]))
    if not 0 < n_val < len(train[0]):
        raise DistillError(f"val_fraction={val_fraction} of {len(train[0])} training images leaves "
                           "an empty split; expected a fraction that gives both splits images")
    keep, held = splits.split(train[1], n_val, seed)
    return subset(train, keep), subset(train, held), test


def _unlabelled(raw: sources.Raw, train: Part, labelled_per_class: int | None, unlabelled: str | Path | None,
                seed: int, check_shape: bool, names: list[str]) -> tuple[Part, Source, Part | None]:
    """(labelled train, the transfer set's source, the transfer set) where some images have no
    label; (train, raw.train, None) when every training image keeps its label."""
    if labelled_per_class is None and unlabelled is None:
        return train, raw.train, None
    positions, labels = train[0], train[1].copy()
    if labelled_per_class is not None:
        keep = labelled_positions(labels, labelled_per_class, seed, names)
        labels[np.setdiff1d(np.arange(len(labels)), keep)] = IGNORE_LABEL
        train = (positions[keep], train[1][keep])
    source = raw.train
    if unlabelled is not None:
        extra = unlabelled_source(unlabelled, raw, check_shape)
        source = JoinedSource(raw.train, extra)
        offset = len(raw.train.labels)
        positions = np.concatenate([positions, offset + np.arange(len(extra.labels))])
        labels = np.concatenate([labels, extra.labels])
    return train, source, (positions, labels)


def _check_args(val_fraction: float, **counts: int | None) -> None:
    """Fraction in [0, 1), counts positive integers (jitter and seed may be 0), channels 1 or 3."""
    if not 0 <= val_fraction < 1:
        raise DistillError(f"val_fraction={val_fraction}; expected a fraction in [0, 1)")
    zero_ok = ("jitter", "seed")
    for arg, value in counts.items():
        if value is None:
            continue
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not integer or value < (arg not in zero_ok):
            raise DistillError(f"{arg}={value!r}; expected a "
                               f"{'non-negative' if arg in zero_ok else 'positive'} integer")
    if counts["channels"] not in (None, 1, 3):
        raise DistillError(f"channels={counts['channels']}; expected 1 (grey) or 3 (RGB)")
    for arg, largest in (("image_size", MAX_IMAGE_SIZE), ("jitter", MAX_IMAGE_SIZE // 2)):
        if counts[arg] is not None and counts[arg] > largest:
            raise DistillError(f"{arg}={counts[arg]}; expected at most {largest} pixels")


def _check_classes(classes: list[int], names: list[str]) -> list[str]:
    """The names of the kept classes, after checking `classes` are distinct valid labels."""
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))
           or not 0 <= c < len(names)]
    if not classes or bad or len(set(classes)) != len(classes):
        raise DistillError(f"classes={list(classes)}; expected distinct labels from 0 to "
                           f"{len(names) - 1}")
    return [names[c] for c in classes]


def _keep_classes(labels: np.ndarray, classes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, labels) of the images in `classes`, relabelled 0..k-1 in the order given."""
    if classes is None:
        return np.arange(len(labels)), labels
    relabel = np.full(max(int(labels.max()), *classes) + 1, -1)
    relabel[list(classes)] = np.arange(len(classes))
    pos = np.flatnonzero(relabel[labels] >= 0)
    return pos, relabel[labels[pos]]


def _stats(kind: str, given, default: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """The user's mean/std (one value broadcast to every channel), else the dataset's."""
    if given is None:
        return default
    values = tuple(given) if isinstance(given, Iterable) and not isinstance(given, str) else (given,)
    if len(values) == 1:
        values *= channels
    expected = f"1 or {channels} numbers, all finite" + (" and positive" if kind == "std" else "")
    if len(values) != channels:
        raise DistillError(f"{kind}={given!r}; expected {expected}")
    try:
        return tuple(check_stats(kind, values))
    except DistillError:
        raise DistillError(f"{kind}={given!r}; expected {expected}") from None
