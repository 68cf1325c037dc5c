"""The ResNet family: ImageNet ResNets, plain twins, ResNeXt, Wide ResNet, pre-activation, SE and stochastic depth.
Each keyword changes the behaviour a user would notice, the shortcuts are the paper's, and torchvision state dicts
load strictly. Parameter counts and GMACs are pinned in one place, conf/zoo.json (tests/test_zoo.py)."""

import pytest
import torch
import torchvision
from conftest import config_names
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import SqueezeExcitation

from cnnlab import summary as S
from cnnlab.models import ResNet

torch.set_num_threads(1)
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def build(name: str, *overrides: str, device: str = "meta") -> nn.Module:
    """Model `name` with its paper's channels and classes (conf/zoo.json)."""
    cfg, size = S.load(name, list(overrides))
    return S.build(cfg, size, device)[0]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model: nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize("name", [n for n in config_names("model") if n.startswith("plain")])
def test_plain_twins_drop_only_the_shortcuts(name: str) -> None:
    """He et al. 2016: plain nets are the ResNets without shortcuts; CIFAR option A shortcuts have no parameters,
    ImageNet ones project (option B) where shapes change."""
    plain, twin = build(name), build(name.replace("plain", "resnet"))
    assert not plain.residual and twin.residual
    shortcuts = [m.downsample for m in twin.modules() if isinstance(getattr(m, "downsample", None), nn.Module)]
    projections = sum(count(s) for s in shortcuts)
    assert count(twin) - count(plain) == projections
    assert (projections == 0) == (S.read_record()[name]["input_size"] == 32)


@pytest.mark.parametrize(("depths", "paper"), [([3, 4, 6, 3], 3.8), ([3, 4, 23, 3], 7.6), ([3, 8, 36, 3], 11.3)])
def test_stride_in_1x1_gives_the_papers_v1_complexity(depths, paper) -> None:
    """He et al. 2016, Table 1 "FLOPs" (multiply-adds): 3.8 / 7.6 / 11.3 x 10^9 for ResNet-50 / 101 / 152."""
    with torch.device("meta"):
        model = ResNet(depths, block="bottleneck", stride_in_1x1=True)
    assert gmacs(model, 224) == pytest.approx(paper, abs=0.06)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torchvision_weights_give_torchvision_outputs(name: str) -> None:
    torch.manual_seed(0)
    ours = build(name, device="cpu")
    with torch.device("meta"):  # skip torchvision's init: its weights come from ours
        theirs = getattr(torchvision.models, name)()
    theirs = theirs.to_empty(device="cpu")
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_keys_and_shapes_match(name: str) -> None:
    ours = build(name)
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


def test_stochastic_depth_batch_mode_drops_a_block_for_the_whole_mini_batch_at_rate_p() -> None:
    torch.manual_seed(0)
    model = cifar(shortcut="A", stochastic_depth=0.5, stochastic_depth_mode="batch").train()
    blocks = [b for name in model.stages for b in getattr(model, name)]
    kept = {i: [] for i in range(len(blocks))}

    def record(i):
        def hook(module, inputs, output):  # per sample: is the branch's output all zero?
            kept[i].append((output.flatten(1) != 0).any(1))
        return hook

    hooks = [b.drop_path.register_forward_hook(record(i)) for i, b in enumerate(blocks)]
    with torch.no_grad():
        for _ in range(400):
            model(torch.randn(6, 3, 8, 8))
    for h in hooks:
        h.remove()
    for i, b in enumerate(blocks):
        steps = torch.stack(kept[i])  # steps x samples
        assert torch.equal(steps.all(1), steps.any(1)), i  # all samples of a step kept, or all dropped
        drop = 1 - steps[:, 0].float().mean().item()
        assert drop == pytest.approx(b.drop_path.p, abs=0.08), i  # one Bernoulli(p_l) per block per step
    row = cifar(shortcut="A", stochastic_depth=0.5).train()
    assert all(b.drop_path.mode == "row" for name in row.stages for b in getattr(row, name))  # the default


def test_wrn_dropout_between_the_convs() -> None:
    model = build("wrn28_10")
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


@pytest.mark.parametrize("residual", [True, False])
def test_resnet20_forward_backward(residual: bool) -> None:
    model = cifar(depths=[3, 3, 3], shortcut="A", residual=residual)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_option_b_projects_only_where_shapes_change() -> None:
    a, b = cifar(depths=[3, 3, 3], shortcut="A"), cifar(depths=[3, 3, 3], shortcut="B")
    # two 1x1 projections (16->32, 32->64) with their BN: 16*32 + 2*32 + 32*64 + 2*64
    assert count(b) - count(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_is_zero_padded_identity() -> None:
    model = ResNet([1, 1], [4, 8], stem="cifar", shortcut="A", num_classes=2)
    x = torch.randn(1, 4, 8, 8)
    y = model.layer2[0].downsample(x)
    assert y.shape == (1, 8, 4, 4)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


def test_option_a_avgpool_shortcut_averages_2x2_and_zero_pads() -> None:
    model = ResNet([1, 1], [4, 8], stem="cifar", shortcut="A_avgpool", num_classes=2)
    assert count(model) == count(ResNet([1, 1], [4, 8], stem="cifar", shortcut="A", num_classes=2))  # no parameters
    x = torch.arange(4 * 8 * 8, dtype=torch.float32).view(1, 4, 8, 8)
    y = model.layer2[0].downsample(x)
    assert y.shape == (1, 8, 4, 4)
    assert y[0, 0, 0, 0] == (x[0, 0, 0, 0] + x[0, 0, 0, 1] + x[0, 0, 1, 0] + x[0, 0, 1, 1]) / 4  # 0, 1, 8, 9 -> 4.5
    assert torch.equal(y[:, :4], torch.nn.functional.avg_pool2d(x, 2)) and not y[:, 4:].any()
    odd = model.layer2[0].downsample(torch.randn(1, 4, 7, 7))  # as the stride-2 conv: 7 -> 4
    assert odd.shape == (1, 8, 4, 4) and model(torch.randn(2, 3, 7, 7)).shape == (2, 2)


@pytest.mark.parametrize(("kw", "message"), [
    ({"shortcut": "C"}, "shortcut must be one of .* got 'C'"),
    ({"stochastic_depth": 0.5, "stochastic_depth_mode": "sample"}, "stochastic_depth_mode .* got 'sample'"),
    ({"depths": [3, 3]}, r"got \[3, 3\]"),
    ({"block": "wide"}, "got 'wide'"),
    ({"groups": 32}, "32x64d"),
    ({"se_reduction": 0}, "se_reduction .* got 0"),
    ({"stochastic_depth": 1.0}, "stochastic_depth .* got 1.0"),
    ({"stochastic_depth": 0.5, "residual": False}, "residual net, got 0.5"),
    ({"dropout": 1.5}, "dropout .* got 1.5"),
])
def test_bad_arguments_fail_at_construction_naming_the_value(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cifar(**kw)
