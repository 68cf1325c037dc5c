"""Model sizes equal the papers' (REFERENCE.md section 1); forward shapes; bad arguments fail at construction."""

import pytest
import torch
import torchvision
from conftest import compose_run
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models import LeNet5, ResNet

# He et al. 2016 CIFAR ResNets with option A shortcuts; the plain twins have the same count.
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
CIFAR_MMACS = {20: 40.55, 56: 125.49, 110: 252.89}


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        m.eval()(x)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_resnet_and_plain_configs_match_the_paper(depth, tmp_path):
    names = [f"resnet{depth}"] + ([f"plain{depth}"] if depth <= 110 else [])
    for name in names:
        with torch.device("meta"):
            model = instantiate(compose_run([f"model={name}", "data=synthetic"], tmp_path).model)
        assert params(model) == CIFAR_PARAMS[depth], name
        assert model.residual == name.startswith("resnet")


@pytest.mark.parametrize("depth", sorted(CIFAR_MMACS))
def test_cifar_resnet_macs(depth):
    n = (depth - 2) // 6
    model = ResNet([n] * 3, [16, 32, 64], stem="cifar", shortcut="A", num_classes=10)
    assert macs(model, torch.zeros(1, 3, 32, 32)) / 1e6 == pytest.approx(CIFAR_MMACS[depth], abs=0.01)


@pytest.mark.parametrize("residual", [True, False])
def test_resnet20_forward_backward(residual):
    model = ResNet([3, 3, 3], [16, 32, 64], stem="cifar", shortcut="A", num_classes=10, residual=residual)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_option_b_projects_only_where_shapes_change():
    a = ResNet([3, 3, 3], [16, 32, 64], stem="cifar", shortcut="A", num_classes=10)
    b = ResNet([3, 3, 3], [16, 32, 64], stem="cifar", shortcut="B", num_classes=10)
    # two 1x1 projections (16->32, 32->64) with their BN: 16*32 + 2*32 + 32*64 + 2*64
    assert params(b) - params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_is_zero_padded_identity():
    model = ResNet([1, 1], [4, 8], stem="cifar", shortcut="A", num_classes=2)
    x = torch.randn(1, 4, 8, 8)
    y = model.layer2[0].downsample(x)
    assert y.shape == (1, 8, 4, 4)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


@pytest.mark.parametrize(("name", "depths", "block"), [("resnet18", [2, 2, 2, 2], "basic"),
                                                       ("resnet50", [3, 4, 6, 3], "bottleneck")])
def test_imagenet_layout_loads_torchvision_weights_strictly(name, depths, block):
    reference = getattr(torchvision.models, name)()
    model = ResNet(depths, block=block)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-5)


def test_lenet5():
    model = LeNet5()
    assert params(model) == 61_706  # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert params(LeNet5(activation="relu", pool="max")) == 61_706


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"depths": [3, 3, 3], "widths": [16, 32, 64], "shortcut": "C"}, "shortcut must be one of .* got 'C'"),
    ({"depths": [3, 3], "widths": [16, 32, 64]}, r"got \[3, 3\]"),
    ({"depths": [3, 3, 3], "widths": [16, 32, 64], "block": "wide"}, "got 'wide'"),
    ({"depths": [3, 3, 3], "widths": [16, 32, 64], "groups": 32}, "32x64d"),
])
def test_bad_arguments_fail_at_construction_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**kwargs)
