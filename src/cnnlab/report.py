"""Reports over run directories: runs grouped by the swept keys, learning curves, and the papers' figures and tables
with the papers' numbers beside ours.

    python -m cnnlab.report <multirun dir> [<dir> ...] [--out DIR] [--eval center tencrop [--set data.root=...]]
    python -m cnnlab.report --ckpt resnet50=runs/x/checkpoints/best.ckpt [[NAME=]CKPT ...] --eval center tencrop

A directory is any folder holding run directories at any depth (a multirun, a runs/ tree, one run); a run directory
is one with .hydra/ or config.yaml. A run has finished when train.py wrote its results.json (the file is written
last); the others failed or are unfinished and are listed, as are sweep jobs that never started. Written into --out
(default: <first dir>/report):

  runs.csv                      one row per run: status, its overrides, test and best validation error, steps
  summary.md, summary.csv       grouped by the swept keys other than the seed: mean +- std over seeds, n stated
  curves.png, curves.pdf        training error (dashed) and validation error (solid) against iterations
and, where the runs' models make them apply:
  degradation.png/.pdf, table6.md/.csv   CIFAR plain-N and ResNet-N: He et al. 2016, Figure 6 and Table 6
  table3.md/.csv                         ResNeXt cardinality settings: Xie et al. 2017, Table 3
  ilsvrc.md/.csv, ilsvrc_gmacs.png/.pdf  ImageNet models (evaluated with --eval protocols) beside the papers'
                                         numbers and the ILSVRC winners; top-1 error against GMACs

Errors are printed in % of images; params and GMACs (multiply-adds, one image) are measured on the model each run
built, at its paper's input (cnnlab.summary: 224x224 and 1000 classes for ImageNet models, 32x32 and 10 for CIFAR).
"""

import argparse
import csv
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from cnnlab import papers

log = logging.getLogger("cnnlab.report")
CURVE_KEYS = ("train/err1", "val/err1", "train/err5", "val/err5", "train/loss", "val/loss")
CIFAR_NET = re.compile(r"(plain|resnet)(\d+)")
DASH = "—"


@dataclass
class Run:
    """One run directory, read: its overrides, model name, resolved config, results and epoch-level curves."""

    path: Path
    overrides: dict[str, str]  # .hydra/overrides.yaml as key -> value
    model: str  # the model config's name (Hydra's runtime choice); "?" for a run without .hydra/
    config: dict  # config.yaml (resolved)
    results: dict | None  # results.json; None: failed or unfinished
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)] per epoch

    @property
    def finished(self) -> bool:
        return bool(self.results) and self.results.get("status") == "finished"

    def test(self, key: str = "test/err1") -> float | None:
        return self.results["test"].get(key) if self.finished else None

    def last(self, key: str) -> float | None:
        return self.curves[key][-1][1] if self.curves.get(key) else None

    @property
    def steps(self) -> int:
        if self.finished:
            return self.results["global_step"]
        return max((s for c in self.curves.values() for s, _ in c), default=0)


def _yaml(path: Path) -> dict | list | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Epoch-level metrics of csv/version_*/metrics.csv; a resumed run's later version overrides repeated epochs."""
    by_epoch: dict[str, dict[int, tuple[int, float]]] = {k: {} for k in CURVE_KEYS}
    versions = sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions:
        with path.open() as f:
            for row in csv.DictReader(f):
                for key in CURVE_KEYS:
                    if row.get(key):
                        by_epoch[key][int(row["epoch"])] = (int(row["step"]), float(row[key]))
    return {k: [v[e] for e in sorted(v)] for k, v in by_epoch.items() if v}


