"""One command line for the tools that start from a checkpoint (evaluate, predict, export, visualize): Hydra's.

    python -m cnnlab.<tool> ckpt=<file> [the tool's keys] [data|eval|augment=<conf file>] [key=value ...]
    python -m cnnlab.<tool> --help              # the tool's keys; with ckpt=<file>, every key of its run config
    python -m cnnlab.<tool> ckpt=<file> --cfg job   # the config the tool runs with, nothing run
    python -m cnnlab.<tool> -m ckpt=<file> eval=center,tencrop     # one run per combination, in turn

A checkpoint's stored run config is data, never config to compose. Hydra composes only what this repository holds:
the tool's conf/<tool>.yaml and the conf/ files the command line picks (`data=imagenet`, `eval=tencrop`, with the
defaults those files bring). Then the checkpoint's values fill in, as plain data: its model, module, data, augment
and eval nodes and seed (the training-only groups stay behind), each group only where the command line picked no
conf file, after cnnlab.checkpoint.check_run_config has checked them (plain values only; no `defaults`, `hydra` or
`_args_` key; no interpolation; every `_target_` a class of that group's own modules). Last, the remaining
overrides (`key=value`, `+key=value`, `~key`) are applied by Hydra's own override code on that config in struct mode,
so a misspelt key fails as in train.py. Nothing stored ever reaches Hydra's composition, its ConfigStore, its
launcher or Python's logging configuration, so a crafted checkpoint cannot steer where anything is written or what
logging builds. Where this machine writes is this machine's setting, not the file's: the stored `data.cache_dir`
gives way to the local default and `data.download` to false (both can be set on the command line).

Nothing is written to the working directory: no outputs/ folder, no .hydra/, no log file; log lines go to stdout.
"""

import itertools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from cnnlab.checkpoint import check_run_config, check_targets, load_checkpoint
from cnnlab.paths import conf_dir

CONF = conf_dir()  # the clone's conf/, or the copy inside an installed wheel
GROUPS = ("augment", "eval", "data")  # train.yaml's order: an image-folder data config picks its augment and eval
KEEP = ("model", "module", "seed")  # the rest of a run config (trainer, callbacks, optim, ...) is training's
NO_EVAL = {"_target_": "cnnlab.evaluation.EvalProtocol", "name": "none"}  # checkpoints from before the eval group
LOCAL_DATA = {"cache_dir": "${oc.env:CNNLAB_CACHE,'~/.cache/cnnlab'}", "download": False}  # conf/data's own default
HELP_FLAGS = ("--help", "-h")
CFG_FLAGS = ("--cfg", "-c")
MULTIRUN_FLAGS = ("--multirun", "-m")
USAGE_ERRORS = (HydraException, OmegaConfBaseException, ValueError, OSError)  # reported as one line, exit status 1


def run_config(state: dict, ckpt: str | Path) -> dict:
    """The parts of a checkpoint's stored run config the tools read (KEEP and GROUPS), checked as plain data."""
    config = (state.get("hyper_parameters") or {}).get("run_config")
    if not config or "state_dict" not in state:
        raise ValueError(f"ckpt={ckpt} is not a cnnlab checkpoint: it holds no run_config in its hyper_parameters")
    check_run_config(config, f"ckpt={ckpt}: run_config")  # load_checkpoint did it too: the rule lives in one place
    kept = {k: config[k] for k in (*KEEP, *GROUPS) if config.get(k) is not None}
    kept.setdefault("eval", NO_EVAL)
    if "pretrained" in kept.get("model", {}):  # checkpoints from before transfer.weights: not a model argument
        kept["model"] = {k: v for k, v in kept["model"].items() if k != "pretrained"}
    if "data" in kept:
        kept["data"] = {**kept["data"], **{k: v for k, v in LOCAL_DATA.items() if k in kept["data"]}}
    return kept


def _primary(tool: str | None) -> str:
    """The tool's own primary config, in Hydra's ConfigStore: conf/<tool>.yaml and an empty slot per group (a
    command-line `data=imagenet` fills it, with that file's defaults). Holds nothing from any checkpoint."""
    name = f"cnnlab_{tool or 'tool'}"
    defaults: list = ["_self_", *({g: None} for g in GROUPS), *([tool] if tool else [])]
    ConfigStore.instance().store(name=name, node={"defaults": defaults})
    return name


