"""Train and test one model: `python train.py model=resnet56 data=cifar100 optim.lr=0.05` (see README.md)."""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("train")


def train(cfg: DictConfig) -> float | None:
    """Fit, then test the final weights; returns the best value of the checkpoint's monitored metric."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)

    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optim), schedule=instantiate(cfg.schedule),
                         run_config=OmegaConf.to_container(cfg, resolve=True), _recursive_=False, _convert_="all")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    log.info("run directory: %s", run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    trainer.test(module, datamodule=data)
    scores = [cb.best_model_score for cb in trainer.checkpoint_callbacks if cb.monitor]
    return None if not scores or scores[0] is None else float(scores[0])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
