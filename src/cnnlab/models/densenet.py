"""DenseNet (Huang et al. 2017, "Densely connected convolutional networks", arXiv 1608.06993, Table 1 and 3):
DenseNet-BC for ImageNet and CIFAR.

Parameter names follow torchvision's `models/densenet.py` (features.conv0, features.denseblock1.denselayer1.norm1,
features.transition1.conv, classifier), so torchvision's densenet121/161/169/201 state dicts load with strict=True.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STEMS = ("imagenet", "cifar")


class DenseLayer(nn.Module):
    """Bottleneck layer H_l: BN-ReLU-Conv(1x1, bn_size*k)-BN-ReLU-Conv(3x3, k) (paper 3, "Bottleneck layers")."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth_rate), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))  # [x_0, x_1, ..., x_l-1] (Eq. 2)
        x = self.conv2(self.relu2(self.norm2(x)))  # N x k x H x W
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenated outputs of the block input and all preceding layers."""

    def __init__(self, num_layers: int, cin: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth_rate, growth_rate, bn_size, drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # N x (cin + num_layers * k) x H x W


class Transition(nn.Sequential):
    """BN-ReLU-Conv(1x1) to floor(theta * m) channels, then 2x2 average pooling (paper 3, "Compression")."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(OrderedDict(norm=nn.BatchNorm2d(cin), relu=nn.ReLU(inplace=True),
                                     conv=nn.Conv2d(cin, cout, 1, bias=False), pool=nn.AvgPool2d(2, 2)))


class DenseNet(nn.Module):
    """Dense blocks joined by compressing transitions; DenseNet-BC when bn_size > 0 and compression < 1."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            growth_rate: k, the feature maps each layer adds (paper 3, "Growth rate").
            block_config: layers per dense block: 6-12-24-16 is DenseNet-121 (Table 1), [16, 16, 16] is the CIFAR
                DenseNet-BC with depth 100 (3 blocks of (100 - 4) / 6 bottleneck layers).
            num_init_features: channels of the first conv, 2k in DenseNet-BC.
            bn_size: bottleneck width in multiples of k (4: "4k feature-maps").
            compression: theta in (0, 1]; 0.5 is the "C" of DenseNet-BC.
            stem: "imagenet" (7x7/2 conv, BN-ReLU, 3x3/2 max-pool) or "cifar" (one 3x3 conv; paper 3,
                "Implementation Details").
            drop_rate: dropout after each 3x3 conv (paper 4.2: 0.2 on CIFAR without augmentation).
        """
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        if not block_config or not all(int(n) >= 1 for n in block_config):
            raise ValueError(f"block_config must list positive layer counts, got {list(block_config)}")
        if growth_rate < 1 or bn_size < 1:
            raise ValueError(f"growth_rate and bn_size must be positive, got {growth_rate} and {bn_size}")
        if stem == "imagenet":
            stem_layers = OrderedDict(
                conv0=nn.Conv2d(in_channels, num_init_features, 7, 2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(num_init_features), relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, 2, padding=1),  # N x 2k x 56 x 56 at 224
            )
        else:  # the first dense layer starts with BN-ReLU, so the CIFAR stem is the conv alone
            stem_layers = OrderedDict(conv0=nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False))
        self.features = nn.Sequential(stem_layers)
        c = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(int(num_layers), c, growth_rate, bn_size,
                                                                      drop_rate))
            c += int(num_layers) * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, int(c * compression)))
                c = int(c * compression)  # each transition halves H and W
        self.features.add_module(f"norm{len(block_config) + 1}", nn.BatchNorm2d(c))  # norm5 with 4 blocks
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():  # torchvision's init; the paper follows He et al. 2015 (fb.resnet.torch)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))  # ImageNet: N x C x 7 x 7 at 224; CIFAR: N x C x 8 x 8 at 32
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))  # global average pooling, N x num_classes
