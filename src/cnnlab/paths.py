"""Where the configs and the training script are: a git clone, an editable install and a wheel alike.

A clone (and `pip install -e .`) keeps them at the top of the repository: <repo>/conf, <repo>/train.py. A wheel
carries the same two as cnnlab/app/conf and cnnlab/app/train.py (pyproject.toml's package-dir), so an installed
`cnnlab-train` composes exactly the configs `python train.py` does in the clone it was built from.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def app_dir() -> Path:
    """The folder holding train.py and conf/: the installed copy inside the package, else the repository."""
    for candidate in (PACKAGE / "app", PACKAGE.parents[1]):
        if (candidate / "conf" / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/train.yaml in {PACKAGE / 'app'} (a wheel) or {PACKAGE.parents[1]} (a clone): "
                            f"reinstall cnnlab (pip install cnnlab) or run from a full clone")


def conf_dir() -> Path:
    """The config root Hydra searches (train.yaml, evaluate.yaml, ... and the groups)."""
    return app_dir() / "conf"


def train_script() -> Path:
    """The training entry point, train.py."""
    return app_dir() / "train.py"
