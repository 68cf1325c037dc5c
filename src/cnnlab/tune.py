"""tune=lr_find | tune=batch_size: Lightning's LR range test and batch-size finder (lightning.pytorch.tuner.Tuner), run
before the run on its own model, data and trainer settings, then applied to the config or reported alone.

Lightning does the search and restores the weights it trained. What is ours: the refusals (no sweep, one device, no
resume, no fast_dev_run), turning the finder's result into config keys (the LR finder's suggestion is the lr every
parameter group ran at, after the linear scaling rule; optim.lr is per module.reference_batch images), the record
(<run dir>/tune.json, lr_find.png) and the choice between training with the result (tune.apply=true: written into
config.yaml, the checkpoints' run_config and results.json) and stopping after the report (results.json "status":
"tuned"). The run that follows is built afresh from the seed: it starts from the weights a run given those values on
the command line starts from.
"""

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf

from cnnlab.guards import ConfigError, write_results
from cnnlab.schedule import constant

log = logging.getLogger("train")

FINDERS = ("lr_find", "batch_size")
LR_MODES = ("exponential", "linear")
BATCH_MODES = ("power", "binsearch")
MIN_LR_STEPS = 13  # Lightning's suggestion skips the first 10 losses and the last, and needs 2 to take a gradient
RECORD, FIGURE = "tune.json", "lr_find.png"
SINGLE_DEVICE = (None, "auto", "single_device")


# ---- before any data is decoded ----

def _number(tune: dict, key: str, low: float, strict: bool = True, integer: bool = False) -> None:
    v = tune.get(key)
    kind = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or v < low or (strict and v == low):
        raise ConfigError(f"tune.{key}={v!r} must be {'an integer' if integer else 'a number'} "
                          f"{'>' if strict else '>='} {low}")


def check(cfg: dict) -> None:
    """The tune settings and what the finders cannot do, named: a sweep, several devices, a resume, fast_dev_run."""
    tune = cfg.get("tune")
    if not tune:
        return
    finder = tune.get("finder")
    if finder not in FINDERS:
        raise ConfigError(f"tune.finder={finder!r} must be one of {FINDERS} (tune=lr_find or tune=batch_size)")
    name = f"tune={finder}"
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default="")).rsplit(".", 1)[-1]
        raise ConfigError(f"{name} with -m (a sweep, launcher {launcher}): the finder runs before one run, and "
                          f"tune.apply=true would overwrite the swept values in every job; run it once without -m, "
                          f"then sweep with the value it reports")
    trainer = cfg.get("trainer") or {}
    devices, nodes, strategy = trainer.get("devices"), trainer.get("num_nodes"), trainer.get("strategy")
    if not (devices in (1, "1", "auto", None) or (isinstance(devices, list) and len(devices) == 1)):
        raise ConfigError(f"{name} with trainer.devices={devices!r}: Lightning's tuner runs on one device (it does "
                          f"not support distributed strategies); tune with trainer.devices=1, then train on many")
    if nodes not in (1, None):
        raise ConfigError(f"{name} with trainer.num_nodes={nodes!r}: Lightning's tuner runs on one device")
    if strategy not in SINGLE_DEVICE:
        raise ConfigError(f"{name} with trainer.strategy={strategy!r}: Lightning's tuner does not support "
                          f"distributed strategies; tune with trainer.strategy=auto trainer.devices=1")
    if trainer.get("fast_dev_run"):
        raise ConfigError(f"{name} with trainer.fast_dev_run={trainer['fast_dev_run']!r} (debug=default): "
                          f"Lightning skips its finders under fast_dev_run; drop it, or use debug=limit")
    if cfg.get("ckpt_path") is not None:
        raise ConfigError(f"{name} with ckpt_path={cfg['ckpt_path']!r}: a resumed run keeps the lr and batch it "
                          f"started with; drop ckpt_path to tune a new run, or drop tune= to resume")
    if not isinstance(tune.get("apply"), bool):
        raise ConfigError(f"tune.apply={tune.get('apply')!r} must be true (train with the result) or false "
                          f"(report it and stop)")
    if finder == "lr_find":
        if tune.get("mode") not in LR_MODES:
            raise ConfigError(f"tune.mode={tune.get('mode')!r} must be one of {LR_MODES} for tune=lr_find")
        _number(tune, "min_lr", 0)
        _number(tune, "max_lr", 0)
        if tune["max_lr"] <= tune["min_lr"]:
            raise ConfigError(f"tune.max_lr={tune['max_lr']} must be above tune.min_lr={tune['min_lr']}")
        _number(tune, "num_training", MIN_LR_STEPS, strict=False, integer=True)
        if tune.get("early_stop_threshold") is not None:
            _number(tune, "early_stop_threshold", 1)
    else:
        if tune.get("mode") not in BATCH_MODES:
            raise ConfigError(f"tune.mode={tune.get('mode')!r} must be one of {BATCH_MODES} for tune=batch_size")
        for key in ("init_val", "max_trials", "steps_per_trial"):
            _number(tune, key, 1, strict=False, integer=True)
        _number(tune, "max_val", tune["init_val"], strict=False, integer=True)
        margin = tune.get("margin")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
            raise ConfigError(f"tune.margin={margin!r} must be in [0, 1) (a fraction taken off a binsearch result)")


