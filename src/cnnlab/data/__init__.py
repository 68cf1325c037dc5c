"""Data modules, readers and augmentation presets (config groups `data` and `augment`)."""

from cnnlab.data.augment import BatchAugment
from cnnlab.data.memory import InMemoryDataModule, TensorBatches
from cnnlab.data.readers import DatasetNotFoundError

__all__ = ["BatchAugment", "DatasetNotFoundError", "InMemoryDataModule", "TensorBatches"]
