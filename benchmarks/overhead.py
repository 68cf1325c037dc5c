"""Framework overhead: steady-state training throughput of train.py against a plain PyTorch loop.

Both train the same model on the same in-memory uint8 tensors with the same batch augmentation, optimizer and
cross-entropy: the plain loop instantiates the model, data and optimizer from the very config train.py composes.
train.py runs as a user runs it (a subprocess, progress bar, CSV logging, metrics, checkpoint callbacks, the
throughput callback). Runs alternate so that drift in the machine's speed hits both; the best of the repeats counts.
Cases: ResNet-20 on CIFAR-10 (the real JPEG folder, decoded once and cached; decode time reported) and ResNet-50 at
ImageNet shapes (synthetic 224x224 images, 1000 classes; a small batch and few steps are enough on a CPU).

    python benchmarks/overhead.py --case resnet20_cifar --root ../shared/datasets/cifar10-jpg [--json out.json]
    python benchmarks/overhead.py --case resnet50_imagenet --batch 16 --steps 14 --warmup 4
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # Hydra overrides of conf/train.yaml; data.root and the batch are added from the arguments
    "resnet20_cifar": ["model=resnet20", "data=cifar10"],
    "resnet50_imagenet": ["model=resnet50", "data=synthetic", "data.image_size=224", "data.num_classes=1000",
                          "data.synthetic_size=[512,16]", "augment=none"],
}


class StepTimer(L.Callback):
    """Writes the wall-clock time at the end of every training batch to a JSON file (used inside train.py)."""

    def __init__(self, out: str) -> None:
        self.out, self.times = out, []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        Path(self.out).write_text(json.dumps(self.times))


def steady_rate(times: list[float], batch: int, warmup: int) -> float:
    """Images per second between the end of batch `warmup` and the last batch."""
    return batch * (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def overrides(args: argparse.Namespace, tmp: Path) -> list[str]:
    extra = [f"data.root={args.root}"] if args.case == "resnet20_cifar" else []
    return [*CASES[args.case], *extra, f"data.cache_dir={tmp}/cache", f"data.batch_size={args.batch}",
            "trainer.accelerator=cpu", f"trainer.max_steps={args.steps}"]


def pipeline(args: argparse.Namespace, tmp: Path) -> float:
    run = Path(tempfile.mkdtemp(dir=tmp))  # a fresh run directory: train.py skips runs that have finished
    out = run / "times.json"
    cmd = [sys.executable, "train.py", *overrides(args, tmp), "trainer.limit_val_batches=0",
           "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={run}",
           "+callbacks.timer._target_=overhead.StepTimer", f"+callbacks.timer.out={out}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return steady_rate(json.loads(out.read_text()), args.batch, args.warmup)


def plain_loop(args: argparse.Namespace, tmp: Path) -> float:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, tmp))
    torch.manual_seed(0)
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    data.setup()
    x, y = data.splits["train"].x, data.splits["train"].y
    model = instantiate(cfg.model)
    opt = instantiate(cfg.optim)(model.parameters())
    g = torch.Generator().manual_seed(0)
    order, times = torch.randperm(len(y)), []
    for step in range(args.steps):
        i = step % (len(y) // args.batch)  # cycles through the data, as epochs do
        idx = order[i * args.batch : (i + 1) * args.batch]
        inputs, _ = data.augment.batch(x[idx], y[idx], data.mean, data.std, 10, g)
        loss = F.cross_entropy(model(inputs), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    return steady_rate(times, args.batch, args.warmup)


def decode_times(root: str, tmp: Path) -> tuple[float, float]:
    from cnnlab.data.readers import read_cifar

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        for train in (True, False):
            read_cifar("cifar10", Path(root), train, False, 32, tmp / "cache")
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=sorted(CASES), default="resnet20_cifar")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpg"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.root = str(Path(args.root).resolve())

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        decode = decode_times(args.root, tmp) if args.case == "resnet20_cifar" else None  # leaves the cache warm
        rates = {"plain": [], "train.py": []}
        for r in range(args.repeats):
            rates["plain"].append(plain_loop(args, tmp))
            rates["train.py"].append(pipeline(args, tmp))
            print(f"repeat {r + 1}/{args.repeats}: plain {rates['plain'][-1]:.2f} img/s, "
                  f"train.py {rates['train.py'][-1]:.2f} img/s", flush=True)

    best = {k: max(v) for k, v in rates.items()}
    ratio = best["train.py"] / best["plain"]
    print(f"\n{args.case}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps "
          f"({args.warmup} warm-up), best of {args.repeats} (all: {rates})")
    print("| loop | images/s (best) | spread over repeats |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {'plain PyTorch' if k == 'plain' else k} | {best[k]:.2f} | {min(v):.2f}-{max(v):.2f} |")
    print(f"train.py / plain = {ratio:.3f} ({(1 - ratio) * 100:+.1f}% overhead)")
    if decode:
        print(f"decode CIFAR-10 JPEG folder (60k images): first run {decode[0]:.1f} s, cached {decode[1]:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"case": args.case, "rates": rates, "ratio": ratio, "decode_s": decode,
                                               "threads": torch.get_num_threads(), "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
