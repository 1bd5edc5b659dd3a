"""Datasets, transforms and splits: `load_data(name, ...)` returns a `DataBundle`."""
from .batches import take_batch
from .load import DATASETS, DataBundle, data_root, load_data
from .transforms import ImageDataset

__all__ = ["DATASETS", "DataBundle", "ImageDataset", "data_root", "load_data", "take_batch"]
