"""Framework overhead: steady-state training throughput of train.py against a plain PyTorch loop.

Both train the same CIFAR ResNet on the same in-memory uint8 tensors with the same batch augmentation, SGD and
cross-entropy; train.py runs as a user runs it (a subprocess, progress bar, CSV logging, metrics). Runs alternate
so that drift in the machine's speed hits both. Also times decoding the CIFAR-10 JPEG folder, first run and cached.

    python benchmarks/overhead.py --root ../shared/datasets/cifar10-jpg [--steps 60 --repeats 2 --json out.json]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


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


def pipeline(args: argparse.Namespace, tmp: Path) -> float:
    out = tmp / "times.json"
    cmd = [sys.executable, "train.py", f"model={args.model}", f"data.root={args.root}", f"data.cache_dir={tmp}/cache",
           f"data.batch_size={args.batch}", "trainer.accelerator=cpu", f"trainer.max_steps={args.steps}",
           "trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
           f"hydra.run.dir={tmp}/run", "+callbacks.timer._target_=overhead.StepTimer", f"+callbacks.timer.out={out}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return steady_rate(json.loads(out.read_text()), args.batch, args.warmup)


def plain_loop(args: argparse.Namespace, tmp: Path) -> float:
    from cnnlab.data import BatchAugment, InMemoryDataModule
    from cnnlab.models import ResNet

    torch.manual_seed(0)
    data = InMemoryDataModule("cifar10", root=args.root, cache_dir=f"{tmp}/cache")
    data.setup()
    x, y = data.splits["train"].x, data.splits["train"].y
    n = (int(args.model.removeprefix("resnet")) - 2) // 6
    model = ResNet([n] * 3, [16, 32, 64], stem="cifar", shortcut="A", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    augment, g = BatchAugment(crop_padding=4, flip=True), torch.Generator().manual_seed(0)
    order, times = torch.randperm(len(y)), []
    for step in range(args.steps):
        idx = order[step * args.batch : (step + 1) * args.batch]
        inputs = data.normalize(augment(x[idx], g))
        loss = F.cross_entropy(model(inputs), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    return steady_rate(times, args.batch, args.warmup)


def decode_times(root: str, tmp: Path) -> tuple[float, float]:
    from cnnlab.data.readers import read_cifar

    cache = tmp / "decode-cache"
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        for train in (True, False):
            read_cifar("cifar10", Path(root), train, False, 32, cache)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpg"))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.root = str(Path(args.root).resolve())
    sys.path.insert(0, str(ROOT / "src"))

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        first, cached = decode_times(args.root, tmp)
        shutil.copytree(tmp / "decode-cache", tmp / "cache")  # both runs below start from the cache
        rates = {"plain": [], "train.py": []}
        for r in range(args.repeats):
            rates["plain"].append(plain_loop(args, tmp))
            rates["train.py"].append(pipeline(args, tmp))
            print(f"repeat {r + 1}/{args.repeats}: plain {rates['plain'][-1]:.1f} img/s, "
                  f"train.py {rates['train.py'][-1]:.1f} img/s", flush=True)

    best = {k: max(v) for k, v in rates.items()}
    ratio = best["train.py"] / best["plain"]
    print(f"\n{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps "
          f"({args.warmup} warm-up), best of {args.repeats}")
    print("| loop | images/s |\n|---|---|")
    print(f"| plain PyTorch | {best['plain']:.1f} |\n| train.py | {best['train.py']:.1f} |")
    print(f"train.py / plain = {ratio:.3f} ({(1 - ratio) * 100:+.1f}% overhead)")
    print(f"decode CIFAR-10 JPEG folder (60k images): first run {first:.1f} s, cached {cached:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": rates, "ratio": ratio, "decode_first_s": first,
                                               "decode_cached_s": cached, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
