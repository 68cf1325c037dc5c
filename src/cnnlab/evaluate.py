"""Evaluate a checkpoint with an evaluation protocol and print its top-1 and top-5 error.

    python -m cnnlab.evaluate ckpt=runs/.../checkpoints/last.ckpt eval=tencrop
    python -m cnnlab.evaluate ckpt=resnet50.ckpt eval=multiscale data=imagenet data.root=/datasets/imagenet \\
        trainer.devices=8 trainer.strategy=ddp

The model, module and data come from the checkpoint's run config; the command line is Hydra's (cnnlab.cli):
`group=option` (data, eval, augment) swaps in a conf/ file, `key=value` sets a value (data.root,
data.eval_batch_size, eval.scales=[224,256], ...), `trainer.*` (conf/evaluate.yaml) goes to the Lightning Trainer of
the test loop. In distributed runs every image counts once (unpadded shards), so results equal 1 process's.
"""

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cnnlab import cli


class _Count(L.Callback):
    """Images scored, summed over ranks."""

    def __init__(self) -> None:
        self.n = 0

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.n += len(batch[1])

    def on_test_epoch_end(self, trainer, module) -> None:
        self.n = int(trainer.strategy.reduce(torch.tensor(self.n, device=module.device), reduce_op="sum"))


def evaluate(ckpt_path: str | Path, protocol: str | None = None, overrides: Sequence[str] = ()) -> dict:
    """Tests a checkpoint: {"err1", "err5", "loss", "n_images", "protocol"}; errors are fractions. `protocol` is an
    eval config (center, tencrop, ...); overrides are Hydra overrides of the checkpoint's run config."""
    cfg, state = cli.compose(ckpt_path, [*overrides, *([f"eval={protocol}"] if protocol else [])], tool="evaluate")
    return run(cfg, state)


def run(cfg: DictConfig, state: dict) -> dict:
    """evaluate() on a composed config (cnnlab.cli) and the checkpoint's contents."""
    cfg = OmegaConf.to_container(cfg, resolve=True)
    module = instantiate({**cfg["module"], "evaluation": cfg["eval"]}, model=instantiate(cfg["model"]),
                         optimizer=None, schedule=None, run_config=cfg, _recursive_=False, _convert_="all")
    module.load_state_dict(state["state_dict"])
    data = instantiate(cfg["data"], augment=instantiate(cfg["augment"]), _convert_="all")
    count = _Count()
    trainer = L.Trainer(callbacks=[count], logger=False, enable_checkpointing=False, enable_model_summary=False,
                        **cfg["trainer"])
    out = trainer.test(module, datamodule=data, verbose=False)[0]
    if count.n == 0 or "test/err1" not in out:  # image folders leave unreadable files out: here, all of them
        raise ValueError(f"no readable test image in {cfg['data'].get('root')}: nothing was scored")
    return {"err1": out["test/err1"], "err5": out["test/err5"], "loss": out["test/loss"], "n_images": count.n,
            "protocol": cfg["eval"]["name"]}


def report(cfg: DictConfig, state: dict) -> dict:
    r = run(cfg, state)
    if rank_zero_only.rank == 0:  # one line per run, not per process
        print(f"{cfg.ckpt}: eval={r['protocol']}, {r['n_images']} images: top-1 error {100 * r['err1']:.2f}%, "
              f"top-5 error {100 * r['err5']:.2f}% (loss {r['loss']:.6f})")
    return r


def main(argv: Sequence[str] | None = None) -> None:
    cli.main("evaluate", report, __doc__, argv)


if __name__ == "__main__":
    main()
