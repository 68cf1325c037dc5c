"""FFCV: an image folder written once into .beton files, then decoded, cropped and flipped in FFCV's compiled pipeline.

    python -m cnnlab.data.ffcv /datasets/imagenet /datasets/imagenet_ffcv --max-side 512 --quality 90
    python train.py data=imagenet_ffcv data.root=/datasets/imagenet_ffcv model=resnet50

The loader changes only the speed: the crop boxes come from the same functions as the PIL path
(cnnlab.data.transforms, compiled here with numba), and the per-batch part of the preset runs on the device as there.
FFCV is an optional extra (`pip install -e '.[ffcv]'`, after its system libraries).
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cnnlab.data.imagefolder import ImageFolderDataModule, class_names, open_rgb
from cnnlab.data.readers import DatasetNotFoundError, available_cpus, list_image_folder
from cnnlab.data.transforms import ImageAugment, resized_crop_box, shorter_side_crop_box

log = logging.getLogger(__name__)
INSTALL = ("FFCV is not installed. It needs system libraries first: apt-get install -y libturbojpeg0-dev "
           "libopencv-dev pkg-config && pip install -e '.[ffcv]' (or use data=imagenet, the PIL loader)")


def require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL) from err


# ---- writer ------------------------------------------------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    """(H x W x 3 uint8 RGB, label) for ffcv's DatasetWriter; greyscale and CMYK converted by open_rgb."""

    def __init__(self, files: list[Path], labels: list[int]) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.asarray(open_rgb(self.files[i])), self.labels[i]


