"""ResNet family (He et al. 2016, arXiv 1512.03385): CIFAR and ImageNet layouts, plain twins, ResNeXt widths.

Parameter names follow torchvision's `models/resnet.py` (conv1, bn1, layer1.0.conv1, ..., downsample.0, fc) so that
torchvision state dicts load with strict=True.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("basic", "bottleneck")
STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "B")


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-2 subsampling and zero-padded extra channels; no parameters (paper, 3.3)."""

    def __init__(self, cout: int, stride: int) -> None:
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.cout - x.shape[1]))


class BasicBlock(nn.Module):
    """Two 3x3 convs (paper Fig. 2 left)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, residual: bool, **_) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.residual = downsample, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (paper Fig. 5 right; Xie et al. 2017 Fig. 3c)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        residual: bool,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = conv1x1(cin, width, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, s3, groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, planes * 4), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.residual = downsample, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    """Residual network or its plain twin; every variant is a keyword argument."""

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        block: str = "basic",
        stem: str = "imagenet",
        shortcut: str = "B",
        residual: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            depths: blocks per stage, e.g. [3, 3, 3] for CIFAR ResNet-20 (depth 6n+2), [3, 4, 6, 3] for ResNet-50.
            widths: planes per stage (the 3x3 width of a basic block; a bottleneck outputs 4x this).
            block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1).
            stem: "cifar" (3x3 conv, no pooling; paper 4.2) or "imagenet" (7x7/2 conv + 3x3/2 max-pool; Table 1).
            shortcut: "A" zero-padded identity (no parameters) or "B" 1x1 projection where shapes change (paper 3.3).
            residual: False builds the plain twin: the same layers without any shortcut.
            groups, width_per_group: ResNeXt cardinality C and bottleneck width d ("32x4d"); 1, 64 is ResNet.
            stride_in_1x1: put the stride on the first 1x1 as the paper ("v1"); torchvision strides the 3x3 ("v1.5").
            zero_init_residual: start each block's last BN at gamma = 0 (Goyal et al. 2017); off in the paper.
        """
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if len(depths) != len(widths) or not all(int(d) >= 1 for d in depths):
            raise ValueError(f"depths must be positive, one per stage of widths={list(widths)}, got {list(depths)}")
        if block == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError(f"groups/width_per_group need block='bottleneck', got {groups}x{width_per_group}d")
        cls = BasicBlock if block == "basic" else Bottleneck
        self.residual = residual

        if stem == "cifar":
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)

        cin, self.stages = widths[0], []
        for i, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            stride, cout = (1 if i == 0 else 2), planes * cls.expansion
            downsample = None
            if residual and (stride != 1 or cin != cout):
                if shortcut == "A":
                    downsample = ZeroPadShortcut(cout, stride)
                else:
                    downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            kw = dict(residual=residual, groups=groups, width_per_group=width_per_group, stride_in_1x1=stride_in_1x1)
            layers = [cls(cin, planes, stride, downsample, **kw)]
            layers += [cls(cout, planes, 1, None, **kw) for _ in range(int(depth) - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.stages.append(f"layer{i + 1}")
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # CIFAR: N x 16 x 32 x 32; ImageNet: N x 64 x 56 x 56
        for name in self.stages:
            x = getattr(self, name)(x)  # each stage after the first halves H and W
        return self.fc(torch.flatten(self.avgpool(x), 1))  # N x num_classes
