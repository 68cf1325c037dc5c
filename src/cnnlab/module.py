"""One LightningModule for every classifier: loss, top-1/top-5 error, optimizer and per-iteration LR schedule."""

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.schedule import Schedule

STAGES = ("train", "val", "test")


def param_groups(model: nn.Module, norm_bias_decay: bool = True) -> list[dict]:
    """The trainable parameters; with norm_bias_decay=False, those with < 2 dims (BN, biases) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_bias_decay:
        return [{"params": params}]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


class ClassifierModule(L.LightningModule):
    """Trains and evaluates any image classifier with softmax cross-entropy."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Callable[..., Schedule],
        num_classes: int,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.3,
        norm_bias_decay: bool = True,
        run_config: dict | None = None,
    ) -> None:
        """
        Args:
            model: any nn.Module mapping N x C x H x W images to N x num_classes logits.
            optimizer: a torch.optim class with its settings bound (`_partial_: true`); it gets the parameters.
            schedule: a cnnlab.schedule function with its settings bound; it gets the run's step counts.
            label_smoothing: epsilon of label-smoothed cross-entropy (Szegedy et al. 2016); 0 = plain.
            aux_weight: weight of each auxiliary head's loss for models that return (logits, *aux_logits) in
                training mode (GoogLeNet: 0.3, Szegedy et al. 2015); the main head alone is scored.
            norm_bias_decay: apply weight decay to BN/bias parameters (the papers do); False exempts every
                parameter with fewer than 2 dimensions.
            run_config: the run's resolved config, stored in checkpoints so a model can be rebuilt from one file.
        """
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["model", "optimizer", "schedule"])
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.metrics = nn.ModuleDict()  # "<stage>_<name>"; a stage alone as a key would shadow nn.Module.train
        for s in STAGES:
            self.metrics[f"{s}_loss"] = MeanMetric()
            # average="micro": the fraction of all images misclassified, as the papers report (torchmetrics'
            # default "macro" averages per-class accuracies instead)
            for k, top in (("err1", 1), ("err5", min(5, num_classes))):
                self.metrics[f"{s}_{k}"] = 1 - MulticlassAccuracy(num_classes, top_k=top, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits, *aux = out if isinstance(out := self.model(x), tuple | list) else (out,)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        for a in aux:
            loss = loss + self.hparams.aux_weight * F.cross_entropy(a, y, label_smoothing=self.hparams.label_smoothing)
        with torch.no_grad():
            self.metrics[f"{stage}_loss"].update(loss.detach(), weight=len(y))
            for k in ("err1", "err5"):
                self.metrics[f"{stage}_{k}"].update(logits, y)
        for k in ("loss", "err1", "err5"):
            self.log(f"{stage}/{k}", self.metrics[f"{stage}_{k}"], on_step=False, on_epoch=True, prog_bar=k == "err1")
        if stage == "train":
            self.log("train/step_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(param_groups(self.model, self.hparams.norm_bias_decay))
        total = self.trainer.estimated_stepping_batches  # loads the training data, so the batch count is known
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        factor = self.schedule(total_steps=total, steps_per_epoch=per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