def read_run(path: Path) -> Run:
    overrides = {}
    for o in _yaml(path / ".hydra" / "overrides.yaml") or []:
        key, _, value = o.lstrip("+~").partition("=")
        overrides[key] = value
    hydra = (_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
    model = hydra.get("runtime", {}).get("choices", {}).get("model", "?")
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else None
    return Run(path, overrides, model, _yaml(path / "config.yaml") or {}, results, read_curves(path))


def find_runs(dirs: list[Path]) -> list[Run]:
    paths = set()
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
        paths |= {p.parent.parent for p in d.rglob(".hydra/overrides.yaml")}
        paths |= {p.parent for p in d.rglob("config.yaml") if p.parent.name != ".hydra"}
    if not paths:
        raise FileNotFoundError(f"no run directories (with .hydra/ or config.yaml) under {', '.join(map(str, dirs))}")
    order = sorted(paths, key=lambda p: (str(p.parent), int(p.name) if p.name.isdigit() else -1, p.name))
    return [read_run(p) for p in _progress(order, "reading runs")]


def read_sweeps(dirs: list[Path], runs: list[Run]) -> tuple[list[str], list[str], list[str]]:
    """The keys the multirun.yaml sweeps under dirs vary, the jobs they define that have no run directory (the sweep
    stopped before them or is still running), and the best trial of each Optuna study."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys, missing = {}, []
    for multirun in (m for d in dirs for m in d.rglob("multirun.yaml")):
        hydra = _yaml(multirun)["hydra"]
        sweeper = hydra.get("sweeper") or {}
        # the sweeper's params, then the command line's overrides; a key given later wins (Hydra's BasicSweeper)
        args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + hydra["overrides"]["task"]
        grid = {o.key_or_group: 1 if not o.is_sweep_override() else len(list(o.sweep_string_iterator()))
                if o.is_discrete_sweep() else math.inf for o in OverridesParser.create().parse_overrides(args)}
        keys |= {k: None for k, n in grid.items() if n > 1}
        n = sweeper["n_trials"] if "n_trials" in sweeper else math.prod(grid.values())  # Optuna: n_trials
        found = {r.path.name for r in runs if r.path.parent == multirun.parent}
        missing += [f"{multirun.parent}/{i}" for i in range(n) if str(i) not in found]
    best = [f"- Optuna, `{p.parent}`: best value {r['best_value']:.4f} at "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
            for p in (p for d in dirs for p in d.rglob("optimization_results.yaml")) if (r := _yaml(p))]
    return list(keys), missing, best


def swept_keys(runs: list[Run], declared: list[str]) -> list[str]:
    """The keys the sweeps declare, then other override keys whose value differs between runs."""
    runs = [r for r in runs if r.overrides]  # a run without .hydra/ tells nothing
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides if not k.startswith("hydra.")))
    return [*declared, *(k for k in keys if k not in declared and len({r.overrides.get(k) for r in runs}) > 1)]


def short(value: str) -> str:
    """An override value for a table: floats from a search (0.08558894657793088) to 4 significant digits."""
    try:
        return f"{float(value):.4g}" if len(value) > 6 and "." in value else value
    except ValueError:
        return value


def groups(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(short(r.overrides.get(k, DASH)) for k in keys), []).append(r)
    return out


def stats(values: list[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of the values that exist, in %; std is 0 for n = 1."""
    v = [100 * x for x in values if x is not None]
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) if v else None


def fmt(s: tuple[float, float, int] | None, digits: int = 2) -> str:
    if s is None:
        return DASH
    return f"{s[0]:.{digits}f}" if s[2] == 1 else f"{s[0]:.{digits}f} ± {s[1]:.{digits}f}"


