"""Every paper recipe is the paper's: the numbers each experiment config sets, the model variant it builds (shortcut
option, stride placement, dropout placement, complexity) and the published number the report puts beside it."""

import csv

import pytest
import torch
from conftest import compose_run, run_train
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cnnlab import papers
from cnnlab.models import AlexNet
from cnnlab.report.ilsvrc import paper_row as ilsvrc_row
from cnnlab.report.recipes import paper_row as recipe_row

torch.set_num_threads(1)

# experiment -> (model config, {key: value} the paper states (or the config says is ours), published test error %)
RECIPES = {
    "he2016b_cifar10": ("preact_resnet164", {
        "data.batch_size": 128, "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
        "schedule.milestones": [32000, 48000], "schedule.unit": "step", "trainer.max_steps": 64000,
        "schedule.warmup": 400, "schedule.warmup_start": 0.1, "model.preact": True,
        "model.stride_in_1x1": True}, 5.46),  # the stride on the first 1x1, as the authors' resnet-pre-act.lua
    "he2016b_cifar10_1001": ("preact_resnet1001", {  # the authors' README: fb.resnet.torch, batch 64, 200 epochs
        "model.depths": [111, 111, 111], "model.stride_in_1x1": True, "data.batch_size": 64,
        "module.reference_batch": 64, "optim.lr": 0.1, "optim.nesterov": True, "optim.weight_decay": 1e-4,
        "schedule.milestones": [80, 121], "schedule.unit": "epoch", "schedule.warmup": 0, "trainer.max_epochs": 200,
        "trainer.max_steps": -1}, 4.62),
    "zagoruyko2016_cifar10": ("wrn28_10", {
        "data.batch_size": 128, "optim.lr": 0.1, "optim.nesterov": True, "optim.weight_decay": 5e-4,
        "schedule.milestones": [60, 120, 160], "schedule.gamma": 0.2, "schedule.unit": "epoch",
        "trainer.max_epochs": 200, "model.dropout": 0.3}, 3.89),
    "huang2016_cifar10": ("resnet110_sd", {
        "data.batch_size": 128, "optim.lr": 0.1, "optim.nesterov": True, "optim.weight_decay": 1e-4,
        "schedule.milestones": [250, 375], "trainer.max_epochs": 500, "model.stochastic_depth": 0.5,
        "model.stochastic_depth_mode": "batch", "model.shortcut": "A_avgpool", "data.val_split": 5000,
        "data.normalize": "pixel_mean_global_std", "test_ckpt": "best"}, 5.25),
    "huang2017_cifar10": ("densenet_bc100", {
        "data.batch_size": 64, "module.reference_batch": 64, "optim.lr": 0.1, "optim.nesterov": True,
        "optim.weight_decay": 1e-4, "schedule.milestones": [150, 225], "trainer.max_epochs": 300,
        "model.growth_rate": 12}, 4.51),
    "larsson2017_cifar10": ("fractalnet", {
        "data.batch_size": 100, "optim.lr": 0.02, "optim.momentum": 0.9, "schedule.milestones": [200, 300, 350, 375],
        "trainer.max_epochs": 400, "model.columns": 3, "model.drop_path": 0.15,
        "model.dropout": [0.0, 0.1, 0.2, 0.3, 0.4]}, 4.60),
    "lin2014_cifar10": ("nin", {"data.batch_size": 128, "model.dropout": 0.5}, 8.81),
    "lecun1998_mnist": ("lenet5", {
        "data.dataset": "mnist", "data.image_size": 32, "augment.crop": "none", "trainer.max_epochs": 20,
        "schedule.milestones": [2, 5, 8, 12], "schedule.factors": [0.4, 0.2, 0.1, 0.02], "model.activation": "tanh",
        "model.pool": "avg"}, 0.95),
}
# 2 training images, 2 test images: one step of each recipe's own model, optimizer and schedule
TINY = ["data=synthetic", "data.synthetic_size=[4,2]", "data.val_split=0", "data.batch_size=2",
        "data.eval_batch_size=2", "module.reference_batch=2", "trainer.fast_dev_run=1", "trainer.accelerator=cpu",
        "callbacks.progress_bar.refresh_rate=0"]


def gmacs(model: torch.nn.Module, size: int = 224) -> float:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


def build(overrides: list[str], tmp_path) -> torch.nn.Module:
    with torch.device("meta"):
        return instantiate(compose_run([*overrides, "data=synthetic", "data.num_classes=1000"], tmp_path).model)


