"""Evaluation protocols (config group `eval`): which views of a test image the model sees, and how scores combine.

The data side (`views`) turns one PIL image into uint8 views; the model side (`log_scores`) runs the model on every
view and averages the softmax scores, as the papers do (Krizhevsky et al. 2012, 4.1: 10 patches; He et al. 2016,
3.4: 10-crop and fully-convolutional multi-scale). In-memory datasets (CIFAR) hand over their images as they are.
"""

from collections.abc import Callable, Mapping

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

PROTOCOLS = ("none", "center", "flip", "tencrop", "multiscale")


class EvalProtocol:
    """One evaluation protocol: none, center, flip, tencrop or multiscale."""

    def __init__(
        self,
        name: str = "center",
        resize: int = 256,
        crop: int = 224,
        scales: tuple[int, ...] = (224, 256, 384, 480, 640),
        flip: bool = False,
    ) -> None:
        """
        Args:
            name: "none" (the images as the data module holds them, e.g. CIFAR's 32x32), "center" (shorter side
                resized to `resize`, central `crop`), "flip" (center and its mirror image), "tencrop" (4 corners +
                center of the `resize` image and their mirror images) or "multiscale" (the whole image, fully
                convolutionally, with its shorter side at each of `scales`).
            flip: also score each view's mirror image (implied by "flip"; "tencrop" has its flips already).
        """
        if name not in PROTOCOLS:
            raise ValueError(f"eval protocol must be one of {PROTOCOLS}, got {name!r}")
        if crop > resize:
            raise ValueError(f"crop {crop} must be <= resize {resize}")
        self.name, self.resize, self.crop, self.scales = name, resize, crop, tuple(scales)
        self.flip = flip or name == "flip"

    @classmethod
    def build(cls, spec: "EvalProtocol | Mapping | None") -> "EvalProtocol":
        """From a config mapping (as a checkpoint's run config holds it), an instance, or None (= "none")."""
        if isinstance(spec, EvalProtocol):
            return spec
        return cls(**{k: v for k, v in (spec or {"name": "none"}).items() if k != "_target_"})

    @property
    def multi_view(self) -> bool:
        """Whether scoring needs more than one forward pass per image."""
        return self.flip or self.name in ("tencrop", "multiscale")

    def views(self, img: Image.Image) -> torch.Tensor | list[torch.Tensor]:
        """uint8 views of one RGB image: 3 x crop x crop (center, flip), 10 x 3 x crop x crop (tencrop), or one
        3 x H x W per scale (multiscale)."""
        if self.name == "multiscale":
            return [TF.pil_to_tensor(TF.resize(img, s, antialias=True)) for s in self.scales]
        img = TF.resize(img, self.resize, antialias=True)
        if self.name == "tencrop":
            return torch.stack([TF.pil_to_tensor(v) for v in TF.ten_crop(img, self.crop)])
        if self.name == "none":
            raise ValueError("eval=none scores the images as the data module holds them (in-memory datasets); "
                             "image folders need a crop: use eval=center")
        return TF.pil_to_tensor(TF.center_crop(img, self.crop))

    def collate(self, batch: list[tuple]) -> tuple:
        """Stacks views of equal shape; multiscale keeps a list per scale of the images' differently shaped views."""
        views, labels = [b[0] for b in batch], torch.tensor([b[1] for b in batch])
        if self.name == "multiscale":
            return [list(scale) for scale in zip(*views, strict=True)], labels
        return torch.stack(views), labels

    @staticmethod
    def map(x, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Applies fn (e.g. device normalization) to every view tensor of a batch as `collate` shapes it."""
        return [[fn(v) for v in scale] for scale in x] if isinstance(x, list) else fn(x)

    @torch.no_grad()
    def log_scores(self, model: nn.Module, x: torch.Tensor | list[list[torch.Tensor]]) -> torch.Tensor:
        """N x K log of the softmax scores averaged over the views (and their mirror images)."""
        if isinstance(x, list):  # multiscale: per scale, one C x H x W per image; batched where shapes agree
            probs = torch.stack([self._grouped(model, scale) for scale in x]).mean(0)
        elif x.ndim == 5:  # tencrop: N x V x C x H x W
            probs = self._probs(model, x.flatten(0, 1)).unflatten(0, x.shape[:2]).mean(1)
        else:
            probs = self._probs(model, x)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def _probs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        p = model(x).float().softmax(-1)
        return (p + model(x.flip(-1)).float().softmax(-1)) / 2 if self.flip else p

    def _grouped(self, model: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
        """Scores of differently shaped images, one forward pass per distinct shape."""
        out: list[torch.Tensor | None] = [None] * len(images)
        shapes: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            shapes.setdefault(tuple(img.shape), []).append(i)
        for idx in shapes.values():
            for i, p in zip(idx, self._probs(model, torch.stack([images[i] for i in idx])), strict=True):
                out[i] = p
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"EvalProtocol(name={self.name!r}, resize={self.resize}, crop={self.crop}, scales={self.scales}, " \
               f"flip={self.flip})"
