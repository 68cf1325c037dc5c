"""Framework overhead: steady-state training throughput of train.py against a plain PyTorch loop.

Both train the same model on the same in-memory uint8 tensors with the same batch augmentation, optimizer and
cross-entropy: the plain loop instantiates the model, data and optimizer from the very config train.py composes.
train.py runs as a user runs it (a subprocess, progress bar, CSV logging, metrics, checkpoint callbacks, the
throughput callback). Runs alternate so that drift in the machine's speed hits both; the best of the repeats counts.
Besides the wall clock, each step's CPU time (the process's, one thread) is recorded: on a shared machine the wall
clock of a step is mostly the other jobs' doing, while the CPU time a loop spends per step is its own work, so the
framework overhead is reported as train.py's CPU ms per step minus the plain loop's (the median over repeats).
Cases: ResNet-20 on CIFAR-10 (the real JPEG folder, decoded once and cached; decode time reported), ResNet-8 on
CIFAR-10 at batch 16 (a step short enough that the framework's fixed cost per step shows: reported in ms per step,
train.py minus the plain loop, with each repeat's pair) and ResNet-50 at ImageNet shapes (synthetic 224x224 images,
1000 classes; a small batch and few steps are enough on a CPU). `--also DIR` adds another checkout's train.py (e.g.
the commit before a change) to the interleaving, so old and new are measured under the same load.

    python benchmarks/overhead.py --case resnet20_cifar --root ../shared/datasets/cifar10-jpg [--json out.json]
    python benchmarks/overhead.py --case resnet8_cifar --batch 16 --steps 400 --warmup 50 --repeats 5 [--also DIR]
    python benchmarks/overhead.py --case resnet50_imagenet --batch 16 --steps 14 --warmup 4
"""

import argparse
import json
import os
import statistics
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
    "resnet8_cifar": ["model=resnet8", "data=cifar10"],
    "resnet50_imagenet": ["model=resnet50", "data=synthetic", "data.image_size=224", "data.num_classes=1000",
                          "data.synthetic_size=[512,16]", "augment=none"],
}


class StepTimer(L.Callback):
    """Writes (wall clock, process CPU time) at the end of every training batch to a JSON file (inside train.py)."""

    def __init__(self, out: str) -> None:
        self.out, self.times = out, []

    def on_train_batch_end(self, *args) -> None:
        self.times.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, *args) -> None:
        Path(self.out).write_text(json.dumps(self.times))


def steady(times: list[tuple[float, float]], batch: int, warmup: int) -> tuple[float, float]:
    """Images per second (wall clock) and CPU ms per step, between the end of batch `warmup` and the last batch."""
    steps = len(times) - 1 - warmup
    return batch * steps / (times[-1][0] - times[warmup][0]), 1e3 * (times[-1][1] - times[warmup][1]) / steps


def overrides(args: argparse.Namespace, tmp: Path) -> list[str]:
    extra = [f"data.root={args.root}"] if args.case.endswith("_cifar") else []
    return [*CASES[args.case], *extra, f"data.cache_dir={args.cache_dir or tmp / 'cache'}",
            f"data.batch_size={args.batch}", "trainer.accelerator=cpu", f"trainer.max_steps={args.steps}"]


