"""Data modules (config group `data`), the one training augmentation (group `augment`) and the image decoding they
share.

    in_memory.py    CIFAR/MNIST/synthetic whole on the device: InMemoryDataModule, TensorBatches
    readers.py      those datasets from disk into uint8 tensors (both CIFAR layouts, MNIST, the decode cache)
    imagefolder.py  ImageNet-layout folders through PIL worker processes: ImageFolderDataModule
    ffcv.py         the same folders from FFCV .beton files: FFCVDataModule
    write_ffcv.py   the .beton writer, a command: python -m cnnlab.data.write_ffcv <folder> <out>
    augment.py      Augment: per-image crops for image files, per-batch work on the device for every data module
    images.py       which files are images, and the one decoder every backend reads them with
"""

from cnnlab.data.augment import Augment, BatchAugment, ImageAugment
from cnnlab.data.ffcv import FFCVDataModule
from cnnlab.data.imagefolder import ImageFolderDataModule
from cnnlab.data.images import DatasetNotFoundError
from cnnlab.data.in_memory import InMemoryDataModule, TensorBatches
from cnnlab.evaluation import eval_transform

__all__ = ["Augment", "BatchAugment", "DatasetNotFoundError", "FFCVDataModule", "ImageAugment",
           "ImageFolderDataModule", "InMemoryDataModule", "TensorBatches", "eval_transform"]
