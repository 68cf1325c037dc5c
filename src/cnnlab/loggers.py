"""Loggers that follow a run across restarts, and need their extra only when chosen."""

import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from cnnlab.cluster import is_global_zero
from cnnlab.extras import require


def wandb_logger(save_dir: str, id: str | None = None, **kwargs: Any) -> Logger:
    """A WandbLogger whose run id is kept in <save_dir>/wandb_id: a resumed or requeued run continues the same run."""
    require("wandb", "wandb", "logger=wandb")
    from lightning.pytorch.loggers import WandbLogger

    id_file = Path(save_dir) / "wandb_id"
    if id is None and id_file.exists():
        id = id_file.read_text().strip()
    elif id is None:
        id = uuid.uuid4().hex[:12]  # wandb's own ids: 8 lowercase letters and digits
        if is_global_zero():
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(id)
    return WandbLogger(save_dir=save_dir, id=id, resume="allow", **kwargs)


def tensorboard_logger(save_dir: str, **kwargs: Any) -> Logger:
    """Lightning's TensorBoardLogger, after checking that tensorboard is installed (the [tensorboard] extra)."""
    require("tensorboard", "tensorboard", "logger=tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=save_dir, **kwargs)
