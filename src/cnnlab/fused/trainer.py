"""The fused training loop: J jobs of one sweep trained as one program on one device, each writing what train.py
would have written into its own run directory (config.yaml, the loggers' metrics, Lightning-format checkpoints,
results.json), each the same training as its separate run.

Per job, as train.py and ClassifierModule do it: L.seed_everything(seed) before the model is instantiated, the data
module's batches and augmentation draws for the job's own seed (TensorBatches: a pure function of seed, epoch and
batch), its own torch.optim optimizer over `param_groups` with the lr scaling of `configure_optimizers`, its own
LambdaLR of the cnnlab.schedule factor. A job whose loss is not finite stops alone and is recorded as diverged.
"""

import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from cnnlab import guards
from cnnlab.callbacks import Diverged
from cnnlab.checkpoint import AtomicCheckpointIO, load_checkpoint
from cnnlab.data.in_memory import TensorBatches
from cnnlab.evaluation import is_multi_view, log_scores
from cnnlab.fused.checks import CHECKPOINT, check_same_shapes, check_supported
from cnnlab.fused.engine import FusedModels, RandomOpError, job_losses, misses
from cnnlab.module import ClassifierModule, param_groups

log = logging.getLogger("train")


@dataclass
class Job:
    """One run of the sweep: its resolved task config (as train.py receives it, no `hydra` node), its run directory
    and a short name for log lines (its overrides that differ from the other jobs')."""

    cfg: DictConfig
    run_dir: Path
    name: str
    result: Any = None  # the best monitored score (train.py's return value), or the exception that ended the job
    status: str = "pending"  # pending | running | diverged | finished
    lrs: dict[int, float] = field(default_factory=dict)  # step -> lr, for the divergence message


def _limit(n: int, limit: Any) -> int:
    """Lightning's limit_*_batches: an int caps the count, a float is a fraction, None all."""
    if limit is None:
        return n
    return min(n, limit) if isinstance(limit, int) and not isinstance(limit, bool) else int(n * float(limit))


def _device(cfg: DictConfig) -> torch.device:
    accelerator = cfg.trainer.get("accelerator", "auto")
    return torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")


def _progress(total: int, current: int, keys=("ready", "completed", "started", "processed")) -> dict:
    return {"total": dict.fromkeys(keys, total), "current": dict.fromkeys(keys, current)}


def _loops(epoch: int, step: int, per_epoch: int) -> dict:
    """Lightning's fit-loop state at the end of epoch `epoch` (what its ModelCheckpoint writes there): the data
    position (epoch + 1, batch 0) for TensorBatches and the step counters."""
    short = ("ready", "completed")
    return {"fit_loop": {
        "state_dict": {"combined_loader": [{"epoch": epoch + 1, "batch": 0}]},
        "epoch_loop.state_dict": {"_batches_that_stepped": step},
        "epoch_loop.batch_progress": {**_progress(step, per_epoch), "is_last_batch": True},
        "epoch_loop.scheduler_progress": _progress(step, per_epoch, short),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
            "step": _progress(step, per_epoch, short),
            "zero_grad": _progress(step, per_epoch, ("ready", "completed", "started"))}},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, short),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": {**_progress(0, 0), "is_last_batch": False},
        "epoch_progress": {"total": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1,
                                     "processed": epoch + 1},
                           "current": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1,
                                       "processed": epoch + 1}}}}


def _module_hparams(cfg: DictConfig, run_config: dict) -> dict:
    """ClassifierModule's save_hyperparameters() of this config: its arguments but model, optimizer, schedule."""
    given = OmegaConf.to_container(cfg.module, resolve=True)
    sig = inspect.signature(ClassifierModule.__init__).parameters
    hp = {k: given.get(k, p.default) for k, p in sig.items() if k not in ("self", "model", "optimizer", "schedule")}
    return {**hp, "run_config": run_config}


