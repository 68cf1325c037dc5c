"""A run does what was asked or stops and says why: checks that run before any data is decoded or any step runs,
run directories that never collide, strict results.json, and the summary a finished run ends with.

Every failure names the config key and its value, so the message alone says what to change on the command line.
"""

import fcntl
import inspect
import json
import logging
import math
import os
import shutil
import socket
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union

import lightning as L
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from cnnlab.callbacks import Diverged
from cnnlab.checkpoint import remove_orphans
from cnnlab.cluster import is_global_zero

log = logging.getLogger("train")


class ConfigError(ValueError):
    """A config value that cannot run, named with its key."""


def unique_dir(path: str) -> str:
    """Claims `path` (or `path_1`, `path_2`, ...) by creating it: two runs started in the same second never share
    a directory. Registered with use_cache, as Hydra's `now`: one config resolves it once, and a sweep's jobs see
    their launcher's value (Hydra copies the resolver cache into each job's config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        claimed = path if n == 0 else f"{path}_{n}"
        try:
            Path(claimed).mkdir()
            return claimed
        except FileExistsError:
            continue
    raise RuntimeError(f"could not claim a new directory next to {path}: 10000 exist")


OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True, replace=True)


# ---- static checks: the composed config alone ----

def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether a config value can be passed where `hint` is annotated; None where a config cannot tell."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        votes = [_accepts(a, value) for a in typing.get_args(hint)]
        return True if True in votes else None if None in votes else False
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a float (PEP 484's numeric tower)
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is torch.Tensor:  # `lr: float | Tensor`: no config value is a tensor
        return False
    if origin in (list, tuple, Sequence) and isinstance(value, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1 or (origin is tuple and len(set(args)) == 1):
            votes = [_accepts(args[0], v) for v in value]
            return False if False in votes else None
    return None


def _spell(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_types(node: Any, key: str = "") -> None:
    """Each key of each `_target_` node against the target's annotated signature: `optim.lr=abc` fails here, naming
    the key, the value and the type, instead of inside torch.optim after the data is decoded."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            check_types(v, f"{key}[{i}]")
        return
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if isinstance(v, dict | list):
            check_types(v, f"{key}.{k}" if key else str(k))
    if "_target_" not in node:
        return
    try:
        target = get_object(node["_target_"])
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # an optional extra that is not installed, or unresolvable annotations: instantiate reports
        return
    for k, v in node.items():
        if k in hints and not (isinstance(v, dict) and "_target_" in v) and _accepts(hints[k], v) is False:
            raise ConfigError(f"{key}.{k}={v!r} is not a valid value: {node['_target_']} takes {k}: {_spell(hints[k])}")


def _positive(cfg: dict, key: str, strict: bool = True, allow: tuple = ()) -> None:
    group, _, name = key.partition(".")
    value = (cfg.get(group) or {}).get(name)
    if value is None or isinstance(value, bool) or value in allow or not isinstance(value, int | float):
        return
    if value < 0 or (strict and value == 0) or not math.isfinite(value):
        more = f" (or one of {allow})" if allow else ""
        raise ConfigError(f"{key}={value} must be a finite number {'> 0' if strict else '>= 0'}{more}")


# What ClassifierModule logs (cnnlab.module: <stage>/loss, err1, err5 per epoch; train/step_loss per step), and the
# prefixes of the LearningRateMonitor's and Throughput's keys: what a callback's `monitor` can name.
LOGGED = {f"{stage}/{k}" for stage in ("train", "val", "test") for k in ("loss", "err1", "err5")} | {"train/step_loss"}
LOGGED_PREFIXES = ("lr-", "perf/")


def check_schedule(cfg: dict) -> None:
    """The LR schedule's units and positions: a milestone or warmup outside the run would be accepted silently."""
    from cnnlab.schedule import UNITS, WARMUP_MODES

    sched, trainer = cfg.get("schedule") or {}, cfg.get("trainer") or {}
    unit = sched.get("unit")
    if "unit" in sched and unit not in UNITS:
        raise ConfigError(f"schedule.unit={unit!r} must be one of {UNITS}")
    if "warmup_mode" in sched and sched["warmup_mode"] not in WARMUP_MODES:
        raise ConfigError(f"schedule.warmup_mode={sched['warmup_mode']!r} must be one of {WARMUP_MODES}")
    _positive(cfg, "schedule.warmup", strict=False)
    endless = trainer.get("max_epochs") in (-1,) and trainer.get("max_steps") in (-1, None)
    if unit == "fraction" and endless:
        raise ConfigError(f"schedule.unit=fraction needs a finite run, but trainer.max_epochs="
                          f"{trainer.get('max_epochs')} and trainer.max_steps={trainer.get('max_steps')}: set one")
    positions = {f"schedule.{k}": sched[k] for k in ("warmup", "peak") if isinstance(sched.get(k), int | float)}
    milestones = sched.get("milestones")
    if isinstance(milestones, list):
        if any(not isinstance(m, int | float) or m < 0 for m in milestones):
            raise ConfigError(f"schedule.milestones={milestones} must be numbers >= 0 (in schedule.unit={unit})")
        positions.update({"schedule.milestones": max(milestones, default=0)})
    for key, value in positions.items():
        if unit == "fraction" and value > 1:
            shown = milestones if key == "schedule.milestones" else value
            raise ConfigError(f"{key}={shown} with schedule.unit=fraction: a fraction of the run is at most 1 "
                              f"(never reached: the LR would never change there)")


