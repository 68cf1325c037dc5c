"""The CPU reproductions (docs/reproductions-cpu.md): each recipe composes to the budget its results were measured
with, its sweep is the one the docs report, and its nets are the ones whose complexity the docs state."""

import pytest
import torch
from conftest import compose_run, run_train
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode


def sweep(cfg) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def steps(cfg) -> int:
    return cfg.trainer.max_epochs * (cfg.trainer.limit_train_batches or 1)


def macs_and_params(cfg, size: int) -> tuple[float, int]:
    model = instantiate(cfg.model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, cfg.data.in_channels, size, size))
    return counter.get_total_flops() / 2e6, sum(p.numel() for p in model.parameters())


def test_lenet5_mnist_cpu_is_the_papers_net_for_its_20_passes(tmp_path):
    cfg = compose_run(["experiment=lenet5_mnist_cpu"], tmp_path)
    assert (cfg.data.dataset, cfg.data.image_size, cfg.data.pad) == ("mnist", 32, 2)
    assert (cfg.model.activation, cfg.model.pool) == ("tanh", "avg")
    assert (cfg.augment.crop, cfg.augment.flip) == ("none", False)  # the paper's 0.95% is without distortions
    assert cfg.trainer.max_epochs == 20 and cfg.trainer.limit_train_batches is None  # 20 full passes (III.C)
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (64, 0.05, 5e-4)
    assert cfg.schedule._target_ == "cnnlab.schedule.cosine" and cfg.schedule.unit == "step"
    assert sweep(cfg) == {"seed": ["0", "1", "2"]}
    assert macs_and_params(cfg, 32)[1] == 61_706


def test_he2016_degradation_cpu_budget_and_nets(tmp_path):
    cfg = compose_run(["experiment=he2016_degradation_cpu"], tmp_path)
    assert steps(cfg) == 2000 and cfg.data.batch_size == 128 and cfg.optim.lr == 0.1
    assert list(cfg.schedule.milestones) == [0.5, 0.75] and cfg.schedule.unit == "fraction"  # lr /10 at 1000, 1500
    assert (cfg.data.image_size, cfg.augment.crop_padding, cfg.data.val_split) == (16, 2, 5000)
    assert sweep(cfg) == {"seed": ["0", "1", "2"], "model": ["plain8", "resnet8", "plain20", "resnet20"]}
    nets = {}
    for name in [f"{kind}{depth}" for kind in ("plain", "resnet") for depth in (8, 14, 20, 56)]:
        net = compose_run(["experiment=he2016_degradation_cpu", f"model={name}"], tmp_path / name)
        assert list(net.model.widths) == [8, 16, 32], name  # the widths apply to every net of the sweep
        nets[name] = macs_and_params(net, 16)
    assert all(nets[f"plain{d}"] == nets[f"resnet{d}"] for d in (8, 14, 20, 56))  # option A adds nothing
    assert nets["resnet20"] == (pytest.approx(2.562, abs=1e-3), 68_050)  # MMACs at 16x16, parameters
    assert nets["resnet56"] == (pytest.approx(7.871, abs=1e-3), 214_546)


def test_resnext_cifar_cpu_cardinalities_match_in_complexity(tmp_path):
    cfg = compose_run(["experiment=resnext_cifar_cpu"], tmp_path)
    assert steps(cfg) == 400 and cfg.optim.weight_decay == 5e-4 and cfg.data.image_size == 16
    names = sweep(cfg)["model"]
    assert sweep(cfg)["seed"] == ["0", "1"] and names == [f"resnext29_cpu_{s}" for s in ("1x64d", "8x14d", "32x4d")]
    nets = {n: compose_run(["experiment=resnext_cifar_cpu", f"model={n}"], tmp_path / n) for n in names}
    assert [(c.model.groups, c.model.width_per_group) for c in nets.values()] == [(1, 64), (8, 14), (32, 4)]
    measured = {n: macs_and_params(c, 32) for n, c in nets.items()}
    assert measured == {n: (pytest.approx(m, abs=0.01), p) for n, (m, p) in {
        "resnext29_cpu_1x64d": (47.11, 313_114), "resnext29_cpu_8x14d": (47.05, 310_954),
        "resnext29_cpu_32x4d": (48.71, 305_466)}.items()}
    base = measured["resnext29_cpu_1x64d"][0]
    assert all(abs(m / base - 1) < 0.035 for m, _ in measured.values())  # "at matched complexity": within 3.5%


@pytest.mark.parametrize("experiment", ["he2016_degradation_cpu", "resnext_cifar_cpu"])
def test_cifar_cpu_recipe_trains_and_writes_results(experiment, tmp_path):
    run_train([f"experiment={experiment}", "data=synthetic", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
               "trainer.limit_val_batches=1", "trainer.accelerator=cpu", "~callbacks.progress_bar",
               "trainer.enable_progress_bar=false", "data.val_split=0"], tmp_path)
    assert (tmp_path / "results.json").is_file()
