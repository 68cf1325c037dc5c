"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition", Fig. 2)."""

from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(nn.Sequential):
    """C1-S2-C3-S4-C5-F6-output on a 32x32 input (MNIST's 28x28 digits are zero-padded to 32x32 by the data)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, activation: str = "tanh", pool: str = "avg"):
        """
        Args:
            activation: "tanh" as the paper (its scaled tanh, 1.7159 tanh(2x/3), is approximated by plain tanh)
                or "relu".
            pool: "avg" (the paper's subsampling, without its trainable coefficient) or "max".
        """
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
        act, pooling = ACTIVATIONS[activation], POOLS[pool]
        super().__init__(
            nn.Conv2d(in_channels, 6, 5), act(), pooling(2),  # C1, S2: N x 6 x 14 x 14
            # C3 connects every S2 map to every C3 map (the paper's sparse Table I is dropped, as everyone does).
            nn.Conv2d(6, 16, 5), act(), pooling(2),  # C3, S4: N x 16 x 5 x 5
            nn.Conv2d(16, 120, 5), act(), nn.Flatten(),  # C5: N x 120
            nn.Linear(120, 84), act(),  # F6
            # Output: a linear layer with softmax cross-entropy in place of the paper's Euclidean RBF units.
            nn.Linear(84, num_classes),
        )
