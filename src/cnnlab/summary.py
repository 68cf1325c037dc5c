"""Complexity summary: per-layer shapes, activation memory, parameters and MACs of any model config; the zoo record.

    python -m cnnlab.summary model=alexnet_owt input_size=227   # per layer, at 3x227x227 with 1000 classes
    python -m cnnlab.summary model=resnet50 data=cifar100 model.groups=32 model.width_per_group=4
    python -m cnnlab.summary --zoo --json    # re-measure every conf/model/*.yaml into conf/zoo.json, then --zoo
    python -m cnnlab.summary --zoo           # write docs/MODEL_ZOO.md from conf/zoo.json (builds no model)
    python -m cnnlab.summary --help          # the keys; `zoo=true json=true` is the same as `--zoo --json`

Arguments are Hydra overrides of conf/summary.yaml (the augment, eval, data and model groups and the keys
input_size, zoo, json): a misspelt key fails as in train.py, list values work, and nothing is written to the working
directory. A model's conditions come from its entry in the zoo record conf/zoo.json: the data config its paper
trains on (which gives channels and classes) and the input side in pixels. The input side is recorded per config
rather than read from a data config because the ImageNet data configs have no single size (the augment and eval
presets crop 224 or 227, Inception-v3 needs 299) and the model classes take any size. `data=...` overrides the
recorded data config, `input_size=N` the recorded side; a model without an entry uses the data config's image_size.
The model is built on the meta device (no memory, no compute).

MACs come from `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2; pooling, BN and activations count 0)
over one eval-mode forward pass. Parameters are those of the modules that run in that pass, the inference network
the papers count; the rest are auxiliary heads that run in training only (GoogLeNet's two, Inception-v3's one),
reported separately. Activation memory is a layer's output for one image at 4 bytes per element, KB = 1024 bytes.
Rows are the leaf modules that have parameters or change the number of elements (convs, pools, linear, BN; not ReLU
or dropout), in the order they first run.
"""

import json
import sys

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from cnnlab.paths import conf_dir

CONF = conf_dir()  # the clone's conf/, or the copy inside an installed wheel
ROOT = CONF.parent
RECORD = CONF / "zoo.json"
TABLE = ROOT / "docs" / "MODEL_ZOO.md"
CONDITIONS = ("data", "input_size", "paper")  # written by hand in the record; the rest is measured
FLAGS = {"--zoo": "zoo=true", "--json": "json=true"}


def read_record() -> dict[str, dict]:
    return json.loads(RECORD.read_text())


def write_record(record: dict[str, dict]) -> None:
    """One line per config, sorted: a changed count shows as a one-line diff."""
    lines = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in sorted(record.items())]
    RECORD.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def natural_input(name: str) -> tuple[int, int, str]:
    """(input side in pixels, classes, data config) of a zoo model: its paper's, from the record."""
    record = read_record()
    if name not in record:
        raise ValueError(f"model {name!r} has no entry in {RECORD}; its input size is unknown")
    entry = record[name]
    return entry["input_size"], entry["num_classes"], entry["data"]


def compose_summary(overrides: list[str]) -> DictConfig:
    """conf/summary.yaml with the overrides, inside the running @hydra.main app or on its own."""
    if GlobalHydra.instance().is_initialized():
        return compose("summary", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("summary", overrides=overrides)


def load(name: str, overrides: list[str]) -> tuple[DictConfig, int]:
    """The config of model `name` under its recorded conditions, then the overrides; and the input side."""
    entry = read_record().get(name)
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    cfg = compose_summary([*([] if "model" in given else [f"model={name}"]),
                           *([f"data={entry['data']}"] if entry and "data" not in given else []), *overrides])
    size = cfg.input_size or (entry or {}).get("input_size") or cfg.data.get("image_size")
    if not size:
        raise ValueError(f"model {name!r} has no zoo record entry and data config {cfg.data.get('dataset')!r} "
                         "no image_size: give input_size=N")
    return cfg, size


def build(cfg: DictConfig, size: int, device: str = "meta") -> tuple[nn.Module, torch.Tensor]:
    """The model of cfg.model and one input image; on the meta device: no memory, no compute."""
    with torch.device(device):
        model = instantiate(cfg.model).eval()
        x = torch.empty(1, cfg.data.in_channels, size, size)
    return model, x


def shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape[1:])


