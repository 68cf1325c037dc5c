"""Every command in README.md and docs/*.md works as written.

Each `python train.py ...` (and each override list given to slurm/train.sbatch) composes with the real configs, every
key and option existing, and passes the checks train.py runs before any data is decoded; a sweep (-m) is checked at
the first value of each swept key. Each inline code span made of trainer, callbacks or module overrides only
(`callbacks.latest.every_n_train_steps=1000`) composes. Each `python -m cnnlab.<module>` names a module that exists.
Placeholders (`<run dir>`, `...`) are left out; `[optional parts]` are kept."""

import importlib.util
import re
import shlex

import pytest
from conftest import ROOT, compose_run
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from cnnlab.guards import check_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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
                    found.append((f"{doc.name}: {part}", m.group(1) or "train.py", clean(m.group(2))))
                elif part and all(re.fullmatch(r"[+~]{0,2}[\w/]+(\.[\w]+)+=\S+", t) for t in part.split()) \
                        and part.split(".")[0].lstrip("+~") in FRAGMENT_GROUPS and "|" not in part:
                    found.append((f"{doc.name}: `{part}`", "overrides", part.split()))
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
