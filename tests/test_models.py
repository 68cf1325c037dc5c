"""Behaviour of the non-ResNet families: forward shapes, a training step, GoogLeNet's auxiliary outputs, torchvision
state dicts, FractalNet's drop-path, bad arguments failing at construction. Their sizes are pinned in one place,
conf/zoo.json (tests/test_zoo.py); the ResNet family's behaviour is in tests/test_resnet_family.py."""

import pytest
import torch
import torchvision
from torch import nn

from cnnlab import summary as S
from cnnlab.models import VGG, AlexNet, DenseNet, FractalNet, GoogLeNet, LeNet5

torch.set_num_threads(1)


def build(name: str, *overrides: str) -> nn.Module:
    """Model `name` with its paper's channels and classes (conf/zoo.json), initialized on the CPU."""
    cfg, size = S.load(name, list(overrides))
    return S.build(cfg, size, "cpu")[0]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_takes_32x32_digits_and_its_modern_variant_adds_no_weights() -> None:
    model = LeNet5()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert count(LeNet5(activation="relu", pool="max")) == count(model)


@pytest.mark.parametrize("name", ["lenet5_relu", "vgg_cifar", "nin", "densenet_bc100", "fractalnet"])
def test_small_model_train_step(name: str) -> None:
    torch.manual_seed(0)
    cfg, size = S.load(name, [])
    model = S.build(cfg, size, "cpu")[0]
    x, y = torch.randn(2, cfg.data.in_channels, size, size), torch.tensor([0, 1])
    loss = nn.functional.cross_entropy(model.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    if name != "fractalnet":  # global drop-path may train a single column (see the test below)
        assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_googlenet_aux_outputs_train_vs_eval() -> None:
    """Training returns (logits, aux1, aux2) for the module's 0.3-weighted aux losses; eval returns logits only."""
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=10)
    x = torch.randn(2, 3, 224, 224)
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 10) for o in out)
    sum(o.sum() for o in out).backward()
    assert model.aux1.fc2.weight.grad is not None and model.aux2.fc2.weight.grad is not None
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert isinstance(GoogLeNet(aux_logits=False, num_classes=10).train()(x), torch.Tensor)


@pytest.mark.parametrize(("name", "tv_name", "size"), [
    ("alexnet_owt", "alexnet", 64), ("vgg16", "vgg16", 32), ("vgg16_bn", "vgg16_bn", 32),
    ("densenet121", "densenet121", 32), ("inception_v3", "inception_v3", 75)])
def test_torchvision_state_dict_loads_strictly(name: str, tv_name: str, size: int) -> None:
    torch.manual_seed(0)
    ours = build(name).eval()
    kw = {"init_weights": False} if tv_name == "inception_v3" else {}
    with torch.device("meta"):  # skip torchvision's slow init: its weights come from ours
        theirs = getattr(torchvision.models, tv_name)(**kw)
    theirs = theirs.to_empty(device="cpu").eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():  # same weights, same function: the layer order matches too
        torch.testing.assert_close(ours(x), theirs(x))


def test_fractalnet_global_drop_path_trains_one_column() -> None:
    torch.manual_seed(0)
    model = FractalNet(columns=3, channels=[8, 8], dropout=[0.0, 0.0], drop_path=0.0, global_drop_ratio=1.0)
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    trained = {j for b in model.blocks for j, col in enumerate(b.columns) if col[0][0].weight.grad is not None}
    assert len(trained) == 1  # the same single column in every block
    model.zero_grad(set_to_none=True)
    model.global_drop_ratio = 0.0  # local drop-path at rate 0: every column trains
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(col[0][0].weight.grad is not None for b in model.blocks for col in b.columns)


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: VGG([64, "conv5-64", "M"]), "conv5-64"),
    (lambda: VGG([64, "M"], pool_size=4), "pool_size"),
    (lambda: AlexNet(widths=(64, 192, 384, 256)), r"\[64, 192, 384, 256\]"),
    (lambda: AlexNet(widths=(64, 191, 384, 256, 256)), "191"),
    (lambda: DenseNet(stem="mnist"), "mnist"),
    (lambda: DenseNet(compression=0.0), "0.0"),
    (lambda: FractalNet(dropout=[0.1]), r"\[0.1\]"),
])
def test_bad_arguments_fail_at_construction(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()
