"""The residual blocks of the ResNet family: post-activation (He et al. 2016, arXiv 1512.03385) and pre-activation
(He et al. 2016b, arXiv 1603.05027) basic and bottleneck blocks, each with optional squeeze-and-excitation
(Hu et al. 2018, arXiv 1709.01507), stochastic depth (Huang et al. 2016, arXiv 1603.09382) and dropout between the
convs (Zagoruyko & Komodakis 2016, arXiv 1605.07146). Names follow torchvision (conv1, bn1, ..., downsample, se)."""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation, StochasticDepth


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def bottleneck_shape(planes: int, stride: int, groups: int, width_per_group: int, stride_in_1x1: bool):
    """(width of the grouped 3x3, stride of the first 1x1, stride of the 3x3): ResNeXt's C x d at this stage's
    planes (Xie et al. 2017, Table 1); the paper's v1 strides the 1x1, torchvision's v1.5 the 3x3."""
    width = int(planes * width_per_group / 64) * groups
    return (width, stride, 1) if stride_in_1x1 else (width, 1, stride)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-2 subsampling and zero-padded extra channels; no parameters (paper, 3.3).
    avgpool=True subsamples by stride x stride average pooling instead, as Huang et al. 2016's code (ResidualDrop.lua:
    SpatialAveragePooling(2, 2, 2, 2), then nn.Padding with zeros)."""

    def __init__(self, cout: int, stride: int, avgpool: bool = False) -> None:
        super().__init__()
        self.cout, self.stride, self.avgpool = cout, stride, avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.avgpool and self.stride > 1:  # ceil_mode: the strided conv's output size for odd sides too
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        else:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.cout - x.shape[1]))


class Block(nn.Module):
    """What every block shares: the shortcut, SE on the residual branch, stochastic depth, the addition."""

    expansion = 1

    def _tail(self, cout: int, downsample: nn.Module | None, residual: bool, se_reduction: int | None = None,
              drop_prob: float = 0.0, drop_mode: str = "row", dropout: float = 0.0, **_) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.downsample, self.residual = downsample, residual
        # Hu et al. 2018, Fig. 3: squeeze-and-excite the branch output, before the addition
        self.se = SqueezeExcitation(cout, cout // se_reduction) if se_reduction else nn.Identity()
        # "row": per sample; "batch": the whole branch for the mini-batch (Huang et al. 2016, 3 and their main.lua).
        # Deviation from Huang et al.: a kept branch is scaled by 1/survival in training and used as is in eval
        # (torchvision), where they scale by the survival probability in eval; the branch's last BN absorbs the factor.
        self.drop_path = StochasticDepth(drop_prob, drop_mode)

    def add(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        out = self.se(out)
        return self.drop_path(out) + shortcut if self.residual else out

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(Block):
    """Two 3x3 convs (paper Fig. 2 left)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, residual: bool, **kw) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self._tail(planes, downsample, residual, **kw)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.dropout(out)))
        return self.relu(self.add(out, self.shortcut(x)))


class Bottleneck(Block):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (paper Fig. 5 right; Xie et al. 2017 Fig. 3c)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, residual: bool,
                 groups: int = 1, width_per_group: int = 64, stride_in_1x1: bool = False, **kw) -> None:
        super().__init__()
        width, s1, s3 = bottleneck_shape(planes, stride, groups, width_per_group, stride_in_1x1)
        self.conv1, self.bn1 = conv1x1(cin, width, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, s3, groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, planes * 4), nn.BatchNorm2d(planes * 4)
        self._tail(planes * 4, downsample, residual, **kw)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.dropout(out)))
        return self.relu(self.add(out, self.shortcut(x)))


class PreActBasicBlock(Block):
    """BN-ReLU-conv3x3 twice, nothing after the addition (He et al. 2016b, Fig. 1b and 4e; WRN Fig. 1c-d)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, residual: bool, **kw) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), conv3x3(planes, planes)
        self._tail(planes, downsample, residual, **kw)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.conv2.weight)  # a zero BN gamma before a ReLU would never get a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)  # projections share the pre-activation
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return self.add(out, shortcut)


class PreActBottleneck(Block):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (He et al. 2016b, 4.1; ResNet-164 and -1001 on CIFAR)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, residual: bool,
                 groups: int = 1, width_per_group: int = 64, stride_in_1x1: bool = False, **kw) -> None:
        super().__init__()
        width, s1, s3 = bottleneck_shape(planes, stride, groups, width_per_group, stride_in_1x1)
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv1x1(cin, width, s1)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), conv3x3(width, width, s3, groups)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), conv1x1(width, planes * 4)
        self._tail(planes * 4, downsample, residual, **kw)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.conv3.weight)  # a zero BN gamma before a ReLU would never get a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)  # projections share the pre-activation
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        return self.add(out, shortcut)


BLOCKS = {("basic", False): BasicBlock, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck}