def check_monitors(cfg: dict) -> None:
    """Each callback's `monitor` names a metric the module logs (else it fails after a whole epoch)."""
    for name, node in (cfg.get("callbacks") or {}).items():
        monitor = (node or {}).get("monitor") if isinstance(node, dict) else None
        if monitor is not None and monitor not in LOGGED and not str(monitor).startswith(LOGGED_PREFIXES):
            raise ConfigError(f"callbacks.{name}.monitor={monitor!r} is not a logged metric: one of "
                              f"{sorted(LOGGED)} (or the lr-*, perf/* keys of lr_monitor and throughput)")


def check_data(cfg: dict) -> None:
    """Dataset sizes, before the data module sees them."""
    data = cfg.get("data") or {}
    sizes = data.get("synthetic_size") if data.get("dataset") == "synthetic" else None
    if sizes is not None and (not isinstance(sizes, list) or len(sizes) != 2
                              or any(not isinstance(n, int) or n < 1 for n in sizes)):
        raise ConfigError(f"data.synthetic_size={sizes} must be two image counts > 0: [train, test]")


def check_values(cfg: dict) -> None:
    """Values that would run but train nothing, or fail only at the first step or the sanity check."""
    _positive(cfg, "data.batch_size")
    _positive(cfg, "data.eval_batch_size")
    _positive(cfg, "optim.lr")
    _positive(cfg, "optim.weight_decay", strict=False)
    _positive(cfg, "optim.momentum", strict=False)
    _positive(cfg, "trainer.max_steps", allow=(-1,))  # 0 would "finish" untrained, writing status finished
    _positive(cfg, "trainer.max_epochs", allow=(-1,))
    _positive(cfg, "trainer.limit_train_batches")  # 0 trains nothing (and fails only after the data loads)
    check_schedule(cfg)
    check_monitors(cfg)
    check_data(cfg)
    from cnnlab.tune import check as check_tune  # tune= (imports this module)

    check_tune(cfg)
    data_classes = (cfg.get("data") or {}).get("num_classes")
    for key in ("model", "module"):
        n = (cfg.get(key) or {}).get("num_classes")
        if data_classes is not None and n is not None and n != data_classes:
            raise ConfigError(f"{key}.num_classes={n} but data.num_classes={data_classes}: the labels go up to "
                              f"{data_classes - 1}; drop the {key}.num_classes override (it follows the data)")