# ---- the record of a tuned run ----

def applied(run_dir: Path) -> dict[str, Any]:
    """The config keys a tuned run in run_dir trained with ({} if none): what its tune.json says it applied."""
    path = run_dir / RECORD
    return json.loads(path.read_text()).get("applied") or {} if path.is_file() else {}


def summary(run_dir: Path) -> dict[str, Any]:
    """results.json's `tune` entry for a run in run_dir: the finder, its result as config keys, what was applied."""
    path = run_dir / RECORD
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {"tune": {k: record[k] for k in ("finder", "found", "applied")}}


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of cfg with the dotted keys set (interpolations that read them, module.reference_batch, follow)."""
    cfg = copy.deepcopy(cfg)
    _update(cfg, values)
    return cfg


def _update(cfg: DictConfig, values: dict[str, Any]) -> None:
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)


def _plain(values: list) -> list:
    return [float(v) if math.isfinite(float(v)) else None for v in values]  # strict JSON: no NaN


# ---- the finders ----

def _trainer(cfg: DictConfig, steps: int) -> L.Trainer:
    """The run's trainer settings (device, precision, accumulation, clipping, limits) without its callbacks, loggers
    and checkpoints; max_steps is the finder's own count (the module's LR schedule is built over it)."""
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, max_epochs=-1, max_steps=steps)
    if trainer.world_size > 1:
        raise ConfigError(f"tune={cfg.tune.finder} with trainer.devices={cfg.trainer.devices!r}, "
                          f"{trainer.world_size} processes here: Lightning's tuner runs on one device")
    return trainer


def lr_scale(module: L.LightningModule, trainer: L.Trainer) -> float:
    """The factor configure_optimizers puts on optim.lr: global batch / module.reference_batch (one device)."""
    hp = module.hparams
    return hp.batch_size * trainer.accumulate_grad_batches / hp.reference_batch if hp.get("reference_batch") else 1.0


def unbiased(losses: list[float | None], beta: float = 0.98) -> list[float | None]:
    """Lightning's smoothed losses with the bias correction it means: its _LRCallback divides the running mean after
    the i-th step (from 0) by 1 - beta**(i + 2), the step being counted already (global_step), so the first point is
    half the first loss and the curve rises for some 50 steps whatever the lr does (Lightning issue #14167)."""
    return [v if v is None else v * (1 - beta ** (i + 2)) / (1 - beta ** (i + 1)) for i, v in enumerate(losses)]


def suggest(lrs: list[float], losses: list[float | None], mode: str) -> int | None:
    """The index of Lightning's suggestion (the steepest fall of the smoothed loss, the first 10 points and the last
    left out), the slope taken against log10(lr) in exponential mode. Deviation: Lightning 2.6 takes it against lr
    also there (issue #21141, PR #21171), which on log-spaced points picks the first dip at the smallest lrs."""
    idx = [i for i in range(10, len(losses) - 1) if losses[i] is not None]
    if len(idx) < 2:
        return None
    x = torch.tensor([math.log10(lrs[i]) if mode == "exponential" else lrs[i] for i in idx], dtype=torch.float64)
    y = torch.tensor([losses[i] for i in idx], dtype=torch.float64)
    return idx[int(torch.gradient(y, spacing=[x])[0].argmin())]


def find_lr(cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule, run_dir: Path) -> dict:
    """Lightning's range test: tune.num_training steps from tune.min_lr to tune.max_lr, every parameter group at
    the same lr (transfer's lr_scales and the LR schedule are set aside); the suggestion is the steepest fall of the
    smoothed loss (unbiased, suggest). optim.lr = suggestion / lr_scale: the run's first group trains at it."""
    t = cfg.tune
    trainer = _trainer(cfg, t.num_training)
    finder = Tuner(trainer).lr_find(module, datamodule=data, min_lr=t.min_lr, max_lr=t.max_lr,
                                    num_training=t.num_training, mode=t.mode,
                                    early_stop_threshold=t.early_stop_threshold, update_attr=False)
    lrs, losses = _plain(finder.results["lr"]), unbiased(_plain(finder.results["loss"]))
    best = suggest(lrs, losses, t.mode)
    suggestion, lightning = None if best is None else lrs[best], finder.suggestion()
    scale = lr_scale(module, trainer)
    if suggestion is None:
        found = {}
        log.warning("tune=lr_find: no suggestion from %d steps (it needs %d finite losses; the loss rose past %s x "
                    "its best early): raise tune.num_training, or lower tune.max_lr", len(lrs), MIN_LR_STEPS,
                    t.early_stop_threshold)
    else:
        found = {"optim.lr": suggestion / scale}
        log.info("tune=lr_find: suggested lr %.3g (the steepest fall of the loss over %d steps, %.2g to %.2g; "
                 "Lightning's own: %.3g) = optim.lr %.3g%s; configured optim.lr %s", suggestion, len(lrs), lrs[0],
                 lrs[-1], lightning, found["optim.lr"], f" x lr scale {scale:g} (global batch / "
                 f"module.reference_batch)" if scale != 1 else "", cfg.optim.lr)
    if any(s != 1 for s in getattr(module.model, "lr_scales", {}).values()):
        log.info("tune=lr_find: the range test ran every parameter group at one lr; the run scales the groups by "
                 "their lr_scales (transfer) again")
    _figure(lrs, losses, best, t.mode, run_dir / FIGURE)
    settings = {k: t[k] for k in ("min_lr", "max_lr", "num_training", "mode", "early_stop_threshold")}
    return {"finder": "lr_find", "settings": settings, "suggestion": suggestion, "lightning_suggestion": lightning,
            "lr_scale": scale, "lrs": lrs, "losses": losses, "found": found}


def _figure(lrs: list[float], losses: list[float | None], best: int | None, mode: str, path: Path) -> None:
    """The loss against the lr, the suggestion marked; without matplotlib (the report extra), one line."""
    try:
        import matplotlib
    except ImportError:
        log.info("tune=lr_find: %s not drawn: matplotlib is not installed (pip install 'cnnlab[report]')", path.name)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, [math.nan if v is None else v for v in losses])
    if best is not None:
        ax.plot(lrs[best], losses[best], "o", color="red", label=f"suggestion {lrs[best]:.3g}")
        ax.legend()
    ax.set(xscale="log" if mode == "exponential" else "linear", xlabel="learning rate",
           ylabel="training loss (smoothed, beta 0.98)", title=f"LR range test, {len(lrs)} steps")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    log.info("tune=lr_find: loss vs lr in %s", path)