class _Check(_Images):
    """Whether each file decodes; JPEGs at 1/8 scale (libjpeg's DCT scaling still reads every byte), so fast."""

    def __getitem__(self, i: int) -> bool:
        try:
            with Image.open(self.files[i]) as img:
                img.draft("RGB", (img.width // 8, img.height // 8))
                img.convert("RGB")
            return True
        except Exception:  # any decoder error makes the file unusable
            return False


def write_beton(folder: Path, out: Path, max_side: int = 512, quality: int = 90, per_class: int | None = None,
                workers: int | None = None) -> dict:
    """Writes folder/<class>/* into `out` (a .beton), leaving out unreadable files; returns {classes, n, skipped}."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    files, labels, classes = list_image_folder(folder)
    if per_class:
        first = {c: k for k, c in reversed(list(enumerate(labels)))}
        keep = [k for k, c in enumerate(labels) if k - first[c] < per_class]
        files, labels = [files[k] for k in keep], [labels[k] for k in keep]
    workers = workers or available_cpus()
    ok = [b for batch in tqdm(DataLoader(_Check(files, labels), batch_size=64, num_workers=workers, collate_fn=list),
                              desc=f"checking {folder}", unit="batch") for b in batch]
    skipped = [str(f) for f, good in zip(files, ok, strict=True) if not good]
    if skipped:
        log.warning("skipping %d unreadable images in %s, e.g. %s", len(skipped), folder, skipped[:3])
    keep = [k for k, good in enumerate(ok) if good]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(str(out), {"image": RGBImageField(write_mode="jpg", max_resolution=max_side,
                                                             jpeg_quality=quality),
                                      "label": IntField()}, num_workers=workers)
    writer.from_indexed_dataset(_Images([files[k] for k in keep], [labels[k] for k in keep]))
    return {"classes": classes, "n": len(keep), "skipped": skipped}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnnlab.data.ffcv", description="Write an ImageNet-layout folder "
                                "(train/<class>/*, val/<class>/*) into FFCV .beton files plus classes.json.")
    p.add_argument("folder", type=Path, help="the image folder, e.g. /datasets/imagenet")
    p.add_argument("out", type=Path, help="where train.beton, val.beton and classes.json go")
    p.add_argument("--max-side", type=int, default=512, help="longer side cap in pixels (ffcv-imagenet: 512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (1-100)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--per-class", type=int, default=None, help="only the first n images of each class (a slice)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all available CPUs)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not 1 <= a.quality <= 100:
        p.error(f"--quality must be in 1..100, got {a.quality}")
    meta: dict = {"max_side": a.max_side, "quality": a.quality, "splits": {}, "skipped": {}}
    for split in a.splits:
        if not (a.folder / split).is_dir():
            raise DatasetNotFoundError(f"no {a.folder / split}: expected {a.folder}/{split}/<class>/<images>")
        r = write_beton(a.folder / split, a.out / f"{split}.beton", a.max_side, a.quality, a.per_class, a.workers)
        if meta.setdefault("classes", r["classes"]) != r["classes"]:
            raise DatasetNotFoundError(f"{a.folder / split} has other class folders than {a.splits[0]}/")
        meta["splits"][split], meta["skipped"][split] = r["n"], r["skipped"]
        log.info("%s: %d images -> %s (%d unreadable skipped)", split, r["n"], a.out / f"{split}.beton",
                 len(r["skipped"]))
    meta["class_names"] = class_names(a.folder, meta["classes"])
    (a.out / "classes.json").write_text(json.dumps(meta, indent=1))


# ---- loader ------------------------------------------------------------------------------------------------------
def crop_generator(augment: ImageAugment):
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
        """Decode + crop with an ImageAugment's box sampler + resize, in one compiled pass."""

        def __init__(self, augment: ImageAugment, size: int) -> None:
            super().__init__((size, size))
            self.generator, self.scale, self.ratio = crop_generator(augment), None, None

        @property
        def get_crop_generator(self):
            return self.generator

    return PresetCrop


class FFCVBatches:
    """An FFCV loader as Lightning sees it: (uint8 N x 3 x H x W, labels, []) on the device, epoch-aware."""

    def __init__(self, loader, decoder=None, augment: ImageAugment | None = None, epoch=lambda: 0) -> None:
        self.loader, self.decoder, self.augment, self.epoch = loader, decoder, augment, epoch

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
                yield x, y, []
        finally:  # an epoch cut short (limit_*_batches) stops its prefetching thread
            batches.close()


class FFCVDataModule(ImageFolderDataModule):
    """ImageNet (or any ImageNet-layout folder) from .beton files written by `python -m cnnlab.data.ffcv`."""

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
                             f"python -m cnnlab.data.ffcv <folder> <out> --per-class {self.hparams.per_class}")
        if self.evaluation.name in ("tencrop", "multiscale") and folder is None:
            raise ValueError(f"eval={self.evaluation.name} cuts views FFCV's decoders cannot; set data.folder to "
                             f"the image folder the .beton files came from (or evaluate with data=imagenet)")
        self.betons, self.folder, self.os_cache = Path(root).expanduser(), folder, os_cache

    def setup(self, stage: str | None = None) -> None:
        if self.classes:
            return
        meta_file = self.betons / "classes.json"
        missing = [f for f in ("train.beton", "val.beton", "classes.json") if not (self.betons / f).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{self.betons} lacks {missing}: write them with python -m cnnlab.data.ffcv "
                                       f"<image folder> {self.betons}, or set data.root")
        meta = json.loads(meta_file.read_text())
        if len(meta["classes"]) != self.hparams.num_classes:
            raise DatasetNotFoundError(f"{self.betons} holds {len(meta['classes'])} classes but "
                                       f"data.num_classes={self.hparams.num_classes}")
        if self.folder:
            super().setup(stage)  # the image folder, for the multi-view test stage
        self.classes, self.class_names = meta["classes"], meta["class_names"]

    def _ffcv(self, split: str, train: bool, decoder) -> "FFCVBatches":
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
        return FFCVBatches(loader, decoder, self.augment if train else None, epoch)

    def train_dataloader(self) -> FFCVBatches:
        a = self.augment
        return self._ffcv("train", True, _decoders()(a, a.size_at(0)))

    def _center(self) -> FFCVBatches:
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder

        p = self.evaluation  # the central crop/resize of the shorter side, resized to crop: "resize, center crop"
        return self._ffcv("val", False, CenterCropRGBImageDecoder((p.crop, p.crop), ratio=p.crop / p.resize))

    def val_dataloader(self) -> FFCVBatches:
        return self._center()

    def test_dataloader(self) -> FFCVBatches | DataLoader:
        return super().test_dataloader() if self.evaluation.name in ("tencrop", "multiscale") else self._center()


if __name__ == "__main__":
    main()
