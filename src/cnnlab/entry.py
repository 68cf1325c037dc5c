"""Console scripts (pyproject.toml's [project.scripts]): `cnnlab-train` is `python train.py`, the tools are
`python -m cnnlab.<tool>`; each takes the same Hydra overrides as its python form."""

import importlib
import runpy
import sys

from cnnlab.extras import MissingExtraError
from cnnlab.paths import train_script


def _tool(module: str, function: str = "main") -> None:
    try:
        getattr(importlib.import_module(f"cnnlab.{module}"), function)()
    except MissingExtraError as err:  # one line naming the extra, as every other start-up error
        sys.exit(f"cnnlab-{module.split('.')[0]}: {err}")


def train() -> None:
    """cnnlab-train: runs train.py (the clone's, or the copy inside the wheel) as `python train.py` would, so Hydra
    finds conf/ beside it."""
    try:
        runpy.run_path(str(train_script()), run_name="__main__")
    except MissingExtraError as err:
        sys.exit(f"cnnlab-train: {err}")


def evaluate() -> None:
    _tool("evaluate")


def predict() -> None:
    _tool("predict")


def export() -> None:
    _tool("export")


def visualize() -> None:
    _tool("visualize")


def report() -> None:
    _tool("report", "main")


def summary() -> None:
    _tool("summary", "run")