class _Run:
    """The state of one job inside the fused loop: model (a view of the stacks), optimizer, schedule, loggers,
    checkpoint callbacks, loader."""

    def __init__(self, job: Job, model: torch.nn.Module, total_steps: float, per_epoch: int, batch_size: int) -> None:
        cfg = job.cfg
        self.job, self.model, self.cfg = job, model, cfg
        self.run_config = OmegaConf.to_container(cfg, resolve=True)
        self.hparams = _module_hparams(cfg, self.run_config)
        mod = cfg.module
        self.optimizer = instantiate(cfg.optim)(param_groups(model, mod.get("norm_bias_decay", True)))
        for g in self.optimizer.param_groups:  # as ClassifierModule.configure_optimizers: transfer's lr scales
            g["lr"] *= g["lr_scale"]
        if mod.get("reference_batch"):  # one device, no accumulation: global batch = batch_size
            for g in self.optimizer.param_groups:
                g["lr"] *= mod.batch_size / mod.reference_batch
        factor = instantiate(cfg.schedule)(total_steps=total_steps, steps_per_epoch=per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.label_smoothing = float(mod.get("label_smoothing", 0.0))
        self.loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
        self.checkpoints = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                            if c and c.get("_target_") == CHECKPOINT]
        name = "lr-" + type(self.optimizer).__name__  # LearningRateMonitor's column names
        groups = self.optimizer.param_groups
        self.lr_keys = [name] if len(groups) == 1 else [f"{name}/pg{i + 1}" for i in range(len(groups))]
        self.lr_monitor = any(c and c.get("_target_", "").endswith("LearningRateMonitor")
                              for c in (cfg.get("callbacks") or {}).values())
        self.done = job.run_dir / "results.json"

    @property
    def best_score(self) -> float | None:
        """train.py's return value: the best score of the first checkpoint callback with a monitor."""
        cb = next((cb for cb in self.checkpoints if cb.monitor), None)
        return None if cb is None or cb.best_model_score is None else float(cb.best_model_score)

    def log(self, metrics: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step=step)

    def state(self, epoch: int, step: int, per_epoch: int, datamodule_state: dict, dm_hparams: dict) -> dict:
        """A Lightning checkpoint of this job at the end of `epoch`, as train.py's ModelCheckpoint writes it."""
        return {
            "epoch": epoch, "global_step": step, "pytorch-lightning_version": L.__version__,
            "state_dict": {f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()},
            "loops": _loops(epoch, step, per_epoch),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.checkpoints},
            "optimizer_states": [self.optimizer.state_dict()],
            "lr_schedulers": [self.scheduler.state_dict()],
            "hparams_name": "kwargs", "hyper_parameters": self.hparams,
            "datamodule_hparams_name": "kwargs", "datamodule_hyper_parameters": dm_hparams,
            "InMemoryDataModule": datamodule_state,
        }


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: TensorBatches, limit: int, label_smoothing: float, top5: int,
              stage: str) -> dict[str, float]:
    """Loss and top-1/top-5 error over `limit` batches, as ClassifierModule's validation/test steps compute them."""
    model.eval()
    loss = n = m1 = m5 = 0.0
    for b, (x, y) in enumerate(loader):
        if b >= limit:
            break
        out = log_scores(model, x) if is_multi_view(x) else model(x)
        logits = out[0] if isinstance(out, tuple | list) else out
        loss += float(F.cross_entropy(logits, y, label_smoothing=label_smoothing)) * len(y)
        m1 += float(misses(logits, y, 1))
        m5 += float(misses(logits, y, top5))
        n += len(y)
    model.train()
    return {f"{stage}/loss": loss / n, f"{stage}/err1": m1 / n, f"{stage}/err5": m5 / n} if n else {}


def _finite(model: torch.nn.Module) -> bool:
    return all(v.isfinite().all() for v in model.state_dict().values() if v.is_floating_point())


def train_fused(jobs: list[Job], progress_every: int | None = None) -> list[Any]:
    """Train the jobs as one fused program; returns per job what train.py returns (the best monitored score), or the
    exception that ended it (Diverged). A finished job (its results.json) is skipped, as train.py skips it."""
    todo = []
    for job in jobs:
        done = job.run_dir / "results.json"
        if done.exists() and job.cfg.get("ckpt_path") is None:
            try:
                job.result, job.status = guards.finished_score(done), "finished"
            except Diverged as err:
                job.result, job.status = err, "diverged"
        else:
            todo.append(job)
    if todo:
        _train(todo, progress_every)
    return [job.result for job in jobs]


