"""The FFCV loader: .beton files (written by `python -m cnnlab.data.write_ffcv`) decoded, cropped and flipped in
FFCV's compiled pipeline.

    python -m cnnlab.data.write_ffcv /datasets/imagenet /datasets/imagenet_ffcv --max-side 512 --quality 90
    python train.py data=imagenet_ffcv data.root=/datasets/imagenet_ffcv model=resnet50

The loader changes only the speed: the crop boxes come from the same functions as the PIL path
(cnnlab.data.augment, compiled here with numba), and the per-batch stage of the preset runs on the device as there.
FFCV is an optional extra (`pip install -e '.[ffcv]'`, after its system libraries).
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cnnlab.data.augment import Augment, resized_crop_box, shorter_side_crop_box
from cnnlab.data.imagefolder import ImageFolderDataModule
from cnnlab.data.images import DatasetNotFoundError

log = logging.getLogger(__name__)
INSTALL = ("FFCV is not installed. It needs system libraries first: apt-get install -y libturbojpeg0-dev "
           "libopencv-dev pkg-config && pip install -e '.[ffcv]' (or use data=imagenet, the PIL loader)")


def require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL) from err


# ---- loader ------------------------------------------------------------------------------------------------------
def crop_generator(augment: Augment):
    """A numba-compilable f(height, width, _, _) -> (top, left, h, w): the preset's own box sampler."""
    import numba

    if augment.crop == "resized":
        box = numba.njit(resized_crop_box)
        (a0, a1), (r0, r1) = augment.area, augment.ratio

        def crop(height, width, scale, ratio):
            return box(int(height), int(width), a0, a1, r0, r1)
    else:
        box = numba.njit(shorter_side_crop_box)
        size, (s0, s1), center = augment.size, augment.shorter_side, augment.center_square

        def crop(height, width, scale, ratio):
            return box(int(height), int(width), size, s0, s1, center)
    return crop


def _decoders():
    from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder

    class PresetCrop(ResizedCropRGBImageDecoder):
        """Decode + crop with an Augment's box sampler + resize, in one compiled pass."""

        def __init__(self, augment: Augment, size: int) -> None:
            super().__init__((size, size))
            self.generator, self.scale, self.ratio = crop_generator(augment), None, None

        @property
        def get_crop_generator(self):
            return self.generator

    return PresetCrop


class FFCVBatches:
    """An FFCV loader as Lightning sees it: (uint8 views(N x 3 x H x W), labels) on the device, epoch-aware."""

    def __init__(self, loader, decoder=None, augment: Augment | None = None, epoch=lambda: 0,
                 views=lambda x: x) -> None:
        self.loader, self.decoder, self.augment, self.epoch, self.views = loader, decoder, augment, epoch, views

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.next_epoch = self.epoch()  # the per-epoch order is a function of (seed, epoch), resumes too
        if self.augment is not None and self.augment.min_size:  # progressive resizing: recompiled each epoch
            side = self.augment.size_at(self.loader.next_epoch)
            self.decoder.output_size = (side, side)
        with torch.inference_mode(False):  # FFCV's worker thread writes into the buffers allocated here
            batches = iter(self.loader)
        try:
            for x, y in batches:
                yield self.views(x), y
        finally:  # an epoch cut short (limit_*_batches) stops its prefetching thread
            batches.close()


