"""Warm-up that ends on a condition of training, not at a fixed step: He et al. 2016 (arXiv 1512.03385, 4.2) train
ResNet-110 at lr 0.01 "until the training error is below 80% (about 400 iterations), and then go back to 0.1".

The callback multiplies the run's lr schedule (cnnlab.schedule, a LambdaLR stepped every iteration) by `factor` until
the running training error drops below `below`, or until `max_steps` (the fixed form). The misclassified images are
counted on the device every step and read every `every_n_steps` steps (by default at the logging steps,
trainer.log_every_n_steps), so the warm-up ends at the first such step at which the error is below `below`. Its state
(the step the warm-up ended at, the window's counts) is checkpointed, so a resumed run keeps or skips the warm-up as
the uninterrupted run did.
"""

import types

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from cnnlab.metrics import log_now


class WarmupUntilError(L.Callback):
    """Scales the lr by `factor` until the running training top-1 error falls below `below` (or `max_steps`)."""

    def __init__(self, factor: float = 0.1, below: float | None = 0.8, window: int = 20,
                 max_steps: int | None = None, every_n_steps: int | None = None) -> None:
        """
        Args:
            factor: multiplies the scheduled lr while warming up (He et al.: 0.01 / 0.1 = 0.1).
            below: training top-1 error (a fraction) under which the warm-up ends, measured over the last `window`
                training batches (their images pooled, across all devices); None: only max_steps ends it.
            window: training batches the running error pools; the warm-up cannot end before the window is full.
            max_steps: the optimizer step at which the warm-up ends whatever the error (None: no cap). With
                below=None this is the fixed form: max_steps=400 is conf/schedule's warmup=400, warmup_mode=constant.
            every_n_steps: how often the running error is read on the host (a read waits for the accelerator);
                None: at the logging steps (trainer.log_every_n_steps). 1 reads every step.
        """
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        if below is not None and not 0 < below <= 1:
            raise ValueError(f"below must be a training error in (0, 1] or None, got {below}")
        if window < 1:
            raise ValueError(f"window must be >= 1 batch, got {window}")
        if below is None and max_steps is None:
            raise ValueError("below=None needs max_steps: nothing would end the warm-up")
        if max_steps is not None and max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {max_steps}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None (the logging cadence), got {every_n_steps}")
        self.factor, self.below, self.window, self.max_steps = factor, below, window, max_steps
        self.every = every_n_steps
        self.ended_at: int | None = None  # the optimizer step the warm-up ended at
        self._counts: torch.Tensor | None = None  # window x (misclassified, images), on the device: a ring
        self._seen = 0  # batches counted so far (the ring's next row is _seen % window)
        self._logits: torch.Tensor | None = None
        self._hook = None

    @property
    def warming(self) -> bool:
        return self.ended_at is None

    def _window(self) -> list[list[float]]:
        """The window's (misclassified, images) per batch, oldest first (a host read)."""
        if self._counts is None:
            return []
        rows = self._counts.tolist()
        first = self._seen % self.window if self._seen >= self.window else 0
        return (rows[first:] + rows[:first])[: min(self._seen, self.window)]

    def state_dict(self) -> dict:
        return {"ended_at": self.ended_at, "errors": self._window()}

    def load_state_dict(self, state: dict) -> None:
        self.ended_at = state["ended_at"]
        errors = state["errors"][-self.window :]
        self._counts = torch.zeros(self.window, 2, dtype=torch.float64)
        if errors:
            self._counts[: len(errors)] = torch.tensor(errors, dtype=torch.float64)
        self._seen = len(errors)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(trainer.lr_scheduler_configs) != 1 or not isinstance(
                scheduler := trainer.lr_scheduler_configs[0].scheduler, LambdaLR):
            raise TypeError("WarmupUntilError needs the run's single per-step LambdaLR schedule (cnnlab.module)")
        if not getattr(scheduler, "_warmup_wrapped", False):  # once per scheduler, also across repeated fits
            scheduler.lr_lambdas = [self._wrap(f) for f in scheduler.lr_lambdas]
            scheduler._warmup_wrapped = True
        self._scheduler = scheduler
        self._apply()
        if self.warming:  # the training logits, read at each batch's end; removed when the warm-up ends
            self._hook = getattr(pl_module, "model", pl_module).register_forward_hook(self._capture)
        if self.max_steps is not None and self.warming and trainer.global_step >= self.max_steps:
            self._end(trainer, "max_steps reached before training started")

    def _wrap(self, f: types.FunctionType):
        return lambda step: f(step) * (self.factor if self.warming else 1.0)

    def _apply(self) -> None:
        """Set the current lr from the (wrapped) schedule at its current step, as LambdaLR.step() would."""
        s = self._scheduler
        for group, base, f in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas, strict=True):
            group["lr"] = base * f(s.last_epoch)
        s._last_lr = [g["lr"] for g in s.optimizer.param_groups]

    def _capture(self, module: torch.nn.Module, args, output) -> None:
        if module.training:
            logits = output[0] if isinstance(output, tuple | list) else output
            self._logits = logits.detach()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if not self.warming:
            return
        if self._logits is not None and self.below is not None:
            y = batch[1].argmax(1) if batch[1].ndim > 1 else batch[1]  # soft targets: their top class
            if self._counts is None or self._counts.device != y.device:
                self._counts = (self._counts if self._counts is not None else torch.zeros(self.window, 2,
                                dtype=torch.float64)).to(y.device)
            self._counts[self._seen % self.window, 0] = (self._logits.argmax(1) != y).sum()
            self._counts[self._seen % self.window, 1] = len(y)
            self._seen += 1
            read = trainer._logger_connector.should_update_logs if self.every is None else (
                trainer.global_step % self.every == 0)
            if read and self._seen >= self.window:
                # summed over the ranks' windows: every device decides alike; the one host read, at this cadence
                wrong, n = trainer.strategy.reduce(self._counts.sum(0), reduce_op="sum").tolist()
                log_now(trainer, {"warmup/running_err1": wrong / n})
                if wrong / n < self.below:
                    self._end(trainer, f"running training error {100 * wrong / n:.1f}% < "
                                        f"{100 * self.below:g}% over the last {self.window} batches", pl_module)
                    return
        self._logits = None
        if self.max_steps is not None and trainer.global_step >= self.max_steps:
            self._end(trainer, f"max_steps={self.max_steps}", pl_module)

    def _end(self, trainer: L.Trainer, why: str, pl_module: L.LightningModule | None = None) -> None:
        self.ended_at, self._logits = trainer.global_step, None
        self._apply()
        self._remove_hook()
        if pl_module is not None:  # inside a training batch
            log_now(trainer, {"warmup/end_step": float(self.ended_at)})
        rank_zero_info(f"warm-up (lr x {self.factor:g}) ended at step {self.ended_at}: {why}; "
                       f"lr now {self._scheduler.optimizer.param_groups[0]['lr']:g}")

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()
