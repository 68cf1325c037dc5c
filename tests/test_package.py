"""The package as a user installs it: configs and train.py inside the wheel, console scripts, LICENSE."""

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ENV, ROOT, TINY

from cnnlab import paths

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
TOOLS = ("evaluate", "predict", "export", "visualize", "report", "summary")


def test_a_clone_finds_its_configs_and_train_py():
    assert paths.conf_dir() == ROOT / "conf" and paths.train_script() == ROOT / "train.py"


def test_every_subpackage_is_listed_and_every_console_script_resolves():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml's packages lack {found - listed}"
    assert set(SCRIPTS) == {"cnnlab-train", *(f"cnnlab-{t}" for t in TOOLS)}
    import importlib

    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    assert "MIT" in (ROOT / "LICENSE").read_text() and PYPROJECT["project"]["license"] == "MIT"


@pytest.mark.slow
def test_wheel_carries_the_configs_and_its_console_scripts_train(tmp_path):
    """pip wheel -> a fresh venv (the test environment's packages underneath, nothing downloaded) -> cnnlab-train
    and a tool from a directory that is not the clone."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path / "w"), "--no-deps", "-q"],
                   check=True, cwd=tmp_path)
    wheel = next((tmp_path / "w").glob("cnnlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"cnnlab/app/{p.relative_to(ROOT)}" for p in (ROOT / "conf").rglob("*") if p.is_file()}
    assert confs <= names, sorted(confs - names)[:5]
    assert "cnnlab/app/train.py" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert "hydra_plugins/cnnlab_extras/__init__.py" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}  # the installed copy, not this checkout's src
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], env=env,
                   cwd=tmp_path, check=True)
    site = next(venv.glob("lib/python*/site-packages"))  # after the install: pip would see the editable cnnlab there
    (site / "underneath.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")))
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([venv / "bin" / "python", "-c", "import cnnlab.paths as p; print(p.conf_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(site / "cnnlab" / "app" / "conf")
    done = subprocess.run([venv / "bin" / "cnnlab-train", *TINY, "trainer.max_steps=2", "hydra.run.dir=run"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "run" / "results.json").is_file()
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    out = subprocess.run([venv / "bin" / "cnnlab-evaluate", f"ckpt={ckpt}"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "top-1 error" in out.stdout, out.stderr[-3000:]
    assert os.listdir(work) == ["run"]  # nothing written beside the run
