"""Train and test one model: `python train.py model=resnet56 data=cifar100 optim.lr=0.05` (see docs/training.md)."""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab import guards, start, tune  # guards also registers the unique_dir resolver of conf/hydra/default.yaml

log = logging.getLogger("train")


def train(cfg: DictConfig) -> float | None:
    """Fit, then test the final weights (or test_ckpt=best); returns the best value of the monitored metric."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with guards.locked(run_dir):  # a second run into this directory fails at once, naming this one
        return run(cfg, run_dir)


def run(cfg: DictConfig, run_dir: Path) -> float | None:
    if (done := run_dir / "results.json").exists() and cfg.ckpt_path is None:  # a relaunched sweep or requeued job
        return guards.finished_score(done, cfg)  # the same config skips; another fails, naming the keys
    start.before_run(cfg, run_dir)  # missing extras, ckpt_path=auto, the composed config into the log
    ckpt_path = guards.start(cfg, run_dir)  # config and machine checks, before any data is decoded
    L.seed_everything(cfg.seed, workers=True)

    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    if cfg.get("tune") and not tune.tune(cfg, run_dir, data, build_module, resuming=ckpt_path is not None):
        return None  # tune.apply=false: the finder's report is the run (tune.json; results.json "status": "tuned")
    module = build_module(cfg)  # after tune=: the values it applied, and weights drawn from the seed as without it
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    log.info("run directory: %s", run_dir)
    with guards.recording_divergence(done, cfg.data):  # a non-finite loss: results.json says "diverged", exit 1
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return guards.finish(trainer, done, trainer.test(module, datamodule=data, ckpt_path=cfg.get("test_ckpt")))


def build_module(cfg: DictConfig) -> L.LightningModule:
    model = instantiate(cfg.transfer)(instantiate(cfg.model), cfg)  # from transfer.weights, if given
    return instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optim), schedule=instantiate(cfg.schedule),
                       run_config=OmegaConf.to_container(cfg, resolve=True), _recursive_=False, _convert_="all")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
