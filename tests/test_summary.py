"""`python -m cnnlab.summary`: the per-layer table of the 64-filter AlexNet (torchvision's layout), each model at its
paper's input, auxiliary heads counted apart, Hydra's override grammar (typos fail, lists work, --help), nothing
written to the cwd."""

import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from cnnlab import summary as S

torch.set_num_threads(1)
RECORD = S.read_record()

# AlexNet (64-192-384-256-256, Krizhevsky 2014's one-weird-trick layout) at 3x227x227:
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


def cli(monkeypatch, capsys, tmp_path, *args: str) -> tuple[int, str, str]:
    """Run `python -m cnnlab.summary args` in an empty working directory: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["summary.py", *args])
    code = 0
    try:
        S.run()
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    return code, out, err


def total(name: str) -> str:
    return f"{RECORD[name]['params']:,} parameters, {RECORD[name]['gmacs']:.3f} GMACs"


def test_alexnet_table_of_reference_md() -> None:
    cfg, size = S.load("alexnet_owt", ["input_size=227"])
    model, x = S.build(cfg, size)
    rows, counter, params = S.profile(model, x)
    got = [(r["type"], r["output"], round(r["kb"]), round(r["params"] / 1e3), round(r["macs"] / 1e6)) for r in rows]
    assert got == ALEXNET  # the AdaptiveAvgPool2d(6), ReLUs and dropouts change nothing at 227: no rows
    assert sum(r["macs"] for r in rows) == counter.get_total_flops() / 2
    assert sum(r["params"] for r in rows) == params == RECORD["alexnet_owt"]["params"]


def test_cli_prints_rows_and_totals_and_writes_nothing(monkeypatch, capsys, tmp_path) -> None:
    code, out, _ = cli(monkeypatch, capsys, tmp_path, "model=alexnet_owt", "input_size=227")
    assert code == 0 and "input 3x227x227, 1000 classes" in out.splitlines()[0]
    assert "features.0" in out and "64x56x56" in out and "classifier.6" in out
    assert out.strip().endswith("61,100,840 parameters, 0.717 GMACs")  # 0.714 at 224
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log file


@pytest.mark.parametrize(("args", "header", "name"), [
    (["model=resnet20"], "input 3x32x32, 10 classes", "resnet20"),
    (["model=lenet5"], "input 1x32x32, 10 classes", "lenet5"),  # MNIST: one channel
    (["model=resnet50"], "input 3x224x224, 1000 classes", "resnet50"),
    (["model=inception_v3"], "input 3x299x299, 1000 classes", "inception_v3"),
    (["model=resnet50", "data=cifar100"], "input 3x224x224, 100 classes", None),  # data= keeps the paper's size
    (["model=resnet20", "data=imagenet", "input_size=224"], "input 3x224x224, 1000 classes", None),
])
def test_each_model_at_its_papers_input_unless_overridden(args, header, name, monkeypatch, capsys, tmp_path) -> None:
    code, out, _ = cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0 and header in out.splitlines()[0]
    if name:
        assert out.strip().endswith(total(name))


def test_auxiliary_heads_are_counted_apart(monkeypatch, capsys, tmp_path) -> None:
    """Szegedy et al. 2015 count GoogLeNet without its two training-only classifiers (Table 1: 6.8M)."""
    _, out, _ = cli(monkeypatch, capsys, tmp_path, "model=googlenet")
    e = RECORD["googlenet"]
    assert f"auxiliary heads (training only): {e['aux_params']:,} parameters, " in out
    assert out.strip().endswith(total("googlenet")) and 6_700_000 < e["params"] < 7_100_000
    _, out, _ = cli(monkeypatch, capsys, tmp_path, "model=googlenet", "model.aux_logits=false")
    assert "auxiliary" not in out and out.strip().endswith(total("googlenet"))


def test_list_values_and_typos_speak_hydras_grammar(monkeypatch, capsys, tmp_path) -> None:
    code, out, _ = cli(monkeypatch, capsys, tmp_path, "model=resnet20", "model.depths=[1,1,1]")
    assert code == 0 and "layer3.0" in out and "layer3.1" not in out
    code, _, err = cli(monkeypatch, capsys, tmp_path, "model=resnet20", "input_sise=64")
    assert code == 1 and "input_sise" in err
    code, _, err = cli(monkeypatch, capsys, tmp_path, "model=resnet2O")
    assert code == 1 and "resnet2O" in err
    code, _, err = cli(monkeypatch, capsys, tmp_path, "--json")
    assert code == 1 and "give it with zoo=true" in err


def test_help_lists_the_keys(monkeypatch, capsys, tmp_path) -> None:
    code, out, _ = cli(monkeypatch, capsys, tmp_path, "--help")
    assert code == 0 and "python -m cnnlab.summary --zoo" in out
    assert all(f"\n{key}:" in out for key in ("input_size", "zoo", "json", "model", "data"))


def test_a_model_without_a_record_entry_takes_the_data_configs_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(S, "RECORD", tmp_path / "zoo.json")
    S.write_record({})
    assert S.load("resnet50", [])[1] == 32  # data=cifar10, the default: image_size 32
    with pytest.raises(ValueError, match="give input_size=N"):
        S.load("resnet50", ["data=imagenet"])  # the ImageNet configs crop in augment/eval: no image_size


def test_zoo_flag_writes_the_table_from_the_record(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(S, "TABLE", tmp_path / "MODEL_ZOO.md")
    (tmp_path / "cwd").mkdir()
    code, out, _ = cli(monkeypatch, capsys, tmp_path / "cwd", "--zoo")
    assert code == 0 and f"wrote {S.TABLE}" in out
    assert S.TABLE.read_text() == (S.ROOT / "docs" / "MODEL_ZOO.md").read_text()
    assert list((tmp_path / "cwd").iterdir()) == []
