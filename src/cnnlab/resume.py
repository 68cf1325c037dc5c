"""ckpt_path=auto: continue the newest unfinished run of this very config, wherever under the log folder it is.

`python train.py <overrides> ckpt_path=auto` looks through <paths.log_dir> (default runs/) for run directories whose
stored config.yaml equals this run's config (the run directory itself and ckpt_path aside), that have not finished
(no results.json) and hold a last checkpoint; it resumes the one whose last checkpoint is newest, writing into the new
run directory. With none, the run starts afresh. A relaunched command line after a crash or a closed laptop thus picks
up where it stopped, without naming a directory.
"""

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
IGNORED = ("ckpt_path",)  # what may differ between a run and its continuation (the run directory is replaced)


def comparable(config: dict, run_dir: str | Path) -> Any:
    """The config as compared: its run directory written as <run dir>, the IGNORED keys left out."""
    config = {k: v for k, v in config.items() if k not in IGNORED}
    return json.loads(json.dumps(config, sort_keys=True, default=str).replace(str(run_dir), "<run dir>"))


def last_checkpoint(config: dict, run_dir: Path) -> Path:
    """Where the `latest` callback of a stored config writes its checkpoint (callbacks.latest)."""
    latest = (config.get("callbacks") or {}).get("latest") or {}
    return Path(latest.get("dirpath") or run_dir / "checkpoints") / f"{latest.get('filename') or 'last'}.ckpt"


def find(config: dict, run_dir: Path, log_dir: Path) -> Path | None:
    """The last checkpoint of the newest unfinished run of `config` under log_dir, or None."""
    want, found = comparable(config, run_dir), []
    for stored in Path(log_dir).rglob("config.yaml"):
        other = stored.parent
        if other.resolve() == run_dir.resolve() or (other / "results.json").exists():
            continue
        try:
            theirs = OmegaConf.to_container(OmegaConf.load(stored), resolve=False)
        except Exception:  # a foreign or damaged file: not a run of this config
            continue
        if not isinstance(theirs, dict) or comparable(theirs, other) != want:
            continue
        if (ckpt := last_checkpoint(theirs, other)).is_file():
            found.append((ckpt.stat().st_mtime, ckpt))
    return max(found)[1] if found else None


def auto(cfg: DictConfig, run_dir: Path) -> None:
    """ckpt_path=auto -> the checkpoint to resume (see the module docstring) or null; any other value is kept."""
    if cfg.get("ckpt_path") != "auto":
        return
    log_dir = Path(OmegaConf.select(cfg, "paths.log_dir", default=None) or "runs")
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt = find(config, run_dir, log_dir) if log_dir.is_dir() else None
    if ckpt is None:
        log.info("ckpt_path=auto: no unfinished run of this config under %s: starting afresh", log_dir)
    else:
        log.info("ckpt_path=auto: resuming %s, the newest unfinished run of this config", ckpt)
    cfg.ckpt_path = None if ckpt is None else str(ckpt)
