"""Train and test one model: `python train.py model=resnet56 data=cifar100 optim.lr=0.05` (see README.md)."""

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.cluster import is_global_zero, resume_path

log = logging.getLogger("train")


def train(cfg: DictConfig) -> float | None:
    """Fit, then test the final weights; returns the best value of the checkpoint's monitored metric."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if (done := run_dir / "results.json").exists() and cfg.ckpt_path is None:  # a relaunched sweep or requeued job
        log.info("%s exists: this run has finished, skipping it (ckpt_path=last continues it)", done)
        return json.loads(done.read_text())["best_score"]
    if not is_global_zero():  # one log file per run: the other ranks print to stderr only
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    else:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        done.unlink(missing_ok=True)  # until this continued run finishes
    L.seed_everything(cfg.seed, workers=True)

    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    model = instantiate(cfg.transfer)(instantiate(cfg.model), cfg)  # from transfer.weights, if given
    module = instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optim), schedule=instantiate(cfg.schedule),
                         run_config=OmegaConf.to_container(cfg, resolve=True), _recursive_=False, _convert_="all")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    log.info("run directory: %s", run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.ckpt_path, run_dir))
    test = trainer.test(module, datamodule=data)[0]
    scores = [cb.best_model_score for cb in trainer.checkpoint_callbacks if cb.monitor]
    best = None if not scores or scores[0] is None else float(scores[0])
    if trainer.is_global_zero:  # written last: its presence marks a finished run (cnnlab.report, relaunched sweeps)
        done.write_text(json.dumps({"status": "finished", "best_score": best, "test": test,
                                    "epoch": trainer.current_epoch, "global_step": trainer.global_step}, indent=1))
    return best


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
