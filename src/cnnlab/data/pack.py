"""An image-folder dataset packed losslessly into one small file, for machines the folder cannot travel to.

    python -m cnnlab.data.pack cifar10 ../shared/datasets/cifar10-jpg .gpu-data/cifar10.npz
    python -m cnnlab.data.pack imagenette ../shared/datasets/imagenette2-224 .gpu-data/imagenette.npz --per-class 100
    python train.py data.root=.gpu-data/cifar10.npz ...          # the CIFAR data module reads the file in place
    python -m cnnlab.data.pack --unpack .gpu-data/imagenette.npz /tmp/imagenette   # back into train/ and val/ folders

The file keeps every image's original bytes, so decoding it gives exactly the pixels the folder gives. Images of one
encoder share their first few hundred bytes (JFIF header, quantization and Huffman tables): that common prefix is
stored once. CIFAR-10's 60,000 JPEGs average 886 bytes of which 623 are that prefix, so the 57.5 MiB folder packs into
about 16 MiB. The format is a plain numpy .npz (no pickles): `prefix`, `data` + `offsets` (each image's bytes, without
the prefix where `has_prefix`), `labels`, `split` (index into meta's splits) and `meta` (JSON: classes, splits, file
names relative to the root).
"""

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.readers import DatasetNotFoundError, Tensors, available_cpus, list_image_folder

FORMAT = "cnnlab-pack-1"
SPLITS = ("train", "test", "val")  # the folders looked for under the root; CIFAR has test/, ImageNet layouts val/


def pack(root: Path, out: Path, name: str, per_class: int | None = None) -> dict:
    """Writes every split folder of `root` (the first `per_class` images of each class, when given) into `out`."""
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in splits or len(splits) < 2:
        raise DatasetNotFoundError(f"{root} must hold train/<class>/* and test/ or val/<class>/* to pack, "
                                   f"found {splits}")
    blobs, labels, split_ids, names, classes = [], [], [], [], None
    for k, split in enumerate(splits):
        files, ys, found = list_image_folder(root / split)
        if classes is not None and found != classes:
            raise DatasetNotFoundError(f"the class folders of {root / split} differ from {root / splits[0]}'s")
        classes = found
        if per_class is not None:
            first = {y: ys.index(y) for y in set(ys)}  # list_image_folder lists each class contiguously
            keep = [i for i, y in enumerate(ys) if i - first[y] < per_class]
            files, ys = [files[i] for i in keep], [ys[i] for i in keep]
        blobs += [f.read_bytes() for f in files]
        labels += ys
        split_ids += [k] * len(files)
        names += [str(f.relative_to(root)) for f in files]
    prefix = os.path.commonprefix(blobs[:: max(1, len(blobs) // 1000)])  # shared by (nearly) all: a sample decides
    has = np.array([b.startswith(prefix) for b in blobs])
    rest = [b[len(prefix) :] if h else b for b, h in zip(blobs, has, strict=True)]
    offsets = np.zeros(len(rest) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in rest])
    meta = {"format": FORMAT, "name": name, "classes": classes, "splits": splits, "names": names,
            "source_bytes": sum(map(len, blobs))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, prefix=np.frombuffer(prefix, dtype=np.uint8), data=np.frombuffer(b"".join(rest), dtype=np.uint8),
             offsets=offsets, has_prefix=has, labels=np.array(labels, dtype=np.int64),
             split=np.array(split_ids, dtype=np.uint8), meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    tmp.replace(out)
    return {"images": len(blobs), "prefix_bytes": len(prefix), "source_bytes": meta["source_bytes"],
            "packed_bytes": out.stat().st_size}


class Packed:
    """A packed file opened for reading: each image's original bytes by index."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as f:
            if "meta" not in f or json.loads(f["meta"].tobytes()).get("format") != FORMAT:
                raise DatasetNotFoundError(f"{path} is not a file written by `python -m cnnlab.data.pack`")
            self.arrays = {k: f[k] for k in f.files}
        self.meta = json.loads(self.arrays["meta"].tobytes())
        self.prefix = self.arrays["prefix"].tobytes()
        self.classes: list[str] = self.meta["classes"]

    def indices(self, split: str) -> np.ndarray:
        if split not in self.meta["splits"]:
            raise DatasetNotFoundError(f"the packed file has splits {self.meta['splits']}, not {split!r}")
        return np.flatnonzero(self.arrays["split"] == self.meta["splits"].index(split))

    def bytes(self, i: int) -> bytes:
        a = self.arrays
        body = a["data"][a["offsets"][i] : a["offsets"][i + 1]].tobytes()
        return self.prefix + body if a["has_prefix"][i] else body


def read_packed(path: Path, train: bool, image_size: int, channels: int = 3) -> Tensors:
    """One split as uint8 tensors, decoded as `read_image_folder` decodes the folder (same pixels, same order)."""
    p = Packed(path)
    split = "train" if train else next(s for s in ("test", "val") if s in p.meta["splits"])
    idx = p.indices(split)
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    x = torch.empty(len(idx), channels, image_size, image_size, dtype=torch.uint8)

    def decode(chunk: range) -> None:  # threads: the decoder releases the GIL (60k CIFAR images: ~6 s on one core)
        for j in chunk:
            img = decode_image(torch.frombuffer(bytearray(p.bytes(idx[j])), dtype=torch.uint8), mode=mode,
                               apply_exif_orientation=True)
            if img.shape[-2:] != (image_size, image_size):
                img = TF.center_crop(TF.resize(img, image_size, antialias=True), [image_size, image_size])
            x[j] = img

    with ThreadPoolExecutor(min(available_cpus(), 16)) as pool:
        list(pool.map(decode, [range(i, min(i + 1000, len(idx))) for i in range(0, len(idx), 1000)]))
    return Tensors(x, torch.from_numpy(p.arrays["labels"][idx]), p.classes)


def unpack(path: Path, out: Path) -> Path:
    """Writes the packed images back as files under `out` (same relative names); returns `out`."""
    p = Packed(path)
    for i, name in enumerate(p.meta["names"]):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(p.bytes(i))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="+", metavar="NAME SRC OUT | FILE OUT",
                    help="pack: a label stored in the file (cifar10, imagenette, ...), the dataset folder "
                         "(train/<class>/*, test/ or val/<class>/*) and the .npz to write; --unpack: the file "
                         "and a folder")
    ap.add_argument("--per-class", type=int, default=None, help="only the first n images of each class and split")
    ap.add_argument("--unpack", action="store_true", help="write a packed file's images back as folders")
    a = ap.parse_args()
    if len(a.args) != (2 if a.unpack else 3):
        ap.error(f"expected {'FILE OUT' if a.unpack else 'NAME SRC OUT'}, got {a.args}")
    if a.unpack:
        print(f"unpacked into {unpack(Path(a.args[0]), Path(a.args[1]))}")
        return
    name, src, out = a.args[0], Path(a.args[1]), Path(a.args[2])
    s = pack(src, out, name, a.per_class)
    print(f"{out}: {s['images']} images, {s['source_bytes'] / 2**20:.1f} MiB of files -> "
          f"{s['packed_bytes'] / 2**20:.1f} MiB ({s['prefix_bytes']}-byte shared prefix stored once), lossless")


if __name__ == "__main__":
    main()
