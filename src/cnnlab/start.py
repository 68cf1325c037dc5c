"""What train.py does first, before its checks: missing extras, the composed config printed once, ckpt_path=auto."""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab import extras, resume
from cnnlab.cluster import is_global_zero

log = logging.getLogger("train")


def before_run(cfg: DictConfig, run_dir: Path) -> None:
    """A missing extra fails in one line; ckpt_path=auto is resolved; the resolved config goes into the log (console
    and <run dir>/train.log) once, on the first process."""
    extras.check(cfg)
    resume.auto(cfg, run_dir)
    if is_global_zero():
        log.info("composed config (also in %s):\n%s", run_dir / "config.yaml",
                 OmegaConf.to_yaml(cfg, resolve=True).rstrip())
