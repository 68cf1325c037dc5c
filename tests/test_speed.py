"""Speed: every run logs throughput, the data-wait split, GMACs and TFLOP/s, and warns when data is the bottleneck;
the fast CIFAR-10 recipe (experiment=cifar10_fast) composes as airbench94 and trains; its network is pinned."""

import csv
import logging
import re
import time
import warnings
from pathlib import Path

import conftest
import pytest
import torch
from conftest import compose_run, run_train
from hydra.utils import instantiate

from cnnlab.callbacks import significant
from cnnlab.data import InMemoryDataModule
from cnnlab.models import FastNet
from cnnlab.module import param_groups
from cnnlab.schedule import triangular
from cnnlab.summary import read_record

TINY = [*conftest.TINY, "callbacks.throughput.window=2", "callbacks.throughput.warmup=1"]


def perf_rows(run_dir: Path) -> list[dict[str, float]]:
    with next(run_dir.glob("csv/version_*/metrics.csv")).open() as f:
        return [{k: float(v) for k, v in r.items() if v and k.startswith("perf/")} for r in csv.DictReader(f)
                if r.get("perf/images_per_s")]


class SlowData(InMemoryDataModule):
    """The in-memory data module with 0.3 s added to every training batch: a loader slower than the model."""

    def _train_transform(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None) -> tuple:
        time.sleep(0.3)
        return super()._train_transform(x, y, g)


def test_every_run_logs_throughput_data_wait_gmacs_and_flop_rate(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cnnlab.callbacks")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train([*TINY, "trainer.max_epochs=2"], tmp_path)  # 6 steps per epoch: 5 windows of 2 after 1 warm-up
    assert not [w for w in caught if "bottleneck" in str(w.message)]
    rows = perf_rows(tmp_path)
    assert len(rows) == 5
    for r in rows:
        assert r["perf/gmacs"] == pytest.approx(0.04055, abs=5e-5)  # ResNet-20 at 32x32: 40.55 MMACs (zoo table)
        assert 1 < r["perf/images_per_s"] < 1e5 and 0 <= r["perf/data_wait"] < 0.2
        assert r["perf/step_ms"] == pytest.approx(32 * 1e3 / r["perf/images_per_s"], rel=1e-6)
        assert r["perf/tflops"] == pytest.approx(6 * 0.04055e9 * r["perf/images_per_s"] / 1e12, rel=1e-3)
    log = caplog.text
    assert "0.0406 GMACs per image" in log and "epoch 1:" in log and "waiting for data" in log
    rate = re.search(r"epoch 1: ([0-9.]+) images/s", log).group(1)  # 3 significant figures, not "2 images/s"
    assert len(rate.replace(".", "").lstrip("0")) >= 3


def test_console_rates_keep_three_significant_figures():
    assert [significant(x) for x in (2.3456, 58.24, 999.96, 12345.6, 0.012345)] == [
        "2.35", "58.2", "1000", "12346", "0.0123"]


def test_warns_when_the_loader_is_the_bottleneck(tmp_path):
    with pytest.warns(UserWarning, match="the data loader is the bottleneck"):
        run_train([*TINY, "data._target_=test_speed.SlowData", "data.synthetic_size=[128,64]", "trainer.max_epochs=1",
                   "model.depths=[1,1,1]", "model.widths=[4,4,4]"], tmp_path)  # a model of ~1 ms per step
    rows = perf_rows(tmp_path)
    assert rows and all(r["perf/data_wait"] > 0.2 and r["perf/data_ms"] > 250 for r in rows)


def test_cifar10_fast_is_airbench94(tmp_path):
    cfg = compose_run(["experiment=cifar10_fast"], tmp_path)
    assert cfg.model._target_ == "cnnlab.models.FastNet" and cfg.eval.flip and cfg.module.label_smoothing == 0.2
    assert cfg.module.channels_last and cfg.module.compile and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.batch_size == cfg.module.reference_batch == 1024 and cfg.model.bias_scaler == 64
    assert cfg.augment.crop_padding == 2 and cfg.optim.nesterov and cfg.schedule._target_.endswith("triangular")
    assert cfg.optim.lr * cfg.optim.weight_decay == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))
    assert cfg.callbacks.lookahead._target_ == "cnnlab.lookahead.Lookahead"


@pytest.mark.slow  # about 12 s: the whole recipe on a slice
def test_cifar10_fast_trains_with_lookahead_whitening_and_tta(tmp_path):
    run_train(["experiment=cifar10_fast", *TINY, "data.synthetic_size=[320,100]", "data.batch_size=64",
               "trainer.precision=32-true", "module.compile=false", "trainer.max_epochs=2"], tmp_path)  # 10 steps
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"]["model.whitened"]  # the stem was set from the stored training images
    assert any("Lookahead" in k for k in ckpt["callbacks"])  # the weight average travels with the checkpoint
    with next(tmp_path.glob("csv/version_*/metrics.csv")).open() as f:
        test_err = [float(r["test/err1"]) for r in csv.DictReader(f) if r.get("test/err1")]
    assert test_err[0] < 0.5  # 10 classes: chance is 0.9


@pytest.mark.slow
def test_cifar10_fast_runs_as_configured_for_a_gpu(tmp_path):
    """bf16-mixed, channels_last and torch.compile as the recipe sets them (slow on a CPU: compiling takes minutes)."""
    run_train(["experiment=cifar10_fast", *TINY, "data.synthetic_size=[64,32]", "data.batch_size=16",
               "trainer.max_epochs=1"], tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_fast_networks_train_all_but_the_whitening_and_bn_scales(tmp_path):
    """Sizes are pinned in conf/zoo.json (tests/test_zoo.py); here: what is frozen, and the logged GMACs are its."""
    for name in ("airbench94", "resnet9"):
        cfg = compose_run([f"model={name}", "data=synthetic"], tmp_path / name)
        model = instantiate(cfg.model)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        bn_scales = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert frozen == bn_scales + (model.stem[0].weight.numel() if cfg.model.stem == "whiten" else 0), name
    from cnnlab.callbacks import forward_macs

    gmacs = read_record()["airbench94"]["gmacs"]  # airbench94.py: 0.36 PFLOPs per run
    assert forward_macs(FastNet(), torch.zeros(1, 3, 32, 32)) == round(gmacs * 1e9)


def test_whitening_stem_decorrelates_patches():
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(64, 3, 4, 4), scale_factor=4)  # neighbours correlated
    x = smooth + 0.3 * torch.randn(64, 3, 16, 16)
    model = FastNet().train()
    model(x)
    out = model.stem[0](x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the positive half of the filters
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    before = model.stem[0].weight.clone()
    model(x * 2)
    assert torch.equal(model.stem[0].weight, before)  # set once, then frozen


def test_bn_shifts_get_airbench_lr_scale():
    groups = param_groups(FastNet(bias_scaler=64.0), norm_bias_decay=False)
    scaled = [g for g in groups if g["lr_scale"] == 64.0]
    assert len(scaled) == 1 and len(scaled[0]["params"]) == 6 and scaled[0]["weight_decay"] == 0.0


def test_triangular_schedule():
    f = triangular(1000, 100, peak=0.23, start=0.2, end=0.07)
    assert [f(0), f(115), f(230), f(1000)] == pytest.approx([0.2, 0.6, 1.0, 0.07])
    with pytest.raises(ValueError, match="peak must fall inside the run"):
        triangular(1000, 100, peak=1.5)
