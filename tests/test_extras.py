"""Every code path that needs an optional extra fails in one line naming `pip install 'cnnlab[<extra>]'`; the heavy
parts are not imported by a plain run."""

import copy
import importlib
import subprocess
import sys

import pytest
from conftest import CONF, ENV, ROOT, TINY, compose_run
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from cnnlab import extras

HIDE = "import sys; sys.modules.update(dict.fromkeys({mods!r}))"  # a None entry: `import x` fails as if absent


def hidden(monkeypatch, *modules: str) -> None:
    """`import m` (and of its submodules, imported already or not) fails as if m were not installed."""
    for m in modules:
        for name in [n for n in sys.modules if n.startswith(f"{m}.")] + [m]:
            monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra_and_passes_other_import_errors(monkeypatch):
    hidden(monkeypatch, "matplotlib")
    with pytest.raises(extras.MissingExtraError, match=r"^cnnlab.report's figures needs matplotlib, which is not "
                                                       r"installed: pip install 'cnnlab\[report\]'$"):
        extras.require("matplotlib.figure", "report", "cnnlab.report's figures")
    assert not extras.installed("matplotlib") and extras.installed("torch")


@pytest.mark.parametrize(("logger", "module"), [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_loggers_without_their_extra_fail_before_anything_is_built(logger, module, monkeypatch, tmp_path):
    hidden(monkeypatch, module)
    cfg = compose_run([f"logger=[csv,{logger}]"], tmp_path)
    with pytest.raises(extras.MissingExtraError, match=rf"logger={logger} needs {module}.*'cnnlab\[{logger}\]'"):
        extras.check(cfg)
    with pytest.raises(Exception, match=rf"'cnnlab\[{logger}\]'"):  # built directly (Hydra wraps the error)
        instantiate(cfg.logger[logger], save_dir=str(tmp_path), _convert_="all")


def test_onnx_export_without_the_extra_names_it(monkeypatch, tmp_path):
    from cnnlab import export

    hidden(monkeypatch, "onnx", "onnxruntime", "onnxscript")
    with pytest.raises(extras.MissingExtraError, match=r"format=onnx needs onnx.*'cnnlab\[export\]'"):
        export.onnx(None, None, tmp_path / "m.onnx")


def test_report_predict_visualize_without_matplotlib_name_the_extra(monkeypatch):
    from cnnlab import predict
    from cnnlab.report import tables

    hidden(monkeypatch, "matplotlib")
    with pytest.raises(extras.MissingExtraError, match=r"'cnnlab\[report\]'"):
        tables.pyplot()
    with pytest.raises(extras.MissingExtraError, match=r"'cnnlab\[report\]'"):
        predict.draw(None, [], None)
    monkeypatch.delitem(sys.modules, "cnnlab.visualize", raising=False)
    with pytest.raises(extras.MissingExtraError, match=r"cnnlab.visualize needs matplotlib.*'cnnlab\[report\]'"):
        importlib.import_module("cnnlab.visualize")


@pytest.mark.parametrize(("overrides", "plugin", "extra"), [
    (["-m", "hparams_search=lr_wd_ls"], "hydra_optuna_sweeper", "sweeps"),
    (["-m", "hydra/launcher=slurm"], "hydra_submitit_launcher", "slurm")])
def test_sweeper_and_launcher_without_their_plugin_name_the_extra(overrides, plugin, extra, monkeypatch):
    """The stand-ins of hydra_plugins.cnnlab_extras: registered when the plugin is absent, they stop in one line."""
    saved = copy.deepcopy(ConfigStore.instance().repo)
    monkeypatch.setattr(extras, "installed", lambda m: not m.endswith(plugin))
    try:
        import hydra_plugins.cnnlab_extras as stand_ins

        importlib.reload(stand_ins)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", [o for o in overrides if o != "-m"], return_hydra_config=True)
        node = cfg.hydra.sweeper if extra == "sweeps" else cfg.hydra.launcher
        with pytest.raises(SystemExit, match=rf"pip install 'cnnlab\[{extra}\]'"):
            instantiate(node)
    finally:
        ConfigStore.instance().repo = saved


def test_a_missing_extra_is_one_line_on_the_command_line(tmp_path):
    code = (HIDE.format(mods=["tensorboard"]) + "; import runpy; sys.argv = ['train.py', *sys.argv[1:]]; "
            f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, *TINY, "logger=[csv,tensorboard]", f"hydra.run.dir={tmp_path}"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    named = [line for line in done.stderr.splitlines() if "pip install 'cnnlab[tensorboard]'" in line]
    assert named == ["logger=tensorboard needs tensorboard, which is not installed: pip install 'cnnlab[tensorboard]'"]


def test_a_plain_run_imports_none_of_the_heavy_extras(tmp_path):
    code = ("import runpy, sys; sys.argv = ['train.py', *sys.argv[1:]]\ntry:\n"
            f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'wandb', 'tensorboard', 'optuna', 'submitit', "
            "'alembic'}))")  # not matplotlib: torchmetrics imports it whenever it is installed
    done = subprocess.run([sys.executable, "-c", code, *TINY, "trainer.max_steps=1", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path}"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
