"""The ResNet family zoo: ImageNet ResNets, plain twins, ResNeXt, Wide ResNet, pre-activation, SE and stochastic depth.
Parameter counts and MACs are pinned (REFERENCE.md section 1 and the papers), torchvision state dicts load strictly,
and each keyword changes the behaviour a user would notice."""

import pytest
import torch
import torchvision
from conftest import CONF, compose_run
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import SqueezeExcitation

from cnnlab.models import ResNet
from cnnlab.transfer import architecture

torch.set_num_threads(1)

# 1000 classes at 224x224: (parameters, GMACs or None where nobody publishes one).
IMAGENET = {
    "resnet18": (11_689_512, 1.814), "resnet34": (21_797_672, 3.664), "resnet50": (25_557_032, 4.089),
    "resnet101": (44_549_160, 7.801), "resnet152": (60_192_808, 11.514),
    "plain18": (11_515_688, None), "plain34": (21_623_848, None),  # minus the 3 projection shortcuts
    # ResNeXt, Xie et al. 2017 Table 3 (complexity preserved), as REFERENCE.md counts them
    "resnext50_1x64d": (25_557_032, 4.089), "resnext50_2x40d": (25_425_000, 4.125),
    "resnext50_4x24d": (25_292_968, 4.160), "resnext50_8x14d": (25_603_016, 4.267),
    "resnext50_32x4d": (25_028_904, 4.230),
    "resnext101_1x64d": (44_549_160, 7.801), "resnext101_2x40d": (44_456_296, 7.844),
    "resnext101_4x24d": (44_363_432, 7.886), "resnext101_8x14d": (45_104_328, 8.077),
    "resnext101_32x4d": (44_177_704, 7.970),
    "resnext101_32x8d": (88_791_336, 16.414), "resnext101_64x4d": (83_455_272, 15.460),
    "wide_resnet50_2": (68_883_240, 11.398), "wide_resnet101_2": (126_886_696, 22.753),
    "preact_resnet18": (11_687_720, None), "preact_resnet50": (25_549_352, None),
    "se_resnet50": (28_088_024, None),  # Hu et al. 2018, Table 2: 28.09M
    "se_resnext50_32x4d": (27_559_896, None),  # Hu et al. 2018, Table 2: 27.56M
}
# 10 classes at 32x32.
CIFAR = {
    "wrn28_10": 36_479_194,  # Zagoruyko & Komodakis 2016, Table 4: 36.5M
    "preact_resnet164": 1_703_258,  # He et al. 2016b, Table 2: 1.7M
    "preact_resnet1001": 10_327_706,  # He et al. 2016b, Table 2: 10.2M
    "resnet110_sd": 1_727_962,  # = resnet110
    # quarter-width ResNeXt-29 of experiment=resnext_cifar_cpu (Xie et al. 2017, 5.1, at 1/4 of the widths)
    "resnext29_cpu_1x64d": 313_114, "resnext29_cpu_8x14d": 310_954, "resnext29_cpu_32x4d": 305_466,
}
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
FAMILY = ("resnet", "plain", "resnext", "wide_resnet", "wrn", "preact_resnet", "se_res")
PINNED_IN_TEST_MODELS = {f"{kind}{d}" for kind in ("resnet", "plain") for d in (20, 32, 44, 56, 110, 1202)}


def build(name: str, tmp_path, *overrides: str) -> nn.Module:
    with torch.device("meta"):
        return architecture(compose_run([f"model={name}", "data=synthetic", *overrides], tmp_path).model)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model: nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


def test_every_family_config_is_pinned() -> None:
    names = {p.stem for p in (CONF / "model").glob("*.yaml") if p.stem.startswith(FAMILY)}
    other_family = {"resnet9"}  # Page's ResNet-9 is a cnnlab.models.FastNet, pinned in test_speed.py
    assert names - PINNED_IN_TEST_MODELS - other_family == set(IMAGENET) | set(CIFAR)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_params_and_macs(name: str, tmp_path) -> None:
    params, published = IMAGENET[name]
    model = build(name, tmp_path, "data.num_classes=1000")
    assert count(model) == params
    macs = gmacs(model, 224)
    if published is not None:
        assert macs == pytest.approx(published, abs=0.001)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_params(name: str, tmp_path) -> None:
    model = build(name, tmp_path)
    assert count(model) == CIFAR[name]
    assert model.eval()(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 10)


