"""Unpack the official ILSVRC-2012 archives into the layout `data=imagenet` reads (needs scipy for the devkit's .mat).

    python data/prepare_imagenet.py --out /datasets/imagenet --devkit ILSVRC2012_devkit_t12.tar.gz \
        --val ILSVRC2012_img_val.tar --train ILSVRC2012_img_train.tar

train: the train tar holds one tar per synset (n01440764.tar, ...) -> out/train/<synset>/*.JPEG.
val: the 50,000 flat images, labelled by the devkit's ILSVRC2012_validation_ground_truth.txt (ILSVRC2012_IDs in file
name order) mapped to synsets through meta.mat -> out/val/<synset>/*.JPEG. The devkit also gives
out/LOC_synset_mapping.txt ("<synset> <names>", sorted by synset), where the data module finds class names.
Archives are streamed, so nothing is unpacked twice; an existing output file is left as it is (a rerun resumes).
"""

import argparse
import io
import re
import tarfile
from pathlib import Path

from tqdm import tqdm


def read_devkit(devkit: Path) -> tuple[dict[int, tuple[str, str]], list[int]]:
    """({ILSVRC2012_ID: (synset, words)} of the 1000 classes, the validation images' IDs in file-name order)."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError("reading the devkit's meta.mat needs scipy: pip install scipy") from err
    with tarfile.open(devkit) as tar:
        names = {Path(m.name).name: m for m in tar.getmembers()}
        for needed in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
            if needed not in names:
                raise FileNotFoundError(f"{devkit} has no {needed}: is it ILSVRC2012_devkit_t12.tar.gz?")
        meta = loadmat(io.BytesIO(tar.extractfile(names["meta.mat"]).read()), squeeze_me=True)["synsets"]
        truth = tar.extractfile(names["ILSVRC2012_validation_ground_truth.txt"]).read().decode().split()
    classes = {int(s["ILSVRC2012_ID"]): (str(s["WNID"]), str(s["words"])) for s in meta if int(s["num_children"]) == 0}
    return classes, [int(t) for t in truth]


def write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    if dest.exists() and dest.stat().st_size == member.size:
        return
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(tar.extractfile(member).read())
    tmp.replace(dest)


def prepare_val(val_tar: Path, classes: dict[int, tuple[str, str]], truth: list[int], out: Path) -> int:
    with tarfile.open(val_tar) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: Path(m.name).name)
        if len(members) != len(truth):
            raise ValueError(f"{val_tar} holds {len(members)} images but the ground truth lists {len(truth)}")
        for m, label in zip(tqdm(members, desc="val", unit="image"), truth, strict=True):
            folder = out / "val" / classes[label][0]
            folder.mkdir(parents=True, exist_ok=True)
            write_member(tar, m, folder / Path(m.name).name)
    return len(members)


def prepare_train(train_tar: Path, out: Path) -> int:
    n = 0
    with tarfile.open(train_tar) as tar:
        inner = [m for m in tar.getmembers() if m.isfile() and re.fullmatch(r"n\d{8}\.tar", Path(m.name).name)]
        if not inner:
            raise ValueError(f"{train_tar} holds no per-synset tars (n01440764.tar, ...)")
        for m in tqdm(inner, desc="train", unit="class"):
            folder = out / "train" / Path(m.name).stem
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=tar.extractfile(m)) as cls_tar:
                for img in (i for i in cls_tar.getmembers() if i.isfile()):
                    write_member(cls_tar, img, folder / Path(img.name).name)
                    n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the dataset root (data.root)")
    p.add_argument("--devkit", type=Path, help="ILSVRC2012_devkit_t12.tar.gz (needed for --val)")
    p.add_argument("--val", type=Path, help="ILSVRC2012_img_val.tar")
    p.add_argument("--train", type=Path, help="ILSVRC2012_img_train.tar")
    a = p.parse_args(argv)
    if a.val and not a.devkit:
        p.error("--val needs --devkit (the labels of the validation images)")
    for f in (a.devkit, a.val, a.train):
        if f and not f.is_file():
            p.error(f"no such archive: {f}")
    a.out.mkdir(parents=True, exist_ok=True)
    if a.devkit:
        classes, truth = read_devkit(a.devkit)
        lines = sorted(f"{wnid} {words}" for wnid, words in classes.values())
        (a.out / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
        if a.val:
            print(f"val: {prepare_val(a.val, classes, truth, a.out)} images in {len(classes)} classes")
    if a.train:
        print(f"train: {prepare_train(a.train, a.out)} images")


if __name__ == "__main__":
    main()
