"""Augmentation of whole uint8 batches on the batch's device, no per-sample PIL work (in-memory datasets)."""

import torch
import torch.nn.functional as F


class BatchAugment:
    """Random crop with zero padding and horizontal flip, as He et al. 2016 (4.2): pad 4, random 32x32 crop, flip."""

    def __init__(self, crop_padding: int = 0, flip: bool = False) -> None:
        """
        Args:
            crop_padding: pixels of zero padding on each side before a random crop back to the input size; 0 = off.
            flip: mirror each image left-right with probability 1/2.
        """
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.pad, self.flip = crop_padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.pad:
            padded = F.pad(x, (self.pad,) * 4)
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, n, 1), device=x.device, generator=generator)
            rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # N x 1 x H x 1
            cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # N x 1 x 1 x W
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            x = padded[batch, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            mirror = torch.rand(n, device=x.device, generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.pad}, flip={self.flip})"
