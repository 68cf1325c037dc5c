"""SLURM preemption: on the requeue signal, checkpoint at a batch boundary, requeue the job, and exit."""

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

log = logging.getLogger(__name__)


def is_global_zero() -> bool:
    """Whether this process is rank 0, from the launcher's environment, before any Trainer exists.

    Lightning's rank_zero_only reads RANK / LOCAL_RANK / SLURM_PROCID only, so the first process of a second node in
    a manual multi-node launch (NODE_RANK=1, LOCAL_RANK=0) would count as rank 0.
    """
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return not any(int(os.environ.get(k) or 0) > 0 for k in ranks)


class Requeued(SystemExit):
    """Raised after the checkpoint is written and the job requeued; the process exits with status 0."""

    def __init__(self) -> None:
        super().__init__(0)


class SlurmRequeue(L.Callback):
    """`sbatch --signal=USR1@<s>`: save `hpc_ckpt_N.ckpt` in the run directory, `scontrol requeue`, exit.

    Lightning's built-in handler saves from inside the signal handler, which can fire between `optimizer.step()` and
    the loop's progress update, so a resumed run may repeat a step. Here the handler only raises a flag; at the next
    batch end all ranks agree (one all-reduce) and checkpoint the same step, mid-epoch position included. On restart
    Lightning finds the hpc checkpoint in `trainer.default_root_dir` (the run directory) and resumes from it.
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        self.signum = signal.Signals[signal_name]
        self.requested = False
        self.active = False

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registers its handlers (Trainer._run), so this one replaces its SIGUSR1 handler
        self.active = SLURMEnvironment.detect()
        if self.active:
            signal.signal(self.signum, self._request)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not self.active or not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            job = os.environ["SLURM_JOB_ID"]
            if "SLURM_ARRAY_JOB_ID" in os.environ:
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode:
                log.error("saved %s but `scontrol requeue %s` failed: %s", path, job, done.stderr.strip())
            else:
                log.info("signal %s: saved %s at step %d and requeued job %s", self.signum.name, path,
                         trainer.global_step, job)
        raise Requeued()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the finished weights supersede the hpc checkpoints; left in place, Lightning would load them for the test
        # stage (it prefers them whenever it runs under SLURM) and a later requeue would resume from a stale one
        if trainer.is_global_zero:
            for f in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                f.unlink()
        trainer.strategy.barrier("hpc checkpoints removed")

