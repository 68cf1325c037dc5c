"""One command line for the tools that start from a checkpoint (evaluate, predict, export, visualize): Hydra's.

    python -m cnnlab.<tool> ckpt=<file> [the tool's keys] [data|eval|augment=<conf file>] [key=value ...]
    python -m cnnlab.<tool> --help              # the tool's keys; with ckpt=<file>, every key of its run config
    python -m cnnlab.<tool> ckpt=<file> --cfg job   # the composed config, as train.py --cfg job prints it

The checkpoint's stored run config is the base of the composition (its model, module, data, augment and eval; the
training-only groups stay behind), conf/<tool>.yaml adds the tool's keys, and the command line is parsed and applied by
Hydra itself: a misspelt key fails as it does in train.py, lists are `[a,b]`, `data=imagenet` swaps in
conf/data/imagenet.yaml as train.py would compose it. The checkpoint is read weights-only and every `_target_` it
names is checked (cnnlab.checkpoint) before anything is built. Nothing is written to the working directory: no
outputs/ folder, no .hydra/, no log file.
"""

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.checkpoint import check_targets, load_checkpoint
from cnnlab.paths import conf_dir

CONF = conf_dir()  # the clone's conf/, or the copy inside an installed wheel
GROUPS = ("augment", "eval", "data")  # train.yaml's order: an image-folder data config picks its augment and eval
KEEP = ("model", "module", "seed")  # the rest of a run config (trainer, callbacks, optim, ...) is training's
NO_EVAL = {"_target_": "cnnlab.evaluation.EvalProtocol", "name": "none"}  # checkpoints from before the eval group
HELP = """${hydra.help.header}
== Config groups: group=option replaces the checkpoint's own (option `checkpoint`) by a conf/ file ==
%s

== Config: key=value overrides (Hydra's grammar: lists [a,b], quotes, +key=value adds a key) ==
$CONFIG
${hydra.help.footer}
"""


def run_config(state: dict, ckpt: str | Path) -> dict:
    """The run config a cnnlab checkpoint stores (already checked by load_checkpoint)."""
    config = (state.get("hyper_parameters") or {}).get("run_config")
    if not config or "state_dict" not in state:
        raise ValueError(f"ckpt={ckpt} is not a cnnlab checkpoint: it holds no run_config in its hyper_parameters")
    return config


def register(tool: str | None, config: dict | None, doc: str = "") -> str:
    """Store the checkpoint's run config in Hydra's ConfigStore as the primary config `<tool>_checkpoint`: its groups
    as the option `checkpoint` of each group, the tool's conf/<tool>.yaml merged last. Returns the config name."""
    store, config = ConfigStore.instance(), dict(config or {})
    defaults: list = ["_self_"]
    for g in GROUPS if config else ():
        store.store(group=g, name="checkpoint", node=config.get(g) or (NO_EVAL if g == "eval" else {}))
        defaults.append({g: "checkpoint"})
    defaults += [*([tool] if tool else []), {"override hydra/job_logging": "stdout"}]
    body = {k: config[k] for k in KEEP if k in config}
    if "pretrained" in body.get("model", {}):  # checkpoints from before transfer.weights: not a model argument
        body["model"] = {k: v for k, v in body["model"].items() if k != "pretrained"}
    groups = "\n".join(f"{g}: checkpoint, " + ", ".join(sorted(p.stem for p in (CONF / g).glob("*.yaml")))
                       for g in GROUPS)
    sweep = str(Path(tempfile.gettempdir()) / "cnnlab-multirun")  # -m writes its multirun.yaml there, not in cwd
    hydra_cfg = {"output_subdir": None, "run": {"dir": "."}, "sweep": {"dir": sweep, "subdir": "."},
                 "job": {"chdir": False},
                 "help": {"app_name": f"cnnlab.{tool}", "header": doc.strip().replace("$", "$$"), "footer": "",
                          "template": HELP % groups}}
    name = f"{tool or 'run'}_checkpoint"
    store.store(name=name, node={"defaults": defaults, **body, "hydra": hydra_cfg})
    return name


def finish(cfg: DictConfig) -> DictConfig:
    """The composed config, checked: every `_target_` (overrides and conf files included) passes check_targets; an
    data module's test views follow the eval group (its stored copy is the training run's; checkpoints from before the
    data modules cut the views have none)."""
    check_targets(OmegaConf.to_container(cfg, resolve=True), "config")
    if cfg.get("data"):
        with open_dict(cfg):
            cfg.data.evaluation = cfg.eval
    return cfg


def compose(ckpt: str | Path, overrides: Sequence[str] = (), tool: str | None = None) -> tuple[DictConfig, dict]:
    """(the composed config, the checkpoint's contents) for `ckpt` and Hydra overrides: the Python API of main()."""
    state = load_checkpoint(ckpt)
    name = register(tool, run_config(state, ckpt))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(name, overrides=list(overrides))
    if tool:
        cfg.ckpt = str(ckpt)
    return finish(cfg), state


def main(tool: str, task: Callable[[DictConfig, dict], Any], doc: str, argv: Sequence[str] | None = None) -> None:
    """`python -m cnnlab.<tool> ...`: compose with @hydra.main (its --help, --cfg, error reports), run task(cfg,
    checkpoint contents). The checkpoint is read first: its run config is what the command line overrides; a file
    that is missing, unreadable or not allowed ends the program with the message alone (exit status 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in argv if a.split("=", 1)[0] == "ckpt"]
    if not given and not {"--help", "-h", "--hydra-help"} & set(argv):
        sys.exit(f"usage: python -m cnnlab.{tool} ckpt=<checkpoint> ...; --help lists the keys")
    state, config = None, None
    if given:
        path = OverridesParser.create().parse_override(given[-1]).value()  # Hydra's grammar: quotes, escapes
        try:
            state = load_checkpoint(path)
            config = run_config(state, path)
        except (OSError, ValueError) as err:
            sys.exit(f"python -m cnnlab.{tool}: {err}")
    name = register(tool, config, doc)

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name=name)
    def _main(cfg: DictConfig) -> None:
        task(finish(cfg), state)

    GlobalHydra.instance().clear()
    saved, sys.argv = sys.argv, [f"python -m cnnlab.{tool}", *argv]
    try:
        _main()
    finally:
        sys.argv = saved