def check_config(cfg: DictConfig | dict) -> None:
    """The static checks: types against the targets' signatures, then values."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    check_types(container)
    check_values(container)


# ---- the machine: directories and the device ----

def _writable(key: str, path: str | Path) -> None:
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}={path} is not a writable directory: {e.strerror or e}") from e


def check_environment(cfg: DictConfig, run_dir: Path) -> None:
    """The dataset folder exists (unless it is to be downloaded); output and cache directories are writable; the
    precision runs on the device (Lightning would switch 16-mixed to bf16-mixed on a CPU with one warning)."""
    _writable("hydra.run.dir", run_dir)
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            for key in ("dirpath", "save_dir"):
                if node and node.get(key) and "://" not in str(node[key]):
                    _writable(f"{group}.{name}.{key}", node[key])
    data = cfg.get("data") or {}
    root, synthetic = data.get("root"), data.get("dataset") == "synthetic"
    if root and not synthetic and not data.get("download") and not Path(root).expanduser().exists():
        from cnnlab.data.images import DatasetNotFoundError

        raise DatasetNotFoundError(f"data.root={root} does not exist (and data.download=false): point data.root at "
                                   f"the dataset, or set data.download=true to fetch it there")  # nothing created
    if data.get("cache_dir") and data.get("root"):  # only image folders are decoded into the cache
        _writable("data.cache_dir", data.cache_dir)
    trainer = cfg.get("trainer") or {}
    precision, accelerator = str(trainer.get("precision")), trainer.get("accelerator")
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if precision in ("16", "16-mixed") and not cuda:
        raise ConfigError(f"trainer.precision={precision} needs a CUDA GPU (trainer.accelerator={accelerator}, "
                          f"CUDA available: {torch.cuda.is_available()}); on a CPU use bf16-mixed or 32-true")
    if precision.startswith("bf16") and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no bf16; "
                          f"use 16-mixed or 32-true")


# ---- resuming ----

def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """ckpt_path=last is the `latest` callback's checkpoint in this run directory, and must exist; a path must
    exist; null starts afresh, except for a requeued SLURM job, which resumes if it has something to resume."""
    ckpt = cfg.get("ckpt_path")
    latest = (cfg.get("callbacks") or {}).get("latest") or {}
    last = Path(latest.get("dirpath") or run_dir / "checkpoints") / f"{latest.get('filename') or 'last'}.ckpt"
    if ckpt == "last":
        if not last.is_file():
            held = sorted(p.name for p in last.parent.glob("*.ckpt")) if last.parent.is_dir() else []
            raise FileNotFoundError(
                f"ckpt_path=last: nothing to resume in the run directory {run_dir}: no {last}"
                + (f" (it holds {', '.join(held)}: pass one as ckpt_path=<path>)" if held else "")
                + "; set hydra.run.dir to the run to continue, or drop ckpt_path to start afresh")
        return str(last)
    if ckpt is not None:
        if "://" not in str(ckpt) and not Path(ckpt).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint file")
        return str(ckpt)
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:  # requeued: resume if present, by design
        if list(run_dir.glob("hpc_ckpt_*.ckpt")):
            log.info("requeued job: Lightning resumes from the hpc checkpoint in %s", run_dir)
        elif last.is_file():
            log.info("requeued job without an hpc checkpoint: resuming from %s", last)
            return str(last)
        else:
            log.info("requeued job with no checkpoint in %s yet: starting afresh", run_dir)
    return None


# ---- one run per directory ----

class RunDirLocked(RuntimeError):
    """Another live process is running in this run directory."""


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on <run_dir>/.lock (fcntl.flock) while a run writes to the directory; the file names the
    holder (pid and host). A second run into the directory fails at once, naming the holder. The kernel drops the
    lock when its process dies (kill -9, node reboot), so a stale .lock file never blocks. Rank 0 only: the other
    ranks of a distributed run share the directory with it."""
    if not is_global_zero():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirLocked(f"the run directory {run_dir} is in use by another run ({holder}): wait for it to "
                               f"end, or use another hydra.run.dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


# ---- a relaunch into a finished run ----

def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in _flat(val, f"{prefix}{key}.").items()} or {
            prefix[:-1]: {}}
    return {prefix[:-1]: node}


def check_relaunch(cfg: DictConfig, run_dir: Path) -> None:
    """A finished run directory is skipped only by the same config (a requeued job, a relaunched sweep): the config
    the earlier run saved (<run_dir>/config.yaml, written at its start; Hydra rewrites .hydra/ before each launch)
    must equal this one, else ConfigError names the differing keys and the directory."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        log.warning("%s has no config.yaml (a run from before it was saved): skipping it unchecked", run_dir)
        return
    from cnnlab.tune import applied, with_values

    if cfg.get("tune") and (tuned := applied(run_dir)):  # config.yaml holds the values the run's finder applied
        cfg = with_values(cfg, tuned)
    old = _flat(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in sorted({*old, *new})
             if old.get(k, "<absent>") != new.get(k, "<absent>")]
    if diffs:
        raise ConfigError(f"{run_dir} holds a finished run of another config ({len(diffs)} keys differ: "
                          + "; ".join(diffs[:10]) + (" ..." if len(diffs) > 10 else "")
                          + "): use another hydra.run.dir (hydra.sweep.dir for a sweep), or relaunch with the "
                            "same config to skip it")


# ---- the start and the end of a run ----

HYDRA_FILES = {".hydra", "train.log", ".lock"}  # what a run directory holds before its run starts


def abandon(run_dir: Path) -> None:
    """A run that failed to start leaves no directory behind: removed if it holds only what Hydra and the start
    wrote (.hydra/, train.log, empty output folders); a directory with any other file (a run to resume) stays."""
    files = [p.relative_to(run_dir).parts for p in run_dir.rglob("*") if not p.is_dir()] if run_dir.is_dir() else []
    if run_dir.is_dir() and all(parts[0] in HYDRA_FILES for parts in files):
        shutil.rmtree(run_dir, ignore_errors=True)


def start(cfg: DictConfig, run_dir: Path) -> str | None:
    """Everything before the first byte of data: checks, logging into train.log, orphan cleanup, config.yaml.
    Returns the checkpoint fit() starts from. A failed check removes the run directory it created (abandon)."""
    try:
        check_config(cfg)
        check_environment(cfg, run_dir)
        ckpt = resume_path(cfg, run_dir)
    except Exception:
        if is_global_zero():
            abandon(run_dir)
        raise
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("lightning")]:
        lightning_log = logging.getLogger(name)  # Lightning's own lines (summary, restores) into train.log, once
        lightning_log.handlers, lightning_log.propagate = [], True
    logging.captureWarnings(True)  # rank_zero_warn and torch warnings too
    if not is_global_zero():  # one log file per run: the other ranks print to stderr only
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    else:
        for path in remove_orphans(run_dir):
            log.warning("removed %s, a checkpoint left half-written by a killed process", path)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        (run_dir / "results.json").unlink(missing_ok=True)  # until this continued run finishes
    return ckpt


def _finite(x: Any) -> Any:
    """Non-finite floats as null: results.json is strict JSON (a bare NaN is not)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_results(path: Path, **fields: Any) -> None:
    path.write_text(json.dumps(_finite(fields), indent=1, allow_nan=False))


