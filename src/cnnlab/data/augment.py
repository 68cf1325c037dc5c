"""Training augmentation (config group `augment`): one `Augment` for in-memory batches (CIFAR, MNIST) and image
folders (ImageNet), as the papers describe it, with one meaning on every backend.

An `Augment` works in two stages. Per image, in an image-folder loader's workers (`image`): sample a crop box in the
original image's coordinates, crop + resize it to `size`, flip; the box samplers below are plain Python over
`np.random`, so the FFCV loader compiles the very same functions with numba. Per batch, on the training device
(`batch`, every data module): in-memory data's pad-and-crop and flip, then the policy (AutoAugment/RandAugment/
TrivialAugment, per image on uint8), scaling to 0-1, AlexNet's PCA lighting, normalization, random erasing and
mixup/cutmix (soft targets). Label smoothing belongs to the loss: `module.label_smoothing`, its one key.
"""

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet training set, per RGB channel, 0-1 scale (torchvision's values)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PCA of ImageNet's RGB pixel covariance on a 0-1 scale (Krizhevsky et al. 2012, 4.1), as fb.resnet.torch publishes it
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
IN_MEMORY_CROPS = ("none", "pad")  # per batch on the device, at the stored image size (CIFAR, MNIST)
FOLDER_CROPS = ("resized", "shorter_side")  # per image in the loader, from images of any size (ImageNet)
CROPS = IN_MEMORY_CROPS + FOLDER_CROPS
PADDING_MODES = ("zeros", "reflect")  # in-memory pad-and-crop: He et al.'s zeros, airbench94's reflection
FLIP_MODES = ("random", "alternate")  # per batch at random, or airbench94's alternating flips (the data module's)
POLICIES = (None, "autoaugment", "randaugment", "trivialaugment")


def resized_crop_box(height: int, width: int, area_lo: float, area_hi: float, ratio_lo: float, ratio_hi: float):
    """(top, left, h, w) of Inception's crop: area fraction ~ U[area_lo, area_hi], log aspect ratio ~ U; 10 tries,
    then the largest central crop within the ratio range (torchvision's RandomResizedCrop algorithm)."""
    area = height * width
    for _ in range(10):
        target = area * np.random.uniform(area_lo, area_hi)
        aspect = math.exp(np.random.uniform(math.log(ratio_lo), math.log(ratio_hi)))
        w = int(math.sqrt(target * aspect) + 0.5)
        h = int(math.sqrt(target / aspect) + 0.5)
        if 0 < w <= width and 0 < h <= height:
            return np.random.randint(0, height - h + 1), np.random.randint(0, width - w + 1), h, w
    if width / height < ratio_lo:
        w, h = width, min(height, int(width / ratio_lo + 0.5))
    elif width / height > ratio_hi:
        h, w = height, min(width, int(height * ratio_hi + 0.5))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def shorter_side_crop_box(height: int, width: int, size: int, side_lo: int, side_hi: int, center_square: bool):
    """(top, left, h, w) of a random size x size crop after resizing the shorter side to s ~ U[side_lo, side_hi]
    (He et al. 2016, 3.4: [256, 480]), in original pixels: a square of side size * shorter / s. center_square keeps
    it inside the central shorter x shorter square (AlexNet's 256 x 256 image, Krizhevsky et al. 2012, 2)."""
    shorter = min(height, width)
    side = min(shorter, max(1, int(size * shorter / np.random.uniform(side_lo, side_hi) + 0.5)))
    if center_square:
        top, left = (height - shorter) // 2, (width - shorter) // 2
        top, left = top + np.random.randint(0, shorter - side + 1), left + np.random.randint(0, shorter - side + 1)
        return top, left, side, side
    return np.random.randint(0, height - side + 1), np.random.randint(0, width - side + 1), side, side


class PCALighting:
    """AlexNet's colour augmentation: add sum_i alpha_i lambda_i p_i to every pixel, alpha_i ~ N(0, std), per image."""

    def __init__(self, std: float = 0.1) -> None:
        self.std = std
        self.eigval, self.eigvec = torch.tensor(PCA_EIGVAL), torch.tensor(PCA_EIGVEC)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: N x 3 x H x W on a 0-1 scale."""
        alpha = torch.randn(len(x), 3, device=x.device, generator=generator) * self.std
        rgb = (alpha * self.eigval.to(x.device)) @ self.eigvec.to(x.device).T  # N x 3: eigvec columns are p_i
        return x + rgb[:, :, None, None]


def reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices into an axis of `size` pixels as reflection padding maps them (-1 -> 1, size -> size - 2)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def pad_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None,
                  reflect: bool = False) -> torch.Tensor:
    """He et al. 2016 (4.2) on a whole uint8 batch: zero-pad `pad` pixels (reflect: mirror them, airbench94's
    translate), a random crop back to H x W, a random horizontal flip; one gather, no per-image work."""
    n, c, h, w = x.shape
    if pad:
        padded = x if reflect else F.pad(x, (pad,) * 4)
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), device=x.device, generator=generator)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # N x 1 x H x 1
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # N x 1 x 1 x W
        if reflect:  # the same draws, read from the unpadded batch through mirrored indices
            rows, cols = reflect_index(rows - pad, h), reflect_index(cols - pad, w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        x = padded[batch, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


class Augment:
    """A training augmentation preset, for in-memory batches (crop none|pad) or image folders (resized|shorter_side)."""

    def __init__(
        self,
        crop: str = "resized",
        crop_padding: int = 0,
        size: int = 224,
        area: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        shorter_side: tuple[int, int] = (256, 480),
        center_square: bool = False,
        flip: bool = True,
        policy: str | None = None,
        magnitude: int = 9,
        num_ops: int = 2,
        lighting: float = 0.0,
        erasing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        min_size: int | None = None,
        ramp: tuple[int, int] = (0, 0),
        padding_mode: str = "zeros",
        flip_mode: str = "random",
    ) -> None:
        """
        Args:
            crop: in-memory data: "none" or "pad" (`crop_padding` zero pixels on each side, a random crop back to
                the stored size, He et al. 2016, 4.2); image folders: "resized" (Inception: area fraction in `area`,
                aspect ratio in `ratio`, resized to `size`) or "shorter_side" (shorter side resized to a random
                length in `shorter_side`, random `size` crop).
            size: side of the square training crop of image folders, pixels.
            center_square: with "shorter_side", crop inside the central square (AlexNet's 256x256 images).
            flip: mirror left-right with probability 1/2.
            policy: None, "autoaugment" (ImageNet policy, Cubuk et al. 2019), "randaugment" (`num_ops` ops of
                `magnitude`, Cubuk et al. 2020) or "trivialaugment" (TrivialAugmentWide, Mueller & Hutter 2021).
            lighting: std of AlexNet's PCA lighting (Krizhevsky et al. 2012: 0.1); 0 = off.
            erasing: probability of random erasing per image (Zhong et al. 2020); 0 = off.
            mixup, cutmix: Beta(alpha, alpha) of mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019); when both
                are > 0 each batch uses one of them at random; 0 = off. Targets become soft.
            min_size, ramp: progressive resizing (ffcv-imagenet): crops of min_size up to epoch ramp[0], growing
                linearly to `size` at epoch ramp[1], in steps of 32 pixels; None = always `size`.
            padding_mode: in-memory crops: "zeros" (He et al. 2016) or "reflect" (airbench94's translate).
            flip_mode: in-memory data: "random" (each image of each batch, p = 1/2) or "alternate" (airbench94:
                each image mirrored on alternate epochs, at random on the first; the data module does it).
        """
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if crop_padding < 0 or (crop_padding and crop != "pad"):
            raise ValueError(f"crop_padding must be >= 0 and needs crop='pad', got crop_padding={crop_padding} with "
                             f"crop={crop!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not (0 < area[0] <= area[1] <= 1 and 0 < ratio[0] <= ratio[1] and 0 < shorter_side[0] <= shorter_side[1]):
            raise ValueError(f"need 0 < area <= 1, ratio and shorter_side increasing; got {area}, {ratio}, "
                             f"{shorter_side}")
        if crop == "shorter_side" and shorter_side[0] < size:
            raise ValueError(f"shorter_side {shorter_side} must be >= size {size}: the crop must fit")
        if not 0 <= erasing < 1:
            raise ValueError(f"erasing must be in [0, 1), got {erasing}")
        if min_size is not None and not (0 < min_size <= size and 0 <= ramp[0] <= ramp[1]):
            raise ValueError(f"progressive resizing needs 0 < min_size <= size and ramp[0] <= ramp[1]; got min_size="
                             f"{min_size}, size={size}, ramp={ramp}")
        if padding_mode not in PADDING_MODES or flip_mode not in FLIP_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES} and flip_mode one of {FLIP_MODES}, got "
                             f"padding_mode={padding_mode!r}, flip_mode={flip_mode!r}")
        if flip_mode == "alternate" and crop not in IN_MEMORY_CROPS:
            raise ValueError(f"flip_mode='alternate' flips stored images by epoch (in-memory data), got crop={crop!r}")
        self.crop, self.crop_padding, self.size, self.flip, self.policy = crop, crop_padding, size, flip, policy
        self.padding_mode, self.flip_mode = padding_mode, flip_mode
        self.min_size, self.ramp = min_size, tuple(ramp)
        self.area, self.ratio, self.shorter_side = tuple(area), tuple(ratio), tuple(shorter_side)
        self.center_square, self.magnitude, self.num_ops = center_square, magnitude, num_ops
        self.lighting = PCALighting(lighting) if lighting else None
        self.erasing = v2.RandomErasing(p=erasing, value=0) if erasing else None  # 0: the mean, after normalization
        self.mixup, self.cutmix = mixup, cutmix
        self._mix: v2.Transform | None = None
        self.policy_op = (v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET) if policy == "autoaugment" else
                          v2.RandAugment(num_ops=num_ops, magnitude=magnitude) if policy == "randaugment" else
                          v2.TrivialAugmentWide() if policy == "trivialaugment" else None)

    @property
    def in_memory(self) -> bool:
        """Whether the crop works on stored images of one size (in-memory data) rather than on image files."""
        return self.crop in IN_MEMORY_CROPS

    @property
    def alternate_flips(self) -> bool:
        """Whether the data module mirrors the stored images by epoch (airbench94) instead of per batch."""
        return self.flip and self.flip_mode == "alternate"

    def size_at(self, epoch: int) -> int:
        """The crop side for this epoch (progressive resizing; `size` when off)."""
        if self.min_size is None or epoch >= self.ramp[1]:
            return self.size
        t = max(0.0, (epoch - self.ramp[0]) / max(1, self.ramp[1] - self.ramp[0]))
        return int(round((self.min_size + t * (self.size - self.min_size)) / 32)) * 32 or self.min_size

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of this image's random crop, in its own pixels (image folders)."""
        if self.crop == "resized":
            return resized_crop_box(height, width, *self.area, *self.ratio)
        return shorter_side_crop_box(height, width, self.size, *self.shorter_side, self.center_square)

    def image(self, img: Image.Image, size: int | None = None) -> torch.Tensor:
        """The per-image stage of image folders, on a PIL image: crop box -> resize to size x size -> flip; uint8
        3 x size x size."""
        if self.in_memory:
            raise ValueError(f"crop={self.crop!r} works on in-memory batches; image files need crop='resized' or "
                             f"'shorter_side'")
        top, left, h, w = self.box(img.height, img.width)
        size = size or self.size
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if self.flip and np.random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return TF.pil_to_tensor(img)

    def batch(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, num_classes: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-batch stage on the device: uint8 N x C x H x W + int labels -> normalized float + targets (soft
        with mixup/cutmix). `generator` makes in-memory data's crops, flips and lighting a function of the batch
        (resumable runs); the policies, erasing and mixup draw from torch's global generator."""
        if self.in_memory:
            x = pad_crop_flip(x, self.crop_padding, self.flip and not self.alternate_flips, generator,
                              self.padding_mode == "reflect")
        if self.policy_op is not None:
            x = torch.stack([self.policy_op(xi) for xi in x])
        x = x.float() / 255
        if self.lighting is not None:
            x = self.lighting(x, generator)
        x = (x - mean) / std
        if self.erasing is not None:
            x = torch.stack([self.erasing(xi) for xi in x])
        if self.mixup or self.cutmix:
            # torchvision's MixUp/CutMix (one of them per batch when both are on): one-hot targets mixed by lambda
            x, y = self._mixer(num_classes)(x, y)
        return x, y

    def _mixer(self, num_classes: int) -> v2.Transform:
        if self._mix is None:
            mixers = [m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, self.mixup), (v2.CutMix, self.cutmix))
                      if a]
            self._mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
        return self._mix

    def __repr__(self) -> str:
        keys = ("crop", "crop_padding", "size", "area", "ratio", "shorter_side", "center_square", "flip", "policy",
                "mixup", "cutmix")
        return f"Augment({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"


# ---- the names of before one Augment: the run configs stored in older checkpoints still instantiate -------------
def BatchAugment(crop_padding: int = 0, flip: bool = False) -> Augment:  # noqa: N802
    """Augment(crop="pad", ...): in-memory pad-and-crop + flip, as `_target_: cnnlab.data.BatchAugment` meant."""
    return Augment(crop="pad" if crop_padding else "none", crop_padding=crop_padding, flip=flip)


def ImageAugment(label_smoothing: float = 0.0, **kwargs) -> Augment:  # noqa: N802
    """Augment(...) for image folders, as `_target_: cnnlab.data.ImageAugment` meant. Its label smoothing is the
    loss's now (module.label_smoothing): such configs come from checkpoints, where only evaluation reads them."""
    if label_smoothing:
        log.warning("augment.label_smoothing=%s is ignored: label smoothing is module.label_smoothing now",
                    label_smoothing)
    return Augment(**kwargs)
