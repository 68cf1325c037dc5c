"""What train.py does first, before its checks: missing extras, the composed config printed once, ckpt_path=auto,
and the library lines that say nothing about this run left out of the log."""

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab import extras, resume
from cnnlab.cluster import is_global_zero

log = logging.getLogger("train")


def register_launchers() -> None:
    """hydra/launcher=fused: Hydra knows launchers from a scan of the hydra_plugins namespace, which does not see the
    packages of an editable install (`pip install -e .`), so train.py registers ours itself, before Hydra starts."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.cnnlab_fused_launcher.fused_launcher import FusedLauncher

    Plugins.instance().register(FusedLauncher)


register_launchers()

# Lightning's lines that are advice or notes about its own defaults, not about this run (each printed every run)
QUIET = ("💡 Tip:",  # the litlogger advertisement
         "Trainer already configured with model summary callbacks")  # ours replaces Lightning's, by design


class DropLines(logging.Filter):
    """Leaves out records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet() -> None:
    """Idempotent: the filters and levels that keep the log to this run's own lines."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLines) for f in rank_zero.filters):
        rank_zero.addFilter(DropLines(QUIET))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the Optuna sweeper's database layer: 7 "setup plugin"s
    # a deprecated torch call inside Lightning (lightning/pytorch/utilities/_pytree.py): nothing a user can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Outside an srun step on a machine with SLURM installed; slurm/README.md says how to launch under SLURM
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")


def before_run(cfg: DictConfig, run_dir: Path) -> None:
    """A missing extra fails in one line; ckpt_path=auto is resolved; the resolved config goes into the log (console
    and <run dir>/train.log) once, on the first process."""
    quiet()
    extras.check(cfg)
    resume.auto(cfg, run_dir)
    if is_global_zero():
        log.info("composed config (also in %s):\n%s", run_dir / "config.yaml",
                 OmegaConf.to_yaml(cfg, resolve=True).rstrip())
