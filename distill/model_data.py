"""The data a model or a recipe expects, loaded one way for every command.

A checkpoint's `ModelCard` says what its model eats (channels, size, normalisation, classes); a
recipe says which data its models train on. `distill run`, `export`, `bench`, `prune` and `probe`
all load through here, so one image-size rule and one set of checks apply everywhere.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .data import DataBundle, load_data
from .errors import DistillError
from .models import ModelCard
from .recipe import Recipe

# DataSpec fields that are not arguments of load_data
_NOT_LOADER_ARGS = ("name", "root", "num_workers", "in_memory")


def data_for_recipe(recipe: Recipe, data_root: str | None = None, **overrides) -> DataBundle:
    """The recipe's data as its models train on it; `overrides` (when not None) replace its fields."""
    d = recipe.data
    args = {k: v for k, v in dataclasses.asdict(d).items() if k not in _NOT_LOADER_ARGS}
    args.update({k: v for k, v in overrides.items() if v is not None})
    return load_data(d.name, root=data_root or d.root, seed=recipe.seed, **args)


def data_for_card(data: str, card: ModelCard, *, root: str | None = None, same_classes: bool = True,
                  **selection) -> DataBundle:
    """Dataset `data` (a name such as cifar10, an .npz file or an image folder), unaugmented and
    preprocessed as `card` says; `selection` takes load_data's classes, per_class, train_limit and
    test_limit. With `same_classes`, the data must have the card's class count (scoring a 5-class
    model on 10-class data would count every image of the other classes as wrong)."""
    name, path = data, None
    if Path(data).is_dir() or data.endswith(".npz"):
        name, path = ("imagefolder" if Path(data).is_dir() else "npz"), data
    channels, height, width = card.input_shape
    bundle = load_data(name, root=root, path=path, augment=False, channels=channels,
                       image_size=height if height == width else None, mean=card.mean, std=card.std,
                       **{k: v for k, v in selection.items() if v is not None})
    if tuple(bundle.input_shape) != tuple(card.input_shape):
        raise DistillError(f"data {data!r} gives inputs of shape {tuple(bundle.input_shape)}; expected "
                           f"{tuple(card.input_shape)} as the model card says")
    if same_classes and bundle.num_classes != card.num_classes:
        raise DistillError(f"data {data!r} has {bundle.num_classes} classes but the model predicts "
                           f"{card.num_classes}; expected data with the model's classes")
    return bundle
