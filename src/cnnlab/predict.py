"""Classify images with a trained checkpoint: top-5 classes with names and probabilities, optionally drawn into a PNG.

    python -m cnnlab.predict ckpt=runs/<date>/<time>/checkpoints/last.ckpt image=cat.jpg
    python -m cnnlab.predict ckpt=<path> image=<folder> [save=<folder>] [topk=5] [batch_size=64] [device=cpu]
    python -m cnnlab.predict ckpt=<path> image=cat.jpg save=cat_top5.png

Images are preprocessed as the checkpoint's run evaluated: its data config (in-memory CIFAR/MNIST: converted to RGB
or greyscale, resized + center-cropped to data.image_size, MNIST zero-padded; image folders: the eval protocol's
resize + center crop), normalized with the mean and std stored in the checkpoint (He et al.'s per-pixel mean image
included). A folder's images are read recursively and printed in sorted path order, every one of them. A file that
cannot be decoded (truncated, corrupt, not an image) is left out and listed on stderr after the results of the
others, and the exit status is then 2. The command line is Hydra's (cnnlab.cli): the keys above are
conf/predict.yaml's, any other key=value overrides the checkpoint's run config (e.g. eval.crop=...), `--help` lists
them.
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps
from torch import nn

from cnnlab import cli
from cnnlab.checkpoint import check_compatible
from cnnlab.data import eval_transform
from cnnlab.data.readers import IMAGE_SUFFIXES
from cnnlab.extras import require

UNREADABLE_STATUS = 2  # exit status when some files of a folder were unreadable (the others' results are printed)


@dataclass
class Checkpoint:
    """A trained network with what it needs to read images: the run's config, class names, normalization."""

    model: nn.Module  # in eval mode
    cfg: DictConfig  # the run config stored in the checkpoint, with any overrides
    classes: list[str]  # human-readable names where the data module has them (ImageNet), else folder names
    mean: torch.Tensor  # C x 1 x 1, or C x H x W for a per-pixel mean; 0-1 scale
    std: torch.Tensor

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Any PIL image (any size or mode) -> the model's input, float C x H x W."""
        return eval_transform(self.cfg.data, self.cfg.get("eval"), self.mean, self.std)(img)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (N x C x H x W) -> displayable 0-1 images."""
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def input_shape(self) -> tuple[int, int, int]:
        """C x H x W of the model's input, as preprocess makes it."""
        return tuple(self.preprocess(Image.new("RGB", (256, 256))).shape)


def load(ckpt: str | Path, overrides: Sequence[str] = (), device: str = "cpu") -> Checkpoint:
    """A cnnlab checkpoint's network (its run config rebuilt with Hydra overrides, weights loaded strictly) and
    preprocessing."""
    cfg, state = cli.compose(ckpt, overrides)
    return from_config(cfg, state, device)


def from_config(cfg: DictConfig, state: dict, device: str = "cpu") -> Checkpoint:
    """The Checkpoint of a composed config (cnnlab.cli) and the checkpoint file's contents."""
    model = instantiate(cfg.model)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    check_compatible(weights, model.state_dict(), state["hyper_parameters"]["run_config"],
                     OmegaConf.to_container(cfg, resolve=True))
    model.load_state_dict(weights)
    data_state = state.get(str(cfg.data._target_).rsplit(".", 1)[-1]) or {}
    classes = data_state.get("class_names") or data_state.get("classes") or [str(i) for i in
                                                                                range(cfg.data.num_classes)]
    mean = torch.as_tensor(data_state.get("mean", cfg.data.get("mean")), dtype=torch.float32)
    std = torch.as_tensor(data_state.get("std", cfg.data.get("std")), dtype=torch.float32)
    mean, std = (t.view(-1, 1, 1) if t.ndim == 1 else t for t in (mean, std))
    return Checkpoint(model.to(device).eval(), cfg, [str(c) for c in classes], mean, std)


