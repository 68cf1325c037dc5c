"""Evaluation protocols (config group `eval`): which views of a test image the model sees, and how scores combine.

The data module holds the one `EvalProtocol` of a run and cuts every view: `views` turns one PIL image (image
folders) into uint8 views, `tensor_views` a batch of stored images (in-memory data). The LightningModule then calls
`log_scores`, which averages the softmax scores over whatever views a batch holds, as the papers do (Krizhevsky et
al. 2012, 4.1: 10 patches; Simonyan & Zisserman 2015, 3.2: dense evaluation; He et al. 2016, 3.4: 10-crop and
fully-convolutional multi-scale). `eval_transform` is the one-view preprocessing of a single image (cnnlab.predict).
"""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

PROTOCOLS = ("none", "center", "flip", "tencrop", "multiscale", "dense")
WHOLE_IMAGE = ("multiscale", "dense")  # the whole image at each of `scales`, views of different shapes
IN_MEMORY = ("none", "center", "flip")  # stored images have one size: the view is the image itself (+ its mirror)


class EvalProtocol:
    """One evaluation protocol: none, center, flip, tencrop, multiscale or dense."""

    def __init__(
        self,
        name: str = "center",
        resize: int = 256,
        crop: int = 224,
        scales: tuple[int, ...] = (224, 256, 384, 480, 640),
        flip: bool = False,
        square: bool = False,
        translate: int = 0,
    ) -> None:
        """
        Args:
            name: "none" (the images as the data module holds them, e.g. CIFAR's 32x32), "center" (shorter side
                resized to `resize`, central `crop`), "flip" (center and its mirror image), "tencrop" (4 corners +
                center and their mirror images), "multiscale" (the whole image with its shorter side at each of
                `scales`, through the network as it is: global-pooling networks) or "dense" (as multiscale, with
                the fully-connected layers applied as convolutions and the class score map averaged: VGG, AlexNet).
            flip: also score each view's mirror image (implied by "flip"; "tencrop" has its flips already).
            square: "tencrop" cuts its corners from the central resize x resize square (Krizhevsky et al. 2012,
                4.1: "the four corner patches and the center patch" of the 256x256 image) instead of from the whole
                resized rectangle (fb.resnet.torch's and torchvision's TenCrop).
            translate: in-memory data: also score each stored image shifted by `translate` pixels up-left and
                down-right (reflection-padded); with flip, 6 views (airbench94's tta_level 2 with translate 1).
        """
        if name not in PROTOCOLS:
            raise ValueError(f"eval protocol must be one of {PROTOCOLS}, got {name!r}")
        if crop > resize:
            raise ValueError(f"crop {crop} must be <= resize {resize}")
        if not scales or min(scales) < 1:
            raise ValueError(f"scales must be positive shorter-side lengths in pixels, got {scales}")
        self.name, self.resize, self.crop, self.scales = name, resize, crop, tuple(scales)
        if translate < 0 or (translate and name not in IN_MEMORY):
            raise ValueError(f"translate must be >= 0 and shifts stored images (eval=none or flip), got translate="
                             f"{translate} with eval={name}")
        self.flip, self.square, self.translate = flip or name == "flip", square, translate

    @classmethod
    def build(cls, spec: "EvalProtocol | Mapping | None") -> "EvalProtocol":
        """From a config mapping (as a checkpoint's run config holds it), an instance, or None (= "none")."""
        if isinstance(spec, EvalProtocol):
            return spec
        return cls(**{k: v for k, v in (spec or {"name": "none"}).items() if k != "_target_"})

    @property
    def dense(self) -> bool:
        """Whether the network's classifier runs as convolutions over the whole image (Simonyan & Zisserman 2015)."""
        return self.name == "dense"

    # ---- the views: data side -------------------------------------------------------------------------------------
    def views(self, img: Image.Image) -> torch.Tensor | list[torch.Tensor]:
        """uint8 views of one RGB image: 3 x crop x crop (center), V x 3 x crop x crop (flip: V=2, tencrop: V=10),
        or one 3 x H x W per scale (and its mirror image with flip: multiscale, dense)."""
        if self.name in WHOLE_IMAGE:
            scaled = [TF.pil_to_tensor(TF.resize(img, s, antialias=True)) for s in self.scales]
            return [v for x in scaled for v in ([x, x.flip(-1)] if self.flip else [x])]
        if self.name == "none":
            raise ValueError("eval=none scores the images as the data module holds them (in-memory datasets); "
                             "image folders need a crop: use eval=center")
        img = TF.resize(img, self.resize, antialias=True)
        if self.name == "tencrop":
            if self.square:
                img = TF.center_crop(img, [self.resize, self.resize])
            return torch.stack([TF.pil_to_tensor(v) for v in TF.ten_crop(img, self.crop)])
        center = TF.pil_to_tensor(TF.center_crop(img, self.crop))
        return torch.stack([center, center.flip(-1)]) if self.flip else center

    def tensor_views(self, x: torch.Tensor) -> torch.Tensor:
        """Views of a batch of stored images (in-memory data, N x C x H x W): the batch itself, or N x 2 x C x H x W
        with each image's mirror image (flip)."""
        if self.name not in IN_MEMORY:
            raise ValueError(f"eval={self.name} cuts views from image files; in-memory data (CIFAR, MNIST) scores "
                             f"its stored images: eval=none or eval=flip")
        if not self.translate:
            return torch.stack([x, x.flip(-1)], 1) if self.flip else x
        t, (h, w) = self.translate, x.shape[-2:]
        mode = "reflect" if min(h, w) > t else "replicate"  # images smaller than the shift: nothing to mirror
        padded = F.pad(x.float(), (t,) * 4, mode=mode).to(x.dtype)  # exact for uint8 (float holds 0-255)
        views = [x, padded[..., : h, : w], padded[..., 2 * t :, 2 * t :]]
        # airbench94 weights the untranslated pair 1/2 and averages logits; here 6 equal softmax views (deviation)
        return torch.stack([v for view in views for v in ([view, view.flip(-1)] if self.flip else [view])], 1)

    def collate(self, batch: list[tuple]) -> tuple:
        """Stacks views of equal shape; whole-image protocols keep a list per view of the images' differently
        shaped tensors."""
        views, labels = [b[0] for b in batch], torch.tensor([b[1] for b in batch])
        if self.name in WHOLE_IMAGE:
            return [list(view) for view in zip(*views, strict=True)], labels
        return torch.stack(views), labels

    @staticmethod
    def map(x, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Applies fn (e.g. device normalization) to every view tensor of a batch as `collate` shapes it."""
        return [[fn(v) for v in view] for view in x] if isinstance(x, list) else fn(x)

    def __repr__(self) -> str:
        shift = f", translate={self.translate}" if self.translate else ""
        return (f"EvalProtocol(name={self.name!r}, resize={self.resize}, crop={self.crop}, scales={self.scales}, "
                f"flip={self.flip}, square={self.square}{shift})")


# ---- the scores: model side ---------------------------------------------------------------------------------------
def is_multi_view(x) -> bool:
    """Whether a batch holds several views per image (V x ... tensors or per-view lists) rather than one."""
    return isinstance(x, list) or x.ndim == 5


@torch.no_grad()
def log_scores(model: nn.Module, x: torch.Tensor | list[list[torch.Tensor]]) -> torch.Tensor:
    """N x K log of the softmax scores averaged over the views: N x C x H x W (one view), N x V x C x H x W, or a
    list per view of N differently shaped C x H x W images."""
    if isinstance(x, list):
        probs = torch.stack([_grouped(model, view) for view in x]).mean(0)
    elif x.ndim == 5:
        probs = model(x.flatten(0, 1)).float().softmax(-1).unflatten(0, x.shape[:2]).mean(1)
    else:
        probs = model(x).float().softmax(-1)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _grouped(model: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
    """Softmax scores of differently shaped images, one forward pass per distinct shape."""
    out: list[torch.Tensor | None] = [None] * len(images)
    shapes: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        shapes.setdefault(tuple(img.shape), []).append(i)
    for idx in shapes.values():
        for i, p in zip(idx, model(torch.stack([images[i] for i in idx])).float().softmax(-1), strict=True):
            out[i] = p
    return torch.stack(out)


class FullyConvolutional(nn.Module):
    """A network's fully-connected classifier applied as convolutions over the whole image, its class score map
    averaged over positions (Simonyan & Zisserman 2015, 3.2): the first FC layer becomes a k x k convolution (k x k
    the input it was trained on, AlexNet's 6x6, VGG's 7x7), the others 1x1 convolutions. Shares the network's
    weights; at the training resolution the score equals the network's own output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        pool, head = getattr(model, "avgpool", None), getattr(model, "classifier", None)
        if not (isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(head, nn.Sequential)
                and hasattr(model, "features")):
            raise ValueError(f"eval=dense needs a network with features, an adaptive avgpool and a classifier of "
                             f"fully-connected layers (VGG, AlexNet), got {type(model).__name__}; global-pooling "
                             f"networks (ResNet, DenseNet, ...) are fully convolutional already: use eval=multiscale")
        k = pool.output_size if isinstance(pool.output_size, int) else pool.output_size[0]
        if isinstance(pool.output_size, tuple) and pool.output_size[0] != pool.output_size[1]:
            raise ValueError(f"eval=dense needs a square avgpool output, got {pool.output_size}")
        if bad := [m for m in head if not isinstance(m, nn.Linear | nn.ReLU | nn.Dropout | nn.Identity)]:
            raise ValueError(f"eval=dense converts Linear, ReLU and Dropout layers, got {bad[0]!r} in the classifier")
        self.features, self.pool, self.head, self.k = model.features, pool, head, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # N x C x h x w; h, w >= k from the training resolution up
        if min(x.shape[-2:]) < self.k:  # smaller than the training input: the network's own pooling, as forward
            x = self.pool(x)
        first = True
        for m in self.head:
            if isinstance(m, nn.Linear):
                k = self.k if first else 1
                x = F.conv2d(x, m.weight.view(m.out_features, -1, k, k), m.bias)  # N x out x h' x w'
                first = False
            else:
                x = m(x)
        return x.mean((2, 3))  # N x K: the class score map averaged over positions (sum-pooled, Sec. 3.2)


def eval_transform(data: Mapping, evaluation: Mapping | None = None, mean: torch.Tensor | None = None,
                   std: torch.Tensor | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """The eval preprocessing of a run's data config (and eval config) for one PIL image: resize, center crop, to
    tensor, normalize -> float C x H x W. Image folders: the protocol's center crop (resize 256, crop 224 unless
    set). In-memory datasets: the stored image size and padding (MNIST). mean/std override the config's: a
    checkpoint's datamodule state holds the ones used, He et al.'s per-pixel mean image included."""
    protocol = EvalProtocol.build({**(evaluation or {}), "name": "center", "flip": False})
    channels, pad = data.get("in_channels", 3), data.get("pad", 0)
    side = data.get("image_size", 0) - 2 * pad
    mean = torch.as_tensor(mean if mean is not None else data["mean"], dtype=torch.float32)
    std = torch.as_tensor(std if std is not None else data["std"], dtype=torch.float32)
    mean, std = (t.view(-1, 1, 1) if t.ndim == 1 else t for t in (mean, std))

    from cnnlab.data.images import as_model_input  # here: cnnlab.data imports this module

    def transform(img: Image.Image) -> torch.Tensor:
        img = as_model_input(img, channels)
        if "image_size" in data:  # in-memory dataset: as the readers store a folder's images
            x = TF.pad(TF.center_crop(TF.resize(TF.pil_to_tensor(img), side, antialias=True), [side, side]), [pad])
        else:
            x = protocol.views(img)
        return (x.float() / 255 - mean) / std

    return transform