def paper(value: float | None) -> str:
    return DASH if value is None else f"{value:g}"


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def write_table(out: Path, name: str, header: list[str], rows: list[list], title: str, notes: str = "") -> str:
    with (out / f"{name}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    text = f"## {title}\n\n{markdown(header, rows)}\n{notes}"
    (out / f"{name}.md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------------------------- any sweep
def sweep_report(runs: list[Run], keys: list[str], missing: list[str], best: list[str], out: Path) -> str:
    by = [k for k in keys if k != "seed"]
    header = ["run", "status", *keys, "test err1 %", "test err5 %", "best val err1 %", "steps"]
    status = {True: "finished", False: "failed or unfinished"}
    rows = [[str(r.path), status[r.finished], *(r.overrides.get(k, DASH) for k in keys),
             fmt(stats([r.test()])), fmt(stats([r.test("test/err5")])),
             fmt(stats([r.results.get("best_score") if r.finished else None])), r.steps] for r in runs]
    with (out / "runs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])

    header = [*by, "n", "test err1 %", "test err5 %", "best val err1 %", "final train err1 %", "steps"]
    rows = []
    for values, group in groups(runs, by).items():
        done = [r for r in group if r.finished]
        rows.append([*values, f"{len(done)}/{len(group)}" if len(done) < len(group) else len(done),
                     fmt(stats([r.test() for r in done])), fmt(stats([r.test("test/err5") for r in done])),
                     fmt(stats([r.results.get("best_score") for r in done])),
                     fmt(stats([r.last("train/err1") for r in done])), max((r.steps for r in group), default=0)])
    notes = (f"\nMean ± sample std over the finished runs of each group (n; `k/m`: k of m finished). Swept keys: "
             f"{', '.join(keys) or 'none'}. Test error: the final weights on the test set; best val: the best "
             f"epoch's validation error (what the sweep optimizes).\n")
    unfinished = [f"- `{r.path}` ({', '.join(f'{k}={r.overrides.get(k)}' for k in keys)}): no results.json, "
                  f"last logged step {r.steps}" for r in runs if not r.finished]
    unfinished += [f"- `{m}`: defined by the sweep, never started" for m in missing]
    if best:
        notes += "\nBest trials (the objective: best val/err1):\n\n" + "\n".join(best) + "\n"
    if unfinished:
        notes += f"\nFailed or unfinished ({len(unfinished)} of {len(runs) + len(missing)}):\n\n" + "\n".join(
            unfinished) + "\n"
    text = write_table(out, "summary", header, rows, f"{len(runs)} runs", notes)
    curves_figure(groups(runs, by), by, out / "curves")
    return text


def _mean_curve(group: list[Run], key: str) -> list[tuple[int, float]]:
    """The seeds' mean at the epochs all of them reached."""
    curves = [r.curves[key] for r in group if r.curves.get(key)]
    n = min((len(c) for c in curves), default=0)
    return [(curves[0][i][0], statistics.mean(c[i][1] for c in curves)) for i in range(n)]


def curves_figure(by_group: dict[tuple, list[Run]], keys: list[str], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (values, group) in enumerate(by_group.items()):
        colour = f"C{i % 10}"
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "runs"
        for key, style in (("train/err1", "--"), ("val/err1", "-")):
            if curve := _mean_curve(group, key):
                steps, err = zip(*curve, strict=True)
                ax.plot(steps, [100 * e for e in err], style, color=colour, marker=".", markersize=4,
                        label=label if style == "-" else None)
    ax.set(xlabel="iterations", ylabel="top-1 error (%)", title="training (dashed) and validation (solid) error")
    if len(by_group) <= 20:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, stem)


def save(fig, stem: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- He et al. 2016, Fig. 6, Table 6
def degradation_report(runs: list[Run], by: list[str], out: Path) -> str:
    """Table 6 rows per model (and per other swept key, e.g. lr); Figure 6 when the model is all that varies."""
    nets = [r for r in runs if CIFAR_NET.fullmatch(r.model) and r.config.get("model", {}).get("stem") == "cifar"]
    extra = [k for k in by if k not in ("model", "experiment")]
    rows_by = groups(nets, extra)
    header = ["model", *extra, "layers", "params", "n", "test err %", "final train err %", "paper test err %"]
    rows, by_model = [], {}
    for values, group in rows_by.items():
        for r in group:
            by_model.setdefault((r.model, values), []).append(r)
    order = sorted(by_model, key=lambda mv: (mv[0].startswith("resnet"), int(CIFAR_NET.fullmatch(mv[0])[2]), mv[1]))
    for m, values in order:
        group = by_model[m, values]
        done = [r for r in group if r.finished]
        rows.append([m, *values, CIFAR_NET.fullmatch(m)[2], f"{complexity(m, group[0].config)[0]:,}",
                     f"{len(done)}/{len(group)}" if len(done) < len(group) else len(done),
                     fmt(stats([r.test() for r in done])), fmt(stats([r.last("train/err1") for r in done])),
                     paper(papers.HE2016_TABLE6.get(m))])
    if extra:
        log.info("no degradation figure: besides the model, %s vary", ", ".join(extra))
    held_out = "validation (held-out)" if any(r.config["data"].get("val_split") for r in nets) else "test"
    steps = ", ".join(map(str, sorted({r.steps for r in nets})))
    datasets = ", ".join(sorted({str(r.config.get("data", {}).get("dataset", "?")) for r in nets}))
    if not extra:
        degradation_figure({m: by_model[m, v] for m, v in order}, f"{datasets}: training error (dashed), "
                           f"{held_out} error (bold)", out / "degradation")
    notes = (f"\nOurs: mean ± sample std over n seeds, the final weights on the {datasets} test set after {steps} "
             f"iterations (the paper: 64k). Paper: He et al. 2016 (arXiv 1512.03385), Table 6, CIFAR-10; "
             f"{papers.HE2016_TABLE6_NOTE}; it gives no number for the plain nets (Figure 6 only).\n")
    return write_table(out, "table6", header, rows, "CIFAR test error beside He et al. 2016, Table 6", notes)


def degradation_figure(by_model: dict[str, list[Run]], what: str, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({int(CIFAR_NET.fullmatch(m)[2]) for m in by_model})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain networks", "ResNets"), strict=True):
        for m, group in by_model.items():
            family, depth = CIFAR_NET.fullmatch(m).groups()
            if family != kind:
                continue
            colour = f"C{depths.index(int(depth)) % 10}"
            for key, style, width in (("train/err1", "--", 1.0), ("val/err1", "-", 2.2)):
                if curve := _mean_curve(group, key):
                    steps, err = zip(*curve, strict=True)
                    ax.plot(steps, [100 * e for e in err], style, color=colour, linewidth=width, marker=".",
                            label=f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}" if style == "-" else None)
        ax.set(title=title, xlabel="iterations")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[0].set_ylabel("top-1 error (%)")
    fig.suptitle(f"{what}; He et al. 2016, Figure 6", fontsize=10)
    save(fig, stem)


@cache
def _complexity(name: str, model_yaml: str) -> tuple[int, float]:
    import torch
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from cnnlab.summary import build, natural_input

    model_cfg = OmegaConf.create(model_yaml)
    size, classes, _ = natural_input(name)
    if "num_classes" in model_cfg:
        model_cfg.num_classes = classes
    model, x = build(OmegaConf.create({"model": model_cfg, "data": {"in_channels": model_cfg.get("in_channels", 3)}}),
                     size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def complexity(name: str, config: dict) -> tuple[int, float]:
    """(parameters, GMACs) of the model a run built, at its paper's input (cnnlab.summary.natural_input)."""
    return _complexity(name, yaml.safe_dump(config["model"]))


# ---------------------------------------------------------------------------------------- Xie et al. 2017, Table 3
def resnext_report(runs: list[Run], by: list[str], out: Path) -> str:
    extra = [k for k in by if k not in ("model", "experiment")]
    by_model: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.model in papers.XIE2017_TABLE3:
            by_model.setdefault((r.model, tuple(short(r.overrides.get(k, DASH)) for k in extra)), []).append(r)
    header = ["model", *extra, "setting", "params", "GMACs", "n", "top-1 err %", "paper top-1 err %"]
    rows = []
    for m, values in sorted(by_model, key=lambda mv: (list(papers.XIE2017_TABLE3).index(mv[0]), mv[1])):
        group = by_model[m, values]
        cfg = group[0].config["model"]
        params, gmacs = complexity(m, group[0].config)
        done = [r for r in group if r.finished]
        rows.append([m, *values, f"{cfg['groups']} x {cfg['width_per_group']}d", f"{params:,}", f"{gmacs:.3f}",
                     f"{len(done)}/{len(group)}" if len(done) < len(group) else len(done),
                     fmt(stats([r.test() for r in done])), paper(papers.XIE2017_TABLE3[m])])
    datasets = ", ".join(sorted({str(r.config.get("data", {}).get("dataset", "?")) for g in by_model.values()
                                 for r in g}))
    notes = ("\nSetting: cardinality C x bottleneck width d. Params and GMACs measured at 224x224, 1000 classes. Ours: "
             f"top-1 error of the final weights on the {datasets} test set, mean ± sample std over n seeds; paper: "
             "Xie et al. 2017 (arXiv 1611.05431), Table 3, ImageNet val, 1 crop.\n")
    return write_table(out, "table3", header, rows, "ResNeXt cardinality at preserved complexity", notes)


# ------------------------------------------------------------------------------------------------- ILSVRC comparison
PROTOCOL_ORDER = ("center", "tencrop", "flip", "multiscale", "none")  # conf/eval; "none": the test images as stored
Entry = tuple[str, dict, dict[str, tuple[float, float]]]  # (model name, run config, {protocol: (top-1, top-5) error})


def evaluate_checkpoint(ckpt: Path, protocol: str, overrides: tuple[str, ...] = ()) -> tuple[float, float]:
    """(top-1, top-5) error fractions of a checkpoint under an eval protocol (conf/eval/<protocol>.yaml)."""
    from cnnlab.evaluate import evaluate

    result = evaluate(ckpt, protocol, overrides)
    return result["err1"], result["err5"]


def ilsvrc_entries(runs: list[Run], protocols: list[str], overrides: tuple[str, ...] = ()) -> list[Entry]:
    """Finished runs of the ImageNet models: their own test (under the run's eval protocol) and, for each of
    protocols, their best checkpoint's."""
    entries = []
    for r in _progress([r for r in runs if r.finished and r.model in papers.ILSVRC], "evaluating runs"):
        errors = {str(r.config.get("eval", {}).get("name", "none")): (r.test(), r.test("test/err5"))}
        best = sorted(r.path.glob("checkpoints/best-*.ckpt")) or sorted(r.path.glob("checkpoints/last.ckpt"))
        for p in protocols:
            if not best:
                raise FileNotFoundError(f"no checkpoint to evaluate in {r.path}/checkpoints")
            errors[p] = evaluate_checkpoint(best[-1], p, overrides)
        entries.append((r.model, r.config, errors))
    return entries


def checkpoint_entries(ckpts: list[str], protocols: list[str], overrides: tuple[str, ...] = ()) -> list[Entry]:
    """NAME=PATH, or a PATH inside a run directory (named by its .hydra/), evaluated under each protocol."""
    import torch

    entries = []
    for spec in _progress(ckpts, "evaluating checkpoints"):
        name, _, path = spec.rpartition("=")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        name = name or read_run(path.parent.parent).model
        config = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["run_config"]
        entries.append((name, config, {p: evaluate_checkpoint(path, p, overrides) for p in protocols}))
    return entries


def ilsvrc_report(entries: list[Entry], out: Path) -> str:
    done = {p for _, _, errors in entries for p in errors}
    protocols = [p for p in PROTOCOL_ORDER if p in done] + sorted(done - set(PROTOCOL_ORDER))
    header = ["model", "params", "GMACs", *(f"ours {p} top-1/top-5 %" for p in protocols), "paper 1-crop",
              "paper 10-crop", "torchvision 1-crop", "source"]
    rows, points = [], []
    for name, config, errors in entries:
        params, gmacs = complexity(name, config)
        ref = papers.ILSVRC.get(name, dict(source=DASH, crop1=(None, None), crop10=(None, None), torchvision=None))
        tv = ref["torchvision"]
        rows.append([name, f"{params:,}", f"{gmacs:.3f}",
                     *("/".join(f"{100 * e:.2f}" for e in errors[p]) if p in errors else DASH for p in protocols),
                     "/".join(paper(v) for v in ref["crop1"]), "/".join(paper(v) for v in ref["crop10"]),
                     f"{100 - tv[0]:.2f}/{100 - tv[1]:.2f}" if tv else DASH, ref["source"]])
        ours = next((100 * errors[p][0] for p in protocols if p in errors), None)
        points.append((name, gmacs, ours, ref["crop1"][0] or ref["crop10"][0] or (100 - tv[0] if tv else None)))
    winners = markdown(["ILSVRC entry", "year", "top-5 test err %", "note"],
                       [[n, y or DASH, e, note or DASH] for n, y, e, note in papers.ILSVRC_WINNERS])
    datasets = ", ".join(sorted({str(c.get("data", {}).get("root", "?")) for _, c, _ in entries}))
    notes = ("\nOurs: top-1/top-5 error % of each run's final weights under its own eval protocol (results.json) and "
             "of its best checkpoint (or the given checkpoint) under each --eval protocol: center = 1 crop of 224 from "
             "the 256-resized image, tencrop = 4 corners + center and their flips, none = the test images as stored; "
             f"data: {datasets}. Paper columns: ImageNet val, top-1/top-5 %, from the source named; torchvision: "
             "its released weights (acc@1/acc@5 as errors). Params and GMACs at 224x224, 1000 classes.\n\n"
             f"### ILSVRC classification winners (REFERENCE.md section 3)\n\n{winners}\n")
    text = write_table(out, "ilsvrc", header, rows, "ImageNet single models beside the papers", notes)
    ilsvrc_figure(points, out / "ilsvrc_gmacs")
    return text


def ilsvrc_figure(points: list[tuple[str, float, float | None, float | None]], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, gmacs, ours, ref in points:
        if ref is not None:
            ax.scatter(gmacs, ref, marker="o", facecolors="none", edgecolors="C0")
        if ours is not None:
            ax.scatter(gmacs, ours, marker="s", color="C3")
        ax.annotate(name, (gmacs, ours if ours is not None else ref or 0), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="C0", label="paper (1 crop, else 10 crops)")
    ax.scatter([], [], marker="s", color="C3", label="ours (first protocol of the table)")
    ax.set(xscale="log", xlabel="GMACs per 224x224 image", ylabel="top-1 error (%)", title="ImageNet top-1 error")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save(fig, stem)


def _progress(items: list, what: str):
    from tqdm import tqdm

    return tqdm(items, desc=what, leave=False, disable=len(items) < 5)


# ------------------------------------------------------------------------------------------------------------- main
def report(dirs: list[Path], out: Path | None = None, protocols: tuple[str, ...] = (), ckpts: tuple[str, ...] = (),
           overrides: tuple[str, ...] = ()) -> str:
    """Write every report that applies to the runs under dirs (and the checkpoints) into out; returns the Markdown."""
    out = out or (dirs[0] / "report" if dirs else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in find_runs(dirs) if out not in r.path.parents] if dirs else []
    parts = []
    if runs:
        declared, missing, best = read_sweeps(dirs, runs)
        keys = swept_keys(runs, declared)
        by = [k for k in keys if k != "seed"]
        parts.append(sweep_report(runs, keys, missing, best, out))
        if len({r.model for r in runs if CIFAR_NET.fullmatch(r.model)}) > 1:
            parts.append(degradation_report(runs, by, out))
        if any(r.model in papers.XIE2017_TABLE3 for r in runs):
            parts.append(resnext_report(runs, by, out))
    entries = ilsvrc_entries(runs, list(protocols), overrides) + checkpoint_entries(list(ckpts), list(protocols),
                                                                                    overrides)
    if entries:
        parts.append(ilsvrc_report(entries, out))
    text = "\n\n".join(parts)
    (out / "report.md").write_text(text)
    log.info("report written to %s", out)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="multirun or run directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/report)")
    parser.add_argument("--ckpt", nargs="+", default=[], metavar="[NAME=]CKPT", help="checkpoints to evaluate")
    parser.add_argument("--eval", nargs="+", default=[], metavar="PROTOCOL",
                        help="evaluation protocols (conf/eval) for ImageNet checkpoints, e.g. center tencrop")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="for --eval, as cnnlab.evaluate takes them: data.root=/imagenet data.eval_batch_size=64")
    args = parser.parse_args(argv)
    if not args.dirs and not args.ckpt:
        parser.error("give at least one directory or --ckpt")
    if args.ckpt and not args.eval:
        parser.error("--ckpt needs --eval (e.g. --eval center tencrop)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(report(args.dirs, args.out, tuple(args.eval), tuple(args.ckpt), tuple(args.overrides)))


if __name__ == "__main__":
    main()
