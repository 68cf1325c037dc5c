"""ImageNet-layout folders decoded on the training device (`data=imagenet_gpu`, `data=imagenette_gpu`): the loader's
workers only read files, the batch is decoded and augmented where the model runs.

    python train.py data=imagenet_gpu data.root=/datasets/imagenet data.num_workers=4 model=resnet50

Per image, in a worker (CPU): read the file's bytes; from its header (PIL, nothing decoded) its size and whether it is
a plain JPEG, the case the device decoder is given: baseline, 3 components, no EXIF rotation, ending in the EOI
marker. In training, np.random is seeded with (seed, epoch, image index) and the preset's own sampler draws the crop
box and the flip (`Augment.box`, as the PIL and FFCV loaders do), so the crops do not depend on the worker count.
Every other file (greyscale, CMYK, progressive, PNG, EXIF-rotated, truncated) is decoded and cut in the worker by the
image-folder path itself, under the same seed: `cnnlab.data.images.open_rgb` + `Augment.image` (training) or
`EvalProtocol.views`; those are counted per reason and the count is logged once per pass over the data. Unreadable
files are handled as the image-folder loader handles them (training: the next readable file instead; evaluation:
left out), since they take the same path.

Per batch, on the device (`on_after_batch_transfer`): `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG's
batched decoder on CUDA; libjpeg-turbo on the CPU), then per image the crop + antialiased bilinear resize + flip, or
the eval protocol's views; the workers' CPU-decoded images take their places; then `Augment.batch` (policy, PCA
lighting, normalization, erasing, mixup/CutMix) as for every data module, and the model's dtype and memory format
(channels_last with module.channels_last). A file the device decoder rejects although its header passed is decoded
on the CPU in the main process instead (counted as "device decoder failed").
"""

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.augment import Augment
from cnnlab.data.imagefolder import SUBSTITUTE_TRIES, FileBatches, ImageFolderDataModule, ShardSampler
from cnnlab.data.images import UNREADABLE, DatasetNotFoundError, open_rgb
from cnnlab.data.in_memory import loop_position
from cnnlab.evaluation import WHOLE_IMAGE, EvalProtocol

log = logging.getLogger(__name__)
MODES = {"L": "greyscale", "CMYK": "CMYK", "YCbCr": "YCbCr", "I": "16-bit", "I;16": "16-bit"}
EXIF_ORIENTATION = 0x0112
DEVICE_FAILED = "device decoder failed"


# ---- worker side -------------------------------------------------------------------------------------------------
def plain_jpeg(data: bytes) -> tuple[int, int] | str:
    """(height, width) of a JPEG the device decoder is given, else the reason it goes to the CPU decoder."""
    if data[:3] != b"\xff\xd8\xff":
        return "not JPEG" if data[:8] != b"\x89PNG\r\n\x1a\n" else "PNG"
    if data[-64:].rstrip(b"\0")[-2:] != b"\xff\xd9":  # no EOI marker (trailing zero padding allowed): cut short
        return "truncated"
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the markers up to the first scan, decodes nothing
            if img.format != "JPEG" or img.mode != "RGB":
                return MODES.get(img.mode, img.mode) if img.format == "JPEG" else str(img.format)
            if img.info.get("progressive"):
                return "progressive"
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return "EXIF rotation"
            return img.height, img.width
    except UNREADABLE:
        return "bad header"


@contextmanager
def seeded(seed: tuple[int, ...] | None) -> Iterator[None]:
    """np.random seeded with `seed` inside, restored after (the shared box samplers draw from np.random)."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


def draw(augment: Augment, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box and flip of one image, drawn as Augment.image draws them (box first, then the flip)."""
    box = augment.box(height, width)
    return tuple(int(v) for v in box), bool(augment.flip and np.random.random() < 0.5)


