"""The README's results rows and docs/reproductions-cpu.md's tables, printed from committed runs, so that a published
number cannot drift from the runs that gave it (tests/test_results_table.py compares them character for character):

    python -m cnnlab.report --table readme results/
    python -m cnnlab.report --table cpu-doc results/

results/<name>/ holds MEASURED.json (experiment, commit, command, machine, threads, dates: how the runs were measured)
and one folder per run with the small files train.py writes (results.json, metrics.csv, .hydra/config.yaml,
.hydra/overrides.yaml); `python -m cnnlab.report --collect results/<name> <run dirs>` copies them (results/README.md).

A claim that deeper (or higher-cardinality) nets have lower or higher error is "shown" for a pair of adjacent nets only
when the two nets' seed ranges (min-max over seeds) are disjoint in the claimed direction, in every metric it names.
"""

import csv
import json
import re
import shutil
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

import yaml

from cnnlab.report.recipes import RECIPES
from cnnlab.report.runs import CURVE_KEYS, Run, find_runs
from cnnlab.report.tables import markdown, stats
from cnnlab.report.xie2017 import TABLE3

MEASURED = "MEASURED.json"
MEASURED_KEYS = ("experiment", "commit", "command", "machine", "threads", "dates")
METRICS = {"train": "final training error", "test": "test error"}


@dataclass(frozen=True)
class Claim:
    """One row of the README's results table: which nets of which experiment, compared how."""

    experiment: str
    claim: str  # the paper's claim, with its source
    nets: str  # regex on the model config name; its first group orders the nets (depth, cardinality)
    metrics: tuple[str, ...]  # "train" (final training error), "test" (test error of the tested weights)
    direction: str  # "higher" / "lower": the next net's error is above / below the previous one's; "target": at most
    paper: str
    target: float | None = None  # %, for direction "target"


LENET = next(r["err"] for r in RECIPES if r["model"] == "lenet5")
CLAIMS = [
    Claim("lenet5_mnist_cpu", f"LeNet-5 reaches {LENET:g}% test error on MNIST without distortions (LeCun et al. "
          "1998, III.C)", r"lenet5()", ("test",), "target", f"{LENET:g}%", target=LENET),
    Claim("he2016_degradation_cpu", "Deeper plain nets train worse (He et al. 2016, Fig. 6)", r"plain(\d+)",
          ("train",), "higher", "deeper plain above shallower"),
    Claim("he2016_degradation_cpu", "Deeper ResNets train and test better (He et al. 2016, Fig. 6; Table 6: ResNet-56 "
          "6.97% vs ResNet-20 8.75% test)", r"resnet(\d+)", ("train", "test"), "lower",
          "deeper ResNet below shallower"),
    Claim("resnext_cifar_cpu", "Higher cardinality at matched complexity gives lower error (Xie et al. 2017, Table 3)",
          r"resnext29_cpu_(\d+)x(\d+)d", ("test",), "lower", "{paper} (ImageNet, ResNeXt-50)"),
]


# ------------------------------------------------------------------------------------------------------ reading
def measured(folder: Path) -> dict:
    path = folder / MEASURED
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: each results folder states how its runs were measured "
                                f"({', '.join(MEASURED_KEYS)}); see results/README.md")
    info = json.loads(path.read_text())
    if missing := [k for k in MEASURED_KEYS if not info.get(k)]:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return info


def folders(dirs: list[Path]) -> list[Path]:
    """The results folders (with MEASURED.json) under dirs, in name order."""
    found = {p.parent for d in dirs for p in d.rglob(MEASURED)}
    if not found:
        raise FileNotFoundError(f"no {MEASURED} under {', '.join(map(str, dirs))}")
    return sorted(found)


def value(run: Run, metric: str) -> float | None:
    return run.test() if metric == "test" else run.last("train/err1") if run.finished else None


def seed(run: Run) -> int:
    return int(run.config.get("seed", run.overrides.get("seed", 0)))


@dataclass
class Net:
    name: str
    key: tuple[int, ...]
    runs: list[Run]  # finished, in seed order

    def values(self, metric: str) -> list[float]:
        return [100 * value(r, metric) for r in self.runs]


