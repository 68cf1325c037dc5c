"""Readers that turn a small-image dataset on disk into uint8 tensors (N x C x H x W) held in memory.

CIFAR comes either in the official python-pickle format (torchvision's reader, download=True for users with internet)
or as image folders (`train/<class>/*`, `test/<class>/*`); a folder is decoded once and cached as a tensor file in a
cache directory outside the dataset folder, so the next run starts in about a second.
"""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from cnnlab.data.images import IMAGE_SUFFIXES, UNREADABLE, DatasetNotFoundError, list_image_folder, open_image

log = logging.getLogger(__name__)
__all__ = ["IMAGE_SUFFIXES", "DatasetNotFoundError", "Tensors", "list_image_folder", "read_cifar", "read_mnist",
           "read_image_folder", "synthetic"]
DECODER = 2  # version of `decode` below (2: 16-bit by the high byte, transparency, TIFF/BMP as open_image)
CIFAR = {"cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
         "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python")}


@dataclass
class Tensors:
    """A whole split in memory."""

    x: torch.Tensor  # N x C x H x W, uint8
    y: torch.Tensor  # N, int64
    classes: list[str]


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def folder_splits(root: Path) -> dict[str, Path] | None:
    """The image-folder layout: {'train': root/train, 'test': root/test or root/val}, or None."""
    test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    return {"train": root / "train", "test": test} if (root / "train").is_dir() and test else None


def remove_empty(created: list[Path]) -> None:
    """The folders a failed download created (innermost first), if it left them empty: no data/cifar100 husk."""
    for top in created:
        if top.is_dir():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                with suppress(OSError):
                    d.rmdir()
            with suppress(OSError):
                top.rmdir()


def across_classes(labels: Sequence[int]) -> list[int]:
    """An order of the indices that takes the classes in turn (the first image of each class, then the second, ...),
    stable within a class: the first N images of a class-sorted folder (`trainer=debug`, `limit=N`) cover every class,
    where the folder's own order would give N airplanes. Scoring every image in this order changes no metric."""
    seen: dict[int, int] = {}
    nth = []
    for c in labels:
        nth.append(seen.get(c, 0))
        seen[c] = nth[-1] + 1
    return sorted(range(len(labels)), key=lambda i: (nth[i], labels[i]))


