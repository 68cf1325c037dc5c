"""ResNet family (He et al. 2016, arXiv 1512.03385): CIFAR and ImageNet layouts, plain twins, ResNeXt, Wide ResNet,
pre-activation, squeeze-and-excitation and stochastic depth; the blocks live in resnet_blocks.py.

Parameter names follow torchvision's `models/resnet.py` (conv1, bn1, layer1.0.conv1, ..., downsample.0, fc) so that
torchvision state dicts load with strict=True.
"""

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.resnet_blocks import BLOCKS as BLOCK_CLASSES
from cnnlab.models.resnet_blocks import Block, ZeroPadShortcut, conv1x1, conv3x3

BLOCKS = ("basic", "bottleneck")
STEMS = ("cifar", "imagenet")
SHORTCUTS = ("A", "A_avgpool", "B")
DROP_MODES = ("row", "batch")


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
        preact: bool = False,
        se_reduction: int | None = None,
        stochastic_depth: float = 0.0,
        stochastic_depth_mode: str = "row",
        dropout: float = 0.0,
        stem_width: int | None = None,
    ) -> None:
        """
        Args:
            depths: blocks per stage, e.g. [3, 3, 3] for CIFAR ResNet-20 (depth 6n+2), [3, 4, 6, 3] for ResNet-50.
            widths: planes per stage (the 3x3 width of a basic block; a bottleneck outputs 4x this).
            block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1).
            stem: "cifar" (3x3 conv, no pooling; paper 4.2) or "imagenet" (7x7/2 conv + 3x3/2 max-pool; Table 1).
            shortcut: "A" zero-padded identity (no parameters) or "B" 1x1 projection where shapes change (paper 3.3);
                both work with either stem (Table 2's ImageNet ResNet-18/34 are option A). "A_avgpool" is option A
                subsampled by 2x2 average pooling, not by taking every other pixel (Huang et al. 2016's code).
            residual: False builds the plain twin: the same layers without any shortcut.
            groups, width_per_group: ResNeXt cardinality C and bottleneck width d ("32x4d"); 1, 64 is ResNet.
                Wide ResNet-50-2 is width_per_group=128 (torchvision's wide_resnet50_2).
            stride_in_1x1: put the stride on the first 1x1 of a bottleneck as the paper ("v1": ResNet-50 3.86 GMACs);
                torchvision and fb.resnet.torch stride the 3x3 ("v1.5": 4.09 GMACs).
            zero_init_residual: start each residual branch at zero (Goyal et al. 2017): the last BN's gamma, or the
                last conv of a pre-activation block; off in the paper.
            preact: BN-ReLU-conv blocks with a clean identity path and a final BN-ReLU (He et al. 2016b); the stem is
                then a bare conv (+ max-pool), projections are 1x1 convs without BN on the shared pre-activation.
            se_reduction: squeeze-and-excitation with reduction ratio r on every block (Hu et al. 2018: r = 16).
            stochastic_depth: 1 - p_L, the drop probability of the last block; block l of L drops its residual branch
                with probability l / L * stochastic_depth (Huang et al. 2016, Eq. 4: linear decay, p_L = 0.5).
            stochastic_depth_mode: "row" drops a block for each sample on its own (torchvision's default); "batch"
                drops it for the whole mini-batch, one draw per block per step (Huang et al. 2016, 3).
            dropout: dropout rate between the convs of each block (Zagoruyko & Komodakis 2016: 0.3 for WRN-28-10).
            stem_width: channels of the stem conv; None is widths[0] (WRN: 16, then stages of 16k-32k-64k).
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
        if block == "basic" and stride_in_1x1:
            raise ValueError(f"stride_in_1x1 needs block='bottleneck' (a basic block has no 1x1), got {stride_in_1x1}")
        if se_reduction is not None and se_reduction < 1:
            raise ValueError(f"se_reduction must be a positive ratio or None, got {se_reduction}")
        if not 0.0 <= stochastic_depth < 1.0 or (stochastic_depth and not residual):
            raise ValueError(f"stochastic_depth must be in [0, 1) on a residual net, got {stochastic_depth}")
        if stochastic_depth_mode not in DROP_MODES:
            raise ValueError(f"stochastic_depth_mode must be one of {DROP_MODES}, got {stochastic_depth_mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        cls = BLOCK_CLASSES[block, preact]
        self.residual, self.preact = residual, preact
        stem_width = stem_width or widths[0]

        if stem == "cifar":
            self.conv1 = conv3x3(in_channels, stem_width)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        if not preact:  # pre-activation blocks open with their own BN-ReLU
            self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        cin, self.stages, total, index = stem_width, [], sum(int(d) for d in depths), 0
        for i, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            stride, cout = (1 if i == 0 else 2), planes * cls.expansion
            layers = []
            for j in range(int(depth)):
                downsample = None
                if residual and j == 0 and (stride != 1 or cin != cout):
                    if shortcut.startswith("A"):
                        downsample = ZeroPadShortcut(cout, stride, avgpool=shortcut == "A_avgpool")
                    elif preact:
                        downsample = conv1x1(cin, cout, stride)
                    else:
                        downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
                index += 1
                kw = dict(groups=groups, width_per_group=width_per_group, stride_in_1x1=stride_in_1x1,
                          se_reduction=se_reduction, drop_prob=stochastic_depth * index / total,
                          drop_mode=stochastic_depth_mode, dropout=dropout)
                layers.append(cls(cin, planes, stride if j == 0 else 1, downsample, residual, **kw))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.stages.append(f"layer{i + 1}")
        if preact:  # the last block's output is not yet activated (He et al. 2016b, 3.1)
            self.norm = nn.BatchNorm2d(cin)
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
                if isinstance(m, Block):
                    m.zero_init_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = self.relu(self.bn1(x))
        x = self.maxpool(x)  # CIFAR: N x 16 x 32 x 32; ImageNet: N x 64 x 56 x 56
        for name in self.stages:
            x = getattr(self, name)(x)  # each stage after the first halves H and W
        if self.preact:
            x = self.relu(self.norm(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # N x num_classes
