"""GoogLeNet (Szegedy et al. 2015, "Going deeper with convolutions", arXiv 1409.4842, Table 1 and Fig. 3).

Module names follow torchvision's `models/googlenet.py` (conv1.conv, inception3a.branch2.1.conv, aux1.fc1, ...),
but its state dicts do not load: the branch3.1 weights here are 5x5.
"""

import torch
from torch import nn

# Table 1, one row per inception module: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
POOLS = {"3b": "maxpool3", "4e": "maxpool4"}  # 3x3/2 max-pools between the stages (Table 1)


class ConvUnit(nn.Module):
    """Conv + ReLU (the paper), or conv + BN + ReLU (torchvision's BasicConv2d, batch_norm=True)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, batch_norm: bool, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(cout, eps=0.001) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Parallel 1x1, 3x3, 5x5 convolutions and 3x3 max-pooling, concatenated; 1x1 reductions first (Fig. 2b)."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, batch_norm: bool) -> None:
        super().__init__()
        self.branch1 = ConvUnit(cin, c1, 1, batch_norm)
        self.branch2 = nn.Sequential(ConvUnit(cin, c3r, 1, batch_norm), ConvUnit(c3r, c3, 3, batch_norm))
        # The paper's 5x5; torchvision has a 3x3 here (its known bug, pytorch/vision#906): 380,928 fewer parameters.
        self.branch3 = nn.Sequential(ConvUnit(cin, c5r, 1, batch_norm), ConvUnit(c5r, c5, 5, batch_norm))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True), ConvUnit(cin, cp, 1, batch_norm))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (paper 5): 5x5/3 average pool, 1x1 conv 128, fc 1024, dropout 0.7, linear."""

    def __init__(self, cin: int, num_classes: int, batch_norm: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)  # 14x14 -> 4x4 at 224 input
        self.conv = ConvUnit(cin, 128, 1, batch_norm)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)  # N x 2048
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """22 layers of 9 inception modules; in training mode also the two auxiliary classifiers' logits."""

    def __init__(
        self,
        aux_logits: bool = True,
        batch_norm: bool = False,
        dropout: float = 0.4,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            aux_logits: build the auxiliary classifiers after 4a and 4d; forward then returns
                (logits, aux1, aux2) in training mode (weighted 0.3 by the training module) and logits in eval mode.
            batch_norm: BN after every conv, in place of the stem's two LRN layers (torchvision's layout).
            dropout: before the final linear layer (paper: 40%; torchvision 0.2).
        """
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.aux_logits = aux_logits
        # LRN after the stem's first pool and third conv (Fig. 3), sized as BVLC's Caffe replication (bvlc_googlenet).
        lrn = nn.Identity if batch_norm else lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.conv1 = ConvUnit(in_channels, 64, 7, batch_norm, stride=2)  # N x 64 x 112 x 112
        self.maxpool1 = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), lrn())  # N x 64 x 56 x 56
        self.conv2 = ConvUnit(64, 64, 1, batch_norm)
        self.conv3 = ConvUnit(64, 192, 3, batch_norm)
        self.maxpool2 = nn.Sequential(lrn(), nn.MaxPool2d(3, 2, ceil_mode=True))  # N x 192 x 28 x 28
        cin = 192
        for name, widths in INCEPTIONS.items():
            block = Inception(cin, *widths, batch_norm=batch_norm)
            self.add_module(f"inception{name}", block)
            cin = block.out_channels
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)  # N x 480 x 14 x 14
        # Paper: 3x3/2 max-pool before 5a; torchvision's 2x2/2 gives the same 7x7 at 224.
        self.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)  # N x 832 x 7 x 7
        self.aux1 = InceptionAux(512, num_classes, batch_norm) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, batch_norm) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                # bvlc_googlenet's Caffe "xavier" filler (uniform, bound sqrt(3 / fan_in)) and 0.2 conv biases.
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.2 if isinstance(m, nn.Conv2d) else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))  # N x 192 x 28 x 28
        aux = []
        for name in INCEPTIONS:
            x = getattr(self, f"inception{name}")(x)
            if name in POOLS:
                x = getattr(self, POOLS[name])(x)
            if name in ("4a", "4d") and self.aux_logits and self.training:
                aux.append((self.aux1 if name == "4a" else self.aux2)(x))  # from N x 512|528 x 14 x 14
        x = self.fc(self.dropout(self.avgpool(x).flatten(1)))  # N x 1024 -> N x num_classes
        return (x, *aux) if aux else x
