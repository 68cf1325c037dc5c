"""A checkpoint is data, never code: every entry point that reads a file (evaluate, predict, export, visualize,
transfer.weights=, ckpt_path= resume) refuses a file whose stored run config names a `_target_` outside cnnlab's
allow-list, or whose pickle names Python objects, before building or running anything; and a truncated or corrupt
file is reported as such, naming it. Plus the one command-line grammar of the tools (cnnlab.cli)."""

import os
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF, run_train

from cnnlab import evaluate, export, predict, visualize
from cnnlab.checkpoint import check_targets, load_checkpoint
from cnnlab.cli import compose

QUICK = ["data=synthetic", "data.synthetic_size=[32,16]", "data.batch_size=16", "trainer.max_epochs=1",
         "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"]
TOOLS = {"evaluate": (evaluate.main, []), "predict": (predict.main, ["image=x.png"]),
         "export": (export.main, ["format=torchscript", "out=m.pt"]), "visualize": (visualize.main, ["what=filters"])}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    run_train(QUICK, run)
    return run / "checkpoints" / "last.ckpt"


def conf_targets() -> list[tuple[str, str]]:
    """(file, target) of every `_target_` in conf/, but Hydra's own settings (sweeper samplers, launchers)."""
    found = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                found.extend([(where, v)] if k == "_target_" else [])
                walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for f in sorted(CONF.rglob("*.yaml")):
        if f.relative_to(CONF).parts[0] not in ("hydra", "hparams_search"):
            walk(yaml.safe_load(f.read_text()), str(f.relative_to(CONF)))
    return found


def test_every_target_of_the_configs_is_allowed_and_others_are_not():
    targets = conf_targets()
    assert len(targets) > 40 and {"cnnlab.models.ResNet", "torch.optim.SGD", "lightning.pytorch.Trainer"} <= {
        t for _, t in targets}
    for where, target in targets:
        check_targets({"_target_": target}, where)  # a new config group target must join TARGET_MODULES
    for bad, says in [("builtins.open", "is not allowed"), ("numpy.load", "is not allowed"),
                      ("cnnlab.checkpoint.os.system", "resolves to posix.system"),  # an attribute walk out of cnnlab
                      ("torch.optim.sgd.torch.load", "resolves to torch.serialization.load"),
                      ("lightning.pytorch.cli.LightningCLI", "resolves to lightning.pytorch.cli.LightningCLI"),
                      ("cnnlab.models.ResNet.__init__", "is not allowed"),
                      ("cnnlab.checkpoint.load_checkpoint", "resolves to .*, which is not")]:  # functions: schedules
        with pytest.raises(ValueError, match=rf"run.data.\_target\_='{bad}' {says}"):
            check_targets({"model": {"_target_": "cnnlab.models.ResNet"}, "data": {"_target_": bad}}, "run")
    with pytest.raises(ValueError, match=r"run.model.depths\[0\]='\$\{oc.env:X\}': a stored run config holds"):
        check_targets({"model": {"depths": ["${oc.env:X}"]}}, "run")


def test_own_packages_are_trusted_only_when_listed(monkeypatch):
    monkeypatch.setenv("CNNLAB_TRUSTED_TARGETS", "conftest, mylab")
    check_targets({"callbacks": {"crash": {"_target_": "conftest.InterruptAt", "step": 3}}})
    with pytest.raises(ValueError, match="'conftest.os.system' resolves to posix.system"):  # still no walking out
        check_targets({"_target_": "conftest.os.system"})
    monkeypatch.delenv("CNNLAB_TRUSTED_TARGETS")
    with pytest.raises(ValueError, match=r"config.callbacks.crash._target_='conftest.InterruptAt' is not allowed"):
        check_targets({"callbacks": {"crash": {"_target_": "conftest.InterruptAt", "step": 3}}})


def crafted(ckpt: Path, tmp_path: Path, group: str, node: dict) -> Path:
    """The real checkpoint with one group of its stored run config replaced by `node`."""
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["run_config"][group] = node
    torch.save(state, tmp_path / "crafted.ckpt")
    return tmp_path / "crafted.ckpt"


def attacks(tmp_path: Path) -> list[tuple[str, dict, str]]:
    """(group, node, the target the error must name): each would create tmp_path/pwned if it were built."""
    pwned = str(tmp_path / "pwned")
    return [("model", {"_target_": "builtins.open", "file": pwned, "mode": "w"}, "builtins.open"),
            ("data", {"_target_": "numpy.save", "file": pwned, "arr": [1], "allow_pickle": True}, "numpy.save"),
            ("model", {"_target_": "cnnlab.checkpoint.os.system", "command": f"touch {pwned}"},
             "cnnlab.checkpoint.os.system")]


