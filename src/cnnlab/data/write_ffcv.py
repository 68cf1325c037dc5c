"""Writes an ImageNet-layout folder (train/<class>/*, val/<class>/*) into FFCV .beton files plus classes.json, the
input of data=imagenet_ffcv and data=imagenette_ffcv:

    python -m cnnlab.data.write_ffcv /datasets/imagenet /datasets/imagenet_ffcv --max-side 512 --quality 90

Unreadable files are left out (listed in classes.json); every image passes through the image-folder backend's
decoder first (cnnlab.data.images.open_image), so both backends see the same pixels. Evaluation splits (every split
but train) are written in the order the image-folder loader reads val/, the classes in turn, so a limited evaluation
(`trainer=debug`) sees every class; FFCV reads them sequentially. Needs the ffcv extra.
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cnnlab.data.ffcv import require_ffcv
from cnnlab.data.imagefolder import class_names, read_split
from cnnlab.data.images import DatasetNotFoundError, open_rgb
from cnnlab.data.readers import available_cpus

log = logging.getLogger(__name__)


class _Images(torch.utils.data.Dataset):
    """(H x W x 3 uint8 RGB, label) for ffcv's DatasetWriter, as the image-folder backend decodes them."""

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
                workers: int | None = None, across: bool = False) -> dict:
    """Writes folder/<class>/* into `out` (a .beton), leaving out unreadable files, with `across` in the order that
    takes the classes in turn (evaluation splits); returns {classes, n, skipped}."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    files, labels, classes = read_split(folder, per_class, across)
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
    p = argparse.ArgumentParser(prog="python -m cnnlab.data.write_ffcv", description="Write an ImageNet-layout folder "
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
    meta: dict = {"max_side": a.max_side, "quality": a.quality, "splits": {}, "skipped": {},
                  "eval_order": "across_classes"}  # FFCVDataModule warns on betons written class-sorted
    for split in a.splits:
        if not (a.folder / split).is_dir():
            raise DatasetNotFoundError(f"no {a.folder / split}: expected {a.folder}/{split}/<class>/<images>")
        r = write_beton(a.folder / split, a.out / f"{split}.beton", a.max_side, a.quality, a.per_class, a.workers,
                        across=split != "train")
        if meta.setdefault("classes", r["classes"]) != r["classes"]:
            raise DatasetNotFoundError(f"{a.folder / split} has other class folders than {a.splits[0]}/")
        meta["splits"][split], meta["skipped"][split] = r["n"], r["skipped"]
        log.info("%s: %d images -> %s (%d unreadable skipped)", split, r["n"], a.out / f"{split}.beton",
                 len(r["skipped"]))
    meta["class_names"] = class_names(a.folder, meta["classes"])
    (a.out / "classes.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