def nets(runs: list[Run], pattern: str) -> list[Net]:
    by: dict[str, list[Run]] = {}
    for r in runs:
        if re.fullmatch(pattern, r.model) and r.finished:
            by.setdefault(r.model, []).append(r)
    out = [Net(m, tuple(int(g) for g in re.fullmatch(pattern, m).groups() if g), sorted(g, key=seed))
           for m, g in by.items()]
    return sorted(out, key=lambda n: n.key)


# ------------------------------------------------------------------------------------------------------ the numbers
def num(x: float) -> str:
    return f"{x:.2f}"


def mean_std(values: list[float]) -> str:
    m, s, n = stats([v / 100 for v in values])
    return num(m) if n == 1 else f"{num(m)} ± {num(s)}"


def span(values: list[float]) -> str:
    return f"{num(min(values))}-{num(max(values))}"


def label(net: Net, first: bool) -> str:
    """plain-8, then 14, 20 ...; ResNet-8; C = 1, then 8 ..."""
    if net.name.startswith("resnext"):
        return f"C = {net.key[0]}" if first else str(net.key[0])
    family = {"plain": "plain", "resnet": "ResNet", "lenet": "LeNet"}[re.match(r"[a-z]+", net.name)[0]]
    depth = net.key[0] if net.key else 5
    return f"{family}-{depth}" if first else str(depth)


def pair_shown(a: Net, b: Net, metrics: tuple[str, ...], direction: str) -> bool:
    """b's seed range entirely above (direction "higher") or below ("lower") a's, in every metric."""
    if direction == "higher":
        return all(min(b.values(m)) > max(a.values(m)) for m in metrics)
    return all(max(b.values(m)) < min(a.values(m)) for m in metrics)


def verdict(claim: Claim, found: list[Net]) -> str:
    ranges = "; ".join(f"{METRICS[m]} ranges " + " / ".join(span(n.values(m)) for n in found) + "%"
                       for m in claim.metrics)
    if claim.direction == "target":
        worst = max(v for n in found for v in n.values(claim.metrics[0]))
        if worst <= claim.target:
            return f"yes: every seed at or below {claim.target:g}% ({ranges})"
        return f"no: not every seed at or below {claim.target:g}% ({ranges})"
    if len(found) < 2:
        return f"not shown: fewer than two nets ({ranges})"
    unit = "C" if found[0].name.startswith("resnext") else "depth"
    flags = [pair_shown(a, b, claim.metrics, claim.direction) for a, b in pairwise(found)]
    spans = {True: [], False: []}
    i = 0
    while i < len(flags):  # consecutive pairs with the same outcome: "from 8 to 20"
        j = i
        while j + 1 < len(flags) and flags[j + 1] == flags[i]:
            j += 1
        spans[flags[i]].append(f"from {found[i].key[0]} to {found[j + 1].key[0]}")
        i = j + 1
    if all(flags):
        return f"yes, at every {unit} ({ranges})"
    if not any(flags):
        return f"not shown: seed ranges overlap or are in the other order ({ranges})"
    return f"only {' and '.join(spans[True])}; not {' and '.join(spans[False])} ({ranges})"


def budget(runs: list[Run]) -> str:
    steps = sorted({r.steps for r in runs if r.finished})
    return f"{'/'.join(f'{s:,}' for s in steps)} iterations"


def seeds(found: list[Net]) -> str:
    return ", ".join(str(s) for s in sorted({seed(r) for n in found for r in n.runs}))


def count(found: list[Net], runs: list[Run], pattern: str) -> str:
    ns = sorted({len(n.runs) for n in found})
    text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    unfinished = sum(1 for r in runs if re.fullmatch(pattern, r.model) and not r.finished)
    return f"{text} ({unfinished} unfinished)" if unfinished else text


def ours(claim: Claim, found: list[Net]) -> str:
    names = " / ".join(label(n, i == 0) for i, n in enumerate(found))
    if claim.direction == "target":
        return f"{mean_std(found[0].values('test'))}% test error"
    parts = [" / ".join(mean_std(n.values(m)) for n in found) + f"% {METRICS[m]}" for m in claim.metrics]
    return f"{names}: {'; '.join(parts)}"


def paper(claim: Claim, found: list[Net]) -> str:
    if "{paper}" not in claim.paper:
        return claim.paper
    return claim.paper.format(paper=" / ".join(f"{TABLE3[f'resnext50_{n.key[0]}x{n.key[1]}d']:g}" for n in found)
                              + "%")