@pytest.mark.parametrize(("depths", "paper"), [([3, 4, 6, 3], 3.8), ([3, 4, 23, 3], 7.6), ([3, 8, 36, 3], 11.3)])
def test_stride_in_1x1_gives_the_papers_v1_complexity(depths, paper) -> None:
    """He et al. 2016, Table 1 "FLOPs" (multiply-adds): 3.8 / 7.6 / 11.3 x 10^9 for ResNet-50 / 101 / 152."""
    with torch.device("meta"):
        model = ResNet(depths, block="bottleneck", stride_in_1x1=True)
    assert gmacs(model, 224) == pytest.approx(paper, abs=0.06)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_torchvision_weights_give_torchvision_outputs(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    ours = architecture(compose_run([f"model={name}", "data=synthetic", "data.num_classes=1000"], tmp_path).model)
    with torch.device("meta"):  # skip torchvision's init: its weights come from ours
        theirs = getattr(torchvision.models, name)()
    theirs = theirs.to_empty(device="cpu")
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_keys_and_shapes_match(name: str, tmp_path) -> None:
    ours = build(name, tmp_path, "data.num_classes=1000")
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)


def cifar(**kw) -> ResNet:
    return ResNet(**{"depths": [2, 2, 2], "widths": [16, 32, 64], "stem": "cifar", "num_classes": 10, **kw})


def test_stochastic_depth_drops_blocks_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    plain, sd = cifar(shortcut="A"), cifar(shortcut="A", stochastic_depth=0.5)
    sd.load_state_dict(plain.state_dict())
    probs = [m.drop_path.p for m in sd.modules() if hasattr(m, "drop_path")]
    assert probs == pytest.approx([0.5 * (i + 1) / 6 for i in range(6)])  # linear decay, p_L = 0.5 (Huang et al.)
    with torch.no_grad():
        assert torch.equal(sd.eval()(x), sd.eval()(x))
        assert torch.allclose(sd(x), plain.eval()(x))  # eval: every block, unscaled (torchvision convention)
        torch.manual_seed(0)
        a = sd.train()(x)
        torch.manual_seed(1)
        b = sd.train()(x)
        assert not torch.allclose(a, b)
        torch.manual_seed(0)
        assert torch.equal(plain.train()(x), plain.train()(x))  # without it, training mode is deterministic


def test_wrn_dropout_between_the_convs(tmp_path) -> None:
    model = architecture(compose_run(["model=wrn28_10", "data=synthetic"], tmp_path).model)
    assert model.conv1.out_channels == 16 and model.layer1[0].conv1.out_channels == 160
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3] * 12


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize(("kw", "kind"), [({"preact": True}, None), ({"se_reduction": 16}, SqueezeExcitation),
                                          ({"preact": True, "se_reduction": 4, "dropout": 0.3}, SqueezeExcitation)])
def test_preact_and_se_forward_backward(block: str, kw: dict, kind) -> None:
    torch.manual_seed(0)
    model = cifar(block=block, **kw)
    if kind is not None:
        assert sum(isinstance(m, kind) for m in model.modules()) == 6
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_preact_has_a_clean_identity_path_and_a_final_bn() -> None:
    model = cifar(preact=True, block="bottleneck")
    assert not hasattr(model, "bn1") and isinstance(model.norm, nn.BatchNorm2d) and model.norm.num_features == 256
    assert isinstance(model.layer2[0].downsample, nn.Conv2d)  # projection without BN on the shared pre-activation


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("preact", [False, True])
def test_zero_init_residual_makes_identity_blocks_the_identity(block: str, preact: bool) -> None:
    torch.manual_seed(0)
    model = cifar(block=block, preact=preact, zero_init_residual=True, shortcut="B").eval()
    seen = []

    def check(module, inputs, output):
        if module.downsample is None:
            seen.append(torch.allclose(output, inputs[0]))

    blocks = [b for name in model.stages for b in getattr(model, name)]
    hooks = [b.register_forward_hook(check) for b in blocks]
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(seen) == sum(b.downsample is None for b in blocks) >= 3 and all(seen)
    for h in hooks:
        h.remove()
    last = [b.conv3 if block == "bottleneck" else b.conv2 for b in blocks] if preact else []
    assert all(c.weight.grad.abs().sum() > 0 for c in last)  # a zeroed preact branch still learns


@pytest.mark.parametrize(("kw", "message"), [
    ({"se_reduction": 0}, "se_reduction .* got 0"),
    ({"stochastic_depth": 1.0}, "stochastic_depth .* got 1.0"),
    ({"stochastic_depth": 0.5, "residual": False}, "residual net, got 0.5"),
    ({"dropout": 1.5}, "dropout .* got 1.5"),
])
def test_bad_arguments_fail_at_construction_naming_the_value(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cifar(**kw)