@pytest.mark.parametrize("tool", list(TOOLS))
def test_each_tool_refuses_a_checkpoint_whose_config_names_a_foreign_target(tool, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, args = TOOLS[tool]
    for group, node, target in attacks(tmp_path):
        bad = crafted(ckpt, tmp_path, group, node)
        with pytest.raises(SystemExit) as exit_:
            main([f"ckpt={bad}", *args])
        assert f"run_config.{group}._target_='{target}'" in str(exit_.value.code) and str(bad) in str(exit_.value.code)
        assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned.npy").exists()
    with pytest.raises(ValueError, match=r"run_config.model._target_='builtins.open' is not allowed"):
        predict.load(crafted(ckpt, tmp_path, *attacks(tmp_path)[0][:2]))  # the Python API too
    assert sorted(os.listdir(tmp_path)) == ["crafted.ckpt"]


def test_transfer_weights_and_resume_refuse_a_crafted_checkpoint(ckpt, tmp_path):
    bad = crafted(ckpt, tmp_path, *attacks(tmp_path)[0][:2])
    for overrides in ([f"transfer.weights={bad}"], [f"ckpt_path={bad}"]):
        with pytest.raises(ValueError, match=r"run_config.model._target_='builtins.open' is not allowed"):
            run_train([*QUICK, *overrides], tmp_path / "run")
        assert not (tmp_path / "pwned").exists() and not list((tmp_path / "run").glob("checkpoints/*"))


class Payload:
    """Unpickling this would create a file: what a malicious pickle does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickle_that_names_code_is_refused_unrun(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    state["callbacks"] = Payload(tmp_path / "pwned")
    torch.save(state, tmp_path / "evil.ckpt")
    for load in (lambda: load_checkpoint(tmp_path / "evil.ckpt"), lambda: predict.load(tmp_path / "evil.ckpt"),
                 lambda: run_train([*QUICK, f"ckpt_path={tmp_path}/evil.ckpt"], tmp_path / "run")):
        with pytest.raises(ValueError, match=r"evil.ckpt holds Python objects .*\(it names io.open\)"):
            load()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("tool", list(TOOLS))
def test_truncated_or_random_files_are_named_as_unreadable(tool, ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))
    main, args = TOOLS[tool]
    for name in ("truncated.ckpt", "random.ckpt"):
        with pytest.raises(SystemExit) as exit_:
            main([f"ckpt={tmp_path / name}", *args])
        assert f"ckpt={tmp_path / name} is not a readable checkpoint" in str(exit_.value.code)
    with pytest.raises(ValueError, match=r"transfer.weights=.*truncated.ckpt is not a readable checkpoint"):
        run_train([*QUICK, f"transfer.weights={tmp_path}/truncated.ckpt"], tmp_path / "run")


def test_tools_speak_hydras_grammar_and_write_nothing_to_cwd(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="Could not override 'data.eval_batchsize'"):  # as in train.py, naming it
        evaluate.main([f"ckpt={ckpt}", "data.eval_batchsize=8"])
    predict.main([f"ckpt={ckpt}", "--help"])
    out = capsys.readouterr().out
    assert "topk: 5" in out and "data: checkpoint, cifar10" in out and "_target_: cnnlab.models.ResNet" in out
    r = evaluate.evaluate(ckpt, "none", ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                         "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"])  # list values
    assert r["n_images"] == 16
    visualize.main([f"ckpt={ckpt}", "what=filters", f"out={tmp_path}/out/f.png"])
    assert os.listdir(tmp_path) == ["out"]  # no outputs/, .hydra/ or log file


def hydra_payloads(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """name -> (run_config changes, the key the error must name): each steers Hydra or logging if it is composed.
    The stored data node lifts the stored eval node to the top level (`defaults`), where its `hydra` section would
    run a logging factory, open a log file, pick the run directory, set environment variables or add callbacks."""
    lift = {"data": {"defaults": [{"/eval@_global_": "checkpoint"}, "_self_"]}}
    factory = {"version": 1, "formatters": {"f": {"()": "numpy.savetxt", "fname": str(tmp_path / "pwned.txt"),
                                                  "X": [1.0]}}}
    handler = {"version": 1, "handlers": {"h": {"class": "logging.FileHandler",
                                                "filename": str(tmp_path / "pwned.log")}},
               "root": {"handlers": ["h"]}}
    hydra = {"logging_factory": {"job_logging": factory},
             "file_handler": {"job_logging": handler, "hydra_logging": handler},
             "run_dir": {"run": {"dir": str(tmp_path / "pwned_dir")}, "output_subdir": "pwned_hydra"},
             "env_set": {"job": {"env_set": {"CNNLAB_PWNED": "1"}}},
             "callbacks": {"callbacks": {"c": {"_target_": "hydra.experimental.callbacks.PickleJobInfoCallback",
                                               "output_dir": str(tmp_path / "pwned_cb")}}}}
    payloads = {name: ({**lift, "eval": {"name": "none", "hydra": node}}, r"run_config\.(eval\.hydra|data\.defaults)")
                for name, node in hydra.items()}
    payloads["top_level_hydra"] = ({"hydra": hydra["run_dir"]}, r"run_config\.hydra")
    payloads["args"] = ({"model": {"_args_": [str(tmp_path / "pwned")]}}, r"run_config\.model\._args_")
    return payloads


def craft(ckpt: Path, out: Path, changes: dict) -> Path:
    """The real checkpoint with its stored run config's nodes updated by `changes` (one level deep)."""
    state = torch.load(ckpt, weights_only=True)
    config = state["hyper_parameters"]["run_config"]
    for key, node in changes.items():
        config[key] = {**config[key], **node} if isinstance(config.get(key), dict) else node
    torch.save(state, out)
    return out


ENTRY_POINTS = [*TOOLS, "compose"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_stored_config_never_reaches_hydra_or_logging(entry, ckpt, tmp_path, monkeypatch):
    """Issue 20, item 1: for each entry point and each payload nothing runs, nothing is written, no variable is
    set, and the message names the key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNLAB_PWNED", raising=False)
    for name, (changes, key) in hydra_payloads(tmp_path).items():
        bad = craft(ckpt, tmp_path / f"{name}.ckpt", changes)
        if entry == "compose":
            with pytest.raises(ValueError, match=key):
                compose(bad, ["eval=center"])
        else:
            main, args = TOOLS[entry]
            with pytest.raises(SystemExit) as exit_:
                main([f"ckpt={bad}", *args, "eval=none"])
            assert re.search(key, str(exit_.value.code)) and str(bad) in str(exit_.value.code), (name, exit_.value)
        assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(p.name for p in tmp_path.glob("*.ckpt")), name
        assert "CNNLAB_PWNED" not in os.environ
        bad.unlink()
    assert not list(tmp_path.iterdir())


def test_tools_read_only_plain_values_and_local_write_settings(ckpt, tmp_path, monkeypatch):
    """What the tools take from a stored run config: values, never where this machine writes."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    bad = craft(ckpt, tmp_path / "c.ckpt", {"data": {"cache_dir": "/etc/cnnlab", "download": True},
                                            "trainer": {"default_root_dir": "/etc"}})
    cfg, _ = compose(bad, ["data.batch_size=8"], tool="evaluate")
    assert cfg.data.cache_dir == str(tmp_path / "cache") and cfg.data.download is False
    assert cfg.data.batch_size == 8 and "default_root_dir" not in cfg.trainer  # the tool's trainer keys, not the run's
    assert compose(bad, ["data.download=true"])[0].data.download is True  # the command line may set it
    for node, says in [({"model": {"depths": "${oc.env:HOME}"}}, r"run_config.model.depths='\$\{oc.env:HOME\}'"),
                       ({"model": {"depths": {1: 2}}}, r"run_config.model.depths: key 1 is a int"),
                       ({"seed": [b"x"]}, r"run_config.seed\[0\] is a bytes")]:
        with pytest.raises(ValueError, match=says):
            compose(craft(ckpt, tmp_path / "c.ckpt", node))


@pytest.mark.parametrize("target", ["lightning.pytorch.loggers.csv_logs.ExperimentWriter",
                                    "lightning.pytorch.profilers.SimpleProfiler", "cnnlab.data.Augment"])
def test_a_stored_model_config_names_model_classes_only(target, ckpt, tmp_path):
    """Issue 20, item 3: an allowed class that takes a path (a logger's writer, a profiler) nested in a stored model
    config is refused by every reader, transfer.weights= included; nothing is created."""
    node = {"model": {"stem": {"_target_": target, "log_dir": str(tmp_path / "pwned")}}}
    bad = craft(ckpt, tmp_path / "c.ckpt", node)
    says = rf"run_config.model.stem._target_='{target}' is not allowed in a stored model config"
    with pytest.raises(ValueError, match=says):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match=says):
        predict.load(bad)
    with pytest.raises(ValueError, match=says):
        run_train([*QUICK, f"transfer.weights={bad}"], tmp_path / "run")
    assert not (tmp_path / "pwned").exists()