def _train(jobs: list[Job], progress_every: int | None) -> None:
    containers = [OmegaConf.to_container(j.cfg, resolve=True) for j in jobs]
    check_supported(containers[0])
    check_same_shapes(containers, [str(j.run_dir) for j in jobs])
    ckpts = [guards.start(j.cfg, j.run_dir) for j in jobs]  # per job: checks, config.yaml, what to resume from
    cfg0, device = jobs[0].cfg, _device(jobs[0].cfg)

    models, data = [], None
    for job in jobs:  # as train.py: the seed, then data and model instantiated in this order
        L.seed_everything(job.cfg.seed, workers=True)
        dm = instantiate(job.cfg.data, augment=instantiate(job.cfg.augment), _convert_="all")
        data = data or dm  # the jobs share one copy of the images; only the seed of their batches differs
        models.append(instantiate(job.cfg.transfer)(instantiate(job.cfg.model), job.cfg).to(device))
    # the data module reads the device and the rank off its trainer; the fused loop is one process on one device
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device), global_rank=0, world_size=1)
    data.setup("fit")
    fused = FusedModels(models)

    t = cfg0.trainer
    bs = cfg0.data.batch_size
    train_split = data.splits["train"]
    loaders = [TensorBatches(train_split.x, train_split.y, bs, data._train_transform, shuffle=True,
                             seed=j.cfg.data.seed) for j in jobs]
    per_epoch = _limit(len(loaders[0]), t.get("limit_train_batches"))
    if per_epoch < 1:
        raise guards.ConfigError(f"trainer.limit_train_batches={t.get('limit_train_batches')} leaves no batch")
    max_steps = t.get("max_steps", -1)
    max_epochs = t.get("max_epochs")
    if max_epochs is None:  # Lightning's default length
        max_epochs = 1000 if max_steps == -1 else -1
    total = per_epoch * max(max_epochs, 1)  # Trainer.estimated_stepping_batches
    total = min(total, max_steps) if max_steps != -1 else total if max_epochs != -1 else math.inf
    runs = [_Run(job, m, total, per_epoch, bs) for job, m in zip(jobs, fused.models, strict=True)]

    epoch, start, step = 0, 0, 0
    positions = []
    for run, ckpt in zip(runs, ckpts, strict=True):
        if ckpt is None:
            positions.append((0, 0, 0))
            continue
        state = load_checkpoint(ckpt, key="ckpt_path")
        run.model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
        run.optimizer.load_state_dict(state["optimizer_states"][0])
        run.scheduler.load_state_dict(state["lr_schedulers"][0])
        for cb in run.checkpoints:
            if cb.state_key in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][cb.state_key])
        where = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
        positions.append((where["epoch"], where["batch"], state["global_step"]))
        log.info("%s: resuming from %s (epoch %d, batch %d, step %d)", run.job.name, ckpt, *positions[-1])
    if len(set(positions)) > 1:
        raise guards.ConfigError("hydra/launcher=fused: the jobs would resume at different points (epoch, batch, "
                                 "step): " + ", ".join(f"{r.job.name}: {p}" for r, p in zip(runs, positions,
                                                                                              strict=True))
                                 + "; relaunch them with the basic launcher (drop hydra/launcher=fused)")
    epoch, start, step = positions[0]

    for run in runs:
        run.job.status = "running"
        for lg in run.loggers:
            lg.log_hyperparams(run.hparams)
    dm_hparams = dict(data.hparams)
    divergence = (cfg0.get("callbacks") or {}).get("divergence")
    check_every = None if not divergence else 1 if device.type == "cpu" else divergence.get("every_n_steps", 10)
    log_every = t.get("log_every_n_steps") or 50
    progress_every = progress_every or log_every
    top5 = min(5, cfg0.data.num_classes)
    aux_weight = float(cfg0.module.get("aux_weight", 0.3))
    eps = [r.label_smoothing for r in runs]
    io = AtomicCheckpointIO()
    val_loader, test_loader = data.val_dataloader(), data.test_dataloader()
    log.info("fused: %d jobs on %s, %d steps per epoch: %s", len(runs), device, per_epoch,
             "; ".join(r.job.name for r in runs))

    J = len(runs)
    first_bad = torch.full((J,), -1, dtype=torch.long, device=device)  # first non-finite step per job, -1 none

    def diverge(j: int, bad_step: int | None, why: str | None = None) -> None:
        run = runs[j]
        lr = run.job.lrs.get(bad_step, run.optimizer.param_groups[0]["lr"])
        msg = why or (f"the training loss is not finite at step {bad_step} (epoch {epoch}, lr {lr:g}): the run "
                      f"diverged. Lower optim.lr (or add schedule.warmup); the last checkpoint holds the last finite "
                      f"weights")
        guards.write_results(run.done, status="diverged", error=msg, best_score=None, global_step=bad_step, lr=lr)
        log.error("%s: %s", run.job.name, msg)
        run.job.status, run.job.result = "diverged", Diverged(msg, step=bad_step, lr=lr)
        for lg in run.loggers:
            lg.finalize("failed")

    def check() -> None:
        for j, s in enumerate(first_bad.tolist()):
            if s >= 0 and runs[j].job.status == "running":
                diverge(j, s)

    def running() -> list[int]:
        return [j for j, r in enumerate(runs) if r.job.status == "running"]

    stopped = max_steps != -1 and step >= max_steps
    while running() and not stopped and (max_epochs == -1 or epoch < max_epochs):
        sums = torch.zeros(4, J, device=device)  # loss x n, top-1 misses, top-5 misses, n
        for ld in loaders:
            ld.load_state_dict({"epoch": epoch, "batch": start})
        its = [iter(ld) for ld in loaders]
        for _ in range(start, per_epoch):
            if max_steps != -1 and step >= max_steps:
                stopped = True
                break
            live = running()
            if not live:
                break
            batches = {j: next(its[j]) for j in live}
            xs = [batches.get(j, batches[live[0]]) for j in range(J)]  # a stopped job's slot computes a filler
            x, y = torch.stack([b[0] for b in xs]), torch.stack([b[1] for b in xs])
            should_log = (step + 1) % log_every == 0
            for j in live:
                run = runs[j]
                run.job.lrs[step] = run.optimizer.param_groups[0]["lr"]
                if should_log and run.lr_monitor:
                    run.log(dict(zip(run.lr_keys, (g["lr"] for g in run.optimizer.param_groups), strict=True)), step)
            try:
                out = fused.forward(x)
            except RandomOpError as err:
                raise guards.ConfigError(f"hydra/launcher=fused: model={cfg0.model.get('_target_')} draws random "
                                         f"numbers in training (dropout, stochastic depth: {err}); the fused jobs "
                                         f"would not draw what their separate runs draw; run this sweep with the "
                                         f"basic launcher (drop hydra/launcher=fused)") from None
            losses = job_losses(out, y, eps, aux_weight)
            fused.backward(losses.sum())
            for j in live:
                runs[j].optimizer.step()
                runs[j].scheduler.step()
            with torch.no_grad():
                logits = out[0] if isinstance(out, tuple | list) else out
                n = y.shape[1]
                sums += torch.stack([losses.detach() * n, misses(logits, y, 1), misses(logits, y, top5),
                                     torch.full_like(losses, n)])
                first_bad.copy_(torch.where(~losses.isfinite() & (first_bad < 0), step, first_bad))
            step += 1
            if check_every and step % check_every == 0:
                check()
            if should_log or step % progress_every == 0:
                values = losses.tolist()
                if should_log:
                    for j in running():
                        runs[j].log({"train/step_loss": values[j], "epoch": epoch}, step - 1)
                if step % progress_every == 0:
                    log.info("step %d/%s (epoch %d): %s", step, total, epoch,
                             " | ".join(f"{r.job.name} {'diverged' if r.job.status == 'diverged' else f'{v:.4f}'}"
                                        for r, v in zip(runs, values, strict=True)))
        start = 0
        if check_every:
            check()  # as StopOnDivergence before any checkpoint: a pending non-finite loss first
        _epoch_end(runs, epoch, step, per_epoch, sums, fused, val_loader, cfg0, top5, io, data, dm_hparams, diverge)
        epoch += 1

    for j in running():
        run = runs[j]
        limit = _limit(len(test_loader), t.get("limit_test_batches"))
        test = _evaluate(run.model, test_loader, limit, run.label_smoothing, top5, "test") if limit else {}
        if test:
            run.log({**test, "epoch": epoch}, step)
        for lg in run.loggers:
            lg.finalize("success")
        guards.write_results(run.done, status="finished", best_score=run.best_score, test=test, epoch=epoch,
                             global_step=step)
        run.job.status, run.job.result = "finished", run.best_score
        log.info("%s: finished after %d steps. run directory: %s; test: %s", run.job.name, step, run.job.run_dir,
                 "  ".join(f"{k} {v:.4f}" for k, v in test.items()) or "skipped (limit_test_batches=0)")


