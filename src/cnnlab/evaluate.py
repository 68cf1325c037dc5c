"""Evaluate a checkpoint with an evaluation protocol and print its top-1 and top-5 error.

    python -m cnnlab.evaluate ckpt=runs/.../checkpoints/last.ckpt eval=tencrop
    python -m cnnlab.evaluate ckpt=resnet50.ckpt eval=multiscale data=imagenet data.root=/datasets/imagenet \
        trainer.devices=8 trainer.strategy=ddp

The model, module and data come from the checkpoint's run config; `group=option` (data, eval, augment) replaces a
group by a conf/ file, `key=value` sets a value (data.root, data.eval_batch_size, ...), `trainer.*` goes to the
Lightning Trainer. In distributed runs every image counts once (unpadded shards), so results equal 1 process's.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf

from cnnlab.transfer import architecture

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("data", "eval", "augment")


class _Count(L.Callback):
    """Images scored, summed over ranks."""

    def __init__(self) -> None:
        self.n = 0

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.n += len(batch[1])

    def on_test_epoch_end(self, trainer, module) -> None:
        self.n = int(trainer.strategy.reduce(torch.tensor(self.n, device=module.device), reduce_op="sum"))


def run_config(ckpt: dict, protocol: str | None, overrides: Sequence[str]) -> tuple[dict, dict]:
    """(the checkpoint's run config with the overrides applied, Trainer keyword arguments)."""
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["run_config"])
    pairs = [o.split("=", 1) for o in overrides]
    if bad := [o for o, p in zip(overrides, pairs, strict=True) if len(p) != 2]:
        raise ValueError(f"overrides are key=value, got {bad}")
    groups = {k: v for k, v in pairs if k in GROUPS}
    if protocol:
        groups["eval"] = protocol
    if groups:  # the group files as train.py would compose them
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = compose("train", overrides=[f"{k}={v}" for k, v in groups.items()])
        for g in groups:
            OmegaConf.update(cfg, g, OmegaConf.to_container(composed[g], resolve=True), merge=False)
    trainer = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
               "enable_model_summary": False}
    for k, v in pairs:
        if k.startswith("trainer."):
            trainer[k.removeprefix("trainer.")] = yaml.safe_load(v)
        elif k not in GROUPS:
            if OmegaConf.select(cfg, k) is None and "." in k and OmegaConf.select(cfg, k.rsplit(".", 1)[0]) is None:
                raise KeyError(f"{k} is not in the checkpoint's config")
            OmegaConf.update(cfg, k, yaml.safe_load(v), merge=False)
    if "eval" not in cfg:  # a checkpoint from before the eval group: its test images as they are
        cfg.eval = {"_target_": "cnnlab.evaluation.EvalProtocol", "name": "none"}
    cfg.data.evaluation = cfg.eval  # the data module cuts the test views (every data module, older configs too)
    return OmegaConf.to_container(cfg, resolve=True), trainer


def evaluate(ckpt_path: str | Path, protocol: str | None = None, overrides: Sequence[str] = ()) -> dict:
    """Tests a checkpoint: {"err1", "err5", "loss", "n_images", "protocol"}; errors are fractions."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg, trainer_kw = run_config(ckpt, protocol, overrides)
    model = architecture(cfg["model"])
    module = instantiate({**cfg["module"], "evaluation": cfg["eval"]}, model=model, optimizer=None, schedule=None,
                         run_config=cfg, _recursive_=False, _convert_="all")
    module.load_state_dict(ckpt["state_dict"])
    data = instantiate(cfg["data"], augment=instantiate(cfg["augment"]), _convert_="all")
    count = _Count()
    trainer = L.Trainer(callbacks=[count], **trainer_kw)
    out = trainer.test(module, datamodule=data, verbose=False)[0]
    return {"err1": out["test/err1"], "err5": out["test/err5"], "loss": out["test/loss"], "n_images": count.n,
            "protocol": cfg["eval"]["name"]}


def main(argv: Sequence[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    ckpt = [a.split("=", 1)[1] for a in args if a.startswith("ckpt=")]
    if len(ckpt) != 1 or not Path(ckpt[0]).is_file():
        raise SystemExit(f"usage: python -m cnnlab.evaluate ckpt=<path> [eval=center|flip|tencrop|multiscale] "
                         f"[data=... data.root=...] [trainer.*=...]; got ckpt={ckpt or 'missing'}")
    r = evaluate(ckpt[0], overrides=[a for a in args if not a.startswith("ckpt=")])
    if rank_zero_only.rank == 0:  # one line per run, not per process
        print(f"{ckpt[0]}: eval={r['protocol']}, {r['n_images']} images: top-1 error {100 * r['err1']:.2f}%, "
              f"top-5 error {100 * r['err5']:.2f}% (loss {r['loss']:.6f})")
    return r


if __name__ == "__main__":
    main()
