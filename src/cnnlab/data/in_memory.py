"""Small-image datasets (CIFAR, MNIST, synthetic) held whole in memory, on the training device, as uint8.

Batches are gathered, augmented and normalized as whole tensors; the crops, flips and lighting of a batch are a pure
function of (seed, epoch, batch index, rank), so a run resumed from any checkpoint, mid-epoch included, sees the
same batches. The test stage scores the `eval` protocol's views of the stored images (none, or flip).
"""

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from cnnlab.data.augment import IN_MEMORY_CROPS, Augment
from cnnlab.data.readers import DatasetNotFoundError, Tensors, across_classes, read_cifar, read_mnist, synthetic
from cnnlab.evaluation import EvalProtocol

log = logging.getLogger(__name__)
DATASETS = ("cifar10", "cifar100", "mnist", "synthetic")
NORMALIZE = ("channel", "pixel_mean", "pixel_mean_global_std")


class TensorBatches:
    """Iterates (x, y) batches of in-memory tensors, each through transform(x, y, generator) -> (x, y); shuffled
    per epoch, split across ranks without padding."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        transform: Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], tuple],
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: Callable[[], tuple[int, int]] = lambda: (0, 0),
        drop_last: bool = False,
        epoch_images: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        self.x, self.y, self.batch_size, self.transform, self.shuffle = x, y, batch_size, transform, shuffle
        self.seed, self.rank, self.world_size, self.position = seed, rank, world_size, position
        self.drop_last = drop_last  # every batch full: the static shapes a CUDA graph replays, or airbench94's
        self.epoch_images = epoch_images  # epoch -> the images it reads (alternate flips)
        self._resume: dict[str, int] | None = None
        # Training ranks must take equal steps, so each drops the same tail; evaluation counts every image once.
        n = len(y) - len(y) % world_size if shuffle else len(y)
        self.per_rank = len(range(rank, n, world_size))

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else -(-self.per_rank // self.batch_size)

    @property
    def dataset(self) -> torch.Tensor:
        """The labels, one per image, as a DataLoader's dataset: Lightning's batch-size finder stops at its length."""
        return self.y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = 0, 0
        if self.shuffle:
            epoch, start = self.position() if self._resume is None else (self._resume["epoch"], self._resume["batch"])
            self._resume = None
            shuffle = torch.Generator().manual_seed(hash((self.seed, epoch)) % 2**63)
            order = torch.randperm(len(self.y), generator=shuffle)
        else:
            order = torch.arange(len(self.y))
        order = order[self.rank :: self.world_size][: self.per_rank].to(self.x.device)
        x = self.x if self.epoch_images is None else self.epoch_images(epoch)
        g = torch.Generator(self.x.device) if self.shuffle else None  # one object, reseeded: the same draws
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if g is not None:
                g.manual_seed(hash((self.seed, epoch, b, self.rank)) % 2**63)
            yield self.transform(x[idx], self.y[idx], g)

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from; Lightning stores this in checkpoints and restores it on resume."""
        epoch, batch = self.position()
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = state


def loop_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """(epoch, batch) the training loader continues from, read off the trainer's progress counters.

    `processed` is right at every save point: Lightning redoes a batch interrupted mid-step (processed not yet
    counted) and counts one saved from on_train_batch_end as done (processed counted, completed not yet).
    """
    if trainer is None:
        return 0, 0
    done, epoch = trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.current_epoch
    return (epoch + 1, 0) if done >= trainer.num_training_batches else (epoch, done)


