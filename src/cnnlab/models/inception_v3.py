"""Inception-v3 (Szegedy et al. 2016, "Rethinking the inception architecture for computer vision",
arXiv 1512.00567, Table 1 and Figs. 5-7, 10), 299x299 input, BN after every conv, one auxiliary classifier.

Module names and channel orders follow torchvision's `models/inception.py` (Conv2d_1a_3x3, Mixed_5b.branch1x1,
AuxLogits.conv0, ...), which ports Google's released model, so its state dicts load with strict=True.
"""

import torch
import torch.nn.functional as F
from torch import nn

# A branch lists its steps: "avg" (3x3/1 pool) or "max" (3x3/2 pool), a conv (name, out channels, kernel as int
# or (h, w), [stride]), or a list of convs applied in parallel to the same input and concatenated (Fig. 7).


def block_a(pool_features: int) -> list:
    """35x35 module (Fig. 5; the released model keeps one 5x5 branch beside the two 3x3s)."""
    return [[("branch1x1", 64, 1)],
            [("branch5x5_1", 48, 1), ("branch5x5_2", 64, 5)],
            [("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3), ("branch3x3dbl_3", 96, 3)],
            ["avg", ("branch_pool", pool_features, 1)]]


def block_c(c7: int) -> list:
    """17x17 module with n=7 factorized into 1x7 and 7x1 (Fig. 6)."""
    return [[("branch1x1", 192, 1)],
            [("branch7x7_1", c7, 1), ("branch7x7_2", c7, (1, 7)), ("branch7x7_3", 192, (7, 1))],
            [("branch7x7dbl_1", c7, 1), ("branch7x7dbl_2", c7, (7, 1)), ("branch7x7dbl_3", c7, (1, 7)),
             ("branch7x7dbl_4", c7, (7, 1)), ("branch7x7dbl_5", 192, (1, 7))],
            ["avg", ("branch_pool", 192, 1)]]


# Grid reductions (Fig. 10): stride-2 conv branches beside a stride-2 max-pool, concatenated.
BLOCK_B = [[("branch3x3", 384, 3, 2)],
           [("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3), ("branch3x3dbl_3", 96, 3, 2)], ["max"]]
BLOCK_D = [[("branch3x3_1", 192, 1), ("branch3x3_2", 320, 3, 2)],
           [("branch7x7x3_1", 192, 1), ("branch7x7x3_2", 192, (1, 7)), ("branch7x7x3_3", 192, (7, 1)),
            ("branch7x7x3_4", 192, 3, 2)], ["max"]]
# 8x8 module with expanded filter bank outputs (Fig. 7): the 3x3 branches end in parallel 1x3 and 3x1 convs.
BLOCK_E = [[("branch1x1", 320, 1)],
           [("branch3x3_1", 384, 1), [("branch3x3_2a", 384, (1, 3)), ("branch3x3_2b", 384, (3, 1))]],
           [("branch3x3dbl_1", 448, 1), ("branch3x3dbl_2", 384, 3),
            [("branch3x3dbl_3a", 384, (1, 3)), ("branch3x3dbl_3b", 384, (3, 1))]],
           ["avg", ("branch_pool", 192, 1)]]
MIXED = {"Mixed_5b": block_a(32), "Mixed_5c": block_a(64), "Mixed_5d": block_a(64), "Mixed_6a": BLOCK_B,
         "Mixed_6b": block_c(128), "Mixed_6c": block_c(160), "Mixed_6d": block_c(160), "Mixed_6e": block_c(192),
         "Mixed_7a": BLOCK_D, "Mixed_7b": BLOCK_E, "Mixed_7c": BLOCK_E}


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN + ReLU; stride-1 convs keep the grid ("same" padding) unless told otherwise."""

    def __init__(self, cin: int, cout: int, kernel_size, stride: int = 1, padding=None) -> None:
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding is None:
            padding = (k[0] // 2, k[1] // 2) if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Mixed(nn.Module):
    """An inception module: parallel branches (pool, then convs), concatenated along channels."""

    def __init__(self, cin: int, branches: list) -> None:
        super().__init__()
        self.plans: list[list] = []  # per branch: "avg" | "max" | the names of parallel convs, in order
        self.out_channels = 0
        for branch in branches:
            c, plan = cin, []
            for step in branch:
                if isinstance(step, str):
                    plan.append(step)
                    continue
                convs = step if isinstance(step, list) else [step]
                for name, cout, k, *stride in convs:
                    self.add_module(name, BasicConv2d(c, cout, k, *stride))
                plan.append([name for name, *_ in convs])
                c = sum(cout for _, cout, *_ in convs)
            self.plans.append(plan)
            self.out_channels += c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for plan in self.plans:
            y = x
            for step in plan:
                if step == "avg":
                    y = F.avg_pool2d(y, 3, 1, 1)
                elif step == "max":
                    y = F.max_pool2d(y, 3, 2)
                else:
                    y = torch.cat([getattr(self, name)(y) for name in step], 1)
            outs.append(y)
        return torch.cat(outs, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid, with BN in its convs (paper 7: the "BN-auxiliary")."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(cin, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5, padding=0)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))  # N x 768 x 17 x 17 -> 5 x 5 -> N x 768 x 1 x 1
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InceptionV3(nn.Module):
    """Factorized-convolution stem and 11 inception modules on a 299x299 input (Table 1)."""

    def __init__(
        self, aux_logits: bool = True, dropout: float = 0.5, num_classes: int = 1000, in_channels: int = 3
    ) -> None:
        """
        Args:
            aux_logits: build the auxiliary classifier on Mixed_6e; forward then returns (logits, aux) in training
                mode and logits in eval mode.
            dropout: before the final linear layer.
        """
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.aux_logits = aux_logits
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, 3, 2)  # N x 32 x 149 x 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, padding=0)  # N x 32 x 147 x 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2)  # N x 64 x 73 x 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, padding=0)  # N x 192 x 71 x 71
        self.maxpool2 = nn.MaxPool2d(3, 2)  # N x 192 x 35 x 35
        cin = 192
        for name, branches in MIXED.items():
            self.add_module(name, Mixed(cin, branches))
            cin = getattr(self, name).out_channels  # 35x35: 288; 17x17: 768; 8x8: 1280, 2048
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's init (truncated normal), not given in the paper
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-2, b=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2"):
            x = getattr(self, name)(x)
        aux = None
        for name in MIXED:
            x = getattr(self, name)(x)
            if name == "Mixed_6e" and self.AuxLogits is not None and self.training:
                aux = self.AuxLogits(x)  # from N x 768 x 17 x 17
        x = self.fc(self.dropout(self.avgpool(x).flatten(1)))  # N x 2048 -> N x num_classes
        return x if aux is None else (x, aux)
