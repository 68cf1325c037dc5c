"""data=imagenet_gpu on one GPU (an item of benchmarks/gpu.py): JPEG decode and augmentation on the device.

    measure(root, workers=(1, 2, 4, "all"), batch=256, seconds=15.0) -> dict

1. The loader alone: data=imagenette_gpu's training loader (augment=resnet, its default) with each worker count,
   every batch taken through the device stage as training does (transfer_batch_to_device, on_after_batch_transfer:
   batched decode_jpeg on the GPU, per-image crop + resize + flip, PCA lighting, normalization), synced at the end;
   images/s over `seconds` after one warm-up batch, and how many images the CPU decoder took (greyscale etc.).
2. ResNet-50 through train.py (bf16-mixed, channels_last, eager, batch `batch`) fed by it with `train_workers`
   workers, against the same model on synthetic images already on the device (gpu.DeviceSynthetic, item 1's data):
   steady img/s between step marks (gpu.StepTimer) inside one epoch, and the ratio. Targets: the loader alone
   >= 10,000 img/s on 224-px JPEGs; train.py fed by it >= 95% of the synthetic rate with <= 4 workers.

`root` is an ImageNet-layout folder (the carried Imagenette, 224-px shorter side). `smoke=True` runs the same code on
the CPU in a few seconds (tiny batches, 32-px crops, a small ResNet, train.py in this process): the numbers mean
nothing, the code paths are exercised (tests/test_device_decode.py).

    python benchmarks/gpu_decode.py ROOT [--seconds 15] [--smoke]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(root: Path, workers: int, batch: int, seconds: float, device: torch.device,
                extra: tuple[str, ...] = ()) -> dict:
    """Images/s of the data=imagenette_gpu training loader and its device stage on `device`."""
    from hydra.utils import instantiate

    cfg = _compose(["data=imagenette_gpu", f"data.root={root}", f"data.batch_size={batch}",
                    f"data.num_workers={workers}", *extra])
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), evaluation=None, _convert_="all")
    data.setup()
    loader = data.train_dataloader()
    if len(loader) == 0:
        raise ValueError(f"{root}/train holds fewer than one batch of {batch} images")
    n, batches, t0 = 0, 0, None
    while t0 is None or time.perf_counter() - t0 < seconds:
        for b in loader:
            x, y = data.on_after_batch_transfer(data.transfer_batch_to_device(b, device, 0), 0)
            if t0 is None:  # the first batch: worker start, page cache, decoder set-up
                _sync(device)
                t0 = time.perf_counter()
                continue
            n, batches = n + len(y), batches + 1
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"workers": workers, "img_s": n / elapsed if n else None, "images": n, "batches": batches,
            "seconds": elapsed, "cpu_decoded": dict(data.cpu_decoded.get("train", {})), "shape": list(x.shape)}


def train_rate(name: str, overrides: list[str], batch: int, warmup: int, steps: int, run: Path, smoke: bool,
               timeout: float) -> dict:
    """train.py img/s between gpu.StepTimer's marks (a subprocess; in this process in smoke mode)."""
    run.mkdir(parents=True, exist_ok=True)
    out = run / "bench.json"
    ov = [*overrides, f"trainer.max_steps={warmup + steps}", "trainer.limit_val_batches=0",
          "trainer.num_sanity_val_steps=0", "trainer.limit_test_batches=0", "callbacks.progress_bar.refresh_rate=0",
          "+callbacks.bench._target_=gpu.StepTimer",
          f"+callbacks.bench.out={out}", f"+callbacks.bench.warmup={warmup}", f"+callbacks.bench.every={steps}"]
    if smoke:
        sys.path.insert(0, str(BENCH))
        import gpu

        rc = gpu.in_process([*ov, "+callbacks.bench.exit_after_fit=false"], run)
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCH),
                                                            os.environ.get("PYTHONPATH", "")])}
        with (run / "log.txt").open("w") as log:
            try:
                rc = subprocess.run([sys.executable, "train.py", *ov, f"hydra.run.dir={run}"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
    if rc != 0 or not out.exists():
        tail = (run / "log.txt").read_text(errors="replace").splitlines()[-8:] if (run / "log.txt").exists() else []
        return {"case": name, "failed": "timed out" if rc is None else f"exit code {rc}", "log": tail}
    d = json.loads(out.read_text())
    (n0, t0), (n1, t1) = d["points"][0], d["points"][-1]
    return {"case": name, "img_s": batch * (n1 - n0) / (t1 - t0) if n1 > n0 else None, "steps": d["steps"],
            "mem_gib": d.get("mem_gib")}


def measure(root: str | Path, workers: tuple = (1, 2, 4, "all"), batch: int = 256, seconds: float = 15.0,
            train_workers: int = 4, smoke: bool = False, train_timeout: float = 240.0) -> dict:
    """Loader-alone img/s per worker count and ResNet-50 train.py img/s fed by it vs synthetic data (module doc)."""
    root = Path(root).resolve()
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    cpus = len(os.sched_getaffinity(0))
    counts = sorted({max(1, cpus - 1) if w == "all" else int(w) for w in workers})
    classes = [d for d in (root / "train").iterdir() if d.is_dir()]
    small = (f"data.num_classes={len(classes)}", *(("data.per_class=4", "augment=inception", "augment.size=32")
                                                   if smoke else ()))
    res: dict = {"root": str(root), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "cpus": cpus, "batch": batch, "load_average": [os.getloadavg()], "loader": [], "train": []}
    for w in counts:
        res["loader"].append(loader_rate(root, w, batch, seconds, device, small))
        print(f"[gpu_decode] loader, {w} workers: {res['loader'][-1]['img_s']:.0f} img/s", flush=True)
    per_epoch = (4 * len(classes) if smoke else sum(1 for f in (root / "train").rglob("*") if f.is_file())) // batch
    warmup = max(1, per_epoch // 6)  # the timed steps stay inside the first epoch: no epoch boundary is timed
    steps = max(2, per_epoch - warmup - 2)
    model = (["model=resnet18", "model.widths=[8,8,16,16]", "trainer.precision=32-true", "trainer.accelerator=cpu"]
             if smoke else ["model=resnet50", "trainer.precision=bf16-mixed", "module.channels_last=true"])
    size = 32 if smoke else 224
    cases = {
        "synthetic": ["data=synthetic", "data._target_=gpu.DeviceSynthetic", f"data.image_size={size}",
                      f"data.num_classes={len(classes)}",
                      f"data.synthetic_size=[{batch * (warmup + steps + 2)},{batch}]", "augment=none"],
        f"imagenette_gpu, {train_workers} workers": ["data=imagenette_gpu", f"data.root={root}",
                                                     f"data.num_workers={train_workers}", *small],
    }
    with tempfile.TemporaryDirectory(prefix="cnnlab-gpu-decode-") as tmp:
        for k, (name, ov) in enumerate(cases.items()):
            r = train_rate(name, [*model, *ov, f"data.batch_size={batch}"], batch, warmup, steps, Path(tmp) / str(k),
                           smoke, train_timeout)
            res["train"].append(r)
            print(f"[gpu_decode] train.py ResNet-50, {name}: {r.get('img_s') or r.get('failed')}", flush=True)
    synth, fed = (r.get("img_s") for r in res["train"])
    res["fed_over_synthetic"] = fed / synth if synth and fed else None
    res["steps"] = {"warmup": warmup, "timed": steps}
    res["load_average"].append(os.getloadavg())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    res = measure(a.root, batch=8 if a.smoke else a.batch, seconds=0.5 if a.smoke else a.seconds, smoke=a.smoke,
                  **({"workers": (1,), "train_workers": 1} if a.smoke else {}))
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
