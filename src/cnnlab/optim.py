"""Parameter groups for the optimizer: per-layer LR multipliers and the weight-decay exemption."""

from torch import nn


def param_groups(model: nn.Module, norm_bias_decay: bool = True) -> list[dict]:
    """The trainable parameters, grouped by LR multiplier (`model.lr_scales`, name -> scale, set by cnnlab.transfer)
    and, with norm_bias_decay=False, into those with < 2 dims (BN, biases), which get no weight decay."""
    scales, groups = getattr(model, "lr_scales", {}), {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((norm_bias_decay or p.ndim > 1, scales.get(name, 1.0)), []).append(p)
    return [{"params": ps, "lr_scale": scale, **({} if decay else {"weight_decay": 0.0})}
            for (decay, scale), ps in sorted(groups.items(), key=lambda g: (not g[0][0], -g[0][1]))]
