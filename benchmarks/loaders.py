"""Loader throughput per CPU core: JPEG decode + RandomResizedCrop(224) + horizontal flip, one thread, six paths.

    PIL          PIL decode (+ CMYK/grey -> RGB), the inception preset's crop box, one crop+resize, flip (the
                 data=imagenet workers' per-image work, cnnlab.data.Augment.image), in a plain loop
    imagefolder  the same work as delivered by the real loader: ImageFolderDataModule's DataLoader with --workers
                 worker processes (sampler, collate into uint8 batches of 64, inter-process transfer); per worker
    decode_jpeg  torchvision.io.decode_jpeg on the file bytes, the same box, TF.resized_crop (antialiased), flip
    device_read  data=imagenet_gpu's DataLoader alone (DeviceDecodeDataModule, --workers processes): workers read
                 the file bytes, parse the JPEG header and draw the crop box; nothing is decoded
    device       the same loader plus its device stage run on the CPU, in the main process as the training device
                 would run it (DeviceDecodeDataModule.decoded_views: decode_jpeg on the batch, crop + resize + flip)
                 up to the uint8 batch the imagefolder path delivers: data=imagenet_gpu with the CPU as the device
    FFCV         the .beton written by `python -m cnnlab.data.write_ffcv`, decoded + cropped + flipped in FFCV's
                 compiled pipeline with 1 thread (the data=imagenet_ffcv loader's per-image work); needs the ffcv
                 extra (and OpenCV): skipped with a message where they are not installed

Every path gets the same images and the same crop sampler; each is warmed up by one pass (numba compilation, page
cache, worker start), then the paths take turns, one timed pass each per round (--repeats rounds), so a change in the
machine's load hits all of them alike; the best pass counts, printed with the spread. torch, OpenCV and FFCV use one
thread, so a plain path's figure is per core; the loader paths use a core per worker plus the main process.
`--upscale 500x375` re-encodes the images at ImageNet's typical size first (JPEG quality 90); `--max-side` caps the
.beton's images (ffcv-imagenet stores ImageNet at 400-512 px), 1024 keeps them as they are.

    python benchmarks/loaders.py --root ../shared/datasets/imagenette2-224 --images 2000 [--upscale 500x375]
    python benchmarks/loaders.py --paths imagefolder device_read device --workers 1 2 --images 1000
"""

import argparse
import importlib
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from cnnlab.data.augment import Augment  # noqa: E402
from cnnlab.data.imagefolder import open_rgb  # noqa: E402
from cnnlab.data.readers import list_image_folder  # noqa: E402

PRESET = Augment(size=224, crop="resized", area=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True)


def pil_path(files: list[Path]) -> int:
    for f in files:
        PRESET.image(open_rgb(f))
    return len(files)


