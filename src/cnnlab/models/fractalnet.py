"""FractalNet (Larsson et al. 2017, "FractalNet: ultra-deep neural networks without residuals", arXiv 1605.07648,
Fig. 1 and 3-4): the CIFAR network of B blocks, each a fractal of C columns, with local and global drop-path."""

from collections.abc import Sequence

import torch
from torch import nn


def conv_unit(cin: int, cout: int, dropout: float) -> nn.Sequential:
    """3x3 conv, BN, ReLU (paper 4: "each convolutional layer is followed by batch norm and ReLU")."""
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout > 0 else []))


class FractalBlock(nn.Module):
    """f_1(z) = conv(z); f_{C+1}(z) = join(f_C(f_C(z)), conv(z)) (Eq. 1), unrolled into C columns of 2^j convs."""

    def __init__(self, cin: int, cout: int, columns: int, dropout: float) -> None:
        super().__init__()
        self.columns = nn.ModuleList(
            nn.Sequential(*[conv_unit(cin if i == 0 else cout, cout, dropout) for i in range(2**j)])
            for j in range(columns)
        )

    def forward(self, x: torch.Tensor, drop_path: float, global_column: int | None) -> torch.Tensor:
        if global_column is not None:  # global drop-path: every join keeps only this column, so it runs alone
            return self.columns[global_column](x)
        C = len(self.columns)
        inputs = [x] * C  # what each column reads next
        for t in range(1, 2 ** (C - 1) + 1):  # rows of the deepest column
            active = [j for j in range(C) if t % 2 ** (C - 1 - j) == 0]  # columns ending a conv at row t, then joined
            ys = [self.columns[j][t // 2 ** (C - 1 - j) - 1](inputs[j]) for j in active]
            joined = self.join(ys, drop_path)
            for j in active:
                inputs[j] = joined
        return inputs[-1]

    @staticmethod
    def join(ys: list[torch.Tensor], drop_path: float) -> torch.Tensor:
        """Element-wise mean of the inputs that survive local drop-path (paper 3 and 3.1)."""
        if drop_path > 0 and len(ys) > 1:  # drop each input with probability p, keep at least one
            keep = torch.rand(len(ys)) >= drop_path
            if not keep.any():
                keep[torch.randint(len(ys), ())] = True
            ys = [y for y, k in zip(ys, keep.tolist(), strict=True) if k]
        return torch.stack(ys).mean(0)


class FractalNet(nn.Module):
    """B fractal blocks of C columns, each followed by 2x2 max-pooling, then a linear classifier."""

    def __init__(
        self,
        columns: int = 4,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        dropout: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
        drop_path: float = 0.15,
        global_drop_ratio: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            columns: C; the deepest column of a block has 2^(C-1) convs, so depth is B * 2^(C-1) (40 for C=4, B=5).
            channels: filters per block, B = len(channels); 5 blocks pool 32x32 down to 1x1.
            dropout: per block, after each conv (paper 4: 0%, 10%, 20%, 30%, 40% when dropout is used).
            drop_path: local drop-path rate, the chance each join input is dropped (paper 4: 15%).
            global_drop_ratio: share of training batches that use global drop-path, one column for the whole network,
                instead of local (paper 3.1: half of the mini-batches).
        """
        super().__init__()
        if columns < 1:
            raise ValueError(f"columns must be >= 1, got {columns}")
        if len(dropout) != len(channels):
            raise ValueError(f"dropout needs one rate per block of channels={list(channels)}, got {list(dropout)}")
        if not 0 <= drop_path < 1 or not 0 <= global_drop_ratio <= 1:
            raise ValueError(f"drop_path must be in [0, 1) and global_drop_ratio in [0, 1], got "
                             f"{drop_path} and {global_drop_ratio}")
        self.drop_path, self.global_drop_ratio = drop_path, global_drop_ratio
        cins = [in_channels, *channels[:-1]]
        self.blocks = nn.ModuleList(FractalBlock(ci, co, columns, float(p))
                                    for ci, co, p in zip(cins, channels, dropout, strict=True))
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop_path, global_column = 0.0, None
        if self.training:
            drop_path = self.drop_path
            if torch.rand(()) < self.global_drop_ratio:  # sampled per mini-batch
                global_column = int(torch.randint(len(self.blocks[0].columns), ()))
        for block in self.blocks:
            x = self.pool(block(x, drop_path, global_column))  # halves H and W: 32 -> 16 -> 8 -> 4 -> 2 -> 1
        return self.fc(x.mean((2, 3)))  # N x 512 -> N x num_classes
