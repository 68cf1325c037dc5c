"""Every command in README.md, docs/*.md and data/README.md works as written.

Each `python train.py ...` (and each override list given to slurm/train.sbatch) composes with the real configs, every
key and option existing, and passes the checks train.py runs before any data is decoded; a sweep (-m) is checked at
the first value of each swept key. Each inline code span made of trainer, callbacks or module overrides only
(`callbacks.latest.every_n_train_steps=1000`) composes. Each `python -m cnnlab.<module>` names a module that exists.
Placeholders (`<run dir>`, `...`) are left out; `[optional parts]` are kept.

And they run: the README's first command, shortened to a few steps, in the default suite; every `python train.py`
command whose data is on this machine (../shared/datasets, or synthetic), shortened the same way, in the slow suite."""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import DATASETS, ROOT, compose_run, run_train
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from cnnlab.guards import check_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
# Appended to a documented command to run it in seconds: a few steps of each stage, on the CPU
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
         "callbacks.progress_bar.refresh_rate=0"]
# ... and the finders (tune=) shortened too: 13 range-test steps (the fewest with a suggestion), 2 batch-size trials
SHORT_TUNE = {"tune=lr_find": ["tune.num_training=13"],
              "tune=batch_size": ["tune.max_trials=2", "tune.steps_per_trial=1"]}
OFFLINE = ("experiment=finetune_",)  # they start from torchvision's ImageNet weights: a download
FRAGMENT_GROUPS = ("trainer", "callbacks", "module")  # their keys are the same whichever option: a fragment composes
COMMAND = re.compile(r"(?:python3? (train\.py|-m cnnlab[\w.]*)|slurm/train\.sbatch)(?:\s|$)(.*)")


def clean(args: str) -> list[str]:
    """The arguments as a user would type them for real: placeholders out, optional brackets opened."""
    args = re.sub(r"(?<!\S)<[^>]+>(?!\S)", " ", args)  # `<same overrides>`
    args = re.sub(r"<[^>]+>", "PLACEHOLDER", args)  # `ckpt=runs/<date>/<time>/last.ckpt`
    args = re.sub(r"(?<![=\S])\[([^\]]*)\](?!\S)", r"\1", args)  # `[data=imagenet data.root=...]`, not `k=[1,2]`
    return [a for a in shlex.split(args) if a != "..." and not a.endswith("=...")]


