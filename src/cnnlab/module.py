"""One LightningModule for every classifier: loss, top-1/top-5 error, optimizer and per-iteration LR schedule."""

import math
from collections.abc import Callable
from functools import partialmethod

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.checkpoint import check_compatible
from cnnlab.evaluation import FullyConvolutional, is_multi_view, log_scores
from cnnlab.metrics import Sums, log_now
from cnnlab.optim import param_groups, scale_lrs
from cnnlab.schedule import Schedule

STAGES = ("train", "val", "test")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; the last two capture CUDA graphs


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
        batch_size: int | None = None,
        reference_batch: int | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
        evaluation: dict | None = None,
        run_config: dict | None = None,
    ) -> None:
        """
        Args:
            model: any nn.Module mapping N x C x H x W images to N x num_classes logits.
            optimizer: a torch.optim class with its settings bound (`_partial_: true`); it gets the parameters.
            schedule: a cnnlab.schedule function with its settings bound; it gets the run's step counts.
            label_smoothing: epsilon of label-smoothed cross-entropy (Szegedy et al. 2016), the one smoothing
                setting, applied once to hard and soft (mixup/cutmix) targets alike; 0 = plain.
            aux_weight: weight of each auxiliary head's loss for models that return (logits, *aux_logits) in
                training mode (GoogLeNet: 0.3, Szegedy et al. 2015); the main head alone is scored.
            norm_bias_decay: apply weight decay to BN/bias parameters (the papers do); False exempts every
                parameter with fewer than 2 dimensions.
            batch_size: images per device per step; with reference_batch, the optimizer's lr is multiplied by
                global batch (batch_size x devices x nodes x accumulate_grad_batches) / reference_batch (the linear
                scaling rule, Goyal et al. 2017), so changing the GPU count keeps the recipe.
            reference_batch: the batch the configured lr is meant for (e.g. 256 for "0.1 per 256 images");
                None: no scaling.
            channels_last: NHWC memory format for the model and its inputs (faster convolutions with AMP on GPUs).
            compile: torch.compile the model in place (state-dict keys unchanged, so checkpoints stay portable):
                false (eager), default (also `true`), reduce-overhead or max-autotune (CUDA graphs on GPUs; the
                in-memory loader then drops the last partial training batch). The optimizer step stays eager.
            evaluation: unused (the data module cuts the test views); accepted so older checkpoints' configs load.
            run_config: the run's resolved config, stored in checkpoints so a model can be rebuilt from one file.
        """
        super().__init__()
        if reference_batch is not None and not batch_size:
            raise ValueError(f"reference_batch={reference_batch} needs the per-device batch_size, got {batch_size}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if compile not in (False, True, *COMPILE_MODES):
            raise ValueError(f"module.compile must be false, true or one of {COMPILE_MODES}, got {compile!r}")
        self.save_hyperparameters(ignore=["model", "optimizer", "schedule"])
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.metrics = {s: Sums(top=min(5, num_classes)) for s in STAGES}  # device-side sums, read when logged

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_compatible(checkpoint["state_dict"], self.state_dict(),
                         checkpoint.get("hyper_parameters", {}).get("run_config"), self.hparams.run_config)

    @property
    def compile_mode(self) -> str | None:  # None: eager; `compile: true` of older configs is "default"
        return {False: None, True: "default"}.get(self.hparams.compile, self.hparams.compile)

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        asked = ((self.hparams.run_config or {}).get("trainer") or {}).get("benchmark")  # trainer.benchmark: null
        if asked is None and self._trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()  # cuDNN autotuning
        if self.compile_mode and not getattr(self, "_compiled", False):
            self.model.compile(mode=self.compile_mode)
            self._compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        multi = stage == "test" and is_multi_view(x)  # several views per image: their softmax averaged
        if self.hparams.channels_last and not multi:
            x = x.contiguous(memory_format=torch.channels_last)
        out = log_scores(self._test_model(), x) if multi else self.model(x)
        logits, *aux = out if isinstance(out, tuple | list) else (out,)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        for a in aux:
            loss = loss + self.hparams.aux_weight * F.cross_entropy(a, y, label_smoothing=self.hparams.label_smoothing)
        self.metrics[stage].update(loss, logits, y)
        if stage == "train" and self._trainer is not None and self.trainer._logger_connector.should_update_logs:
            # the one host read of a training step, at the logging cadence: a float for the loggers and the
            # progress bar (cnnlab.callbacks.ProgressBar)
            self.bar_metrics = {"train/step_loss": loss.item()}
            log_now(self.trainer, self.bar_metrics)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """The stage's epoch means (summed over ranks), as floats: the progress bar and loggers read no tensor."""
        for k, v in self.metrics[stage].compute(self.trainer.strategy).items():
            self.log(f"{stage}/{k}", v, on_step=False, on_epoch=True, prog_bar=k == "err1", batch_size=1)
        self.metrics[stage].reset()  # also what the sanity check saw; a resumed epoch counts from the resume

    on_train_epoch_end = partialmethod(_log_epoch, "train")  # Lightning's hooks
    on_validation_epoch_end = partialmethod(_log_epoch, "val")
    on_test_epoch_end = partialmethod(_log_epoch, "test")

    def _test_model(self) -> nn.Module:
        """The model, or its fully-convolutional form when the data module's protocol is eval=dense."""
        protocol = getattr(self.trainer.datamodule, "evaluation", None) if self._trainer is not None else None
        return FullyConvolutional(self.model) if getattr(protocol, "dense", False) else self.model  # shares weights

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer(param_groups(self.model, self.hparams.norm_bias_decay))
        t, batch = self.trainer, self.hparams.batch_size
        scale_lrs(optimizer, batch and batch * t.world_size * t.accumulate_grad_batches, self.hparams.reference_batch)
        total = self.trainer.estimated_stepping_batches
        if self.trainer.train_dataloader is None:  # with max_steps and max_epochs=-1 Lightning has not loaded it yet
            self.trainer.fit_loop.setup_data()
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        factor = self.schedule(total_steps=total, steps_per_epoch=per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