def decode_jpeg_path(files: list[Path]) -> int:
    for f in files:
        img = decode_jpeg(torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
        top, left, h, w = PRESET.box(img.shape[1], img.shape[2])
        img = TF.resized_crop(img, top, left, h, w, [224, 224], antialias=True)
        if np.random.random() < 0.5:
            img = img.flip(-1)
    return len(files)


def ffcv_path(beton: Path, batch: int = 64):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor

    from cnnlab.data.ffcv import _decoders

    loader = Loader(str(beton), batch_size=batch, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    os_cache=True, pipelines={"image": [_decoders()(PRESET, 224), RandomHorizontalFlip(), ToTensor()],
                                              "label": [IntDecoder(), ToTensor()]})

    def run(_files) -> int:
        return sum(len(x) for x, _ in loader)

    return run


def imagefolder_path(root: Path, workers: int = 1, batch: int = 64):
    """ImageFolderDataModule's training loader over root/train (one class folder), as data=imagenet runs it."""
    from cnnlab.data import ImageFolderDataModule

    data = ImageFolderDataModule(str(root), num_classes=len([d for d in (root / "train").iterdir() if d.is_dir()]),
                                 batch_size=batch, num_workers=workers, augment=PRESET, val_dir="train")
    data.setup()
    loader = data.train_dataloader()  # drop_last: a pass yields len(files) // batch full batches

    def run(_files) -> int:
        return sum(len(x) for x, _ in loader)

    return run


def device_path(root: Path, workers: int = 1, batch: int = 64, decode: bool = True):
    """DeviceDecodeDataModule's training loader over root/train as data=imagenet_gpu runs it; with decode, also its
    device stage up to uint8 crops (decode_jpeg + crop + resize + flip) with the CPU as the device."""
    from cnnlab.data.device_decode import DeviceDecodeDataModule

    data = DeviceDecodeDataModule(str(root), num_classes=len([d for d in (root / "train").iterdir() if d.is_dir()]),
                                  batch_size=batch, num_workers=workers, augment=PRESET, val_dir="train")
    data.setup()
    loader, cpu = data.train_dataloader(), torch.device("cpu")

    def run(_files) -> int:
        n = 0
        for batch in loader:
            if decode:
                batch = data.decoded_views(*data.transfer_batch_to_device(batch, cpu, 0))
            n += len(batch[1])
        return n

    return run


LOADERS = {"imagefolder": imagefolder_path, "device_read": partial(device_path, decode=False), "device": device_path}


def timed_rounds(runners: dict, files, repeats: int) -> dict[str, list[float]]:
    """images/s of every pass: one warm-up pass each (compilation, page cache, worker start), then `repeats` rounds
    in which the runners take turns."""
    for fn in runners.values():
        fn(files)
    rates = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            t = time.perf_counter()
            n = fn(files)
            rates[k].append(n / (time.perf_counter() - t))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/datasets/imagenette2-224"))
    p.add_argument("--images", type=int, default=2000, help="images (spread over the classes of train/)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--upscale", default=None, help="WxH: re-encode the images at this size first (quality 90)")
    p.add_argument("--paths", nargs="+", default=["pil", "imagefolder", "decode_jpeg", "device_read", "device", "ffcv"])
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="DataLoader workers of the loader paths "
                   "(imagefolder, device_read, device); each count is a path of its own")
    p.add_argument("--max-side", type=int, default=1024, help="the .beton's longer-side cap (ffcv-imagenet: 400-512)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)  # FFCV resizes with OpenCV
    except ImportError:
        pass
    files, labels, _ = list_image_folder(a.root / "train")
    files = [files[i] for i in np.linspace(0, len(files) - 1, a.images).astype(int)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images" / "train" / "all"  # one class: the writer reads folder/<class>/*
        folder.mkdir(parents=True)
        for i, f in enumerate(files):
            dst = folder / f"{i:05d}.JPEG"
            if a.upscale:
                w, h = map(int, a.upscale.split("x"))
                open_rgb(f).resize((w, h), Image.BICUBIC).save(dst, quality=90)
            else:
                dst.symlink_to(f.resolve())
        files = sorted(folder.iterdir())
        pixels = np.mean([np.prod(Image.open(f).size) for f in files[:200]])
        runners, workers, load = {}, {}, [os.getloadavg()]
        for name in a.paths:
            if name == "ffcv":
                try:
                    for module in ("ffcv", "cv2"):  # ffcv first: name the backend when the whole extra is missing
                        importlib.import_module(module)
                except ImportError as err:
                    print(f"{name:12s} skipped: {err.name} is not installed (pip install -e '.[ffcv]', README)")
                    continue
                from cnnlab.data.write_ffcv import write_beton

                write_beton(tmp / "images" / "train", tmp / "train.beton", max_side=a.max_side, quality=90, workers=1)
                runners[name] = ffcv_path(tmp / "train.beton")
            elif name in LOADERS:
                batch = min(64, max(1, len(files) // 2))  # a pass drops its last partial batch
                for w in a.workers:  # one count: the path's own name, as before several counts were measured
                    workers[key := name if len(a.workers) == 1 else f"{name} x{w}"] = w
                    runners[key] = LOADERS[name](tmp / "images", w, batch)
            else:
                runners[name] = {"pil": pil_path, "decode_jpeg": decode_jpeg_path}[name]
        passes = timed_rounds(runners, files, a.repeats)
        load.append(os.getloadavg())
        rates = {k: max(v) for k, v in passes.items()}
        for k, v in passes.items():
            w = workers.get(k)
            print(f"{k:15s} {max(v):8.1f} images/s (passes {min(v):.1f}-{max(v):.1f}, n={len(v)})"
                  + (f", {max(v) / w:.1f} per worker" if w else " on 1 core"), flush=True)
    result = {"images": len(files), "mean_pixels": float(pixels), "upscale": a.upscale, "max_side": a.max_side,
              "rates": rates, "passes": passes, "workers": workers,
              "per_worker": {k: rates[k] / w for k, w in workers.items()}, "repeats": a.repeats,
              "load_average": load, "cores_for_2500": {k: 2500 / v for k, v in rates.items() if v and k not in workers}}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