def find_batch_size(cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> dict:
    """Lightning's batch-size finder on the data module's batch_size (its hparams, which its loaders read): doubles
    from tune.init_val for tune.max_trials trials of tune.steps_per_trial steps, until out of memory, the training
    set's size or tune.max_val (binsearch: then bisects, less tune.margin). No OOM stops it on a CPU."""
    t, before = cfg.tune, data.hparams.batch_size
    trainer = _trainer(cfg, t.steps_per_trial)
    found = Tuner(trainer).scale_batch_size(module, datamodule=data, mode=t.mode, steps_per_trial=t.steps_per_trial,
                                            init_val=t.init_val, max_trials=t.max_trials, margin=t.margin,
                                            max_val=t.max_val)
    images = sized_len(getattr(trainer.train_dataloader, "dataset", None))
    if images is not None and found > images:  # Lightning stops at the first batch >= the set, and reports it
        log.info("tune=batch_size: %d is more than the %d training images: capped at %d", found, images, images)
        found = images
    data.hparams.batch_size = before  # the tuner set it; tune() decides
    if t.mode == "power" and found == t.init_val * 2 ** (t.max_trials - 1) < min(t.max_val, images or t.max_val):
        log.info("tune=batch_size: tune.max_trials=%d reached at %d: no larger batch was tried", t.max_trials, found)
    settings = {k: t[k] for k in ("mode", "init_val", "max_trials", "steps_per_trial", "max_val", "margin")}
    return {"finder": "batch_size", "settings": settings, "batch_size": found, "found": {"data.batch_size": found},
            "training_images": images}


def _batch_line(cfg: DictConfig, new: DictConfig) -> str:
    """What the lr does when data.batch_size changes (the linear scaling rule, if module.reference_batch is set)."""
    ref, old_ref = OmegaConf.select(new, "module.reference_batch"), OmegaConf.select(cfg, "module.reference_batch")
    b0, b1, lr = cfg.data.batch_size, new.data.batch_size, new.optim.lr
    if not ref:
        return f"module.reference_batch=null: the lr stays optim.lr={lr:g} (no linear scaling)"
    if ref != old_ref:  # module.reference_batch interpolates data.batch_size (the default): the lr is per batch
        return (f"module.reference_batch follows data.batch_size ({ref}): the lr stays optim.lr={lr:g} per batch, "
                f"as a run given data.batch_size={b1} would")
    return (f"the lr follows the batch (linear scaling rule, module.reference_batch={ref}): optim.lr {lr:g} x "
            f"{b1}/{ref} = {lr * b1 / ref:g} (was x {b0}/{ref} = {lr * b0 / ref:g})")


# ---- the run ----

def tune(cfg: DictConfig, run_dir: Path, data: L.LightningDataModule,
         build: Callable[[DictConfig], L.LightningModule], resuming: bool = False) -> bool:
    """Runs cfg.tune's finder on a module from `build`; returns True when the run goes on to train (tune.apply=true,
    cfg updated in place), False after the report alone (results.json "status": "tuned"). A requeued job that
    resumes applies its tune.json again instead of searching."""
    if resuming:
        values = applied(run_dir)
        if not values:
            raise ConfigError(f"tune={cfg.tune.finder}: resuming in {run_dir}, which holds no {RECORD} with the "
                              f"values its finder chose; drop tune= to resume")
        _set(cfg, values, run_dir)
        log.info("tune=%s: resuming with the values found before (%s): %s", cfg.tune.finder, RECORD, values)
        return True
    module = build(cfg)
    module.schedule = constant  # the finders set the LR schedule aside; one over the run would not fit their steps
    record = find_lr(cfg, module, data, run_dir) if cfg.tune.finder == "lr_find" else find_batch_size(cfg, module,
                                                                                                       data)
    apply = bool(cfg.tune.apply)
    record["applied"] = record["found"] if apply else {}
    (run_dir / RECORD).write_text(json.dumps(record, indent=1, allow_nan=False))
    if apply and not record["found"]:
        raise ConfigError(f"tune=lr_find found no lr to apply (see {run_dir / RECORD}): raise tune.num_training="
                          f"{cfg.tune.num_training} or lower tune.max_lr={cfg.tune.max_lr}, or set tune.apply=false")
    if cfg.tune.finder == "batch_size":
        then = f"training with it: {_batch_line(cfg, with_values(cfg, record['found']))}" if apply else "not applied"
        log.info("tune=batch_size: the largest batch that ran: %d images (data.batch_size=%d); %s",
                 record["batch_size"], cfg.data.batch_size, then)
    if not apply:
        tags = list(cfg.get("tags") or [])
        write_results(run_dir / "results.json", status="tuned", best_score=None, test={}, epoch=0, global_step=0,
                      tags=tags, **summary(run_dir))
        log.info("tune=%s: reported in %s, no training (tune.apply=false). run directory: %s", cfg.tune.finder,
                 RECORD, run_dir)
        return False
    _set(cfg, record["applied"], run_dir)
    if isinstance(data.hparams.get("batch_size"), int):
        data.hparams.batch_size = cfg.data.batch_size
    L.seed_everything(cfg.seed, workers=True)  # the run's weights are a fresh draw from the seed, as without tune
    return True


def _set(cfg: DictConfig, values: dict[str, Any], run_dir: Path) -> None:
    _update(cfg, values)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)  # the values the run trains with
