"""Optional parts (pyproject.toml's extras): a missing one fails in one line that names the extra to install."""

import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf


class MissingExtraError(ImportError, CompactHydraException):
    """An optional dependency is not installed; the message says which `pip install 'cnnlab[...]'` brings it.
    (A CompactHydraException: under @hydra.main the message is printed alone, without a traceback.)"""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or fail naming the extra that installs it (`what`: the feature asking, e.g. logger=wandb)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is None or not module.startswith(err.name.split(".")[0]):
            raise  # the package is there but broken: its own error says more
        raise MissingExtraError(message(module.split('.')[0], extra, what)) from None


def message(package: str, extra: str, what: str) -> str:
    return f"{what} needs {package}, which is not installed: pip install 'cnnlab[{extra}]'"


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


# What a config's `_target_` needs beyond the core install: (module, extra, the feature that asks)
NEEDS = {
    "cnnlab.loggers.wandb_logger": ("wandb", "wandb", "logger=wandb"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb", "logger=wandb"),
    "cnnlab.loggers.tensorboard_logger": ("tensorboard", "tensorboard", "logger=tensorboard"),
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboard", "logger=tensorboard"),
    "lightning.pytorch.callbacks.RichProgressBar": ("rich", "rich", "callbacks=rich"),
    "lightning.pytorch.callbacks.RichModelSummary": ("rich", "rich", "callbacks=rich"),
}


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def missing(cfg: DictConfig | dict) -> list[str]:
    """The messages for every `_target_` of the config whose extra is not installed (empty when all are)."""
    container = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    return [message(NEEDS[t][0], NEEDS[t][1], NEEDS[t][2]) for t in dict.fromkeys(_targets(container))
            if t in NEEDS and not installed(NEEDS[t][0])]


def check(cfg: DictConfig | dict) -> None:
    """Before anything is built: a `_target_` of the config whose extra is missing fails, naming the extra."""
    if found := missing(cfg):
        raise MissingExtraError(found[0])
