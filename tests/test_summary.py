"""`python -m cnnlab.summary`: the per-layer AlexNet table of REFERENCE.md section 1, natural input sizes, the zoo."""

import pytest
import torch
from conftest import CONF, config_names

from cnnlab import summary as S

torch.set_num_threads(1)

# REFERENCE.md section 1, AlexNet (64-192-384-256-256) at 3x227x227:
# (type, output C x H x W, memory KB, params k, MMACs), each rounded to an integer.
ALEXNET = [
    ("Conv2d", "64x56x56", 784, 23, 73),  # conv1 11x11/4 pad 2
    ("MaxPool2d", "64x27x27", 182, 0, 0),  # pool1 3x3/2
    ("Conv2d", "192x27x27", 547, 307, 224),  # conv2 5x5 pad 2
    ("MaxPool2d", "192x13x13", 127, 0, 0),  # pool2
    ("Conv2d", "384x13x13", 254, 664, 112),  # conv3 3x3 pad 1
    # conv4: the table's 145 MMACs is a slip: 13 * 13 * 256 * (3 * 3 * 384) = 149.5M
    ("Conv2d", "256x13x13", 169, 885, 150),
    ("Conv2d", "256x13x13", 169, 590, 100),  # conv5
    ("MaxPool2d", "256x6x6", 36, 0, 0),  # pool5
    # fc6: the table's 37,749 k leaves out the 4,096 biases (9216 * 4096 = 37,748,736 weights)
    ("Linear", "4096", 16, 37_753, 38),
    ("Linear", "4096", 16, 16_781, 17),  # fc7
    ("Linear", "1000", 4, 4_097, 4),  # fc8
]


def test_alexnet_table_of_reference_md() -> None:
    cfg, size = S.load(["model=alexnet_owt"], input_size=227, num_classes=1000)
    model, x = S.build(cfg, size)
    rows, counter = S.profile(model, x)
    got = [(r["type"], r["output"], round(r["kb"]), round(r["params"] / 1e3), round(r["macs"] / 1e6)) for r in rows]
    assert got == ALEXNET  # the AdaptiveAvgPool2d(6), ReLUs and dropouts change nothing at 227: no rows
    assert sum(r["macs"] for r in rows) == counter.get_total_flops() / 2
    assert sum(r["params"] for r in rows) == 61_100_840


def test_cli_prints_rows_and_totals(capsys) -> None:
    S.main(["model=alexnet_owt", "input_size=227", "num_classes=1000"])
    out = capsys.readouterr().out
    assert "input 3x227x227, 1000 classes" in out
    assert "features.0" in out and "64x56x56" in out and "classifier.6" in out
    assert out.strip().endswith("61,100,840 parameters, 0.717 GMACs")


@pytest.mark.parametrize(("overrides", "size", "classes", "total"), [
    (["model=resnet20"], 32, 10, "269,722 parameters, 0.041 GMACs"),
    (["model=lenet5"], 32, 10, "61,706 parameters, 0.000 GMACs"),
    (["model=resnet50"], 224, 1000, "25,557,032 parameters, 4.089 GMACs"),
    (["model=resnet50", "data=cifar100"], 224, 100, None),
    (["model=inception_v3", "model.aux_logits=false"], 299, 1000, "23,834,568 parameters, 5.713 GMACs"),
])
def test_default_input_is_the_models_natural_one(overrides, size, classes, total, capsys) -> None:
    S.main(overrides)
    out = capsys.readouterr().out
    channels = 1 if "model=lenet5" in overrides else 3
    assert f"input {channels}x{size}x{size}, {classes} classes" in out.splitlines()[0]
    if total:
        assert out.strip().endswith(total)


def test_zoo_rows_format() -> None:
    table = S.zoo(["resnet20", "wrn28_10", "resnet50"]).splitlines()
    assert table[2] == "| resnet20 | 32x32 | 10 | 269,722 | 0.041 | 40.55 |"  # REFERENCE.md: 40.55 MMACs
    assert table[3].startswith("| wrn28_10 | 32x32 | 10 | 36,479,194 |")
    assert table[4].startswith("| resnet50 | 224x224 | 1000 | 25,557,032 | 4.089 |")


@pytest.mark.slow
def test_zoo_lists_every_model_config(capsys) -> None:
    S.main(["--zoo"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == config_names("model")
    assert len(rows) == len(list((CONF / "model").glob("*.yaml")))
