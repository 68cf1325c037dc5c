"""Checkpoints that survive crashes, and a readable error when a checkpoint does not fit the model being trained."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, then rename over it.

    Lightning writes checkpoints in place, so a job killed mid-write (preemption, OOM killer, kill -9) leaves a
    truncated last.ckpt and the run cannot resume; os.replace is atomic on POSIX file systems, so readers see the old
    file or the new one, never half of one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage (s3://, gs://): fsspec's own semantics apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def remove_orphans(run_dir: Path) -> list[Path]:
    """Deletes the temporary files of AtomicCheckpointIO writers that no longer run (killed mid-write, kill -9)
    under run_dir; the checkpoints they were replacing are intact. Returns the deleted paths."""
    removed = []
    for tmp in Path(run_dir).rglob(".*.ckpt.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # pids are reused (a restarted container): this process has written nothing yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(run_config: dict | None) -> str:
    if not run_config:
        return "an unknown configuration"
    model, data = run_config.get("model", {}), run_config.get("data", {})
    name = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k not in ("_target_", "pretrained"))
    return f"{name}({args}) on {data.get('dataset', data.get('root', '?'))} with {data.get('num_classes', '?')} classes"


def check_compatible(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                     saved_config: dict | None = None, current_config: dict | None = None, show: int = 5) -> None:
    """Raise ValueError naming the missing/unexpected keys and the shape differences between two state dicts."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
              for k, v in current.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    lines = [f"the checkpoint does not fit this model: it holds {_describe(saved_config)}; "
             f"this run builds {_describe(current_config)}"]
    for what, items in (("missing from the checkpoint", missing), ("not in the model", unexpected),
                        ("different shapes", shapes)):
        if items:
            more = f" ... and {len(items) - show} more" if len(items) > show else ""
            lines.append(f"  {len(items)} {what}: " + ", ".join(items[:show]) + more)
    raise ValueError("\n".join(lines))
