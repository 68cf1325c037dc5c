"""The classic-CNN zoo: every config composes and builds, parameter counts and MACs are pinned (REFERENCE.md, 1),
torchvision state dicts load strictly, and the CIFAR-sized models train a step."""

from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models import VGG, AlexNet, DenseNet, FractalNet, GoogLeNet

torch.set_num_threads(1)
CONF = Path(__file__).parents[1] / "conf"

# 1000 classes; built on the meta device. Published counts: REFERENCE.md section 1 and the papers' tables.
IMAGENET = {
    "alexnet": 60_965_224,
    "alexnet_owt": 61_100_840,
    "zfnet": 107_627_624,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg11_lrn": 132_863_336,
    "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16c": 133_638_952, "vgg16c_bn": 133_647_400,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "googlenet": 13_378_280,  # torchvision's 13,004,888 + 380,928 (5x5s) - 7,536 (biases in place of BN)
    "googlenet_bn": 13_385_816,  # torchvision's 13,004,888 + 380,928 (5x5s)
    "inception_v3": 27_161_264,
    "densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480,
    "densenet201": 20_013_928, "densenet264": 33_337_704,
}
INPUT_SIZE = {"inception_v3": 299}
# Small models, real tensors: (data config, parameter count, input shape of one image).
SMALL = {
    "lenet5_relu": ("mnist", 61_706, (1, 32, 32)),
    "vgg_cifar": ("synthetic", 9_231_114, (3, 32, 32)),
    "nin": ("synthetic", 966_986, (3, 32, 32)),
    "densenet_bc100": ("synthetic", 769_162, (3, 32, 32)),  # paper: 0.8M
    "fractalnet": ("synthetic", 76_106_634, (3, 32, 32)),
}


def build(name: str, data: str = "synthetic", *overrides: str) -> nn.Module:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("train", overrides=[f"model={name}", f"data={data}", *overrides])
    return instantiate(cfg.model)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_zoo_config_is_tested() -> None:
    for name in [*IMAGENET, *SMALL]:
        assert (CONF / "model" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_model_params_and_shape(name: str) -> None:
    with torch.device("meta"):
        model = build(name, "synthetic", "data.num_classes=1000")
        assert count(model) == IMAGENET[name]
        size = INPUT_SIZE.get(name, 224)
        out = model.eval()(torch.empty(2, 3, size, size))
    assert out.shape == (2, 1000)


@pytest.mark.parametrize("name", SMALL)
def test_small_model_params_and_train_step(name: str) -> None:
    data, params, shape = SMALL[name]
    torch.manual_seed(0)
    model = build(name, data)
    assert count(model) == params
    x, y = torch.randn(2, *shape), torch.tensor([0, 1])
    loss = nn.functional.cross_entropy(model.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    if name != "fractalnet":  # global drop-path may train a single column (see the test below)
        assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


@pytest.mark.parametrize(("name", "params"), [("googlenet", 6_998_552), ("googlenet_bn", 7_005_832),
                                              ("inception_v3", 23_834_568)])
def test_without_aux_heads(name: str, params: int) -> None:
    with torch.device("meta"):
        assert count(build(name, "synthetic", "data.num_classes=1000", "model.aux_logits=false")) == params


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
    ours = build(name, "synthetic", "data.num_classes=1000").eval()
    kw = {"init_weights": False} if tv_name == "inception_v3" else {}
    with torch.device("meta"):  # skip torchvision's slow init: its weights come from ours
        theirs = getattr(torchvision.models, tv_name)(**kw)
    theirs = theirs.to_empty(device="cpu").eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():  # same weights, same function: the layer order matches too
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(("name", "gmacs"), [("alexnet_owt", 0.714), ("vgg16", 15.470)])
def test_macs_at_224(name: str, gmacs: float) -> None:
    with torch.device("meta"):
        model = build(name, "synthetic", "data.num_classes=1000").eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    assert round(counter.get_total_flops() / 2 / 1e9, 3) == gmacs


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
