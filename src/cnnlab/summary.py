"""Complexity summary: per-layer shapes, activation memory, parameters and MACs of any model config.

    python -m cnnlab.summary model=alexnet_owt input_size=227 num_classes=1000
    python -m cnnlab.summary model=resnet50 [input_size=N] [num_classes=N] [data=...] [model.key=value ...]
    python -m cnnlab.summary --zoo          # one Markdown row per conf/model/*.yaml (also: zoo=true)

Every other argument is a Hydra override of conf/train.yaml. Defaults: a model's natural input, the one its paper
uses: 32x32 with 10 classes for CIFAR/MNIST-style models (`stem: cifar` in the config, or LeNet, NIN, vgg_cifar,
FractalNet), 299x299 for Inception-v3, 224x224 with 1000 classes for the rest; `num_classes` defaults to the data
config's when a `data=` override is given. The model is built on the meta device (no memory, no compute).

MACs come from `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2; pooling, BN and activations count 0);
activation memory is the layer's output for one image at 4 bytes per element, KB = 1024 bytes. Rows are the leaf
modules that have parameters or change the number of elements (convs, pools, linear, BN; not ReLU or dropout),
in the order they first run.
"""

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONF = Path(__file__).resolve().parents[2] / "conf"
OPTIONS = ("input_size", "num_classes", "zoo")
# 32x32 models without a `stem: cifar` key
SMALL_INPUT_NAMES = ("lenet", "nin", "vgg_cifar", "fractalnet", "airbench", "resnet9")


def natural_input(name: str, model_cfg: DictConfig) -> tuple[int, int, str]:
    """(input size, classes, data config) a model is published at."""
    if name.startswith("lenet"):
        return 32, 10, "mnist"
    if model_cfg.get("stem") == "cifar" or name.startswith(SMALL_INPUT_NAMES):
        return 32, 10, "synthetic"
    return (299 if name.startswith("inception") else 224), 1000, "synthetic"


def load(overrides: list[str], input_size: int | None = None, num_classes: int | None = None):
    """Compose conf/train.yaml with the overrides; returns (config, input size)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        name = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "resnet20")
        size, classes, data = natural_input(name, cfg.model)
        if not any(o.startswith("data=") for o in overrides):
            cfg = compose("train", overrides=[*overrides, f"data={data}"])
        else:
            classes = cfg.data.num_classes
    with open_dict(cfg):
        cfg.data.num_classes = num_classes or classes  # the model configs read ${data.num_classes}
    return cfg, input_size or size


def shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape[1:])


def profile(model: nn.Module, x: torch.Tensor) -> tuple[list[dict], FlopCounterMode]:
    """Run x through model once; the per-layer rows and the flop counter."""
    rows, hooks = {}, []

    def record(name: str, module: nn.Module):
        def hook(_, inputs, output):
            own = sum(p.numel() for p in module.parameters())
            if name not in rows and isinstance(output, torch.Tensor) and (own or output.numel() != inputs[0].numel()):
                rows[name] = dict(name=name, type=type(module).__name__, input=shape(inputs[0]), output=shape(output),
                                  kb=output[0].numel() * 4 / 1024, params=own)
        return hook

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(record(name, module)))
    with FlopCounterMode(display=False) as counter:
        model(x)
    for h in hooks:
        h.remove()
    flops = counter.get_flop_counts()
    for row in rows.values():
        row["macs"] = sum(flops.get(f"{type(model).__name__}.{row['name']}", {}).values()) / 2
    return list(rows.values()), counter


def build(cfg: DictConfig, size: int) -> tuple[nn.Module, torch.Tensor]:
    with torch.device("meta"):
        model = instantiate(cfg.model).eval()
        x = torch.empty(1, cfg.data.in_channels, size, size)
    return model, x


def summary(overrides: list[str], input_size: int | None = None, num_classes: int | None = None) -> str:
    cfg, size = load(overrides, input_size, num_classes)
    model, x = build(cfg, size)
    rows, counter = profile(model, x)
    params = sum(p.numel() for p in model.parameters())
    head = f"{'layer':<28} {'type':<18} {'input':>12} {'output':>12} {'memory KB':>11} {'params k':>11} {'MMACs':>10}"
    lines = [f"{cfg.model._target_.rsplit('.', 1)[1]} ({' '.join(overrides)}): input {shape(x)}, "
             f"{cfg.data.num_classes} classes", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<28} {r['type']:<18} {r['input']:>12} {r['output']:>12} {r['kb']:>11,.1f} "
                     f"{r['params'] / 1e3:>11,.1f} {r['macs'] / 1e6:>10,.1f}")
    lines += ["-" * len(head), f"{'total':<28} {'':<18} {'':>12} {'':>12} {sum(r['kb'] for r in rows):>11,.1f} "
              f"{params / 1e3:>11,.1f} {counter.get_total_flops() / 2e6:>10,.1f}",
              f"{params:,} parameters, {counter.get_total_flops() / 2e9:.3f} GMACs"]
    return "\n".join(lines)


def zoo(names: list[str] | None = None) -> str:
    """One Markdown row per conf/model/*.yaml (or per name given): parameters and MACs at its natural input."""
    lines = ["| model | input | classes | params | GMACs | MMACs |", "|---|---|---|---|---|---|"]
    paths = [CONF / "model" / f"{n}.yaml" for n in names] if names else sorted((CONF / "model").glob("*.yaml"))
    for path in paths:
        cfg, size = load([f"model={path.stem}"])
        model, x = build(cfg, size)
        with FlopCounterMode(display=False) as counter:
            model(x)
        params, macs = sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2
        lines.append(f"| {path.stem} | {size}x{size} | {cfg.data.num_classes} | {params:,} | {macs / 1e9:.3f} | "
                     f"{macs / 1e6:,.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in OPTIONS}
    if "--zoo" in argv or options.get("zoo", "false").lower() == "true":
        print(zoo())
        return
    overrides = [a for a in argv if "=" in a and a.split("=", 1)[0] not in OPTIONS]
    size, classes = options.get("input_size"), options.get("num_classes")
    print(summary(overrides, int(size) if size else None, int(classes) if classes else None))


if __name__ == "__main__":
    main(sys.argv[1:])
