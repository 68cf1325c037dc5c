"""Data modules, readers and augmentation presets (config groups `data` and `augment`)."""

from cnnlab.data.augment import BatchAugment
from cnnlab.data.ffcv import FFCVDataModule
from cnnlab.data.imagefolder import ImageFolderDataModule, eval_transform
from cnnlab.data.memory import InMemoryDataModule, TensorBatches
from cnnlab.data.readers import DatasetNotFoundError
from cnnlab.data.transforms import ImageAugment

__all__ = ["BatchAugment", "DatasetNotFoundError", "FFCVDataModule", "ImageAugment", "ImageFolderDataModule",
           "InMemoryDataModule", "TensorBatches", "eval_transform"]