# ------------------------------------------------------------------------------------------------------ the tables
def readme_rows(dirs: list[Path]) -> list[str]:
    """The README's results rows, one per claim whose experiment has a results folder under dirs, CLAIMS' order."""
    rows = []
    by_experiment = {measured(f)["experiment"]: f for f in folders(dirs)}
    for claim in CLAIMS:
        if claim.experiment not in by_experiment:
            continue
        folder = by_experiment[claim.experiment]
        info, runs = measured(folder), find_runs([folder])
        if not (found := nets(runs, claim.nets)):  # e.g. only the plain half measured so far
            continue
        recipe = (f"`{info['command']}` at commit `{info['commit'][:10]}`: {budget(runs)}; seeds {seeds(found)}")
        rows.append("| " + " | ".join([claim.claim, recipe, count(found, runs, claim.nets), ours(claim, found),
                                        paper(claim, found), verdict(claim, found)]) + " |")
    return rows


@cache
def _params(model_yaml: str) -> int:
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        return sum(p.numel() for p in instantiate(yaml.safe_load(model_yaml)).parameters())


def params(run: Run) -> int:
    return _params(yaml.safe_dump(run.config["model"]))


def cpu_doc_tables(dirs: list[Path]) -> str:
    """Per results folder: how it was measured, then one row per net: params, n, training and test error, mean ±
    sample std with each seed's value (docs/reproductions-cpu.md)."""
    out = []
    for folder in folders(dirs):
        info, runs = measured(folder), find_runs([folder])
        pattern = "|".join(f"(?:{c.nets})" for c in CLAIMS if c.experiment == info["experiment"]) or r".+"
        found = [n for c in CLAIMS if c.experiment == info["experiment"] for n in nets(runs, c.nets)] or nets(
            runs, r".+")
        header = ["net", "params", "n", "final training error % (seeds)", "test error % (seeds)"]
        rows = [[n.name if n.name.startswith("resnext") else label(n, True), f"{params(n.runs[0]):,}", len(n.runs),
                 *(f"{mean_std(n.values(m))} ({', '.join(num(v) for v in n.values(m))})" for m in ("train", "test"))]
                for n in found]
        unfinished = sum(1 for r in runs if re.fullmatch(pattern, r.model) and not r.finished)
        out.append(f"`{info['command']}` at commit `{info['commit'][:10]}`, {info['machine']}, {info['threads']} "
                   f"thread(s) per run, {info['dates']}; {budget(runs)}; seeds {seeds(found)} (in that order)"
                   + (f"; {unfinished} run(s) unfinished" if unfinished else "") + ".\n\n" + markdown(header, rows))
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------------------ collecting
KEEP = ("results.json", ".hydra/config.yaml", ".hydra/overrides.yaml")


def collect(dest: Path, dirs: list[Path], info: dict) -> list[Path]:
    """Copy the small files of the finished runs under dirs into dest/<k>/ (k = 0, 1, ... by model and seed; no
    checkpoints) with metrics.csv cut to the epoch rows and columns the reports read, and write dest/MEASURED.json."""
    if missing := [k for k in MEASURED_KEYS if not info.get(k)]:
        raise ValueError(f"--collect needs {', '.join(missing)} (--measured KEY=VALUE)")
    runs = sorted((r for r in find_runs(dirs) if r.finished), key=lambda r: (r.model, seed(r)))
    written = []
    for k, run in enumerate(runs):
        out = dest / str(k)
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            shutil.copyfile(run.path / name, out / name)
        # the config group choices alone (model=lenet5 set by an experiment is in no override): how runs are named
        choices = {"hydra": {"runtime": {"choices": {"model": run.model}}}}
        (out / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
        columns, kept = ["epoch", "step", *CURVE_KEYS], []
        versions = sorted(run.path.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
        for path in versions:  # in order: a resumed run's later rows win in read_curves, as in the run directory
            with path.open() as f:
                kept += [[row.get(c) or "" for c in columns] for row in csv.DictReader(f)
                         if any(row.get(c) for c in CURVE_KEYS)]
        with (out / "metrics.csv").open("w", newline="") as f:
            csv.writer(f).writerows([columns, *kept])
        written.append(out)
    (dest / MEASURED).write_text(json.dumps(info, indent=1) + "\n")
    return written
