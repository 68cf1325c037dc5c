"""Every config composes and instantiates; bad keys, options and values fail with a message naming them."""

import importlib.util
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import CONF, ROOT, compose_run, config_names
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import open_dict

from cnnlab import extras
from cnnlab.data import Augment
from cnnlab.evaluation import EvalProtocol
from cnnlab.guards import check_config
from cnnlab.transfer import Transfer

KINDS = {"data": L.LightningDataModule, "augment": Augment, "trainer": L.Trainer,
         "transfer": Transfer, "eval": EvalProtocol}
GROUPS = ["data", "augment", "module", "optim", "schedule", "trainer", "callbacks", "logger", "experiment",
          "transfer", "eval"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_instantiates(group, tmp_path):
    names = config_names(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        extra = [] if group == "data" else ["data=synthetic"]
        cfg = compose_run([f"{group}={name}", *extra], tmp_path / name)
        job = cfg.copy()
        with open_dict(job):
            del job["hydra"]
        check_config(job)  # the types and values train.py checks at start: every shipped config passes them
        if group == "experiment":
            with torch.device("meta"):  # built without memory or initialization: the config, not the weights, is tested
                model = instantiate(cfg.model)
            assert sum(p.numel() for p in model.parameters()) > 0
        elif group in ("callbacks", "logger"):
            if extras.missing(job):
                continue  # an extra not installed here (callbacks=rich): tests/test_extras.py checks its error
            kind = L.Callback if group == "callbacks" else Logger
            assert all(isinstance(instantiate(c), kind) for c in cfg[group].values())
        elif group == "optim":
            opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(2))])
            assert isinstance(opt, torch.optim.Optimizer)
        elif group == "schedule":
            factor = instantiate(cfg.schedule)(total_steps=1000, steps_per_epoch=10)
            assert factor(999) <= 1.0
        elif group == "module":
            module = instantiate(cfg.module, model=torch.nn.Linear(2, 10), optimizer=None, schedule=None)
            assert module.hparams.num_classes == 10
        elif group == "data" and name.endswith("_ffcv") and importlib.util.find_spec("ffcv") is None:
            hint = r"FFCV is not installed.*apt-get install -y libturbojpeg0-dev .* pip install -e '.\[ffcv\]'"
            with pytest.raises(InstantiationException, match=hint):  # without the optional extra: the install hint
                instantiate(cfg.data)
        else:
            assert isinstance(instantiate(cfg[group]), KINDS[group]), (group, name)


def test_every_model_composes_and_instantiates(tmp_path):
    """The zoo (77 files): each model file composed on its own (its `defaults` chain) and set into one composed run
    config, as `model=<name>` gives it; checked and built on the meta device, without memory or initialization
    (tests/test_models.py and test_zoo.py check the real weights and parameter counts)."""
    names = config_names("model")
    assert len(names) > 70, names
    job = compose_run(["data=synthetic"], tmp_path)
    with open_dict(job):
        del job["hydra"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in names:
            job.model = compose(config_name=None, overrides=[f"+model={name}"]).model
            check_config(job)
            with torch.device("meta"):
                model = instantiate(job.model)
            assert sum(p.numel() for p in model.parameters()) > 0, name
            assert next(model.parameters()).is_meta, name


def test_experiment_he2016_cifar_is_the_papers_recipe(tmp_path):
    cfg = compose_run(["experiment=he2016_cifar", "model=resnet56"], tmp_path)
    assert (cfg.data.batch_size, cfg.data.val_split, cfg.data.normalize) == (128, 5000, "pixel_mean")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert list(cfg.schedule.milestones) == [32000, 48000] and cfg.schedule.unit == "step"
    assert cfg.trainer.max_steps == 64000
    assert list(cfg.model.depths) == [9, 9, 9]
    cfg110 = compose_run(["experiment=he2016_cifar110"], tmp_path / "110")
    assert list(cfg110.model.depths) == [18, 18, 18] and cfg110.callbacks.warmup.below == 0.8  # error < 80%


def test_command_line_composes_any_combination(tmp_path):
    cfg = compose_run(["model=plain56", "data=cifar100", "optim.lr=0.05"], tmp_path)
    assert cfg.model.residual is False and list(cfg.model.depths) == [9, 9, 9]
    assert cfg.data.num_classes == 100 and cfg.model.num_classes == 100 and cfg.optim.lr == 0.05


def test_unknown_option_and_key_fail_naming_them(tmp_path):
    with pytest.raises(MissingConfigException, match="resnet21"):
        compose_run(["model=resnet21"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):
        compose_run(["trainer.max_epoch=3"], tmp_path)


def test_help_lists_groups_and_options():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for line in ("model: ", "data: ", "experiment: ", "he2016_cifar", "plain56", "resnet1202", "lenet5", "synthetic",
                 "transfer: finetune_last, full, linear_probe, none"):
        assert line in out.stdout, line


def test_every_group_maps_to_a_folder():
    # model: its own test above; hparams_search: Optuna sweeper settings (# @package _global_), composed in
    # test_sweeps; debug and paths: plain settings without a `_target_` (test_conveniences); tune: plain settings
    # read by cnnlab.tune (test_tune)
    others = ["model", "hydra", "hparams_search", "debug", "paths", "tune"]
    assert sorted(p.name for p in CONF.iterdir() if p.is_dir()) == sorted([*GROUPS, *others])


def test_trainer_config_lists_every_lightning_trainer_argument():
    import inspect

    import lightning as L
    import yaml

    listed = set(yaml.safe_load((CONF / "trainer" / "default.yaml").read_text())) - {"_target_"}
    expected = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    assert listed == expected
