"""ImageNet-layout folders (`train/<synset>/*.JPEG`, `val/<synset>/*.JPEG`) read with PIL in worker processes.

Workers decode, crop and flip (the `augment` preset's per-image stage) and hand over uint8 tensors; the rest of the
augmentation and the normalization run on the training device (`on_after_batch_transfer`). Evaluation cuts the
`eval` protocol's views. Every rank reads its own shard; evaluation shards are not padded, so each image counts once.
Evaluation reads val/ in a fixed order that takes the classes in turn (`across_classes`), so a limited pass
(`trainer=debug`, `limit_val_batches`, `visualize limit=N`) sees every class; training shuffles its own order.

An unreadable file never stops a run: in training it is replaced by the next readable file of the folder (so every
batch stays full and distributed ranks stay in step), in evaluation it is left out (and a batch left empty is
skipped); each distinct file is logged once and counted in `unreadable`.
"""

import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnnlab.data.augment import FOLDER_CROPS, IMAGENET_MEAN, IMAGENET_STD, Augment
from cnnlab.data.images import UNREADABLE, DatasetNotFoundError, list_image_folder, open_rgb
from cnnlab.data.in_memory import loop_position
from cnnlab.data.readers import across_classes, available_cpus
from cnnlab.evaluation import EvalProtocol

log = logging.getLogger(__name__)

# Imagenette's 10 ILSVRC-2012 synsets (github.com/fastai/imagenette); full ImageNet reads LOC_synset_mapping.txt
IMAGENETTE_NAMES = {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
                    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
                    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
                    "n03888257": "parachute"}
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")  # "<wnid> <name>, <synonym>, ..." per line
SUBSTITUTE_TRIES = 64  # training: files after an unreadable one tried in its place before giving up
__all__ = ["ImageFolderDataModule", "ShardSampler", "class_names", "open_rgb", "read_split"]


def class_names(root: Path, synsets: list[str]) -> list[str]:
    """Human-readable names: the first name of each synset from a mapping file in root (or its parent), else
    Imagenette's table, else the synset id itself."""
    table = dict(IMAGENETTE_NAMES)
    for f in (d / n for d in (root, root.parent) for n in SYNSET_FILES):
        if f.is_file():
            for line in f.read_text().splitlines():
                wnid, _, words = line.strip().partition(" ")
                table[wnid] = words.split(",")[0].strip() or wnid
            break
    return [table.get(s, s) for s in synsets]


