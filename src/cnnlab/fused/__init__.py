"""Fused runs: the jobs of a sweep over keys that leave the tensor shapes alone (seed, optim.*, schedule.*,
module.label_smoothing) trained as one program on one device (`python train.py -m seed=0,1,2,3
hydra/launcher=fused`), each writing what its separate run writes. See docs/fused.md."""

from cnnlab.fused.engine import FusedModels, job_losses, misses
from cnnlab.fused.trainer import Job, train_fused

__all__ = ["FusedModels", "Job", "job_losses", "misses", "train_fused"]
