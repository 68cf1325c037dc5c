"""Parameter groups for the optimizer (per-layer LR multipliers, the weight-decay exemption) and the lr scaling."""

import torch
from lightning.pytorch.utilities import rank_zero_info
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


def scale_lrs(optimizer: torch.optim.Optimizer, global_batch: int | None, reference_batch: int | None) -> None:
    """Each group's lr x its lr_scale (transfer learning: e.g. the pretrained backbone at 0.1 x lr), and, given the
    reference batch, x global_batch / reference_batch (the linear scaling rule, Goyal et al. 2017)."""
    for g in optimizer.param_groups:
        g["lr"] *= g["lr_scale"]
    if reference_batch:
        scale = global_batch / reference_batch
        for g in optimizer.param_groups:
            g["lr"] *= scale
        rank_zero_info(f"lr x {scale:g} = {optimizer.param_groups[0]['lr']:g} for a global batch of {global_batch} "
                       f"images (the recipe's lr is per {reference_batch})")
