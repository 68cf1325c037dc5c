"""The seed papers' small-image recipes (conf/experiment/<author><year>_<dataset>.yaml) beside their published test
errors: pre-activation ResNet, Wide ResNet, stochastic depth, DenseNet-BC, FractalNet, NiN on CIFAR-10, LeNet-5 on
MNIST."""

from pathlib import Path

from cnnlab.report.runs import Run
from cnnlab.report.tables import complexity, count, fmt, matches, stats, write_table

# Test error % as each paper reports it, for the recipe named; `where` holds the model keys the number needs.
# "+": the standard translation + flipping augmentation.
RECIPES = [
    dict(model="preact_resnet164", experiment="he2016b_cifar10", dataset="cifar10", err=5.46,
         row="He et al. 2016b (arXiv 1603.05027), Table 2, 'ResNet-164', full pre-activation, CIFAR-10"),
    dict(model="preact_resnet1001", experiment="he2016b_cifar10_1001", dataset="cifar10", err=4.62,
         row="He et al. 2016b, Table 4, 'ResNet-1001', pre-activation, CIFAR-10, batch 64, median of 5 (4.69 ± 0.20); "
             "Table 3: 4.92 at batch 128"),
    dict(model="wrn28_10", experiment="zagoruyko2016_cifar10", dataset="cifar10", err=3.89, where={"dropout": 0.3},
         row="Zagoruyko & Komodakis 2016 (arXiv 1605.07146), WRN-28-10 with dropout, CIFAR-10"),
    dict(model="resnet110_sd", experiment="huang2016_cifar10", dataset="cifar10", err=5.25,
         row="Huang et al. 2016 (arXiv 1603.09382), Table 1, '110-layer ResNet', stochastic depth, CIFAR-10+, "
             "at the best validation epoch"),
    dict(model="densenet_bc100", experiment="huang2017_cifar10", dataset="cifar10", err=4.51,
         row="Huang et al. 2017 (arXiv 1608.06993), Table 2, 'DenseNet-BC (L = 100, k = 12)', C10+"),
    dict(model="fractalnet", experiment="larsson2017_cifar10", dataset="cifar10", err=4.60, where={"columns": 3},
         row="Larsson et al. 2017 (arXiv 1605.07648), Table 1, 'FractalNet (20 layers)' + drop-path + dropout, C10+"),
    dict(model="nin", experiment="lin2014_cifar10", dataset="cifar10", err=8.81,
         row="Lin et al. 2014 (arXiv 1312.4400), Table 2, 'NIN + Dropout', CIFAR-10 with data augmentation"),
    dict(model="lenet5", experiment="lecun1998_mnist", dataset="mnist", err=0.95,
         row="LeCun et al. 1998, III.C and Fig. 14, 'LeNet-5', MNIST without distortions"),
]


def paper_row(name: str, config: dict) -> dict | None:
    return next((row for row in RECIPES if matches(row, name, config.get("model", {}))), None)


def applies(runs: list[Run]) -> bool:
    return any(paper_row(r.model, r.config) for r in runs)


def recipes_report(runs: list[Run], out: Path) -> str:
    by_model: dict[str, list[Run]] = {}
    for r in runs:
        if paper_row(r.model, r.config):
            by_model.setdefault(r.model, []).append(r)
    header = ["model", "recipe", "data", "params", "n", "test err %", "steps", "paper test err %", "paper row"]
    rows = []
    for m, group in by_model.items():
        ref, done = paper_row(m, group[0].config), [r for r in group if r.finished]
        data = ", ".join(sorted({str(r.config.get("data", {}).get("dataset", "?")) for r in group}))
        rows.append([m, ref["experiment"], data, f"{complexity(m, group[0].config)[0]:,}", count(group),
                     fmt(stats([r.test() for r in done])), ", ".join(map(str, sorted({r.steps for r in group}))),
                     f"{ref['err']:g} ({ref['dataset']})", ref["row"]])
    best = sorted({r.model for g in by_model.values() for r in g if r.config.get("test_ckpt") == "best"})
    tested = f"the best-validation checkpoint for {', '.join(best)} (`test_ckpt=best`), else " if best else ""
    notes = (f"\nOurs: top-1 error of {tested}the final weights on each run's test set (data), mean ± sample std "
             "over n seeds, after the steps shown; the paper's number holds for its full recipe (`experiment=` the "
             "recipe named) on the dataset in brackets. Params at 32x32 input, 10 classes.\n")
    return write_table(out, "recipes", header, rows, "CIFAR-10 and MNIST recipes beside the papers", notes)
