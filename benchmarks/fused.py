"""Fused runs: aggregate training throughput and peak memory of J jobs fused into one program (cnnlab.fused)
against one job trained alone by a plain PyTorch loop (its it/s is also the aggregate rate of J jobs run one after
another).

Both train the same network (a conf/model config, as train.py builds it) with SGD (momentum 0.9, weight decay 1e-4)
and cross-entropy on random N x 3 x 32 x 32 batches; `steps` timed steps after `warmup` untimed ones, the device
synchronized at both ends. The cases alternate `repeats` times and the best rate of each counts (a shared machine
drifts).

    python benchmarks/fused.py --jobs 2 4 8 --model resnet56 --batch 128 --steps 50            # a GPU
    python benchmarks/fused.py --jobs 4 --model resnet8 --batch 32 --steps 10 --device cpu --repeats 5
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.fused import FusedModels, job_losses  # noqa: E402


def build(model: str, overrides: Sequence[str] = ()) -> torch.nn.Module:
    """conf/model/<model>.yaml instantiated (CIFAR-10 shapes: 10 classes, 3 channels)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "data=synthetic", *overrides])
    return instantiate(cfg.model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float | None]:
    """(steps per second, peak memory in MiB or None on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    rate = steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return rate, peak


def _single(model: str, batch: int, device: torch.device, overrides: Sequence[str]):
    L.seed_everything(0, workers=True)
    net = build(model, overrides).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def _fused(jobs: int, model: str, batch: int, device: torch.device, overrides: Sequence[str]):
    nets = []
    for seed in range(jobs):
        L.seed_everything(seed, workers=True)
        nets.append(build(model, overrides).to(device).train())
    fused = FusedModels(nets)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4) for m in fused.models]
    x = torch.randn(jobs, batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (jobs, batch), device=device)

    def step() -> None:
        fused.backward(job_losses(fused.forward(x), y, [0.0] * jobs, 0.0).sum())
        for o in opts:
            o.step()

    return step


def measure(jobs: list[int], model: str = "resnet56", batch: int = 128, steps: int = 50, device: str = "cuda",
            warmup: int = 5, repeats: int = 1, overrides: Sequence[str] = ()) -> dict:
    """{"single": {"it_per_s", "peak_mib"}, "fused": {J: {"it_per_s" (job-steps per second, all jobs together),
    "steps_per_s", "peak_mib", "speedup" (over one job alone)}}, conditions}. it/s of J sequential jobs = single's."""
    dev = torch.device(device)
    single = {"it_per_s": 0.0, "peak_mib": None}
    fused = {j: {"it_per_s": 0.0, "steps_per_s": 0.0, "peak_mib": None} for j in jobs}
    for _ in range(repeats):  # interleaved: drift in the machine's speed hits every case
        rate, peak = _time(_single(model, batch, dev, overrides), steps, warmup, dev)
        single = {"it_per_s": max(single["it_per_s"], rate), "peak_mib": peak}
        for j in jobs:
            rate, peak = _time(_fused(j, model, batch, dev, overrides), steps, warmup, dev)
            if rate > fused[j]["steps_per_s"]:
                fused[j] = {"it_per_s": j * rate, "steps_per_s": rate, "peak_mib": peak}
    for j in jobs:
        fused[j]["speedup"] = fused[j]["it_per_s"] / single["it_per_s"]
    return {"single": single, "fused": fused, "model": model, "batch": batch, "steps": steps, "warmup": warmup,
            "repeats": repeats, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    r = measure(a.jobs, a.model, a.batch, a.steps, a.device, a.warmup, a.repeats)
    print(f"{a.model}, batch {a.batch}, {r['device']}: one job {r['single']['it_per_s']:.2f} it/s")
    for j, f in r["fused"].items():
        print(f"  {j} fused: {f['it_per_s']:.2f} it/s together ({f['speedup']:.2f}x one job, sequential or alone)"
              + (f", peak {f['peak_mib']:.0f} MiB" if f["peak_mib"] else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
