"""Small, fast CIFAR networks: David Page's ResNet-9 ("How to train your ResNet", myrtle.ai 2018; DAWNBench) and the
network of KellerJordan/cifar10-airbench (Jordan 2024, arXiv 2404.00498, "airbench94": 94.01% in 2.59 s on an A100).

Both are three groups of conv -> 2x2 max-pool -> BN -> activation, each followed by more conv-BN-activation layers
(Page: a residual branch of two, airbench: one more in sequence), a global max-pool and a bias-free linear layer whose
output is scaled down (Page 0.125, airbench 1/9). Pooling before BN is Page's bag-of-tricks order (post 8), which
airbench keeps; it saves 3/4 of the BN and activation work.
"""

from collections.abc import Sequence

import torch
from torch import nn

STEMS = ("conv", "whiten")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def conv_bn(c_in: int, c_out: int, act: str, bn: dict, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: BN follows), optional 2x2 max-pool, BN, activation."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), *([nn.MaxPool2d(2)] if pool else [])]
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out, **bn), ACTIVATIONS[act]())


class FastNet(nn.Module):
    """Page's ResNet-9 or airbench94's network; the variants are keyword arguments."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        extra_convs: Sequence[int] = (1, 1, 1),
        residual: bool = False,
        stem: str = "whiten",
        stem_width: int = 64,
        whiten_kernel: int = 2,
        activation: str = "gelu",
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-12,
        bn_weight: bool = False,
        identity_init: bool = True,
        head_scale: float = 1 / 9,
        bias_scaler: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            widths: output channels of the three groups (airbench 64-256-256, Page 128-256-512).
            extra_convs: conv-BN-activation layers after each group's pooling conv (airbench 1-1-1, Page 2-0-2).
            residual: add the extra layers as a residual branch (Page's ResNet-9) instead of in sequence (airbench).
            stem: "conv" (3x3 conv-BN-activation to `stem_width`, Page) or "whiten" (a frozen `whiten_kernel`^2 patch
                whitening conv of width 2 * C * k^2 and its negation, then the activation; airbench).
            bn_momentum: PyTorch's convention, the weight of the new batch (airbench's 0.6 is the kept fraction: 0.4).
            bn_weight: learn BN's scale; both frozen it at 1 (Page post 8, airbench) and learn only the shift.
            identity_init: initialize each conv's first in-channels filters as the identity (airbench's dirac init).
            head_scale: factor on the logits (Page 0.125, airbench 1/9), which sharpens nothing at init.
            bias_scaler: LR multiplier of the BN shifts (airbench 64), published as `lr_scales` (parameter name ->
                multiplier), which cnnlab.module.param_groups reads.
        """
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if len(widths) != len(extra_convs):
            raise ValueError(f"widths and extra_convs must have one entry per group, got {widths} and {extra_convs}")
        bn = {"momentum": bn_momentum, "eps": bn_eps}
        if stem == "whiten":
            # Weights set from the first training batch unless set before (cnnlab.lookahead.WhiteningInit: from
            # 5000 stored training images, as airbench; a data-dependent init like Glow's ActNorm), then frozen.
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 2 * in_channels * whiten_kernel**2, whiten_kernel),
                                      ACTIVATIONS[activation]())
            self.stem[0].weight.requires_grad_(False)
            self.register_buffer("whitened", torch.tensor(False))
        else:
            self.stem = conv_bn(in_channels, stem_width, activation, bn)
        self._whiten_checked = stem != "whiten"
        self.residual = residual
        c_in = self.stem[0].out_channels
        self.groups = nn.ModuleList()
        for width, extra in zip(widths, extra_convs, strict=True):
            group = nn.Module()
            group.conv = conv_bn(c_in, width, activation, bn, pool=True)
            group.extra = nn.Sequential(*(conv_bn(width, width, activation, bn) for _ in range(extra)))
            self.groups.append(group)
            c_in = width
        self.pool = nn.AdaptiveMaxPool2d(1)  # Page: MaxPool(4) of 4x4, airbench: MaxPool(3) of 3x3; both global
        self.fc = nn.Linear(c_in, num_classes, bias=False)
        self.head_scale = head_scale

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if identity_init and m.kernel_size == (3, 3):
                    nn.init.dirac_(m.weight.data[: m.in_channels])  # an implicit residual at init
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(bn_weight)
        self.lr_scales = {f"{n}.bias": bias_scaler for n, m in self.named_modules() if isinstance(m, nn.BatchNorm2d)}

    @torch.no_grad()
    @torch.autocast("cuda", enabled=False)
    @torch.autocast("cpu", enabled=False)
    def whiten(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the eigenvectors of the k x k patch covariance of x, scaled by 1/sqrt(eigenvalue + eps)."""
        conv = self.stem[0]
        x = x.float().contiguous()
        c, (h, w) = x.shape[1], conv.kernel_size
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)  # P x C*k*k
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues[:, None] + eps).sqrt()).reshape(-1, c, h, w).flip(0)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight.dtype))
        self.whitened.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._whiten_checked and self.training:  # a Python flag, so the check costs nothing after step 1
            if not self.whitened:  # False unless restored from a checkpoint
                self.whiten(x)
            self._whiten_checked = True
        x = self.stem(x)  # N x 24 x 31 x 31 (whiten, k=2) or N x 64 x 32 x 32 (conv)
        for g in self.groups:
            x = g.conv(x)  # spatial size halved
            x = x + g.extra(x) if self.residual and len(g.extra) else g.extra(x)
        x = self.pool(x).flatten(1)  # N x widths[-1]
        return self.fc(x) * self.head_scale
