"""Network in Network (Lin et al. 2014, arXiv 1312.4400, Fig. 2 and 4.2): the CIFAR-10 model of the authors'
released Caffe definition: three mlpconv layers, each a spatial conv followed by two 1x1 convs ("cccp" layers)."""

from torch import nn


def mlpconv(cin: int, widths: tuple[int, int, int], kernel_size: int) -> list[nn.Module]:
    """A k x k conv and two 1x1 convs, each followed by ReLU: the paper's "micro network" (3.1, Eq. 2)."""
    layers: list[nn.Module] = []
    for i, cout in enumerate(widths):
        k = kernel_size if i == 0 else 1
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True)]
        cin = cout
    return layers


class NIN(nn.Sequential):
    """mlpconv 192-160-96 (5x5), 192-192-192 (5x5), 192-192-num_classes (3x3), then global average pooling."""

    def __init__(self, dropout: float = 0.5, num_classes: int = 10, in_channels: int = 3) -> None:
        """
        Args:
            dropout: after the first two mlpconv layers (paper 3.2 and 4.2).
        """
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # 3x3/2 pools with Caffe's ceil rounding: 32 -> 16 -> 8 (the authors' cifar10 definition).
        super().__init__(
            *mlpconv(in_channels, (192, 160, 96), 5), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout),  # 16x16
            *mlpconv(96, (192, 192, 192), 5), nn.AvgPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout),  # 8 x 8
            # The last 1x1 conv outputs one confidence map per class, kept through a ReLU as the authors' model does.
            *mlpconv(192, (192, 192, num_classes), 3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # global average pooling (paper 3.2): N x num_classes
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init in place of the hand-tuned Gaussian init of the authors' Caffe model.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