def _epoch_end(runs: list[_Run], epoch: int, step: int, per_epoch: int, sums: torch.Tensor, fused: FusedModels,
               val_loader: TensorBatches, cfg0: DictConfig, top5: int, io: AtomicCheckpointIO, data: Any,
               dm_hparams: dict, diverge) -> None:
    """Validation, the epoch's metrics rows and the checkpoints, per job still running."""
    t = cfg0.trainer
    loss, m1, m5, n = sums.tolist()
    val_every = t.get("check_val_every_n_epoch") or 1
    val_limit = _limit(len(val_loader), t.get("limit_val_batches"))
    for j, run in enumerate(runs):
        if run.job.status != "running":
            continue
        metrics = {}
        if (epoch + 1) % val_every == 0 and val_limit:
            metrics = _evaluate(run.model, val_loader, val_limit, run.label_smoothing, top5, "val")
            run.log({**metrics, "epoch": epoch}, step - 1)
        if n[j]:
            run.log({"train/loss": loss[j] / n[j], "train/err1": m1[j] / n[j], "train/err5": m5[j] / n[j],
                     "epoch": epoch}, step - 1)
        for lg in run.loggers:
            lg.save()
        if not _finite(run.model):
            diverge(j, step, f"not writing a checkpoint at step {step}: the weights are not finite; the run "
                             f"diverged. Lower optim.lr (or add schedule.warmup); the last checkpoint holds the last "
                             f"finite weights")
            continue
        for cb in run.checkpoints:
            _save(run, cb, epoch, step, per_epoch, metrics, io, data, dm_hparams)


