"""Eager CPU training is bit-for-bit what it was: a tiny real run of the CPU Figure 6 recipe (he2016_degradation_cpu,
ResNet-8, real CIFAR-10 JPEGs, 1 thread) gives the per-step losses, epoch metrics and final weights that commit
21877c4 gave, so figures published from runs of that commit stay what the current code gives back.

The pinned values are fp32 results of this project's x86-64 CPU (AVX2); another CPU's kernels may round differently.
"""

import csv
from pathlib import Path

import pytest
import torch
from conftest import record_losses, run_train

# 150 training images (200 of the slice minus val_split=50): 4 batches of 32 and one of 22 per epoch, 2 epochs.
RECIPE = ["experiment=he2016_degradation_cpu", "model=resnet8", "data.val_split=50", "data.batch_size=32",
          "trainer.max_epochs=2", "trainer.limit_train_batches=null", "trainer.accelerator=cpu",
          "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"]
# Measured at commit 21877c4 (OMP_NUM_THREADS=1).
STEP_LOSSES = [2.4809763431549072, 2.36830735206604, 2.509984254837036, 2.429543972015381, 2.2347331047058105,
               2.303258180618286, 2.3593127727508545, 2.320427179336548, 2.355806827545166, 2.319411039352417]
EPOCH = {"train/loss": [2.4160408973693848, 2.33245849609375], "train/err1": [0.8866666555404663, 0.8799999952316284],
         "train/err5": [0.59333336353302, 0.5333333015441895], "val/loss": [2.31174635887146, 2.313100814819336],
         "val/err1": [0.8400000333786011, 0.9200000166893005], "test/err1": [0.9200000166893005]}
WEIGHTS = {"sum": 196.47127583128201, "abs": 1694.7816971560674, "squares": 380.6221888593936}


def run(cifar10_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> tuple:
    losses = record_losses(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_train([*RECIPE, f"data.root={cifar10_slice}", f"data.cache_dir={tmp_path}/cache", *extra], tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    with next((tmp_path / "run").glob("csv/version_*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    epoch = {k: [float(r[k]) for r in rows if r.get(k)] for k in ("train/loss", "train/err1", "train/err5",
                                                                   "val/loss", "val/err1", "test/err1")}
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    floats = [v.double() for v in state.values() if v.is_floating_point()]
    weights = {"sum": sum(v.sum().item() for v in floats), "abs": sum(v.abs().sum().item() for v in floats),
               "squares": sum(v.square().sum().item() for v in floats)}
    return [loss.item() for loss in losses], epoch, weights


def test_eager_cpu_training_is_bit_identical_to_21877c4(cifar10_slice, tmp_path, monkeypatch):
    losses, epoch, weights = run(cifar10_slice, tmp_path, monkeypatch, [])
    assert len(losses) == 10
    assert losses == pytest.approx(STEP_LOSSES, rel=1e-6)
    for k, v in EPOCH.items():
        assert epoch[k] == pytest.approx(v, rel=1e-6), k
    assert weights == pytest.approx(WEIGHTS, rel=1e-6)
