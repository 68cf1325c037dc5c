"""What a fused sweep can hold, checked on the composed job configs before anything is built: the jobs differ only
in keys that leave every tensor shape alone, and the run uses only what the fused loop implements."""

from typing import Any

from cnnlab.guards import ConfigError

# Keys whose values may differ between the jobs of one fused program (prefixes end with a dot).
PER_JOB = ("seed", "data.seed", "ckpt_path", "optim.", "schedule.", "module.label_smoothing")
BASIC = "run this sweep with the basic launcher (drop hydra/launcher=fused)"
IN_MEMORY = "cnnlab.data.InMemoryDataModule"
CLASSIFIER = "cnnlab.module.ClassifierModule"
CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
# Callbacks the fused loop does itself (checkpoints, divergence, the lr monitor's column) or that change nothing of
# what a run computes or writes for the report (progress bar, summary, throughput; SLURM requeue: the launcher
# runs locally).
CALLBACKS = (CHECKPOINT, "cnnlab.callbacks.StopOnDivergence", "lightning.pytorch.callbacks.LearningRateMonitor",
             "cnnlab.callbacks.Throughput", "cnnlab.callbacks.ModelSummary", "cnnlab.callbacks.ResumeCheck",
             "cnnlab.cluster.SlurmRequeue", "lightning.pytorch.callbacks.TQDMProgressBar",
             "cnnlab.callbacks.ProgressBar")
# key -> the values the fused loop supports (the first is the default meaning)
FIXED = {
    "trainer.devices": (1, "1", "auto"),
    "trainer.num_nodes": (1,),
    "trainer.strategy": ("auto",),
    "trainer.precision": ("32-true", "32", 32),
    "trainer.accumulate_grad_batches": (1,),
    "trainer.gradient_clip_val": (None, 0, 0.0),
    "trainer.val_check_interval": (None, 1.0, 1),
    "trainer.overfit_batches": (0, 0.0),
    "trainer.fast_dev_run": (False, 0),
    "trainer.max_time": (None,),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda"),
    "module.compile": (False,),
    "module.channels_last": (False,),
    "transfer.weights": (None,),
    "augment.policy": (None,),  # policies, erasing, mixup and cutmix draw from the global generator: per process
    "augment.erasing": (0, 0.0),
    "augment.mixup": (0, 0.0),
    "augment.cutmix": (0, 0.0),
}


def flatten(node: Any, key: str = "") -> dict[str, Any]:
    """{"a.b.c": value} of a nested config; lists are values."""
    if not isinstance(node, dict) or not node:
        return {key: node}
    out = {}
    for k, v in node.items():
        out.update(flatten(v, f"{key}.{k}" if key else str(k)))
    return out


def _per_job(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in PER_JOB)


def check_same_shapes(configs: list[dict], run_dirs: list[str]) -> None:
    """Raise ConfigError naming the first key outside PER_JOB whose value differs between two jobs (paths inside
    each job's own run directory are the same path)."""
    flat = []
    for cfg, d in zip(configs, run_dirs, strict=True):
        flat.append({k: v.replace(str(d), "<run dir>") if isinstance(v, str) else v for k, v in flatten(cfg).items()})
    for j, other in enumerate(flat[1:], 1):
        for key in sorted(set(flat[0]) | set(other)):
            a, b = flat[0].get(key, "<absent>"), other.get(key, "<absent>")
            if a != b and not _per_job(key):
                raise ConfigError(f"hydra/launcher=fused: {key} differs between job 0 ({a!r}) and job {j} ({b!r}); "
                                  f"fused jobs may differ only in {', '.join(PER_JOB)} (keys that leave the tensor "
                                  f"shapes and the data alone); {BASIC}")


def check_supported(cfg: dict) -> None:
    """Raise ConfigError naming the first key whose value the fused loop does not implement."""
    flat = flatten(cfg)

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"hydra/launcher=fused: {key}={flat.get(key)!r} is not supported: {why}; {BASIC}")

    if cfg.get("tune"):
        raise ConfigError(f"hydra/launcher=fused with tune={cfg['tune'].get('finder')}: the finder runs before one "
                          f"run, not in a sweep; run it once without -m, then sweep with the value it reports")
    if (cfg.get("data") or {}).get("_target_") != IN_MEMORY:
        fail("data._target_", f"fused runs read in-memory data ({IN_MEMORY}: data=synthetic|cifar10|cifar100|mnist)")
    if (cfg.get("module") or {}).get("_target_") != CLASSIFIER:
        fail("module._target_", f"fused runs train {CLASSIFIER}")
    if not str((cfg.get("optim") or {}).get("_target_", "")).startswith("torch.optim."):
        fail("optim._target_", "fused runs step each job with a torch.optim optimizer")
    for key, allowed in FIXED.items():
        if key in flat and flat[key] not in allowed:
            fail(key, f"the fused loop supports {' / '.join(map(repr, allowed))}")
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_epochs") in (None, -1) and trainer.get("max_steps", -1) == -1:
        fail("trainer.max_epochs", "a fused run needs a finite length (trainer.max_epochs or trainer.max_steps)")
    for name, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        target = node.get("_target_")
        if target not in CALLBACKS:
            fail(f"callbacks.{name}._target_", f"the fused loop implements only {', '.join(CALLBACKS)}")
        if target == CHECKPOINT:
            for key, ok in (("every_n_train_steps", (None, 0)), ("train_time_interval", (None,)),
                            ("save_last", (None, False)), ("save_on_train_epoch_end", (None, True))):
                if node.get(key) not in ok:
                    fail(f"callbacks.{name}.{key}", "fused runs save checkpoints at epoch ends only")
