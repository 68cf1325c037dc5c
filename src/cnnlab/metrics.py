"""Loss and top-1/top-5 error kept as device-side sums, read on the host only when they are logged.

A step adds one row (loss x n, top-1 misses, top-k misses, n) to a running sum on the device: no `.item()`, no
host-device copy, no data-dependent shape, so a training step never waits for the accelerator (torchmetrics'
MeanMetric and MulticlassAccuracy each read the device per update). Errors are micro-averaged, the fraction of all
images misclassified, as the papers report them.
"""

import lightning as L
import torch
from lightning.pytorch.strategies import Strategy

KEYS = ("loss", "err1", "err5")


def step_row(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, top: int) -> torch.Tensor:
    """(loss x n, top-1 misses, top-`top` misses, n) of one batch, float32 on the batch's device; soft targets (mixup,
    cutmix) are scored by their top class."""
    target = y.argmax(1) if y.ndim > 1 else y
    hits = logits.topk(top, dim=1).indices == target[:, None]  # N x top; column 0 is the top-1 guess
    n = torch.full((), len(target), dtype=torch.float32, device=logits.device)
    return torch.stack([loss.detach().float() * n, (~hits[:, 0]).sum().float(), (~hits.any(1)).sum().float(), n])


class Sums:
    """Running sums of one stage's step rows; `compute` is the one host read (after a sum over ranks)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.total: torch.Tensor | None = None

    def reset(self) -> None:
        self.total = None

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            row = step_row(loss, logits, y, self.top)
            self.total = row if self.total is None else self.total.add_(row)

    def compute(self, strategy: Strategy | None = None) -> dict[str, float]:
        """{'loss': mean loss, 'err1': top-1 error, 'err5': top-5 error} over every image seen since the reset (and
        every rank, given the strategy); empty when no batch was seen."""
        if self.total is None:
            return {}
        total = strategy.reduce(self.total.clone(), reduce_op="sum") if strategy is not None else self.total
        loss_n, miss1, miss5, n = total.double().tolist()
        return {"loss": loss_n / n, "err1": miss1 / n, "err5": miss5 / n}


def log_now(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Floats to every logger at the current training step, as Lightning would write them. LightningModule.log would
    store each value as a device tensor that Lightning converts again after every later step of the epoch: a
    host-device sync per step on an accelerator."""
    for logger in trainer.loggers:
        logger.log_metrics({**metrics, "epoch": trainer.current_epoch},
                           step=trainer.fit_loop.epoch_loop._batches_that_stepped)
