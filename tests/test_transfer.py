"""Transfer learning through train.py: linear probe, last-k-stage and full fine-tuning from a real tiny checkpoint or
torchvision weights in a local hub cache; frozen weights and BN statistics stay put; mismatches fail clearly. And
building a network needs nothing of it: instantiate(cfg.model) alone builds every model config (test_configs)."""

import ast
import csv
from pathlib import Path

import conftest
import pytest
import torch
import torchvision
from conftest import ROOT, compose_run, run_train
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.transfer import stages

TINY = [*conftest.TINY, "data.synthetic_size=[64,32]", "data.batch_size=16"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A CIFAR ResNet-20 checkpoint from a real 1-epoch run on 10 synthetic classes."""
    run = tmp_path_factory.mktemp("pretrain")
    run_train([*TINY, "trainer.max_epochs=1"], run)
    return run / "checkpoints" / "last.ckpt"


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """The network train.py builds."""
    return instantiate(cfg.transfer)(instantiate(cfg.model), cfg)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def fine_tune(pretrained: Path, run: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """Two epochs on 5 new synthetic classes (Lightning calls model.train() at each); the final weights."""
    run_train([*TINY, "data.num_classes=5", "trainer.max_epochs=2", f"transfer.weights={pretrained}", *overrides], run)
    return weights(run / "checkpoints" / "last.ckpt")


def test_linear_probe_leaves_every_backbone_weight_unchanged(pretrained, tmp_path):
    before = weights(pretrained)
    after = fine_tune(pretrained, tmp_path, "transfer=linear_probe")
    backbone = [k for k in before if not k.startswith("fc.")]
    assert len(backbone) > 50 and any("running_mean" in k for k in backbone)
    changed = [k for k in backbone if not torch.equal(before[k], after[k])]
    assert not changed, changed  # conv/BN weights, running statistics and num_batches_tracked alike
    assert after["fc.weight"].shape == (5, 64)
    opt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 2  # the new head alone trains


def test_finetune_last_stage_trains_it_and_freezes_the_earlier_ones(pretrained, tmp_path):
    before = weights(pretrained)
    after = fine_tune(pretrained, tmp_path, "transfer=finetune_last", "transfer.train_stages=1")
    changed = {k for k in before if not k.startswith("fc.") and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("layer3.") for k in changed), sorted(changed)[:5]
    assert any(k.endswith("running_mean") for k in changed)  # BN of the trainable stage still adapts its statistics
    assert not torch.equal(before["layer3.2.conv2.weight"], after["layer3.2.conv2.weight"])


def test_full_finetune_gives_the_backbone_a_tenth_of_the_lr_and_can_freeze_bn_statistics(pretrained, tmp_path):
    before = weights(pretrained)
    after = fine_tune(pretrained, tmp_path, "transfer=full", "transfer.freeze_bn=true", "optim.lr=0.05",
                      "schedule=constant")
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])  # BN's scale still trains
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_*/metrics.csv")).open()))
    lrs = sorted({float(r[k]) for r in rows for k in r if k.startswith("lr-") and r[k]})
    assert lrs == pytest.approx([0.005, 0.05])  # backbone, head


def test_torchvision_weights_load_from_the_local_hub_cache(tmp_path, monkeypatch):
    """No internet here: torchvision's file is put where weights.get_state_dict() looks first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights_name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18().state_dict()
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True)
    torch.save(reference, tmp_path / "torch/hub/checkpoints" / weights_name.url.rsplit("/", 1)[1])
    run_train([*TINY, "data.batch_size=32", "data.eval_batch_size=32", "model=resnet18", "trainer.max_epochs=1",
               "transfer.weights=ResNet18_Weights.IMAGENET1K_V1", "transfer=linear_probe"], tmp_path / "run")
    after = weights(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert after["fc.weight"].shape == (10, 512)
    assert all(torch.equal(reference[k], after[k]) for k in reference if not k.startswith("fc."))


class Planted:
    """What a planted hub file would run if it were unpickled: it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_planted_torchvision_hub_file_is_read_weights_only(tmp_path, monkeypatch):
    """Issue 20, item 2: the docs tell offline users to copy torchvision's file in by hand; a file that names code is
    refused, naming it, and nothing of it runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1), "x": Planted(tmp_path / "pwned")}, tmp_path / "torch/hub/checkpoints" /
               name)
    with pytest.raises(ValueError, match=rf"transfer.weights=ResNet18_Weights.IMAGENET1K_V1: the torch hub file="
                                         rf".*/{name} holds Python objects .*\(it names io.open\)"):
        run_train([*TINY, "model=resnet18", "transfer.weights=ResNet18_Weights.IMAGENET1K_V1"], tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def test_densenet_files_with_torchvisions_old_key_names_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.densenet121().state_dict()
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in reference.items()
           if not k.endswith("num_batches_tracked")}  # the file predates BN's counter
    assert "features.denseblock1.denselayer1.norm.1.weight" in old  # as in densenet121-a639ec97.pth
    (tmp_path / "hub/checkpoints").mkdir(parents=True)
    torch.save(old, tmp_path / "hub/checkpoints/densenet121-a639ec97.pth")
    model = build_model(compose_run(["model=densenet121", "data=synthetic",
                                     "transfer.weights=DenseNet121_Weights.IMAGENET1K_V1"], tmp_path / "run"))
    assert torch.equal(model.state_dict()["features.denseblock4.denselayer16.conv2.weight"],
                       reference["features.denseblock4.denselayer16.conv2.weight"])


