"""airbench94's training-time steps that act on the network between optimizer steps, as Lightning callbacks
(KellerJordan/cifar10-airbench, legacy/airbench94.py; Jordan 2024, arXiv 2404.00498):

- `Lookahead`: every 5 steps the weights (and BN statistics) are averaged into a running copy and the network is
  reset to that average (Zhang et al. 2019's lookahead with an EMA as the slow weights), the average's decay warming
  up as 0.95^5 (step / total)^3; the last step leaves the network at the average.
- `WhiteningInit`: the frozen patch-whitening stem of cnnlab.models.FastNet set from the first 5,000 training images
  as stored (no augmentation), and its bias trained for the first 3 epochs only.
- `DecoupledDecay`: parameter groups whose LR is multiplied (`lr_scales`, airbench's bias_scaler 64 on the BN
  shifts) get their weight decay divided by the same factor, so every parameter decays by the same fraction per step
  (airbench94: `weight_decay=wd/lr_biases`).
"""

import lightning as L
import torch
from torch import nn


def _net(pl_module: L.LightningModule) -> nn.Module:
    return getattr(pl_module, "model", pl_module)


class Lookahead(L.Callback):
    """Resets the network to an exponential average of its weights every `every_n_steps` optimizer steps."""

    def __init__(self, every_n_steps: int = 5, decay: float = 0.95**5, power: float = 3.0) -> None:
        """
        Args:
            every_n_steps: optimizer steps between resets (airbench94: 5).
            decay: the average's decay per reset at the end of the run (airbench94: 0.95^5 = 0.7738).
            power: the decay at step s of S is decay * (s / S)^power (airbench94: 3), so early resets keep little
                of the past.
        """
        if every_n_steps < 1 or not 0 <= decay < 1:
            raise ValueError(f"every_n_steps must be >= 1 and decay in [0, 1), got every_n_steps={every_n_steps}, "
                             f"decay={decay}")
        self.every, self.decay, self.power = every_n_steps, decay, power
        self.average: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = _net(pl_module).state_dict()
        if self.average is None:  # restored from a checkpoint otherwise
            self.average = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        else:
            self.average = {k: v.to(state[k].device) for k, v in self.average.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        if step % self.every and step < total:
            return
        decay = self.decay * min(1.0, step / total) ** self.power if step % self.every == 0 else 1.0
        state = _net(pl_module).state_dict()  # views of the parameters and buffers: copy_ writes into the network
        for k, avg in self.average.items():
            avg.lerp_(state[k].to(avg.dtype), 1 - decay)
            state[k].copy_(avg)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict["average"]


class WhiteningInit(L.Callback):
    """Sets a whitening stem (FastNet `stem="whiten"`) from the first `images` stored training images before the
    first step, and freezes its bias from epoch `bias_epochs` on."""

    def __init__(self, images: int = 5000, bias_epochs: int = 3) -> None:
        if images < 1 or bias_epochs < 0:
            raise ValueError(f"images must be >= 1 and bias_epochs >= 0, got images={images}, "
                             f"bias_epochs={bias_epochs}")
        self.images, self.bias_epochs = images, bias_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net, data = _net(pl_module), trainer.datamodule
        if not hasattr(net, "whiten") or not hasattr(data, "splits"):
            raise ValueError(f"WhiteningInit needs a network with a whitening stem (model=airbench94) and in-memory "
                             f"data, got {type(net).__name__} and {type(data).__name__}")
        if not net.whitened:  # restored from a checkpoint otherwise
            x = data.splits["train"].x[: self.images].to(pl_module.device)
            net.whiten(data.normalize(x))  # the images as stored: no crop, no flip (airbench94)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _net(pl_module).stem[0].bias.requires_grad_(trainer.current_epoch < self.bias_epochs)


class DecoupledDecay(L.Callback):
    """Divides each parameter group's weight decay by its LR multiplier (cnnlab.module.param_groups' `lr_scale`)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                if not g.get("decay_decoupled"):  # a resumed optimizer has it divided already
                    g["weight_decay"] /= g.get("lr_scale", 1.0)
                    g["decay_decoupled"] = True