def build(tool: str | None, stored: dict | None, overrides: Sequence[str] = (), ckpt: str | Path | None = None
          ) -> DictConfig:
    """The tool's config: Hydra composes the tool's conf and the group files the overrides pick; the stored values
    (run_config()) fill the groups left empty; the other overrides are applied last, in struct mode."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    picks = [o for o in parsed if o.key_or_group in GROUPS and o.package is None and not o.is_delete()
             and isinstance(o.value(), str)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = hydra_compose(_primary(tool), overrides=[o.input_line for o in picks])
    GlobalHydra.instance().clear()
    cfg = OmegaConf.create(stored or {})
    for key, node in composed.items_ex(resolve=False):  # the tool's keys, and each group picked on the command line
        cfg[key] = node
    if stored:
        cfg.setdefault("seed", 0)  # conf/data files interpolate ${seed}
    if tool and ckpt is not None:
        cfg.ckpt = str(ckpt)
    OmegaConf.set_struct(cfg, True)
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o not in picks], cfg)
    return cfg


def finish(cfg: DictConfig) -> DictConfig:
    """The config, checked: every `_target_` (overrides and conf files included) passes check_targets; a data
    module's test views follow the eval group (its stored copy is the training run's)."""
    check_targets(OmegaConf.to_container(cfg, resolve=True), "config")
    if cfg.get("data"):
        with open_dict(cfg):
            cfg.data.evaluation = cfg.eval
    return cfg


def compose(ckpt: str | Path, overrides: Sequence[str] = (), tool: str | None = None) -> tuple[DictConfig, dict]:
    """(the tool's config, the checkpoint's contents) for `ckpt` and Hydra overrides: the Python API of main()."""
    state = load_checkpoint(ckpt)
    cfg = build(tool, run_config(state, ckpt), [o for o in overrides if not o.startswith("ckpt=")], ckpt)
    return finish(cfg), state


def help_text(tool: str, cfg: DictConfig, doc: str) -> str:
    groups = "\n".join(f"{g}: checkpoint, " + ", ".join(sorted(p.stem for p in (CONF / g).glob("*.yaml")))
                       for g in GROUPS)
    return (f"{doc.strip()}\n\n== Config groups: group=option replaces the checkpoint's own (`checkpoint`) by a "
            f"conf/ file ==\n{groups}\n\n== Config: key=value overrides (Hydra's grammar: lists [a,b], quotes, "
            f"+key=value adds a key) ==\n{OmegaConf.to_yaml(cfg)}")


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One override list per job: with -m, the product of every sweep (`eval=center,tencrop`), as Hydra's basic
    sweeper orders it; without, the overrides once."""
    parsed: list[Override] = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return [overrides]
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def main(tool: str, task: Callable[[DictConfig, dict], Any], doc: str, argv: Sequence[str] | None = None) -> None:
    """`python -m cnnlab.<tool> ...`: the checkpoint is read first and its run config checked; then the config is
    built (build()) and task(cfg, checkpoint contents) runs. A file that is missing, unreadable or not allowed, a
    bad override or a failed task ends the program with its message alone (exit status 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show = next((argv[i + 1] if i + 1 < len(argv) else "job" for i, a in enumerate(argv) if a in CFG_FLAGS), None)
    flags = {a for a in argv if a.startswith("-")} - {*HELP_FLAGS, *CFG_FLAGS, *MULTIRUN_FLAGS}
    overrides = [a for i, a in enumerate(argv) if not a.startswith("-") and not (i and argv[i - 1] in CFG_FLAGS)]
    if flags:
        sys.exit(f"python -m cnnlab.{tool}: unknown option {sorted(flags)[0]}; options: --help, --cfg job, -m")
    given = [a for a in overrides if a.split("=", 1)[0] == "ckpt"]
    helping = bool(set(HELP_FLAGS) & set(argv))
    if not given and not helping:
        sys.exit(f"usage: python -m cnnlab.{tool} ckpt=<checkpoint> ...; --help lists the keys")
    if not logging.getLogger().handlers:  # the tools' and Lightning's lines to stdout, as Hydra's job_logging=stdout
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    try:
        state, stored = None, None
        if given:
            path = OverridesParser.create().parse_override(given[-1]).value()  # Hydra's grammar: quotes, escapes
            state = load_checkpoint(path)
            stored = run_config(state, path)
        rest = [a for a in overrides if a not in given]
        if helping:
            print(help_text(tool, build(tool, stored, rest, path if given else None), doc))
            return
        for job in _jobs(rest, bool(set(MULTIRUN_FLAGS) & set(argv))):
            cfg = finish(build(tool, stored, job, path))
            if show is not None:
                print(OmegaConf.to_yaml(cfg))
                continue
            task(cfg, state)
    except USAGE_ERRORS as err:
        sys.exit(f"python -m cnnlab.{tool}: {err}")
