"""VGG (Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image recognition",
arXiv 1409.1556, Table 1): configurations A, A-LRN, B, C, D, E, their BN twins, and a CIFAR layout.

Parameter names follow torchvision's `models/vgg.py` (features.N, avgpool, classifier.N), so torchvision's
vgg11/13/16/19 and their _bn twins load with strict=True.
"""

import re
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.alexnet import local_response_norm

LAYER = re.compile(r"conv([13])-(\d+)")  # the paper's "conv<receptive field>-<channels>", e.g. conv1-256


class VGG(nn.Module):
    """Stacks of small convolutions separated by max-pooling, then fully-connected layers."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        batch_norm: bool = False,
        pool_size: int = 2,
        avgpool_size: int = 7,
        hidden: int = 4096,
        dropout: float = 0.5,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            cfg: one column of the paper's Table 1, top to bottom: an int is a 3x3 conv with that many channels
                ("conv3-64"), "conv1-256" a 1x1 conv (configuration C), "M" a max-pool, "LRN" local response
                normalization (configuration A-LRN, after the first ReLU).
            batch_norm: BN after every conv (Ioffe & Szegedy 2015; not in the paper), as torchvision's vgg*_bn.
            pool_size: 2 is the paper's 2x2/2 pool; 3 is a 3x3/2 pool with padding 1 (the CIFAR layout).
            avgpool_size: adaptive average pool before the classifier, torchvision's 7 (the paper's 7x7 at 224).
            hidden: width of fc6 and fc7; 0 leaves a single linear layer (the CIFAR layout).
            dropout: before fc6 and fc7 (paper 3.1: 0.5 on the first two fully-connected layers).
        """
        super().__init__()
        if pool_size not in (2, 3):
            raise ValueError(f"pool_size must be 2 (2x2/2) or 3 (3x3/2, padding 1), got {pool_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(pool_size, 2, padding=pool_size // 2 if pool_size == 3 else 0))
            elif v == "LRN":
                layers.append(local_response_norm())  # the parameters of Krizhevsky et al. (paper 2.2)
            elif isinstance(v, int) or (isinstance(v, str) and LAYER.fullmatch(v)):
                k, cout = (3, int(v)) if isinstance(v, int) else map(int, LAYER.fullmatch(v).groups())
                layers.append(nn.Conv2d(cin, cout, k, padding=k // 2))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
                cin = cout
            else:
                raise ValueError(f"cfg entries are ints, 'conv1-<n>', 'conv3-<n>', 'M' or 'LRN', got {v!r}")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(avgpool_size)
        flat = cin * avgpool_size**2
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc6
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc7
                nn.Linear(hidden, num_classes),  # fc8
            )
        else:
            self.classifier = nn.Sequential(nn.Linear(flat, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper trains A from N(0, 0.01) and starts deeper nets from A's layers, noting (3.1) that plain random
        # init (Glorot & Bengio 2010) also works; we use torchvision's He init for the convs, no pre-training.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # 224x224: N x 512 x 7 x 7; CIFAR: N x 512 x 1 x 1
        return self.classifier(x.flatten(1))  # N x num_classes