@pytest.mark.parametrize("experiment", RECIPES)
def test_recipe_sets_the_papers_numbers_and_trains_a_step(experiment, tmp_path):
    model, expected, err = RECIPES[experiment]
    cfg = compose_run([f"experiment={experiment}"], tmp_path / "cfg")
    assert cfg.hydra.runtime.choices.model == model
    for key, value in expected.items():
        got = OmegaConf.select(cfg, key)
        assert (list(got) if OmegaConf.is_list(got) else got) == value, key
    row = recipe_row(model, OmegaConf.to_container(cfg, resolve=False))
    assert row is not None and row["experiment"] == experiment and row["err"] == err
    if model in ("wrn28_10", "preact_resnet1001", "fractalnet"):  # 10-36M parameters: built, not trained, here
        assert build([f"experiment={experiment}"], tmp_path / "meta") is not None
        return
    tiny = TINY if OmegaConf.select(cfg, "test_ckpt") is None else [  # fast_dev_run saves no best checkpoint
        *TINY[:-3], "trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.limit_train_batches=1",
        "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0"]
    run_train([f"experiment={experiment}", *tiny], tmp_path / "run")
    assert (tmp_path / "run" / "results.json").is_file()


def test_every_recipe_in_the_report_has_a_config_and_a_test():
    assert {r["experiment"] for r in papers.RECIPES} == set(RECIPES)


@pytest.mark.parametrize(("experiment", "shortcut", "params", "paper_row", "crop10"), [
    ("ilsvrc_resnet18", "A", 11_515_688, "'ResNet 18 layers', option A", (27.88, None)),  # = plain-18's count
    ("ilsvrc_resnet34", "A", 21_623_848, "'ResNet-34 A'", (25.03, 7.76)),  # = plain-34's count
    ("ilsvrc_resnet34b", "B", 21_797_672, "'ResNet-34 B'", (24.52, 7.46)),  # He et al. 2016, Table 3
])
def test_resnet18_34_compare_like_with_like(experiment, shortcut, params, paper_row, crop10, tmp_path):
    cfg = compose_run([f"experiment={experiment}", "data.num_classes=1000"], tmp_path)
    assert cfg.model.shortcut == shortcut
    with torch.device("meta"):
        assert sum(p.numel() for p in instantiate(cfg.model).parameters()) == params
    row = ilsvrc_row(cfg.hydra.runtime.choices.model, OmegaConf.to_container(cfg, resolve=False))
    assert paper_row in row["row"] and row["crop10"] == crop10


def test_he2016_imagenet_bottlenecks_stride_the_1x1_and_resnext_the_3x3(tmp_path):
    assert gmacs(build(["experiment=ilsvrc_resnet50"], tmp_path / "50")) == pytest.approx(3.86, abs=0.01)  # T1: 3.8
    assert gmacs(build(["experiment=ilsvrc_resnext50_32x4d"], tmp_path / "x")) == pytest.approx(4.230, abs=0.001)


def test_resnext_recipes_use_fb_resnet_torch_scale_and_aspect_crops(tmp_path):
    for experiment in ("ilsvrc_resnext50_32x4d", "resnext50_ablation", "resnext101_ablation"):
        augment = compose_run([f"experiment={experiment}"], tmp_path / experiment).augment
        assert (augment.crop, list(augment.area), augment.lighting) == ("resized", [0.08, 1.0], 0.1), experiment
        assert list(augment.ratio) == pytest.approx([3 / 4, 4 / 3])
        assert "shorter_side" not in augment  # not ResNet's [256, 480] scale augmentation


def test_se_nets_match_hu_et_al_complexity(tmp_path):
    # Hu et al. 2018, Table 2 ("GFLOPs" are multiply-adds): SE-ResNet-50 3.87, SE-ResNeXt-50 4.25
    assert gmacs(build(["model=se_resnet50"], tmp_path / "se")) == pytest.approx(3.87, abs=0.02)
    assert gmacs(build(["model=se_resnext50_32x4d"], tmp_path / "sex")) == pytest.approx(4.25, abs=0.02)


def test_stride_in_1x1_is_a_key_and_fails_on_basic_blocks(tmp_path):
    v1 = build(["model=resnet50", "model.stride_in_1x1=true"], tmp_path / "50")  # no `+`: the key exists
    assert gmacs(v1) == pytest.approx(3.86, abs=0.01)
    with pytest.raises(Exception, match="stride_in_1x1 needs block='bottleneck'"):
        build(["model=resnet18", "model.stride_in_1x1=true"], tmp_path / "18")