def test_stages_are_the_papers_resolution_groups(tmp_path):
    with torch.device("meta"):
        resnet50 = instantiate(compose_run(["model=resnet50", "data=synthetic"], tmp_path).model)
        vgg16 = instantiate(compose_run(["model=vgg16", "data=synthetic"], tmp_path).model)
    # He et al. 2016, Table 1: conv1 (112), conv2_x (56), conv3_x (28), conv4_x (14), conv5_x (7)
    assert [s[0] for s in stages(resnet50, (1, 3, 224, 224))] == ["conv1", "layer1.0", "layer2.0", "layer3.0",
                                                                  "layer4.0"]
    vgg = stages(vgg16, (1, 3, 224, 224))  # conv blocks between pools; fc6, fc7, fc8 with the last
    assert [len(s) for s in vgg] == [2, 2, 3, 3, 6] and vgg[-1][-3:] == ["classifier.0", "classifier.3",
                                                                          "classifier.6"]


def test_mismatches_and_bad_settings_fail_naming_them(pretrained, tmp_path):
    def build(*overrides: str):
        return build_model(compose_run(["data=synthetic", *overrides], tmp_path))

    with pytest.raises(ValueError, match=r"does not fit this model(.|\n)*missing from the checkpoint: layer1.3"):
        build("model=resnet32", f"transfer.weights={pretrained}")
    with pytest.raises(ValueError, match=r"conv1.weight: checkpoint \(16, 3, 3, 3\) vs model \(16, 1, 3, 3\)"):
        build("data.in_channels=1", f"transfer.weights={pretrained}")
    with pytest.raises(ValueError, match="needs transfer.weights"):
        build("transfer=linear_probe")
    with pytest.raises(FileNotFoundError, match="nope.ckpt' is neither a checkpoint file nor a torchvision weights"):
        build(f"transfer.weights={tmp_path}/nope.ckpt")
    with pytest.raises(ValueError, match="ResNet18_Weights.NOPE' is not a torchvision weights name"):
        build("model=resnet18", "transfer.weights=ResNet18_Weights.NOPE")
    with pytest.raises(ValueError, match="train_stages=7 but the model has 3 stages"):
        build(f"transfer.weights={pretrained}", "transfer=finetune_last", "transfer.train_stages=7")


def test_finetune_experiments_compose(tmp_path):
    cfg = compose_run(["experiment=finetune_imagenette"], tmp_path / "a")
    assert cfg.transfer.weights == "ResNet50_Weights.IMAGENET1K_V1" and cfg.transfer.backbone_lr == 0.1
    assert cfg.data.num_classes == 10 and cfg.data.root.endswith("imagenette2-224")
    cfg = compose_run(["experiment=finetune_cifar10"], tmp_path / "b")
    assert cfg.transfer.weights and cfg.model.stem == "imagenet" and cfg.data.dataset == "cifar10"


def test_frozen_bn_statistics_refuse_sync_batchnorm(pretrained, tmp_path):
    """SyncBN conversion would replace the frozen BN layers (and their hooks): fail before training, saying so."""
    with pytest.raises(ValueError, match="sync_batchnorm=true cannot keep frozen BN"):
        fine_tune(pretrained, tmp_path, "transfer=linear_probe", "trainer.sync_batchnorm=true")


def test_only_train_py_reaches_cnnlab_transfer():
    """summary, evaluate, predict, export, visualize build plain networks; only training starts from weights."""
    importers = []
    for f in [ROOT / "train.py", *sorted((ROOT / "src" / "cnnlab").rglob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "cnnlab.transfer" or n.startswith("cnnlab.transfer.") for n in names):
                importers.append(f.relative_to(ROOT).as_posix())
    assert set(importers) <= {"train.py"}, importers
    assert "cnnlab.transfer.Transfer" in (ROOT / "conf/transfer/none.yaml").read_text()  # train.py instantiates it
    assert not [f.name for f in (ROOT / "conf" / "model").glob("*.yaml") if "pretrained:" in f.read_text()]