def read_image(path: Path) -> Image.Image:
    """The decoded file, turned upright by its EXIF orientation (as the in-memory readers do)."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).copy()


def image_files(target: str | Path) -> list[Path]:
    """One image file, or every image in a folder (recursively), sorted."""
    path = Path(target).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"image={path} holds no image files ({sorted(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no image file or folder at image={path}")
    return [path]


@torch.no_grad()
def predict(ck: Checkpoint, images: list[Image.Image], topk: int = 5, batch_size: int = 64
            ) -> list[list[tuple[str, float]]]:
    """Per image, the top-k (class name, probability) pairs, most probable first."""
    device = next(ck.model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([ck.preprocess(img) for img in images[i : i + batch_size]]).to(device)
        probs = ck.model(x).float().softmax(-1)
        p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        out += [[(ck.classes[j], float(q)) for q, j in zip(pr, ix.tolist(), strict=True)] for pr, ix in zip(p, idx,
                                                                                                         strict=True)]
    return out


def draw(img: Image.Image, top: list[tuple[str, float]], out: Path, title: str = "") -> None:
    """The image beside a bar chart of its top-k classes, as a PNG."""
    Figure = require("matplotlib.figure", "report", "cnnlab.predict's figure").Figure

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 1.2])
    ax_img.imshow(img, cmap="gray" if img.mode in ("L", "1", "I", "F") else None, interpolation="nearest"
                  if max(img.size) < 64 else "antialiased")
    ax_img.set_axis_off()
    ax_img.set_title(title, fontsize=8)
    names, probs = [n for n, _ in top][::-1], [p for _, p in top][::-1]
    bars = ax_bar.barh(range(len(top)), probs, color=["#bbb"] * (len(top) - 1) + ["#2a7"])
    ax_bar.set_yticks(range(len(top)), names)
    ax_bar.set_xlim(0, 1.2)  # room for the labels of bars near 100%
    ax_bar.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax_bar.set_xlabel("probability")
    ax_bar.bar_label(bars, labels=[f"{p:.1%}" for p in probs], padding=3, fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def read_images(files: list[Path]) -> tuple[list[Path], list[Image.Image], list[tuple[Path, str]]]:
    """(readable files, their images, [(unreadable file, why)]): a truncated or corrupt file is left out, named."""
    good, images, bad = [], [], []
    for f in files:
        try:
            images.append(read_image(f))
            good.append(f)
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated data, unknown format, broken headers
            bad.append((f, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__))
    return good, images, bad


def run(cfg: DictConfig, state: dict) -> None:
    """Print the top-k of every readable image of cfg.image; draw them into cfg.save. Unreadable files are listed
    after the results, and the exit status is then UNREADABLE_STATUS (none readable: the message, status 1)."""
    ck = from_config(cfg, state, cfg.device)
    files, images, bad = read_images(image_files(cfg.image))
    if not files:
        raise ValueError(f"no readable image in image={cfg.image}: " + "; ".join(f"{f}: {why}" for f, why in bad))
    tops = predict(ck, images, cfg.topk, cfg.batch_size)
    save = Path(cfg.save).expanduser() if cfg.save else None
    folder = Path(cfg.image).expanduser()
    for f, img, top in zip(files, images, tops, strict=True):
        print(f)
        for rank, (name, p) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {p:7.2%}")
        if save is not None:  # one PNG, or for a folder one per image under save/, mirroring its subfolders
            png = save / f.relative_to(folder).with_suffix(".png") if folder.is_dir() else save
            png = png if png.suffix.lower() == ".png" else png / f"{f.stem}.png"
            draw(img.convert("L" if cfg.data.in_channels == 1 else "RGB"), top, png, title=f.name)  # as read
            print(f"  -> {png}")
    if bad:
        print(f"{len(bad)} of {len(bad) + len(files)} files unreadable, left out:", file=sys.stderr)
        for f, why in bad:
            print(f"  {f}: {why}", file=sys.stderr)
        raise SystemExit(UNREADABLE_STATUS)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main("predict", run, __doc__, argv)


if __name__ == "__main__":
    main()
