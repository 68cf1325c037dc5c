"""Checkpoints that survive crashes, and a readable error when a checkpoint does not fit the model being trained.

A checkpoint is data, never code: every file is read with `torch.load(weights_only=True)` (tensors and plain
containers only), and the run config stored inside one is rebuilt only if each of its `_target_`s is one of cnnlab's
own classes or the torch/Lightning classes its configs use (TARGET_MODULES), so a shared file cannot make
`hydra.utils.instantiate` call `builtins.open`, `os.system` or `numpy.load(allow_pickle=True)`. The groups the tools
rebuild are narrower still (GROUP_MODULES): a stored model config names cnnlab.models classes only, never a Lightning
logger or profiler that takes a path. A stored config holds plain values only: no `defaults`, `hydra` or `_args_` key
(Hydra's composition, logging and launcher settings, positional arguments), no interpolation.
"""

import inspect
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

# A `_target_` path must start with one of these (checked before anything is imported) ...
TARGET_PREFIXES = ("cnnlab.", "torch.optim.", "lightning.pytorch.")
# ... and resolve to a class defined in one of these modules (or a submodule); the config groups' targets
# (tests/test_checkpoint_safety.py checks every conf/ file against this list).
TARGET_MODULES = ("cnnlab.models", "cnnlab.data", "cnnlab.evaluation", "cnnlab.module", "cnnlab.transfer",
                  "cnnlab.callbacks", "cnnlab.warmup", "cnnlab.lookahead", "cnnlab.checkpoint", "cnnlab.cluster",
                  "torch.optim",
                  "lightning.pytorch.trainer", "lightning.pytorch.callbacks", "lightning.pytorch.loggers",
                  "lightning.pytorch.plugins", "lightning.pytorch.strategies", "lightning.pytorch.accelerators",
                  "lightning.pytorch.profilers", "lightning.fabric.plugins", "lightning.fabric.accelerators")
# Plain functions are targets only here: the LR schedules (`_partial_`) and the W&B logger factory.
FUNCTION_MODULES = ("cnnlab.schedule", "cnnlab.loggers")
# The groups the tools rebuild from a stored run config (cnnlab.cli) may only name classes of these modules: nothing
# in them writes files or takes a path to write to.
GROUP_MODULES = {"model": ("cnnlab.models",), "module": ("cnnlab.module",), "augment": ("cnnlab.data",),
                 "data": ("cnnlab.data", "cnnlab.evaluation"), "eval": ("cnnlab.evaluation",)}
# Keys a stored config never holds: Hydra's composition (defaults), its own settings (hydra: run.dir, job_logging,
# callbacks, env_set) and instantiate's positional arguments. Saved run configs are composed and resolved.
FORBIDDEN_KEYS = ("defaults", "hydra", "_args_")
# Your own packages, trusted like cnnlab (their classes and functions): CNNLAB_TRUSTED_TARGETS=mylab,otherlab.callbacks
TRUSTED_ENV = "CNNLAB_TRUSTED_TARGETS"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, then rename over it.

    Lightning writes checkpoints in place, so a job killed mid-write (preemption, OOM killer, kill -9) leaves a
    truncated last.ckpt and the run cannot resume; os.replace is atomic on POSIX file systems, so readers see the old
    file or the new one, never half of one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage (s3://, gs://): fsspec's own semantics apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Lightning's resume (trainer.fit(ckpt_path=...)): tensors and plain data only, its run config checked."""
        if "://" in str(path):  # remote storage: fsspec reads it, still weights-only
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, key="ckpt_path", map_location=map_location or "cpu")


def remove_orphans(run_dir: Path) -> list[Path]:
    """Deletes the temporary files of AtomicCheckpointIO writers that no longer run (killed mid-write, kill -9)
    under run_dir; the checkpoints they were replacing are intact. Returns the deleted paths."""
    removed = []
    for tmp in Path(run_dir).rglob(".*.ckpt.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # pids are reused (a restarted container): this process has written nothing yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(run_config: dict | None) -> str:
    if not run_config:
        return "an unknown configuration"
    model, data = run_config.get("model", {}), run_config.get("data", {})
    name = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k not in ("_target_", "pretrained"))
    return f"{name}({args}) on {data.get('dataset', data.get('root', '?'))} with {data.get('num_classes', '?')} classes"


