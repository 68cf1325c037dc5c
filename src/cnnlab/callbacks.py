"""Speed in every run: training throughput, the split of step time into waiting for data vs compute, the model's
GMACs and hence the achieved FLOP rate, and a warning when the data loader is the bottleneck. Trust: a diverged run
stops; a resume that changes the run's length says so; a model summary without a FLOPs count of 0."""

import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
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


def logging_step(trainer: L.Trainer) -> bool:
    """Whether this training step writes to the loggers (every trainer.log_every_n_steps): the steps at which the host
    may read the device; between them nothing does, so the accelerator runs ahead of the host."""
    return trainer._logger_connector.should_update_logs


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
            window: at least this many training steps per logged measurement (the metrics are means over the
                window); a window closes at a logging step (trainer.log_every_n_steps), where the host reads the device
                anyway, so the accelerator is never waited for in between.
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
        closing = self._win["steps"] + 1 >= self.window and logging_step(trainer)  # syncs only where logs are written
        if self.synchronize and closing and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._last_end = time.perf_counter()
        x = batch[0] if isinstance(batch, list | tuple) else batch
        for acc in (self._win, self._epoch):
            acc["images"] += len(x) * trainer.world_size  # ranks step in lockstep: global images per step
            acc["data"] += self._wait
            acc["compute"] += self._last_end - self._start
            acc["steps"] += 1
        if closing:
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


class Diverged(RuntimeError):
    """A non-finite training loss or weights: the run stops, keeping its last finite checkpoint."""

    def __init__(self, message: str, step: int | None = None, lr: float | None = None) -> None:
        super().__init__(message)
        self.step, self.lr = step, lr


class StopOnDivergence(L.Callback):
    """Stops the run at the first non-finite training loss, naming the step and the learning rate, and refuses to
    write a checkpoint whose weights are not finite (so last.ckpt stays the last finite one).

    Reading the loss on the host waits for the accelerator, so a device-side flag (the first non-finite step) is kept
    every step and read every `every_n_steps` steps, by default at the logging steps (trainer.log_every_n_steps),
    and before every checkpoint is written. All ranks agree on the outcome.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null (the logging cadence), got {every_n_steps}")
        self.every = every_n_steps
        self._first: torch.Tensor | None = None  # the first step with a non-finite loss, -1 while none
        self._lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.optimizers:
            self._lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step - 1  # the optimizer step this loss was computed for
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first = torch.where(bad & (self._first < 0), step, self._first)  # a Python step: no host-device copy
        if logging_step(trainer) if self.every is None else (step + 1) % self.every == 0:
            self._check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)  # the steps after the last read

    def _check(self, trainer: L.Trainer) -> None:
        first = -1 if self._first is None else int(self._first.item())
        if not trainer.strategy.reduce_boolean_decision(first >= 0, all=False):
            self._lrs = {s: lr for s, lr in self._lrs.items() if s >= trainer.global_step}
            return
        lr = self._lrs.get(first)
        where = f"at step {first}" if first >= 0 else "on another rank"
        raise Diverged(f"the training loss is not finite {where} (epoch {trainer.current_epoch}, lr {lr:g}): the run "
                       f"diverged. Lower optim.lr (or add schedule.warmup); the last checkpoint holds the last finite "
                       f"weights" if lr is not None else f"the training loss is not finite {where}: the run diverged",
                       step=first if first >= 0 else None, lr=lr)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)  # a pending non-finite loss first: its message names the step
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            raise Diverged(f"not writing a checkpoint at step {trainer.global_step} (lr {lr:g}): {len(bad)} tensors "
                           f"are not finite ({', '.join(bad[:3])} ...); the run diverged. Lower optim.lr (or add "
                           f"schedule.warmup); the last checkpoint holds the last finite weights",
                           step=trainer.global_step, lr=lr)


class ResumeCheck(L.Callback):
    """Says loudly when a resumed run's length differs from the checkpoint's: the LR schedule is a function of the
    run's total steps, so it is recomputed for the new length and the LR jumps at the resume step."""

    KEYS = ("max_epochs", "max_steps")

    def __init__(self) -> None:
        self._saved: dict | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        config = (checkpoint.get("hyper_parameters") or {}).get("run_config") or {}
        self._saved = {k: (config.get("trainer") or {}).get(k) for k in self.KEYS} if config else None
        optimizers = checkpoint.get("optimizer_states") or [{}]
        self._saved_lr = [g["lr"] for g in optimizers[0].get("param_groups", [])]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = ((getattr(pl_module, "hparams", {}) or {}).get("run_config") or {}).get("trainer") or {}
        if not self._saved or not now:
            return
        changed = [f"trainer.{k}={now.get(k)} (the checkpoint's run: {v})" for k, v in self._saved.items()
                   if now.get(k) != v]
        if not changed:
            return
        jump, same = "", False
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and self._saved_lr:
            new = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)
            jump = f"; at step {trainer.global_step} the lr goes from {self._saved_lr[0]:g} to {new:g}"
            same = math.isclose(new, self._saved_lr[0], rel_tol=1e-6)
        if same:  # milestones in steps or epochs: the lr at a step does not depend on the run's length
            rank_zero_only(log.info)("resuming with %s: the schedule gives the same lr (%g) at step %d",
                                     ", ".join(changed), self._saved_lr[0], trainer.global_step)
            return
        message = (f"RESUMING WITH A DIFFERENT RUN LENGTH: {', '.join(changed)}. The LR schedule is recomputed over "
                   f"the new length{jump}. See docs/training.md, 'Extending a finished run'.")
        rank_zero_only(log.warning)(message)  # once, to the console and train.log (not also as a Python warning)