class Item(NamedTuple):
    """One image as a worker hands it over: encoded bytes + its crop, or views the CPU decoder made."""

    data: bytes | None
    box: tuple[int, int, int, int] | None
    flip: bool
    views: torch.Tensor | list[torch.Tensor] | None
    reason: str | None  # why the CPU decoded it
    label: int
    unreadable: list[str]
    key: tuple  # (index, crop side, seed): the CPU retry of a file the device decoder rejects


class EncodedFiles(Dataset):
    """Labelled image files -> Item. `protocol` None: training (crops drawn here, unreadable files substituted by the
    next readable one); else evaluation with that protocol's views (unreadable files left out)."""

    def __init__(self, files: list, labels: list[int], augment: Augment, protocol: EvalProtocol | None) -> None:
        self.files, self.labels, self.augment, self.protocol = files, labels, augment, protocol

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple) -> Item:
        i, size, seed = key
        train, unreadable = self.protocol is None, []
        for j in range(i, i + (SUBSTITUTE_TRIES if train else 1)):
            j %= len(self.files)
            try:
                data = self.files[j].read_bytes()
            except OSError:
                unreadable.append(str(self.files[j]))
                continue
            header = plain_jpeg(data)
            if isinstance(header, tuple):
                if not train:
                    return Item(data, None, False, None, None, self.labels[j], unreadable, (j, size, seed))
                with seeded(seed):
                    box, flip = draw(self.augment, *header)
                return Item(data, box, flip, None, None, self.labels[j], unreadable, (j, size, seed))
            views = self.cpu_views(j, size, seed)
            if views is None:
                unreadable.append(str(self.files[j]))
                continue
            return Item(None, None, False, views, header, self.labels[j], unreadable, (j, size, seed))
        if train:
            raise DatasetNotFoundError(f"{len(unreadable)} files in a row are unreadable, from {unreadable[0]}: is "
                                       f"the folder damaged? (each was tried in place of the one before)")
        return Item(None, None, False, None, None, self.labels[i], unreadable, (i, size, seed))

    def cpu_views(self, j: int, size: int | None, seed: tuple | None) -> torch.Tensor | list | None:
        """File j through the image-folder path (PIL decode, the same crop draws); None when it is unreadable."""
        try:
            img = open_rgb(self.files[j])
        except UNREADABLE:
            return None
        if self.protocol is not None:
            return self.protocol.views(img)
        with seeded(seed):
            return self.augment.image(img, size)


class SeededSampler(ShardSampler):
    """ShardSampler whose keys are (index, crop side or None, seed): training seeds are (seed, epoch, index)."""

    def __iter__(self) -> Iterator[tuple]:
        for key in super().__iter__():
            i, size = key if isinstance(key, tuple) else (key, None)
            yield i, size, (self.seed, self.epoch, i) if self.shuffle else None


class EncodedBatch(NamedTuple):
    """A batch as the device receives it; the encoded bytes stay in host memory (nvJPEG reads them from there)."""

    data: torch.Tensor  # uint8: the encoded files end to end
    lengths: list[int]  # bytes of each encoded file
    boxes: list[tuple[int, int, int, int]]  # (top, left, h, w) of each encoded file (training)
    flips: list[bool]
    encoded_at: list[int]  # positions in the batch of the encoded files
    views: list  # the CPU-decoded images' crops (training) or views (evaluation)
    views_at: list[int]
    keys: list[tuple]  # (index, size, seed) of each encoded file
    size: int  # training crop side (progressive resizing changes it per epoch)
    protocol: EvalProtocol | None  # None: a training batch
    reasons: dict[str, int]  # why the CPU decoded some: reason -> images


def collate(items: list[Item], augment: Augment, protocol: EvalProtocol | None) -> tuple:
    """(EncodedBatch, labels, unreadable paths); (None, None, paths) when no image was readable (FileBatches)."""
    unreadable = [p for it in items for p in it.unreadable]
    good = [it for it in items if it.data is not None or it.views is not None]
    if not good:
        return None, None, unreadable
    enc = [k for k, it in enumerate(good) if it.data is not None]
    cpu = [k for k, it in enumerate(good) if it.data is None]
    data = b"".join(good[k].data for k in enc)
    batch = EncodedBatch(
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8),
        [len(good[k].data) for k in enc], [good[k].box for k in enc], [good[k].flip for k in enc], enc,
        [good[k].views for k in cpu], cpu, [good[k].key for k in enc], good[0].key[1] or augment.size, protocol,
        dict(Counter(good[k].reason for k in cpu)))
    return batch, torch.tensor([it.label for it in good]), unreadable