def read_cifar(name: str, root: Path, train: bool, download: bool, image_size: int, cache_dir: Path) -> Tensors:
    """CIFAR-10/100 from image folders or the python-pickle format, whichever `root` holds."""
    cls, pickle_dir = CIFAR[name]
    if root.is_file():  # one file packed by `python -m cnnlab.data.pack` (GPU machines the folder cannot travel to)
        from cnnlab.data.pack import read_packed

        return read_packed(root, train, image_size)
    if folders := folder_splits(root):
        return read_image_folder(folders["train" if train else "test"], image_size, 3, cache_dir)
    if root.name == pickle_dir:
        root = root.parent
    if not (root / pickle_dir).is_dir() and not download:
        raise DatasetNotFoundError(
            f"no {name} data at {root}: expected {root}/{pickle_dir}/ (the official python version) or image folders "
            f"{root}/train/<class>/* and {root}/test/<class>/*. Set data.download=true to fetch it, or point "
            f"data.root at an existing copy (e.g. data.root=../shared/datasets/cifar10-jpg)."
        )
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        ds = cls(str(root), train=train, download=download)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError when corrupt
        remove_empty(created)
        raise DatasetNotFoundError(
            f"could not {'download' if download else 'read'} {name} at {root}/{pickle_dir}: {err}. Without internet, "
            f"copy the official archive's contents there, or point data.root at an image-folder copy."
        ) from err
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N x 32 x 32 x 3 -> N x 3 x 32 x 32
    return Tensors(x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def read_mnist(root: Path, train: bool, download: bool) -> Tensors:
    """MNIST in torchvision's layout (`<root>/MNIST/raw/*-ubyte`)."""
    if root.name == "MNIST" and (root / "raw").is_dir():
        root = root.parent
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        ds = torchvision.datasets.MNIST(str(root), train=train, download=download)
    except (OSError, RuntimeError) as err:
        remove_empty(created)
        hint = "" if download else " Set data.download=true to fetch it (needs internet),"
        raise DatasetNotFoundError(
            f"no MNIST at {root}: expected {root}/MNIST/raw/train-images-idx3-ubyte and the other idx files "
            f"({err}).{hint}"
            f" or point data.root at an existing copy (e.g. data.root=../shared/datasets/mnist)."
        ) from err
    return Tensors(ds.data.unsqueeze(1), ds.targets.to(torch.int64), list(ds.classes))


def decode(path: Path, channels: int) -> torch.Tensor:
    """C x H x W uint8 of one file, as cnnlab.data.images.open_image decodes it. Plain 8/16-bit JPEGs and PNGs go
    through torchvision's decoder (about 2.5x PIL's speed on CIFAR's 32x32 JPEGs); TIFF, BMP, transparency, CMYK and
    channel conversions other than grey -> RGB go through open_image itself."""
    try:
        x = decode_image(str(path), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except (RuntimeError, OSError, ValueError):
        x = None  # a format torchvision does not read, or a corrupt file: PIL decides
    if x is None or x.shape[0] not in (1, channels):  # 2/4 channels: alpha or CMYK
        return TF.pil_to_tensor(open_image(path, channels))
    if x.dtype == torch.uint16:
        x = (x.to(torch.int32) >> 8).to(torch.uint8)  # the high byte, as open_image
    return x.expand(channels, -1, -1) if x.shape[0] != channels else x


class _Decode(torch.utils.data.Dataset):
    """Decodes one file to C x size x size uint8 (`decode`); other sizes resized (shorter side) + center-cropped."""

    def __init__(self, files: list[Path], size: int, channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            img = decode(self.files[i], self.channels)
        except UNREADABLE:
            return i, None  # corrupt or truncated: counted and skipped by the caller
        if img.shape[-2:] != (self.size, self.size):
            img = TF.center_crop(TF.resize(img, self.size, antialias=True), [self.size, self.size])
        return i, img


def read_image_folder(folder: Path, image_size: int, channels: int, cache_dir: Path) -> Tensors:
    """Decodes `folder/<class>/*` once into a uint8 tensor, cached under `cache_dir` keyed by the file list."""
    files, labels, classes = list_image_folder(folder)
    stats = [(str(p.relative_to(folder)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    # DECODER in the key: caches written by an older decoder (16-bit as its low byte) are decoded again
    key = hashlib.sha1(json.dumps([str(folder.resolve()), image_size, channels, stats, DECODER]).encode()).hexdigest()
    key = key[:16]
    cache = cache_dir / f"{folder.parent.name}-{folder.name}-{image_size}px-{channels}ch-{key}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return Tensors(d["x"], d["y"], d["classes"])

    x = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)
    ok = torch.ones(len(files), dtype=torch.bool)
    workers = min(available_cpus(), 8)
    loader = torch.utils.data.DataLoader(_Decode(files, image_size, channels), batch_size=256, num_workers=workers,
                                         collate_fn=list)
    for batch in tqdm(loader, desc=f"decoding {folder} (once; cached in {cache_dir})", unit="batch"):
        for i, img in batch:
            if img is None:
                ok[i] = False
            else:
                x[i] = img
    if bad := (~ok).nonzero().flatten().tolist():
        log.warning("skipped %d unreadable images in %s, e.g. %s", len(bad), folder, [str(files[i]) for i in bad[:3]])
    if not ok.any():
        raise DatasetNotFoundError(f"none of the {len(files)} images in {folder} could be decoded, e.g. {files[0]}")
    out = Tensors(x[ok].contiguous(), torch.as_tensor(labels)[ok], classes)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"x": out.x, "y": out.y, "classes": classes}, tmp)
    tmp.replace(cache)  # atomic: a concurrent or killed run never sees half a file
    return out


def synthetic(n: int, num_classes: int, channels: int, size: int, train: bool) -> Tensors:
    """Learnable random data: each class is a fixed coarse random template plus noise (different noise per split).

    The templates are 4x4 blocks scaled up, so crops and flips keep them recognisable."""
    coarse = torch.randint(0, 256, (num_classes, channels, 4, 4), generator=torch.Generator().manual_seed(0))
    templates = F.interpolate(coarse.float(), size=(size, size), mode="nearest").long()
    y = torch.arange(n) % num_classes
    noise = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(1 + int(train)))
    x = (templates[y] * 3 + noise) // 4
    return Tensors(x.to(torch.uint8), y, [f"class{i}" for i in range(num_classes)])