def documented() -> list[tuple[str, str, list[str]]]:
    """(where, program, arguments) of every command in the docs' code blocks and inline code."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
        lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        for line in lines:
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                part = part.strip()
                if m := COMMAND.search(part):
                    found.append((f"{doc.relative_to(ROOT)}: {part}", m.group(1) or "train.py", clean(m.group(2))))
                elif part and all(re.fullmatch(r"[+~]{0,2}[\w/]+(\.[\w]+)+=\S+", t) for t in part.split()) \
                        and part.split(".")[0].lstrip("+~") in FRAGMENT_GROUPS and "|" not in part:
                    found.append((f"{doc.relative_to(ROOT)}: `{part}`", "overrides", part.split()))
    return found


COMMANDS = documented()


def first_of_sweeps(args: list[str]) -> list[str]:
    """`model=a,b seed=0,1` -> `model=a seed=0`: one job of the sweep, which composes as a single run."""
    out = []
    for arg, o in zip(args, OverridesParser.create().parse_overrides(args), strict=True):
        out.append(f"{arg.split('=')[0]}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else arg)
    return out


def test_the_docs_hold_commands():
    programs = {p for _, p, _ in COMMANDS}
    assert "train.py" in programs and len([c for c in COMMANDS if c[1] == "train.py"]) >= 10, COMMANDS


@pytest.mark.parametrize(("where", "program", "args"), COMMANDS, ids=[c[0][:100] for c in COMMANDS])
def test_documented_command_works_as_written(where, program, args, tmp_path):
    if program.startswith("-m cnnlab"):
        module = program.split()[-1]
        assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        return
    overrides = first_of_sweeps([a for a in args if not a.startswith("-") and a not in ("job", "hydra", "all")])
    cfg = compose_run(overrides, tmp_path)
    if program == "overrides":  # a fragment: it composes; the full command it belongs to is checked where written
        return
    with open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)


def on_this_machine(args: list[str]) -> list[str] | None:
    """The arguments with ../shared/datasets pointed at the datasets here, or None when the command's data is not
    on this machine (no data.root given for a real dataset, or a root that is absent)."""
    out, root = [], None
    for a in args:
        if a.startswith("data.root="):
            root = Path(a.split("=", 1)[1].replace("../shared/datasets", str(DATASETS)))
            a = f"data.root={root}"
        out.append(a)
    synthetic = "data=synthetic" in args
    if any(a.startswith(OFFLINE) for a in args) or not synthetic and (root is None or not root.exists()):
        return None
    return out


RUNNABLE = [(w, a) for w, p, a in COMMANDS if p == "train.py" and "PLACEHOLDER" not in " ".join(a)
            and on_this_machine(a) is not None]


def test_readme_first_command_runs_shortened(tmp_path):
    """`python train.py data.root=../shared/datasets/cifar10-jpg trainer.max_epochs=1`, the README's first command,
    for 2 steps: the real JPEGs (decoded once into the cache), the 45k/5k split, validation and test."""
    where, args = next((w, a) for w, p, a in COMMANDS if w.startswith("README.md") and p == "train.py")
    assert "data.root=../shared/datasets/cifar10-jpg" in args, where
    if (ready := on_this_machine(args)) is None:
        pytest.skip(f"no CIFAR-10 JPEG copy in {DATASETS}")
    run_train([*first_of_sweeps(ready), *SHORT], tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 2 and "test/err1" in results["test"]


@pytest.mark.slow
@pytest.mark.parametrize(("where", "args"), RUNNABLE, ids=[w[:100] for w, _ in RUNNABLE])
def test_documented_train_command_runs_shortened(where, args, tmp_path):
    overrides = first_of_sweeps([a for a in on_this_machine(args) if not a.startswith("-")])
    run_train([*overrides, *SHORT, *(o for a in overrides for o in SHORT_TUNE.get(a, []))], tmp_path)
    status = "tuned" if "tune.apply=false" in overrides else "finished"  # a finder's report alone trains nothing
    assert json.loads((tmp_path / "results.json").read_text())["status"] == status, where


@pytest.mark.slow
def test_using_models_tencrop_and_linear_probe_examples_run(tmp_path):
    """docs/using-models.md: `evaluate ckpt=<ckpt> eval=tencrop eval.resize=288` on an image-folder checkpoint, and
    the linear probe of a CIFAR-10 ResNet-20 on Imagenette (on disk here, read at 32 px)."""
    from cnnlab.evaluate import evaluate

    imagenette, cifar = DATASETS / "imagenette2-224", DATASETS / "cifar10-jpg"
    if not (imagenette / "train").is_dir() or not (cifar / "train").is_dir():
        pytest.skip(f"Imagenette or the CIFAR-10 JPEG copy is not in {DATASETS}")
    run_train(["data=imagenette", f"data.root={imagenette}", "model=resnet18", "data.per_class=2",
               "data.batch_size=4", "data.eval_batch_size=4", *SHORT], tmp_path / "imagenette")
    result = evaluate(tmp_path / "imagenette" / "checkpoints" / "last.ckpt", "tencrop",
                      ["eval.resize=288", "data.eval_batch_size=4"])
    assert result["protocol"] == "tencrop" and result["n_images"] == 20  # 2 per class of the 10
    run_train([f"data.root={cifar}", *SHORT], tmp_path / "cifar")
    probe = ["model=resnet20", "transfer=linear_probe", f"transfer.weights={tmp_path}/cifar/checkpoints/last.ckpt",
             f"data.root={imagenette}"]
    assert any(w.startswith("docs/using-models.md") and "transfer=linear_probe" in a
               and "data.root=../shared/datasets/imagenette2-224" in a for w, _, a in COMMANDS)  # the one documented
    run_train([*probe, *SHORT], tmp_path / "probe")
    assert json.loads((tmp_path / "probe" / "results.json").read_text())["status"] == "finished"