class EncodedBatches(FileBatches):
    """FileBatches that also counts the images the CPU decoded and reports them once per pass (`on_pass`)."""

    def __init__(self, *args, on_pass: Callable[[Counter, int], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_pass = on_pass

    def __iter__(self) -> Iterator[tuple]:
        reasons, n = Counter(), 0
        try:
            for x, y in super().__iter__():
                reasons.update(x.reasons)
                n += len(y)
                yield x, y
        finally:  # also when the pass is cut short (limit_*_batches, max_steps)
            self.on_pass(reasons, n)


# ---- device side -------------------------------------------------------------------------------------------------
def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 3 x H x W per encoded file, on `device`; None for a file the decoder rejects."""
    if not data:
        return []
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the whole batched call: find it
        out = []
        for d in data:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def crop(img: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """Augment.image on a decoded tensor: box -> size x size (bilinear, antialiased as PIL's resize) -> flip."""
    top, left, h, w = box
    x = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return x.flip(-1) if flip else x


def tensor_views(protocol: EvalProtocol, img: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """EvalProtocol.views on a decoded 3 x H x W tensor: the same resizes and crops, the same shapes."""
    if protocol.name in WHOLE_IMAGE:
        scaled = [TF.resize(img, s, antialias=True) for s in protocol.scales]
        return [v for x in scaled for v in ([x, x.flip(-1)] if protocol.flip else [x])]
    img = TF.resize(img, protocol.resize, antialias=True)
    if protocol.name == "tencrop":
        if protocol.square:
            img = TF.center_crop(img, [protocol.resize, protocol.resize])
        return torch.stack(TF.ten_crop(img, protocol.crop))
    center = TF.center_crop(img, protocol.crop)
    return torch.stack([center, center.flip(-1)]) if protocol.flip else center


class DeviceDecodeDataModule(ImageFolderDataModule):
    """ImageNet or any folder in its layout: workers read the files, the training device decodes and augments."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.cpu_decoded: dict[str, Counter] = {}  # split -> reason -> images, of the last pass over it
        self.datasets: dict[str, EncodedFiles] = {}

    def _encoded(self, split: str, protocol: EvalProtocol | None, batch_size: int) -> DataLoader:
        files, labels = self.splits[split]
        rank, world = self._rank_world()
        train = protocol is None
        progressive = self.augment.size_at if train and self.augment.min_size else None
        sampler = SeededSampler(len(files), train, self.hparams.seed, rank, world, progressive,
                                partial(loop_position, self.trainer) if train else None, batch_size)
        self.datasets[split] = dataset = EncodedFiles(files, labels, self.augment, protocol)
        workers = self._workers()
        return EncodedBatches(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                              collate_fn=partial(collate, augment=self.augment, protocol=protocol),
                              pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                              persistent_workers=self.hparams.persistent_workers and workers > 0, drop_last=train,
                              prefetch_factor=4 if workers else None, on_unreadable=self._count_unreadable,
                              on_pass=partial(self._count_cpu_decoded, split))

    def _count_cpu_decoded(self, split: str, reasons: Counter, n: int) -> None:
        self.cpu_decoded[split] = reasons
        if n and (reasons or split == "train"):
            log.info("%s: %d of %d images decoded on the CPU (%s), the rest on the training device", split,
                     sum(reasons.values()), n, ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) or "none")

    def train_dataloader(self) -> DataLoader:
        return self._encoded("train", None, self.hparams.batch_size)

    def _eval_loader(self, protocol: EvalProtocol) -> DataLoader:
        return self._encoded("val", protocol, self.hparams.eval_batch_size or self.hparams.batch_size)

    # ---- on the device -------------------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: tuple, device: torch.device, dataloader_idx: int) -> tuple:
        """Labels and CPU-decoded views to the device; the encoded bytes stay in (pinned) host memory."""
        x, y = batch
        if not isinstance(x, EncodedBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return x._replace(views=move_data_to_device(x.views, device)), y.to(device, non_blocking=True)

    def decoded_views(self, x: EncodedBatch, y: torch.Tensor) -> tuple:
        """The batch's uint8 views (training: N x 3 x size x size; evaluation: as EvalProtocol.collate shapes them)
        and labels, on the labels' device; images unreadable even on the CPU are substituted or left out."""
        device, train = y.device, x.protocol is None
        data = list(torch.split(x.data, x.lengths)) if x.lengths else []
        out: list = [None] * len(y)
        for k, v in zip(x.views_at, x.views, strict=True):
            out[k] = v
        labels = y.clone()
        for k, img, key, box, flip in zip(x.encoded_at, decode(data, device), x.keys, x.boxes or [None] * len(data),
                                          x.flips or [False] * len(data), strict=True):
            if img is not None:
                out[k] = crop(img, box, x.size, flip) if train else tensor_views(x.protocol, img)
            else:
                out[k], labels[k] = self._cpu_retry(key, train, device, labels[k])
        keep = [k for k, v in enumerate(out) if v is not None]  # evaluation: unreadable files are left out
        out, labels = [out[k] for k in keep], labels[keep]
        if train:
            return torch.stack(out), labels
        return x.protocol.collate([(v, 0) for v in out])[0], labels

    def _cpu_retry(self, key: tuple, train: bool, device: torch.device, label: torch.Tensor) -> tuple:
        """A file whose header passed but the device decoder rejected: the image-folder path, in this process."""
        j, size, seed = key
        dataset = self.datasets["train" if train else "val"]
        for t in range(SUBSTITUTE_TRIES if train else 1):
            i = (j + t) % len(dataset)
            views = dataset.cpu_views(i, size, seed)
            if views is None:
                self._count_unreadable([str(dataset.files[i])])
                continue
            self.cpu_decoded.setdefault("train" if train else "val", Counter())[DEVICE_FAILED] += 1
            log.warning("%s: the device decoder rejected it, decoded on the CPU", dataset.files[i])
            return move_data_to_device(views, device), label if i == j else label.new_tensor(dataset.labels[i])
        if train:
            raise DatasetNotFoundError(f"{SUBSTITUTE_TRIES} files in a row are unreadable, from {dataset.files[j]}")
        return None, label

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Encoded batch -> the model's input: decode, crop/views, the preset's per-batch part (training) or
        normalization, in the model's dtype and memory format."""
        x, y = batch
        if not isinstance(x, EncodedBatch):
            return super().on_after_batch_transfer(batch, dataloader_idx)
        views, y = self.decoded_views(x, y)
        mean, std = self.mean.to(y.device), self.std.to(y.device)
        if x.protocol is None:
            views, y = self.augment.batch(views, y, mean, std, self.hparams.num_classes)
        else:
            views = EvalProtocol.map(views, lambda v: (v.float() / 255 - mean) / std)
        dtype, channels_last = self._model_format()
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def to_model(v: torch.Tensor) -> torch.Tensor:
            return v.to(dtype).contiguous(memory_format=fmt) if v.ndim == 4 else v.to(dtype)

        return EvalProtocol.map(views, to_model), y

    def _model_format(self) -> tuple[torch.dtype, bool]:
        """The dtype of the model's parameters (bf16 under bf16-true; float32 under mixed precision, where autocast
        casts) and whether it runs channels_last (module.channels_last)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None:
            return torch.float32, False
        param = next(module.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return dtype, bool(getattr(module, "hparams", {}).get("channels_last", False))