def _save(run: _Run, cb: ModelCheckpoint, epoch: int, step: int, per_epoch: int, metrics: dict,
          io: AtomicCheckpointIO, data: Any, dm_hparams: dict) -> None:
    """ModelCheckpoint's decision and bookkeeping at an epoch end: every_n_epochs, then top-k by the monitor."""
    every = cb._every_n_epochs or 0
    if every < 1 or (epoch + 1) % every or cb.save_top_k == 0:
        return
    path = cb.format_checkpoint_name({"epoch": torch.tensor(epoch), "step": torch.tensor(step),
                                      **{k: torch.tensor(v) for k, v in metrics.items()}})
    if cb.monitor is None:
        cb.best_model_path = cb.last_model_path = path
    else:
        if cb.monitor not in metrics:
            return
        current = torch.tensor(metrics[cb.monitor])
        cb.current_score = current
        better = torch.lt if cb.mode == "min" else torch.gt
        k = cb.save_top_k
        if k != -1 and len(cb.best_k_models) >= k and not better(current, cb.best_k_models[cb.kth_best_model_path]):
            return
        cb.best_k_models[path] = current
        if k != -1 and len(cb.best_k_models) > k:
            worst = max(cb.best_k_models, key=lambda p: cb.best_k_models[p] * (1 if cb.mode == "min" else -1))
            cb.best_k_models.pop(worst)
            Path(worst).unlink(missing_ok=True)
        pick = min if cb.mode == "min" else max
        cb.kth_best_model_path = (max if cb.mode == "min" else min)(cb.best_k_models, key=cb.best_k_models.get)
        cb.kth_value = cb.best_k_models[cb.kth_best_model_path]
        cb.best_model_path = pick(cb.best_k_models, key=cb.best_k_models.get)
        cb.best_model_score = cb.best_k_models[cb.best_model_path]
    io.save_checkpoint(run.state(epoch, step, per_epoch, data.state_dict(), dm_hparams), path)