def global_std(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The sample std (n - 1) of every value of uint8 images, in [0, 1] units, as a 1 x 1 x 1 tensor; summed in
    float64 chunks so 45k CIFAR images never exist as one float copy."""
    total = torch.zeros(2, dtype=torch.float64)
    for part in x.split(chunk):
        v = part.double().cpu() / 255
        total += torch.stack([v.sum(), (v * v).sum()])
    n = x.numel()
    return ((total[1] - total[0] ** 2 / n) / (n - 1)).sqrt().float().view(1, 1, 1)


class InMemoryDataModule(L.LightningDataModule):
    """CIFAR-10/100, MNIST or synthetic images, whole in memory, augmented per batch on the training device."""

    def __init__(
        self,
        dataset: str,
        root: str | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        pad: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        val_split: int = 0,
        normalize: str = "channel",
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        augment: Augment | None = None,
        evaluation: EvalProtocol | None = None,
        download: bool = False,
        cache_dir: str = "~/.cache/cnnlab",
        device_resident: bool = True,
        seed: int = 0,
        synthetic_size: tuple[int, int] = (1024, 256),
        drop_last: bool | None = None,
    ) -> None:
        """
        Args:
            dataset: one of cifar10, cifar100, mnist, synthetic.
            root: the dataset folder (either CIFAR layout is detected); downloads go here when download=true.
            image_size: side of the images as stored (after `pad`); CIFAR folders of other sizes are resized to it.
            pad: zero pixels added on each side once at load (MNIST's 28x28 -> LeNet-5's 32x32 input).
            val_split: images held out of the training set for validation (He et al. 2016: 5000); 0 validates on
                the test set. The split is fixed (seed 0) whatever the run's seed.
            normalize: "channel" ((x - mean) / std per channel), "pixel_mean" (subtract the training set's
                per-pixel mean image, He et al. 2016 4.2) or "pixel_mean_global_std" (that, divided by one std over
                every value of the training set: Huang et al. 2016's cifar-dataset.lua, `data:mean(1)`, `data:std()`).
            augment: the training preset (config group `augment`) with an in-memory crop (none, pad).
            evaluation: the test protocol (config group `eval`): none (the stored images) or flip (and their
                mirror images); validation scores the stored images every epoch.
            device_resident: keep the dataset on the training device (GPU), so batches never wait on the host.
            synthetic_size: (train, test) image counts of the synthetic dataset.
            drop_last: drop each epoch's last partial training batch (airbench94: every step sees batch_size); None:
                only when the module compiles with a CUDA-graph mode (module.compile=reduce-overhead or
                max-autotune), whose graphs need static shapes.
        """
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if dataset != "synthetic" and not root:
            raise ValueError(f"data.root is required for dataset {dataset!r}")
        if augment is not None and augment.crop not in IN_MEMORY_CROPS:
            raise ValueError(f"InMemoryDataModule (data={dataset}) holds images of one size: augment.crop must be one "
                             f"of {IN_MEMORY_CROPS}, got {augment.crop!r} (a preset for image folders, "
                             f"data=imagenet|imagenette); use augment=cifar or augment=none")
        self.evaluation = EvalProtocol.build(evaluation)
        self.evaluation.tensor_views(torch.zeros(1, 1, 1, 1))  # fails now, naming the protocol, if it needs files
        self.save_hyperparameters(ignore=["augment", "evaluation"], logger=False)
        self.augment = augment or Augment(crop="none", flip=False)
        self.root = Path(root).expanduser() if root else None
        self.splits: dict[str, Tensors] = {}
        self.classes: list[str] = []

    def read(self, train: bool) -> Tensors:
        hp = self.hparams
        if hp.dataset == "synthetic":
            n = hp.synthetic_size[0 if train else 1]
            return synthetic(n, hp.num_classes, hp.in_channels, hp.image_size - 2 * hp.pad, train)
        if hp.dataset == "mnist":
            return read_mnist(self.root, train, hp.download)
        cache = Path(hp.cache_dir).expanduser()
        return read_cifar(hp.dataset, self.root, train, hp.download, hp.image_size - 2 * hp.pad, cache)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        train, test = self.read(train=True), self.read(train=False)
        for name, split in (("train", train), ("test", test)):
            if len(split.classes) != hp.num_classes or split.x.shape[1] != hp.in_channels:
                raise DatasetNotFoundError(
                    f"{hp.dataset} {name} split at {self.root} has {len(split.classes)} classes and "
                    f"{split.x.shape[1]} channels, but data.num_classes={hp.num_classes} and "
                    f"data.in_channels={hp.in_channels}"
                )
        order = torch.tensor(across_classes(test.y.tolist()), dtype=torch.long)  # debug limits see every class
        test = Tensors(test.x[order], test.y[order], test.classes)
        if not 0 <= hp.val_split < len(train.y):
            raise ValueError(f"val_split must be in [0, {len(train.y)}) for this dataset, got {hp.val_split}")
        if hp.val_split:
            perm = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))
            val_idx, train_idx = perm[: hp.val_split], perm[hp.val_split :].sort().values
            val = Tensors(train.x[val_idx], train.y[val_idx], train.classes)
            train = Tensors(train.x[train_idx], train.y[train_idx], train.classes)
        else:
            val = test
        device = self.trainer.strategy.root_device if self.trainer and hp.device_resident else torch.device("cpu")
        for name, split in (("train", train), ("val", val), ("test", test)):
            x = F.pad(split.x, (hp.pad,) * 4) if hp.pad else split.x
            self.splits[name] = Tensors(x.to(device), split.y.to(device), split.classes)
        self.classes = train.classes
        if hp.normalize == "pixel_mean":
            self.mean = self.splits["train"].x.float().mean(0) / 255  # C x H x W
            self.std = torch.ones(hp.in_channels, 1, 1, device=device)
        elif hp.normalize == "pixel_mean_global_std":
            x = self.splits["train"].x
            self.mean = x.float().mean(0) / 255  # C x H x W
            self.std = global_std(x).repeat(hp.in_channels, 1, 1).to(device)
        else:
            self.mean = torch.tensor(hp.mean, device=device).view(-1, 1, 1)
            self.std = torch.tensor(hp.std, device=device).view(-1, 1, 1)
        log.info("%s in memory on %s: %s", hp.dataset, device, {k: len(v.y) for k, v in self.splits.items()})

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> float32, the model's input."""
        return (x.float() / 255 - self.mean) / self.std

    def _train_transform(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None) -> tuple:
        return self.augment.batch(x, y, self.mean, self.std, self.hparams.num_classes, g)

    def _val_transform(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None) -> tuple:
        return self.normalize(x), y

    def _test_transform(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None) -> tuple:
        return self.normalize(self.evaluation.tensor_views(x)), y

    def _position(self) -> tuple[int, int]:
        return loop_position(self.trainer)

    def _loader(self, split: str, train: bool) -> TensorBatches:
        s, t = self.splits[split], self.trainer
        rank, world = (t.global_rank, t.world_size) if t else (0, 1)
        bs = self.hparams.batch_size if train else self.hparams.eval_batch_size
        transform = {"train": self._train_transform, "val": self._val_transform, "test": self._test_transform}[split]
        drop = self.hparams.get("drop_last")
        if drop is None:
            module = getattr(t, "lightning_module", None)  # a fused run's stand-in trainer has none
            drop = getattr(module, "compile_mode", None) in ("reduce-overhead", "max-autotune")
        flips = self._alternate_flips(s.x) if train and self.augment.alternate_flips else None
        return TensorBatches(s.x, s.y, bs, transform, shuffle=train, seed=self.hparams.seed, rank=rank,
                             world_size=world, position=self._position if train else lambda: (0, 0),
                             drop_last=train and bool(drop), epoch_images=flips)

    def _alternate_flips(self, x: torch.Tensor) -> Callable[[int], torch.Tensor]:
        """airbench94's flips: a random half of the images (fixed by the seed) mirrored on even epochs, the other
        half on odd ones, so each image is seen both ways in every two consecutive epochs."""
        first = torch.rand(len(x), generator=torch.Generator().manual_seed(self.hparams.seed)) < 0.5
        base = torch.where(first.to(x.device)[:, None, None, None], x.flip(-1), x)
        return lambda epoch: base.flip(-1) if epoch % 2 else base

    def train_dataloader(self) -> TensorBatches:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatches:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatches:
        return self._loader("test", train=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: what a predictor needs to preprocess images exactly as in training."""
        return {"classes": self.classes, "mean": self.mean.cpu(), "std": self.std.cpu()} if self.splits else {}