class NoTestData(RuntimeError):
    """The test stage scored no image: every test file was unreadable (results.json: "status": "no_test_data")."""


def finished_score(done: Path, cfg: DictConfig | None = None) -> float | None:
    """A relaunched sweep or requeued job meets a finished run: its score, or its divergence (or empty test) again;
    with cfg, only if the run's saved config equals cfg (check_relaunch)."""
    if cfg is not None:
        check_relaunch(cfg, done.parent)
    results = json.loads(done.read_text())
    if results.get("status") == "diverged":
        raise Diverged(f"{done} records a diverged run: {results.get('error')}")
    if results.get("status") == "no_test_data":
        raise NoTestData(f"{done} records a run whose test stage scored nothing: {results.get('error')}")
    log.info("%s exists: this run has finished, skipping it (ckpt_path=last continues it)", done)
    return results["best_score"]


@contextmanager
def recording_divergence(done: Path, data: Any = None) -> Iterator[None]:
    """A diverged run exits non-zero and says so in results.json (its last checkpoint stays the last finite one).
    A data.root that did not exist (data.download=true) and stays empty after a failure is removed again."""
    root = Path(data["root"]).expanduser() if data and data.get("root") else None
    new_root = root if root is not None and not root.exists() else None
    try:
        yield
    except Diverged as e:
        if is_global_zero():
            write_results(done, status="diverged", error=str(e), best_score=None, global_step=e.step, lr=e.lr)
        log.error("%s", e)
        raise
    except BaseException:
        if new_root is not None and new_root.is_dir() and not any(new_root.rglob("*")):
            shutil.rmtree(new_root, ignore_errors=True)  # a failed download leaves no empty folder behind
        raise


def finish(trainer: L.Trainer, done: Path, tested: list[dict]) -> float | None:
    """results.json (written last: its presence marks a finished run), then where everything went, printed last.
    A test stage that scored nothing although it was asked to (every test file unreadable) is no finished run:
    results.json says "no_test_data" and NoTestData ends the program non-zero."""
    test = tested[0] if tested else {}  # limit_test_batches=0 skips the test stage
    best_cb = next((cb for cb in trainer.checkpoint_callbacks if cb.monitor), None)
    score = None if best_cb is None or best_cb.best_model_score is None else float(best_cb.best_model_score)
    if not test and trainer.limit_test_batches != 0:
        root = (getattr(trainer.datamodule, "hparams", None) or {}).get("root")
        error = f"no readable test image in {root}: the test stage scored nothing"
        if trainer.is_global_zero:
            write_results(done, status="no_test_data", error=error, best_score=score, test={},
                          epoch=trainer.current_epoch, global_step=trainer.global_step)
        log.error("%s (run directory: %s)", error, done.parent)
        raise NoTestData(error)
    if trainer.is_global_zero:
        tags = list((getattr(trainer.lightning_module, "hparams", {}).get("run_config") or {}).get("tags") or [])
        from cnnlab.tune import summary

        write_results(done, status="finished", best_score=score, test=test, epoch=trainer.current_epoch,
                      global_step=trainer.global_step, tags=tags, **summary(done.parent))  # tune=: what it applied
        best = f"{best_cb.best_model_path} ({best_cb.monitor} {score:.4f})" if score is not None else "none saved"
        log.info("finished after %d steps. run directory: %s", trainer.global_step, done.parent)
        log.info("best checkpoint: %s", best)
        log.info("last checkpoint: %s", next((cb.last_model_path or cb.best_model_path for cb in
                                              trainer.checkpoint_callbacks if not cb.monitor), None) or "none saved")
        log.info("test: %s", "  ".join(f"{k} {v:.4f}" for k, v in test.items()) or "skipped (limit_test_batches=0)")
    return score