class ModelSummary(callbacks.ModelSummary):
    """Lightning's model summary without its "Total Flops" line, which reads 0 for a module without an
    example_input_array; the Throughput callback logs the measured GMACs per image at the first step."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        if not total_flops:
            summary_data = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)
        if not total_flops:
            table = table.rsplit("\n", 1)[0]
        rank_zero_only(log.info)("\n" + table)


class ProgressBar(callbacks.TQDMProgressBar):
    """Lightning's progress bar, plus the module's `bar_metrics`: floats the module sets at the logging cadence
    (train/step_loss), so redrawing the bar reads nothing from the device."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "bar_metrics", {})}


class EMA(callbacks.EMAWeightAveraging):
    """An exponential moving average of the weights (and buffers), evaluated and checkpointed in their place
    (Lightning's EMAWeightAveraging), updated on the foreach path with no read of the device: every
    `update_every_n_steps` optimizer steps from `update_starting_at_step`, ema = decay x ema + (1 - decay) x weights.

    The same arithmetic as Lightning's per-tensor update (three roundings: decay x ema, (1 - decay) x w, their sum),
    as a few multi-tensor kernels instead of three per tensor, and without its per-update `n_averaged == 0` read.
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, use_buffers: bool = True) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        super().__init__(use_buffers=use_buffers, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)
        self.decay, self._updates = decay, 0  # updates so far, counted on the host

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # Lightning's, without its warning about configure_model (ours only compiles in place)
            pl_module.configure_model()
            self._average_model = torch.optim.swa_utils.AveragedModel(pl_module, use_buffers=self._use_buffers)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._update(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._average_model.to(pl_module.device)  # made in setup, before the model moved to its device
        self._updates = int(self._average_model.n_averaged)  # 0, or a resumed run's count: the one read of it

    def _tensors(self, module: torch.nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*module.parameters(), *(module.buffers() if self._use_buffers else ()))]

    @torch.no_grad()
    def _update(self, pl_module: L.LightningModule) -> None:
        average = self._average_model
        both = list(zip(self._tensors(average.module), self._tensors(pl_module), strict=True))
        if self._updates == 0:
            torch._foreach_copy_([a for a, _ in both], [w for _, w in both])
        else:
            ema = [a for a, _ in both if a.is_floating_point()]
            weights = [w for a, w in both if a.is_floating_point()]
            torch._foreach_mul_(ema, self.decay)
            torch._foreach_add_(ema, torch._foreach_mul(weights, 1 - self.decay))
            for a, w in both:  # integer buffers (BN's num_batches_tracked) as AveragedModel: rounded down
                if not a.is_floating_point():
                    a.copy_(self.decay * a + (1 - self.decay) * w)
        if not self._use_buffers:
            for a, w in zip(average.module.buffers(), pl_module.buffers(), strict=True):
                a.copy_(w)
        average.n_averaged += 1  # on the device: Lightning's checkpoint format keeps it
        self._updates += 1