def check_compatible(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                     saved_config: dict | None = None, current_config: dict | None = None, show: int = 5) -> None:
    """Raise ValueError naming the missing/unexpected keys and the shape differences between two state dicts."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
              for k, v in current.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    lines = [f"the checkpoint does not fit this model: it holds {_describe(saved_config)}; "
             f"this run builds {_describe(current_config)}"]
    for what, items in (("missing from the checkpoint", missing), ("not in the model", unexpected),
                        ("different shapes", shapes)):
        if items:
            more = f" ... and {len(items) - show} more" if len(items) > show else ""
            lines.append(f"  {len(items)} {what}: " + ", ".join(items[:show]) + more)
    raise ValueError("\n".join(lines))


def load_checkpoint(path: str | Path, key: str = "ckpt", map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file's contents, read weights-only; its stored run config (if any) passes check_targets.

    `key` names the setting the path came from, for the messages: an unreadable, truncated or non-checkpoint file
    raises ValueError naming it and the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if named := re.search(r"Unsupported global: GLOBAL (\S+)", str(err)):  # torch refused to unpickle it
            raise ValueError(f"{key}={path} holds Python objects other than tensors and plain containers (it names "
                             f"{named[1]}); cnnlab reads checkpoints weights-only and never runs code a file names"
                             ) from None
        raise ValueError(f"{key}={path} is not a readable checkpoint (not a torch.save file: {_first_line(err)})"
                         ) from None
    except Exception as err:  # miniz's RuntimeError for a cut zip archive, EOFError, ...: any failure to read it
        raise ValueError(f"{key}={path} is not a readable checkpoint (truncated or corrupt: {_first_line(err)})"
                         ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{key}={path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    hparams = obj.get("hyper_parameters")
    run_config = hparams.get("run_config") if isinstance(hparams, Mapping) else None
    if run_config is not None:
        check_run_config(run_config, f"{key}={path}: run_config")
    return dict(obj)


def check_run_config(run_config: Any, where: str = "run_config") -> None:
    """A stored run config is plain data: a mapping of plain values (str, int, float, bool, None, lists and mappings
    with string keys), no FORBIDDEN_KEYS at any depth, every `_target_` allowed (check_targets) and, in the groups the
    tools rebuild, a class of that group's own modules (GROUP_MODULES). Raises ValueError naming the key."""
    if not isinstance(run_config, Mapping):
        raise ValueError(f"{where} is a {type(run_config).__name__}, not a mapping of config groups")
    _check_plain(run_config, where)
    check_targets(run_config, where)
    trusted = _trusted()
    for group, modules in GROUP_MODULES.items():
        for key, target in _targets(run_config.get(group), f"{where}.{group}"):
            obj = _locate_allowed(target, key)
            module = getattr(obj, "__module__", "") or ""
            if not (inspect.isclass(obj) and (_inside(module, modules) or _inside(module, trusted))):
                raise ValueError(f"{key}={target!r} is not allowed in a stored {group} config: it may only name "
                                 f"classes of {', '.join(modules)} (or packages listed in ${TRUSTED_ENV})")


def _check_plain(node: Any, where: str) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is a {type(k).__name__}; a stored config has string keys only")
            if k in FORBIDDEN_KEYS:
                raise ValueError(f"{where}.{k}: a stored run config never holds `{k}` (it would steer Hydra's "
                                 f"composition, logging or output directories); the file was crafted or altered")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_plain(v, f"{where}[{i}]")
    elif not (node is None or isinstance(node, str | int | float | bool)):
        raise ValueError(f"{where} is a {type(node).__name__}; a stored config holds plain values only")


def _targets(node: Any, where: str) -> list[tuple[str, Any]]:
    """(key, value) of every `_target_` under node."""
    if isinstance(node, Mapping):
        return [(f"{where}.{k}", v) if k == "_target_" else t for k, v in node.items()
                for t in ([None] if k == "_target_" else _targets(v, f"{where}.{k}"))]
    if isinstance(node, list | tuple):
        return [t for i, v in enumerate(node) for t in _targets(v, f"{where}[{i}]")]
    return []


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_targets(cfg: Any, where: str = "config") -> None:
    """Raise ValueError unless every `_target_` in cfg (nested dicts and lists, any depth) is one of cnnlab's classes
    or the torch.optim / Lightning classes its configs name (TARGET_MODULES), or a cnnlab schedule function; no
    value may be an unresolved `${...}` interpolation (a resolver could compute a target after this check)."""
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            name = f"{where}.{k}"
            if k == "_target_":
                _check_target(v, name)
            else:
                check_targets(v, name)
    elif isinstance(cfg, Sequence) and not isinstance(cfg, str | bytes):  # lists, tuples, ListConfig
        for i, v in enumerate(cfg):
            check_targets(v, f"{where}[{i}]")
    elif isinstance(cfg, str) and "${" in cfg:
        raise ValueError(f"{where}={cfg!r}: a stored run config holds resolved values, not interpolations")


def _check_target(target: Any, key: str) -> None:
    allowed = (f"cnnlab's own classes and the torch.optim / Lightning classes its configs use (TARGET_MODULES), or "
               f"packages listed in ${TRUSTED_ENV}")
    trusted = _trusted()
    if (not isinstance(target, str) or not target.startswith((*TARGET_PREFIXES, *(f"{p}." for p in trusted)))
            or any(not p.isidentifier() or p.startswith("_") for p in target.split("."))):
        raise ValueError(f"{key}={target!r} is not allowed: a config rebuilt from a file may only name {allowed}")
    obj = _locate_allowed(target, key)
    module = getattr(obj, "__module__", "") or ""
    if not ((inspect.isclass(obj) and _inside(module, TARGET_MODULES))
            or (inspect.isfunction(obj) and _inside(module, FUNCTION_MODULES))
            or ((inspect.isclass(obj) or inspect.isfunction(obj)) and _inside(module, trusted))):
        raise ValueError(f"{key}={target!r} resolves to {module}.{getattr(obj, '__qualname__', type(obj).__name__)}"
                         f", which is not allowed: a config rebuilt from a file may only name {allowed}")


def _trusted() -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(TRUSTED_ENV, "").split(",") if p.strip())


def _locate_allowed(target: str, key: str) -> Any:
    """The object a `_target_` names (its path already passed _check_target's prefix test)."""
    from hydra._internal.utils import _locate  # Hydra's own resolution of `_target_`, as instantiate does it

    try:
        return _locate(target)
    except Exception as err:  # ImportError, AttributeError, ...: a target that does not exist
        raise ValueError(f"{key}={target!r} does not name a class: {_first_line(err)}") from None


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)
