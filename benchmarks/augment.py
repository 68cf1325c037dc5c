"""In-memory CIFAR loader vs the training step it feeds: can the data side ever be the bottleneck?

Times what the in-memory loader does per training batch (gather the batch's uint8 images, random pad-crop and flip
with cnnlab.data.Augment.batch, normalize to float) against one training step (forward, backward, SGD) of each model on
a batch of the same size. Each figure is the median of `--reps` calls; the best of `--repeats` such medians counts,
and the spread of the medians is printed beside it (the machine is shared).

    python benchmarks/augment.py --root ../shared/datasets/cifar10-jpg [--batch 128 --models resnet20 airbench94]
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]


def timed(f: Callable[[], object], reps: int, repeats: int) -> list[float]:
    """Median seconds per call of f, once per repeat (after one untimed warm-up call)."""
    f()
    medians = []
    for _ in range(repeats):
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpg"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--models", nargs="+", default=["resnet20", "airbench94"])
    p.add_argument("--reps", type=int, default=10, help="timed calls per training-step median (x20 for the loader)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={Path(args.root).resolve()}"])
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    data.setup()
    x, y = data.splits["train"].x, data.splits["train"].y
    g = torch.Generator().manual_seed(0)

    def load() -> torch.Tensor:  # one training batch as TensorBatches makes it
        idx = torch.randint(0, len(y), (args.batch,), generator=g)
        return data._train_transform(x[idx], g)

    results = {"loader": timed(load, 20 * args.reps, args.repeats)}
    batch, labels = load(), y[: args.batch]
    for name in args.models:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            model = instantiate(compose("train", overrides=[f"model={name}"]).model).train()
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9)

        def step(model=model, opt=opt) -> None:
            loss = F.cross_entropy(model(batch), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        results[name] = timed(step, args.reps, args.repeats)
        print(f"{name}: {[f'{1e3 * t:.1f}' for t in results[name]]} ms", flush=True)

    loader = min(results["loader"])
    print(f"\nbatch {args.batch}, {torch.get_num_threads()} threads, median of {args.reps} (loader: {20 * args.reps}) "
          f"calls, best of {args.repeats}")
    print("| work per batch | ms (best) | spread of medians | step / loader |\n|---|---|---|---|")
    for name, t in results.items():
        ratio = "" if name == "loader" else f"{min(t) / loader:.0f}x"
        label = "in-memory loader: gather + pad-crop + flip + normalize" if name == "loader" else f"{name} train step"
        print(f"| {label} | {1e3 * min(t):.2f} | {1e3 * min(t):.2f}-{1e3 * max(t):.2f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": results, "threads": torch.get_num_threads(),
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
