"""Launches a sweep's jobs as one fused program: each job's config is composed and its run directory set up (the
.hydra/ files, the log file) exactly as Hydra's basic launcher does it, through hydra.core.utils.run_job, then all of
them train together (cnnlab.fused.train_fused) and each job's return value or exception becomes its JobReturn."""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class FusedLauncher(Launcher):
    """Trains all jobs of each batch of a sweep as one program on one device (see docs/fused.md)."""

    def __init__(self, progress_every: int | None = None) -> None:
        self.progress_every = progress_every
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from cnnlab.fused import Job, train_fused  # torch and Lightning only when a sweep runs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs as one fused program", len(job_overrides))
        names = _names([filter_overrides(o) for o in job_overrides])
        jobs, returns, log_files = [], [], []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            seen: list = []

            def collect(task_cfg: DictConfig, seen: list = seen) -> None:
                # resolved while this job's HydraConfig is current: ${hydra:runtime.output_dir} is its own directory
                seen.append(OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True)))

            ret = run_job(hydra_context=self.hydra_context, task_function=collect, config=sweep_config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            if ret.status == JobStatus.FAILED:  # the config did not resolve: fail as the basic launcher would
                _ = ret.return_value
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
            log_files += [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
            jobs.append(Job(seen[0], run_dir, names[idx - initial_job_idx]))
            returns.append(ret)
        _log_to_all(log_files)
        results = train_fused(jobs, progress_every=self.progress_every)
        for ret, result in zip(returns, results, strict=True):
            ret.return_value = result
            ret.status = JobStatus.FAILED if isinstance(result, BaseException) else JobStatus.COMPLETED
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        HydraConfig.instance().set_config(self.config)
        return returns


def _names(overrides: list[list[str]]) -> list[str]:
    """Each job named by its overrides whose value differs between the jobs (seed=1 optim.lr=0.05)."""
    keyed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in job) for job in overrides]
    varying = [k for k in dict.fromkeys(k for job in keyed for k in job) if len({job.get(k) for job in keyed}) > 1]
    return [" ".join(f"{k}={job.get(k)}" for k in varying) or f"job {i}" for i, job in enumerate(keyed)]


def _log_to_all(files: list[str]) -> None:
    """The fused run's log lines into every job's log file (train.log), beside the console."""
    root = logging.getLogger()
    template = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    present = {h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)}
    for f in dict.fromkeys(files):
        if f not in present:
            handler = logging.FileHandler(f)
            if template is not None:
                handler.setFormatter(template.formatter)
                handler.setLevel(template.level)
            root.addHandler(handler)
