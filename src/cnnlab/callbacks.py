"""Speed in every run: training throughput, the split of step time into waiting for data vs compute, the model's
GMACs and hence the achieved FLOP rate, and a warning when the data loader is the bottleneck."""

import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def forward_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one eval-mode forward pass of x (torch.utils.flop_counter, as cnnlab.summary)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.forward(x)  # forward, not __call__: a model compiled in place (module.compile) runs eagerly here
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2


def significant(x: float, digits: int = 3) -> str:
    """x to `digits` significant figures, in plain notation: 2.3456 -> '2.35', 12345.6 -> '12346' (never '1.23e+04')."""
    if x == 0 or not math.isfinite(x):
        return f"{x:.0f}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


class Throughput(L.Callback):
    """Logs images/s, data-wait vs compute time per step, GMACs per image and TFLOP/s; warns when data is the limit."""

    def __init__(
        self,
        window: int = 50,
        warmup: int = 5,
        data_wait_warning: float = 0.2,
        peak_tflops: float | None = None,
        synchronize: bool = True,
    ) -> None:
        """
        Args:
            window: training steps per logged measurement (the metrics are means over the window).
            warmup: first steps of each fit left out (torch.compile, cuDNN autotuning, allocator warmup).
            data_wait_warning: warn (once per fit) when a window spends more than this fraction of its time
                waiting for the next batch.
            peak_tflops: the device's peak dense FLOP rate for the run's precision (H100 bf16: 989); when given,
                `perf/mfu` logs the achieved fraction of it (model FLOPs utilization, Chowdhery et al. 2022).
            synchronize: wait for the accelerator at each window's end, so images/s counts finished work (GPU
                kernels run asynchronously; the per-step split is host-side time).
        """
        if window < 1 or warmup < 0:
            raise ValueError(f"window must be >= 1 and warmup >= 0, got window={window}, warmup={warmup}")
        if not 0 < data_wait_warning <= 1:
            raise ValueError(f"data_wait_warning must be in (0, 1], got {data_wait_warning}")
        self.window, self.warmup, self.threshold = window, warmup, data_wait_warning
        self.peak, self.synchronize = peak_tflops, synchronize
        self.macs: float | None = None  # per image, forward pass
        self.summary: dict[str, float] = {}  # the last epoch's means, for benchmarks and tests
        self._last_end: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps, self._warned = 0, False
        self._win, self._epoch = self._zero(), self._zero()

    @staticmethod
    def _zero() -> dict[str, float]:
        return {"images": 0, "data": 0.0, "compute": 0.0, "steps": 0}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the gap before an epoch's first batch (validation, checkpoints) is not data wait
        self._epoch = self._zero()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # mid-epoch validation (val_check_interval < 1) is not data wait either

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.macs is None:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            self.macs = forward_macs(getattr(pl_module, "model", pl_module), x[:1])
            rank_zero_only(log.info)("%.4f GMACs per image (forward, input %s)", self.macs / 1e9, tuple(x.shape[1:]))
        self._start = time.perf_counter()
        self._wait = 0.0 if self._last_end is None else self._start - self._last_end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        self._steps += 1
        if self._steps <= self.warmup:
            self._last_end = time.perf_counter()
            return
        if self.synchronize and self._win["steps"] == self.window - 1 and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._last_end = time.perf_counter()
        x = batch[0] if isinstance(batch, list | tuple) else batch
        for acc in (self._win, self._epoch):
            acc["images"] += len(x) * trainer.world_size  # ranks step in lockstep: global images per step
            acc["data"] += self._wait
            acc["compute"] += self._last_end - self._start
            acc["steps"] += 1
        if self._win["steps"] == self.window:
            metrics = self._metrics(self._win)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            if metrics["perf/data_wait"] > self.threshold and not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"the data loader is the bottleneck: {metrics['perf/data_wait']:.0%} of training time waits for "
                    f"the next batch ({metrics['perf/data_ms']:.1f} ms of {metrics['perf/step_ms']:.1f} ms per step, "
                    f"{metrics['perf/images_per_s']:.0f} images/s). Keep the data on the device (data=cifar10 and "
                    f"the other in-memory sets), add loader workers, or use a faster loader (FFCV)."
                )
            self._win = self._zero()

    def _metrics(self, acc: dict[str, float]) -> dict[str, float]:
        total = acc["data"] + acc["compute"]
        rate = acc["images"] / total
        # training FLOPs per image ~ 3 forward passes (backward = 2 forwards), 2 FLOPs per MAC (Kaplan et al. 2020)
        tflops = 6 * (self.macs or 0.0) * rate / 1e12
        out = {"perf/images_per_s": rate, "perf/data_wait": acc["data"] / total,
               "perf/data_ms": 1e3 * acc["data"] / acc["steps"], "perf/step_ms": 1e3 * total / acc["steps"],
               "perf/gmacs": (self.macs or 0.0) / 1e9, "perf/tflops": tflops}
        if self.peak:
            out["perf/mfu"] = tflops / self.peak
        return out

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._epoch["steps"]:
            return
        self.summary = self._metrics(self._epoch)
        s = self.summary
        rank_zero_only(log.info)(
            "epoch %d: %s images/s, %.1f ms per step of which %.1f ms (%.0f%%) waiting for data; %.4f GMACs per "
            "image -> %.3f TFLOP/s achieved", trainer.current_epoch, significant(s["perf/images_per_s"]),
            s["perf/step_ms"], s["perf/data_ms"], 100 * s["perf/data_wait"], s["perf/gmacs"], s["perf/tflops"])
