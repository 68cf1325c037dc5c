"""AlexNet (Krizhevsky et al. 2012, "ImageNet classification with deep convolutional neural networks", Fig. 2)
and its descendants: torchvision's one-GPU "one weird trick" net (Krizhevsky 2014, arXiv 1404.5997) and ZFNet
(Zeiler & Fergus 2014, arXiv 1311.2901, Fig. 3).

Parameter names follow torchvision's `models/alexnet.py` (features.N, avgpool, classifier.N), so torchvision's
state dict loads with strict=True into the same widths without LRN and groups, with dropout on the inputs of fc6/fc7
as torchvision places it (conf/model/alexnet_owt.yaml).
"""

from collections.abc import Sequence

import torch
from torch import nn

DROPOUT_ON = ("outputs", "inputs")


def local_response_norm() -> nn.LocalResponseNorm:
    """Local response normalization with the paper's k=2, n=5, alpha=1e-4, beta=0.75 (Krizhevsky et al. 2012, 3.3)."""
    # PyTorch divides alpha by n (as Caffe); the paper does not, so alpha = 1e-4 * n reproduces the paper's formula.
    return nn.LocalResponseNorm(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    """Five convolutions (max-pooled after 1, 2, 5) and three fully-connected layers; variants are the arguments."""

    def __init__(
        self,
        widths: Sequence[int] = (96, 256, 384, 384, 256),
        kernel_sizes: Sequence[int] = (11, 5, 3, 3, 3),
        strides: Sequence[int] = (4, 1, 1, 1, 1),
        paddings: Sequence[int] = (2, 2, 1, 1, 1),
        groups: Sequence[int] = (1, 2, 1, 2, 2),
        lrn: bool = True,
        ceil_mode: bool = False,
        hidden: int = 4096,
        dropout: float = 0.5,
        dropout_on: str = "outputs",
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            widths: filters of conv1-conv5: 96-256-384-384-256 in the paper, 64-192-384-256-256 in torchvision.
            kernel_sizes, strides, paddings: of conv1-conv5 (the paper: 11x11/4, 5x5/1, then 3x3/1).
            groups: per conv; 2 splits conv2, conv4, conv5 as the paper's two GPUs did (conv3 and the fc layers see
                both halves); all 1 is the one-GPU net.
            lrn: local response normalization after the ReLUs of conv1 and conv2 (paper 3.3; ZFNet keeps it).
            ceil_mode: round pooled sizes up as Caffe does; ZFNet needs it for its 110-55-26-13-6 maps.
            hidden: width of fc6 and fc7.
            dropout: rate in fc6 and fc7 (paper 4.2: 0.5 "in the first two fully-connected layers").
            dropout_on: "outputs" zeroes the outputs of fc6 and fc7 as the paper (4.2: "setting to zero the output of
                each hidden neuron"); "inputs" drops the inputs of fc6 and fc7 as torchvision (its state dicts have
                fc6, fc7, fc8 at classifier.1, .4, .6; "outputs" puts them at classifier.0, .3, .6).
        """
        super().__init__()
        per_conv = {"widths": widths, "kernel_sizes": kernel_sizes, "strides": strides, "paddings": paddings,
                    "groups": groups}
        for name, values in per_conv.items():
            if len(values) != 5:
                raise ValueError(f"{name} needs one value per conv1-conv5, got {list(values)}")
        for cin, cout, g in zip([in_channels, *widths[:4]], widths, groups, strict=True):
            if cin % g or cout % g:
                raise ValueError(f"groups={g} must divide {cin} input and {cout} output channels")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropout_on not in DROPOUT_ON:
            raise ValueError(f"dropout_on must be one of {DROPOUT_ON}, got {dropout_on!r}")

        layers: list[nn.Module] = []
        cin = in_channels
        for i, (cout, k, s, p, g) in enumerate(zip(widths, kernel_sizes, strides, paddings, groups, strict=True)):
            layers += [nn.Conv2d(cin, cout, k, s, p, groups=g), nn.ReLU(inplace=True)]
            if lrn and i < 2:
                layers.append(local_response_norm())
            if i in (0, 1, 4):  # overlapping pooling, z=3 > s=2 (paper 3.4)
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=ceil_mode))
            cin = cout
        self.features = nn.Sequential(*layers)  # 224x224 input: N x widths[4] x 6 x 6
        # torchvision's adaptive pool: 6x6 at 224 (or 227) input; smaller inputs still reach the classifier.
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        fc6, fc7, fc8 = nn.Linear(cin * 6 * 6, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, num_classes)
        if dropout_on == "outputs":
            self.classifier = nn.Sequential(
                fc6, nn.ReLU(inplace=True), nn.Dropout(dropout),
                fc7, nn.ReLU(inplace=True), nn.Dropout(dropout),
                fc8,
            )
        else:
            self.classifier = nn.Sequential(
                nn.Dropout(dropout), fc6, nn.ReLU(inplace=True),
                nn.Dropout(dropout), fc7, nn.ReLU(inplace=True),
                fc8,
            )
        self._init_weights()

    def _init_weights(self) -> None:
        # Paper 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and fc6, fc7 (positive inputs to the ReLUs
        # early in training), 0 elsewhere.
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for m in convs + linears:
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        for m in [convs[1], convs[3], convs[4], linears[0], linears[1]]:
            nn.init.ones_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # N x C x 6 x 6
        return self.classifier(x.flatten(1))  # N x num_classes