def test_alexnet_dropout_zeroes_fc6_fc7_outputs_as_the_paper_or_their_inputs_as_torchvision():
    fc8_inputs = {}
    for where in ("outputs", "inputs"):
        torch.manual_seed(0)
        net = AlexNet(num_classes=10, dropout_on=where).train()
        fc8 = net.classifier[-1]
        fc8.register_forward_hook(lambda m, args, out, where=where: fc8_inputs.__setitem__(where, args[0]))
        net(torch.randn(2, 3, 224, 224))
    # the paper drops half of fc7's outputs before fc8; torchvision feeds fc8 fc7's ReLU output untouched
    zeros = {w: (x == 0).float().mean().item() for w, x in fc8_inputs.items()}
    assert zeros["outputs"] > zeros["inputs"] + 0.2
    with pytest.raises(ValueError, match="dropout_on must be one of .* got 'fc6'"):
        AlexNet(dropout_on="fc6")


def test_he2016b_stride_in_1x1_keeps_the_parameters_and_moves_the_stride(tmp_path):
    v15 = build(["model=preact_resnet164"], tmp_path / "a")
    v1 = build(["experiment=he2016b_cifar10"], tmp_path / "b")
    assert sum(p.numel() for p in v1.parameters()) == sum(p.numel() for p in v15.parameters())  # 1000 classes here
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert (v15.layer2[0].conv1.stride, v15.layer2[0].conv2.stride) == ((1, 1), (2, 2))


def test_pixel_mean_global_std_subtracts_the_mean_image_and_divides_by_one_std():
    from cnnlab.data import InMemoryDataModule

    data = {n: InMemoryDataModule("synthetic", synthetic_size=(64, 16), val_split=16, normalize=n,
                                  device_resident=False) for n in ("pixel_mean_global_std", "pixel_mean", "channel")}
    for d in data.values():
        d.setup()
    d = data["pixel_mean_global_std"]
    x = d.splits["train"].x.double() / 255  # the 48 training images, not the held-out 16
    assert torch.allclose(d.mean.double(), x.mean(0), atol=1e-6)  # C x H x W: one mean per pixel
    assert d.std.shape == (3, 1, 1) and torch.allclose(d.std.double(), x.std().expand(3, 1, 1), atol=1e-6)
    z = d.normalize(d.splits["train"].x).double()
    assert z.mean(0).abs().max() < 1e-5
    assert z.std().item() == pytest.approx(x.sub(x.mean(0)).std().item() / x.std().item(), rel=1e-4)
    assert torch.equal(data["pixel_mean"].mean, d.mean) and torch.equal(data["pixel_mean"].std, torch.ones(3, 1, 1))
    assert torch.equal(data["channel"].mean.flatten(), torch.tensor([0.5] * 3))  # the other modes: unchanged
    with pytest.raises(ValueError, match="normalize must be one of .* got 'pixel_std'"):
        InMemoryDataModule("synthetic", normalize="pixel_std")


def test_test_ckpt_best_tests_the_best_validation_checkpoint(tmp_path):
    import json

    # val = test (val_split=0), so the tested error of the best checkpoint is the best epoch's validation error; lr
    # x 50 in the last epoch spoils it, so the last epoch is not the best one (checked) and the two settings differ
    common = ["data=synthetic", "data.synthetic_size=[64,64]", "data.image_size=8", "data.batch_size=16",
              "data.val_split=0", "module.reference_batch=16", "optim.lr=0.1", "model=resnet8",
              "trainer.max_epochs=4", "trainer.max_steps=-1", "trainer.accelerator=cpu",
              "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0", "schedule.unit=epoch",
              "schedule.milestones=[3]", "schedule.factors=[50]"]
    out = {}
    for tested in ("null", "best"):
        run_train([*common, f"test_ckpt={tested}"], tmp_path / tested)
        out[tested] = json.loads((tmp_path / tested / "results.json").read_text())
    metrics = tmp_path / "best" / "csv" / "version_0" / "metrics.csv"
    val = [float(r["val/err1"]) for r in csv.DictReader(metrics.open()) if r.get("val/err1")]
    assert len(val) == 4 and val[-1] > min(val), val
    assert out["best"]["test"]["test/err1"] == pytest.approx(min(val)) == pytest.approx(out["best"]["best_score"])
    assert out["null"]["test"]["test/err1"] == pytest.approx(val[-1])  # the final weights
