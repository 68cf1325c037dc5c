"""Shared fixtures: compose the real configs with Hydra, pointed at a temporary run directory."""

import os
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", ROOT.parent / "shared" / "datasets"))
sys.path.insert(0, str(ROOT))  # train.py lives at the top level
os.environ.setdefault("CNNLAB_TRUSTED_TARGETS", "conftest")  # runs with InterruptAt resume, as a user's own package
# Subprocesses (python train.py ...) import this checkout's package whatever is installed, and conftest (InterruptAt).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}

# A tiny real run on the CPU: 192 synthetic 32x32 training images (6 batches of 32), 64 test images, no progress bar.
# Tests append what they vary (later overrides win): `run_train([*tiny, "trainer.max_epochs=3"], tmp_path)`.
TINY = ("data=synthetic", "data.synthetic_size=[192,64]", "data.batch_size=32", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0")


# One epoch of 2 steps on 32 synthetic images: the smallest run that writes a real checkpoint (tiny_ckpt).
QUICK = (*TINY, "data.synthetic_size=[32,16]", "data.batch_size=16", "trainer.max_epochs=1")


def compose_run(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config `python train.py <overrides> hydra.run.dir=<run_dir>` would run with."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_train(overrides: list[str], run_dir: Path) -> float | None:
    from train import train

    cfg = compose_run(overrides, run_dir)
    with open_dict(cfg):
        del cfg.hydra  # train.py sees the job config, as under @hydra.main
    return train(cfg)


def record_losses(monkeypatch: pytest.MonkeyPatch) -> list:
    """The training steps' losses (detached copies), appended as the steps run: patches ClassifierModule."""
    from cnnlab.module import ClassifierModule

    losses, step = [], ClassifierModule.training_step

    def recording(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        losses.append(loss.detach().clone())
        return loss

    monkeypatch.setattr(ClassifierModule, "training_step", recording)
    return losses


def config_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The last.ckpt of a QUICK run (CIFAR ResNet-20 on synthetic data), trained once per test session."""
    run = tmp_path_factory.mktemp("quick")
    run_train(list(QUICK), run)
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture
def tiny() -> list[str]:
    """The overrides of a tiny CPU run (TINY), as a list to extend."""
    return list(TINY)


@pytest.fixture
def cifar10_jpg() -> Path:
    root = DATASETS / "cifar10-jpg"
    if not (root / "train").is_dir():
        pytest.skip(f"the real CIFAR-10 JPEG folder is not at {root} (set CNNLAB_DATASETS)")
    return root


@pytest.fixture
def cifar10_slice(cifar10_jpg: Path, tmp_path: Path) -> Path:
    """A small real CIFAR-10 folder: links to the first 20 train and 10 test images of each class."""
    for split, n in (("train", 20), ("test", 10)):
        for cls in sorted(p.name for p in (cifar10_jpg / split).iterdir()):
            (tmp_path / "cifar" / split / cls).mkdir(parents=True)
            for f in sorted((cifar10_jpg / split / cls).iterdir())[:n]:
                (tmp_path / "cifar" / split / cls / f.name).symlink_to(f)
    return tmp_path / "cifar"


class Interrupted(RuntimeError):
    """Raised by InterruptAt to simulate a crash or preemption."""


class InterruptAt(L.Callback):
    """Kills training when it reaches optimizer step `step` (use as +callbacks.crash._target_=conftest.InterruptAt)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Interrupted(f"simulated crash at step {trainer.global_step}")