def pipeline(args: argparse.Namespace, tmp: Path, root: Path = ROOT) -> tuple[float, float]:
    run = Path(tempfile.mkdtemp(dir=tmp))  # a fresh run directory: train.py skips runs that have finished
    out = run / "times.json"
    cmd = [sys.executable, "train.py", *overrides(args, tmp), "trainer.limit_val_batches=0",
           "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={run}",
           "+callbacks.timer._target_=overhead.StepTimer", f"+callbacks.timer.out={out}"]
    path = os.pathsep.join([str(ROOT / "benchmarks"), str(root / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return steady(json.loads(out.read_text()), args.batch, args.warmup)


def plain_loop(args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, tmp))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
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
        inputs, _ = data.augment.batch(x[idx], y[idx], data.mean, data.std, cfg.data.num_classes, g)
        loss = F.cross_entropy(model(inputs), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter(), time.process_time()))
    return steady(times, args.batch, args.warmup)


def decode_times(root: str, tmp: Path, args_cache: str | None = None) -> tuple[float, float]:
    from cnnlab.data.readers import read_cifar

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        for train in (True, False):
            read_cifar("cifar10", Path(root), train, False, 32, Path(args_cache) if args_cache else tmp / "cache")
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
    p.add_argument("--threads", type=int, default=1, help="torch threads of every loop (OMP_NUM_THREADS)")
    p.add_argument("--also", help="another checkout's root: its train.py joins the interleaved runs")
    p.add_argument("--cache-dir", help="decoded-dataset cache to reuse (default: a fresh one, decoded once)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.root = str(Path(args.root).resolve())

    loops = {"plain": None, "train.py": ROOT, **({"train.py (--also)": Path(args.also).resolve()} if args.also else {})}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        decode = decode_times(args.root, tmp, args.cache_dir) if args.case.endswith("_cifar") else None  # warm cache
        rates, cpu = {k: [] for k in loops}, {k: [] for k in loops}
        for r in range(args.repeats):
            order = list(loops) if r % 2 == 0 else list(reversed(loops))  # alternate: drift hits every loop alike
            for k in order:
                r_, c_ = plain_loop(args, tmp) if loops[k] is None else pipeline(args, tmp, loops[k])
                rates[k].append(r_)
                cpu[k].append(c_)
                loads.append(os.getloadavg()[0])
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} img/s, {cpu[k][-1]:.2f} CPU ms/step"
                                                                  for k, v in rates.items()), flush=True)

    ms = {k: [1e3 * args.batch / x for x in v] for k, v in rates.items()}  # per step
    best = {k: max(v) for k, v in rates.items()}
    print(f"\n{args.case}, batch {args.batch}, {args.threads} thread(s), {args.steps} steps ({args.warmup} warm-up), "
          f"n = {args.repeats} interleaved repeats; load average (1 min) during the runs "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    print("| loop | images/s (best) | spread over repeats | wall ms per step (best) | CPU ms per step (median, "
          "range) |\n|---|---|---|---|---|")
    for k, v in rates.items():
        print(f"| {'plain PyTorch' if k == 'plain' else k} | {best[k]:.2f} | {min(v):.2f}-{max(v):.2f} "
              f"| {min(ms[k]):.2f} | {statistics.median(cpu[k]):.2f} ({min(cpu[k]):.2f}-{max(cpu[k]):.2f}) |")
    out = {"case": args.case, "rates": rates, "ms_per_step": ms, "cpu_ms_per_step": cpu, "decode_s": decode,
           "threads": args.threads,
           "load_average": [min(loads), max(loads)], "args": vars(args), "loops": {}}
    for k in loops:
        if k == "plain":
            continue
        pairs = [a - b for a, b in zip(ms[k], ms["plain"], strict=True)]  # each repeat's train.py minus its plain
        ratio = best[k] / best["plain"]
        cpu_over = statistics.median(cpu[k]) - statistics.median(cpu["plain"])
        cpu_ratio = statistics.median(cpu["plain"]) / statistics.median(cpu[k])
        out["loops"][k] = {"ratio": ratio, "overhead_ms": pairs, "overhead_ms_median": statistics.median(pairs),
                           "cpu_overhead_ms": cpu_over, "cpu_ratio": cpu_ratio}
        print(f"{k} / plain = {ratio:.3f} wall clock, best of {args.repeats} ({(1 - ratio) * 100:+.1f}% overhead), "
              f"{cpu_ratio:.3f} in CPU time per step; framework overhead: {cpu_over:.2f} CPU ms per step (medians); "
              f"wall clock {min(ms[k]) - min(ms['plain']):.2f} ms best-vs-best, pairs "
              f"{', '.join(f'{x:.2f}' for x in pairs)}")
    if decode:
        print(f"decode CIFAR-10 JPEG folder (60k images): first run {decode[0]:.1f} s, cached {decode[1]:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