def read_split(folder: Path, per_class: int | None = None, across: bool = False
               ) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and classes of `folder/<class>/*`: only the first `per_class` files of each class if given (a
    slice), and with `across` in the order that takes the classes in turn (evaluation splits: the first N images of
    a limited pass cover the classes, where the folder's own order would give N of the first class)."""
    files, labels, classes = list_image_folder(folder)
    keep = range(len(files))
    if per_class:
        first = {c: k for k, c in reversed(list(enumerate(labels)))}  # files come grouped by class
        keep = [k for k in keep if k - first[labels[k]] < per_class]
    if across:
        keep = [keep[k] for k in across_classes([labels[k] for k in keep])]
    return [files[k] for k in keep], [labels[k] for k in keep], classes


class ImageFiles(Dataset):
    """Labelled image files -> (views, label, unreadable paths). With `substitute` (training) an unreadable file is
    replaced by the next readable one; otherwise its views are None (left out by `collate`)."""

    def __init__(self, files: list[Path], labels: list[int], transform: Callable, substitute: bool) -> None:
        self.files, self.labels, self.transform, self.substitute = files, labels, transform, substitute

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        i, size = key if isinstance(key, tuple) else (key, None)
        unreadable = []
        for j in range(i, i + (SUBSTITUTE_TRIES if self.substitute else 1)):
            j %= len(self.files)
            try:
                img = open_rgb(self.files[j])
            except UNREADABLE:
                unreadable.append(str(self.files[j]))
                continue
            return (self.transform(img, size) if size else self.transform(img)), self.labels[j], unreadable
        if self.substitute:
            raise DatasetNotFoundError(f"{len(unreadable)} files in a row are unreadable, from {unreadable[0]}: is "
                                       f"the folder damaged? (each was tried in place of the one before)")
        return None, self.labels[i], unreadable


def collate(batch: list[tuple], stack: Callable[[list[tuple]], tuple]) -> tuple:
    """(views, labels, unreadable paths) of the readable images; (None, None, paths) when none was readable."""
    good = [b[:2] for b in batch if b[0] is not None]
    unreadable = [p for b in batch for p in b[2]]
    return (*stack(good), unreadable) if good else (None, None, unreadable)


def stack_train(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


class FileBatches(DataLoader):
    """A DataLoader of ImageFiles that reports unreadable files to `on_unreadable` and leaves out batches in which
    no image was readable (a torch.stack of nothing would end the run): yields (views, labels)."""

    def __init__(self, *args, on_unreadable: Callable[[list[str]], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_unreadable = on_unreadable

    def __iter__(self) -> Iterator[tuple]:
        for x, y, unreadable in super().__iter__():
            if unreadable:
                self.on_unreadable(unreadable)
            if y is not None:
                yield x, y


class ShardSampler(DistributedSampler):
    """This rank's indices: training shuffled per epoch (seed, epoch) with the tail dropped so all ranks take equal
    steps; evaluation in order and unpadded, so every image counts exactly once across ranks. Being a
    DistributedSampler, Lightning leaves it in place. With `size_at`, yields (index, crop side of the epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int, world_size: int,
                 size_at: Callable[[int], int] | None = None,
                 position: Callable[[], tuple[int, int]] | None = None, batch_size: int = 1) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=shuffle)
        self.n, self.size_at, self.position, self.batch_size = n, size_at, position, batch_size
        self.num_samples = n // world_size if shuffle else len(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        order = torch.arange(self.n)
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = order[self.rank :: self.num_replicas][: self.num_samples].tolist()
        if self.position is not None and (at := self.position())[0] == self.epoch:  # resumed mid-epoch: the rest
            mine = mine[at[1] * self.batch_size :]
        if self.size_at is None:
            return iter(mine)
        size = self.size_at(self.epoch)
        return iter([(i, size) for i in mine])

    def __len__(self) -> int:
        return self.num_samples


class ImageFolderDataModule(L.LightningDataModule):
    """ImageNet or any folder in its layout, decoded with PIL in worker processes."""

    def __init__(
        self,
        root: str,
        num_classes: int = 1000,
        in_channels: int = 3,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        augment: Augment | None = None,
        evaluation: EvalProtocol | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        per_class: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: the folder holding `train/<class>/*` and `val/<class>/*`; class index = sorted class folders.
            batch_size: per device (ImageNet papers: 256 in total, He et al. 2016, 3.4).
            eval_batch_size: images per evaluation batch (views multiply the work); None = batch_size.
            num_workers: decoding processes per device; None = the available CPUs / devices - 1 (at least 1).
            augment: the training preset (config group `augment`) with an image-file crop (resized,
                shorter_side); None = Inception's crop + flip.
            evaluation: the test protocol (config group `eval`; None = center); validation scores the center crop.
            per_class: read only the first n images of each class of each split (slices for quick runs).
        """
        super().__init__()
        if augment is not None and augment.crop not in FOLDER_CROPS:
            raise ValueError(f"{type(self).__name__} (data={Path(str(root)).name}) reads image files of any size: "
                             f"augment.crop must be one of {FOLDER_CROPS}, got {augment.crop!r} (a preset for "
                             f"in-memory data). Use augment=resnet|alexnet|inception|autoaugment|randaugment|...")
        if in_channels != 3:
            raise ValueError(f"image folders are read as RGB: in_channels must be 3, got {in_channels}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        self.save_hyperparameters(ignore=["augment", "evaluation"], logger=False)
        self.root = Path(root).expanduser()
        self.augment = augment or Augment()
        self.evaluation = EvalProtocol.build(evaluation) if evaluation is not None else EvalProtocol("center")
        if self.evaluation.name == "none":
            raise ValueError(f"eval=none scores images as stored, which only in-memory datasets allow; "
                             f"{type(self).__name__} needs a crop protocol: eval=center|flip|tencrop|multiscale|"
                             f"dense")
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.splits: dict[str, tuple[list[Path], list[int]]] = {}
        self.classes: list[str] = []
        self.class_names: list[str] = []
        self.unreadable: set[str] = set()  # distinct files, however often an epoch meets them

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        for split, sub in (("train", hp.train_dir), ("val", hp.val_dir)):
            folder = self.root / sub
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"no {split} split at {folder}: expected {self.root}/{hp.train_dir}/<synset>/*.JPEG and "
                    f"{self.root}/{hp.val_dir}/<synset>/*.JPEG (data/prepare_imagenet.py makes this layout from the "
                    f"official archives); set data.root")
            # val/ is scored in order (val and test stages): classes in turn; training shuffles the folder's order
            files, labels, classes = read_split(folder, hp.per_class, across=split == "val")
            if len(classes) != hp.num_classes:
                raise DatasetNotFoundError(f"{folder} has {len(classes)} class folders but "
                                           f"data.num_classes={hp.num_classes}")
            if self.classes and classes != self.classes:
                raise DatasetNotFoundError(f"the class folders of {folder} differ from {self.root / hp.train_dir}'s")
            self.classes = classes
            self.splits[split] = (files, labels)
        self.class_names = class_names(self.root, self.classes)
        log.info("%s: %s images, %d classes (%s, ...)", self.root, {k: len(v[0]) for k, v in self.splits.items()},
                 len(self.classes), ", ".join(self.class_names[:3]))

    # ---- loaders -------------------------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t else (0, 1)

    def _workers(self) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):  # sbatch --cpus-per-task: this process's share already
            return max(1, int(cpus) - 1)
        devices = self.trainer.num_devices if self.trainer else 1
        return max(1, available_cpus() // max(1, devices) - 1)

    def _loader(self, split: str, train: bool, views: Callable, stack: Callable, batch_size: int) -> DataLoader:
        files, labels = self.splits[split]
        rank, world = self._rank_world()
        progressive = self.augment.size_at if train and self.augment.min_size else None
        sampler = ShardSampler(len(files), train, self.hparams.seed, rank, world, progressive,
                               partial(loop_position, self.trainer) if train else None, batch_size)
        workers = self._workers()
        return FileBatches(ImageFiles(files, labels, views, substitute=train), batch_size=batch_size,
                           sampler=sampler, num_workers=workers, collate_fn=partial(collate, stack=stack),
                           pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                           persistent_workers=self.hparams.persistent_workers and workers > 0, drop_last=train,
                           prefetch_factor=4 if workers else None, on_unreadable=self._count_unreadable)

    def _count_unreadable(self, paths: list[str]) -> None:
        new = sorted(set(paths) - self.unreadable)
        self.unreadable.update(paths)
        if new:
            log.warning("%d unreadable image file(s) left out (%d distinct so far; in training each is replaced by "
                        "the next readable file): %s", len(new), len(self.unreadable), new)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.augment.image, stack_train, self.hparams.batch_size)

    def _eval_loader(self, protocol: EvalProtocol) -> DataLoader:
        bs = self.hparams.eval_batch_size or self.hparams.batch_size
        return self._loader("val", False, protocol.views, protocol.collate, bs)

    def val_dataloader(self) -> DataLoader:
        p = self.evaluation
        return self._eval_loader(EvalProtocol("center", p.resize, p.crop))  # one view, every epoch

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.evaluation)

    # ---- on the device -------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """uint8 views -> the model's input: the preset's per-batch part in training, normalization otherwise."""
        x, y = batch
        mean, std = self.mean.to(y.device), self.std.to(y.device)
        if self.trainer is not None and self.trainer.training:
            return self.augment.batch(x, y, mean, std, self.hparams.num_classes)
        return EvalProtocol.map(x, lambda v: (v.float() / 255 - mean) / std), y

    def state_dict(self) -> dict:
        """Saved in checkpoints: what a predictor needs to name classes and preprocess images as in training."""
        return {"classes": self.classes, "class_names": self.class_names, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        pass  # everything in it is re-read from the folder