def profile(model: nn.Module, x: torch.Tensor) -> tuple[list[dict], FlopCounterMode, int]:
    """Run x through model once: the per-layer rows, the flop counter, and the parameters of the modules that ran."""
    rows, ran, hooks = {}, set(), []

    def record(name: str, module: nn.Module):
        def hook(_, inputs, output):
            ran.add(module)
            own = sum(p.numel() for p in module.parameters())
            if (not list(module.children()) and name not in rows and isinstance(output, torch.Tensor)
                    and (own or output.numel() != inputs[0].numel())):
                rows[name] = dict(name=name, type=type(module).__name__, input=shape(inputs[0]), output=shape(output),
                                  kb=output[0].numel() * 4 / 1024, params=own)
        return hook

    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(record(name, module)))
    with FlopCounterMode(display=False) as counter:
        model(x)
    for h in hooks:
        h.remove()
    flops = counter.get_flop_counts()
    for row in rows.values():
        row["macs"] = sum(flops.get(f"{type(model).__name__}.{row['name']}", {}).values()) / 2
    used = sum(p.numel() for m in ran for p in m.parameters(recurse=False))
    return list(rows.values()), counter, used


def summary(name: str, overrides: list[str]) -> str:
    cfg, size = load(name, overrides)
    model, x = build(cfg, size)
    rows, counter, params = profile(model, x)
    aux = sum(p.numel() for p in model.parameters()) - params
    head = f"{'layer':<28} {'type':<18} {'input':>12} {'output':>12} {'memory KB':>11} {'params k':>11} {'MMACs':>10}"
    lines = [f"{name}: {cfg.model._target_.rsplit('.', 1)[1]} ({' '.join(overrides)}), input {shape(x)}, "
             f"{cfg.data.num_classes} classes", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<28} {r['type']:<18} {r['input']:>12} {r['output']:>12} {r['kb']:>11,.1f} "
                     f"{r['params'] / 1e3:>11,.1f} {r['macs'] / 1e6:>10,.1f}")
    lines += ["-" * len(head), f"{'total':<28} {'':<18} {'':>12} {'':>12} {sum(r['kb'] for r in rows):>11,.1f} "
              f"{params / 1e3:>11,.1f} {counter.get_total_flops() / 2e6:>10,.1f}"]
    if aux:
        lines.append(f"auxiliary heads (training only): {aux:,} parameters, {params + aux:,} with them")
    lines.append(f"{params:,} parameters, {counter.get_total_flops() / 2e9:.3f} GMACs")
    return "\n".join(lines)


def measure(name: str, data: str, input_size: int) -> dict:
    """A record entry's measured fields: the model at its recorded conditions."""
    cfg, size = load(name, [f"data={data}", f"input_size={input_size}"])
    model, x = build(cfg, size)
    _, counter, params = profile(model, x)
    return {"in_channels": cfg.data.in_channels, "num_classes": cfg.data.num_classes, "params": params,
            "aux_params": sum(p.numel() for p in model.parameters()) - params,
            "gmacs": counter.get_total_flops() / 2 / 1e9}