class FFCVDataModule(ImageFolderDataModule):
    """ImageNet (or any ImageNet-layout folder) from .beton files written by `python -m cnnlab.data.write_ffcv`."""

    def __init__(self, root: str, folder: str | None = None, os_cache: bool = True, **kwargs) -> None:
        """
        Args:
            root: the folder holding train.beton, val.beton and classes.json.
            folder: the image folder the betons came from; needed only for eval=tencrop|multiscale test stages.
            os_cache: map the whole file through the page cache (RAM >= dataset); False reads quasi-randomly.
            kwargs: as ImageFolderDataModule.
        """
        require_ffcv()
        super().__init__(root=folder or root, **kwargs)
        if self.hparams.per_class:
            raise ValueError(f"per_class={self.hparams.per_class} is for image folders; write a slice instead: "
                             f"python -m cnnlab.data.write_ffcv <folder> <out> --per-class {self.hparams.per_class}")
        if self.evaluation.name in ("tencrop", "multiscale", "dense") and folder is None:
            raise ValueError(f"eval={self.evaluation.name} cuts views FFCV's decoders cannot; set data.folder to "
                             f"the image folder the .beton files came from (or evaluate with data=imagenet)")
        self.betons, self.folder, self.os_cache = Path(root).expanduser(), folder, os_cache

    def setup(self, stage: str | None = None) -> None:
        if self.classes:
            return
        meta_file = self.betons / "classes.json"
        missing = [f for f in ("train.beton", "val.beton", "classes.json") if not (self.betons / f).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{self.betons} lacks {missing}: write them with python -m "
                                       f"cnnlab.data.write_ffcv <image folder> {self.betons}, or set data.root")
        meta = json.loads(meta_file.read_text())
        if len(meta["classes"]) != self.hparams.num_classes:
            raise DatasetNotFoundError(f"{self.betons} holds {len(meta['classes'])} classes but "
                                       f"data.num_classes={self.hparams.num_classes}")
        if meta.get("eval_order") != "across_classes":
            log.warning("%s/val.beton was written class-sorted (by an older write_ffcv): a limited evaluation "
                        "(trainer=debug, limit_val_batches) sees its first classes only; write it again to read the "
                        "classes in turn", self.betons)
        if self.folder:
            super().setup(stage)  # the image folder, for the multi-view test stage
        self.classes, self.class_names = meta["classes"], meta["class_names"]

    def _ffcv(self, split: str, train: bool, decoder, views=lambda x: x) -> "FFCVBatches":
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        rank, world = self._rank_world()
        image = [decoder, *([RandomHorizontalFlip()] if train and self.augment.flip else []), ToTensor(),
                 ToDevice(device, non_blocking=True), ToTorchImage(channels_last=False)]
        label = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
        fname = str(self.betons / f"{split}.beton")
        bs = self.hparams.batch_size if train else self.hparams.eval_batch_size or self.hparams.batch_size
        if train:  # FFCV's distributed order: each rank its shard of one (seed, epoch) permutation
            order = OrderOption.RANDOM if self.os_cache else OrderOption.QUASI_RANDOM
            kw = {"order": order, "distributed": world > 1, "seed": self.hparams.seed, "drop_last": True}
        else:  # unpadded shards: every image counts exactly once (FFCV's distributed mode pads)
            n = json.loads((self.betons / "classes.json").read_text())["splits"][split]
            kw = {"order": OrderOption.SEQUENTIAL, "indices": np.arange(rank, n, world), "drop_last": False}
        loader = Loader(fname, batch_size=bs, num_workers=self._workers(), os_cache=self.os_cache,
                        pipelines={"image": image, "label": label}, recompile=train and bool(self.augment.min_size),
                        **kw)
        epoch = (lambda: self.trainer.current_epoch) if train and self.trainer else (lambda: 0)
        return FFCVBatches(loader, decoder, self.augment if train else None, epoch, views)

    def train_dataloader(self) -> FFCVBatches:
        a = self.augment
        return self._ffcv("train", True, _decoders()(a, a.size_at(0)))

    def _center(self, views=lambda x: x) -> FFCVBatches:
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder

        p = self.evaluation  # the central crop/resize of the shorter side, resized to crop: "resize, center crop"
        return self._ffcv("val", False, CenterCropRGBImageDecoder((p.crop, p.crop), ratio=p.crop / p.resize), views)

    def val_dataloader(self) -> FFCVBatches:
        return self._center()

    def test_dataloader(self) -> FFCVBatches | DataLoader:
        if self.evaluation.name in ("tencrop", "multiscale", "dense"):
            return super().test_dataloader()  # the image folder's views
        return self._center(self.evaluation.tensor_views)  # center, and its mirror image with flip

