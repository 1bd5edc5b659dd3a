"""Datasets, transforms and splits: `load_data(name, ...)` returns a `DataBundle`."""
from .batches import take_batch
from .load import DATASETS, DataBundle, data_root, load_data
from .transforms import ImageDataset
from .unlabelled import IGNORE_LABEL

__all__ = ["DATASETS", "IGNORE_LABEL", "DataBundle", "ImageDataset", "data_root", "load_data", "take_batch"]