def remeasure(record: dict[str, dict], names: list[str] | None = None) -> dict[str, dict]:
    """Every conf/model/*.yaml (or those named) measured at its record entry's conditions; fails on a config without
    an entry."""
    names = names or sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    if missing := [n for n in names if n not in record]:
        raise ValueError(f"{', '.join(missing)}: no entry in {RECORD}. Add a line per config with its conditions, "
                         'e.g. "name": {"data": "imagenet", "input_size": 224, "paper": null}, and rerun')
    return {n: {k: record[n][k] for k in CONDITIONS} | measure(n, record[n]["data"], record[n]["input_size"])
            for n in tqdm(names, desc="measuring the zoo", unit="config", disable=len(names) < 5)}


def count(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:g}M" if n >= 1e5 else f"{n:,}"  # as papers write them: 0.27M, 60,000


def markdown(record: dict[str, dict]) -> str:
    """docs/MODEL_ZOO.md: one row per record entry."""
    lines = [
        "# Model zoo",
        "",
        "Generated from `conf/zoo.json` by `python -m cnnlab.summary --zoo` (`--zoo --json` first re-measures every",
        "`conf/model/*.yaml` into the record); `tests/test_zoo.py` checks that each config builds to its record entry",
        "and that this file is what the record generates. Do not edit it by hand.",
        "",
        "- **model**: the config name, `model=<name>`.",
        "- **input**: channels x height x width of one image, the paper's input; **classes**: those of the paper's",
        "  data config (`data`, in parentheses).",
        "- **params**: parameters of the inference network, the modules an eval-mode forward pass runs (the papers'",
        "  count). **aux params**: auxiliary classifiers that run in training only (GoogLeNet, Inception-v3).",
        "- **GMACs**: multiply-accumulates of one eval-mode forward pass, 10^9, from `torch.utils.flop_counter`",
        "  (1 MAC = 2 FLOPs; pooling, BN and activations count 0). What the ResNet paper and torchvision call FLOPs.",
        "- **paper params / paper GMACs**: the published figures, as the source states them (rounded); empty where",
        "  the paper gives none. A note says why ours differ where they differ by more than 5%.",
        "",
        "A new `conf/model/<name>.yaml` fails `tests/test_zoo.py` until it has a record entry: add a line",
        '`"<name>": {"data": "imagenet", "input_size": 224, "paper": null}` to `conf/zoo.json` (the data config and',
        "input side its paper uses; `paper` as the other entries, with `params`, `gmacs`, `source` and an optional",
        "`note`), then run `python -m cnnlab.summary --zoo --json`. Per layer: `python -m cnnlab.summary model=<name>`",
        "",
        "| model | input | classes | params | aux params | GMACs | paper params | paper GMACs | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in record.items():
        paper = e["paper"] or {}
        source = paper.get("source", "") + (f" ({paper['note']})" if paper.get("note") else "")
        gmacs = "" if paper.get("gmacs") is None else f"{paper['gmacs']:g}"
        ours = f"{e['gmacs']:.3f}" if e["gmacs"] >= 0.01 else f"{e['gmacs']:.2g}"  # LeNet-5: 0.00042
        lines.append(f"| {name} | {e['in_channels']}x{e['input_size']}x{e['input_size']} | {e['num_classes']} "
                     f"({e['data']}) | {e['params']:,} | {e['aux_params']:,} | {ours} | "
                     f"{count(paper.get('params'))} | {gmacs} | {source} |")
    return "\n".join(lines) + "\n"


@hydra.main(config_path=str(CONF), config_name="summary", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.json and not cfg.zoo:
        raise ValueError("json=true (--json) writes the zoo record: give it with zoo=true (--zoo)")
    if cfg.zoo:
        if cfg.json:
            write_record(remeasure(read_record()))
            print(f"wrote {RECORD}")
        TABLE.write_text(markdown(read_record()))
        print(f"wrote {TABLE}")
        return
    hc = HydraConfig.get()
    print(summary(hc.runtime.choices.model, list(hc.overrides.task)))


def run() -> None:
    sys.argv = [FLAGS.get(a, a) for a in sys.argv]  # --zoo / --json: short for the keys zoo=true / json=true
    main()


if __name__ == "__main__":
    run()
