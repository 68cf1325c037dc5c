"""Xie et al. 2017 (arXiv 1611.05431), Table 3: ResNeXt cardinality C x bottleneck width d at preserved complexity."""

from pathlib import Path

from cnnlab.report.runs import DASH, Run, short
from cnnlab.report.tables import complexity, count, fmt, paper, stats, write_table

# Table 3: ImageNet val top-1 error %, single 224 crop of the 256-resized image, complexity preserved.
TABLE3 = {
    "resnext50_1x64d": 23.9, "resnext50_2x40d": 23.0, "resnext50_4x24d": 22.6, "resnext50_8x14d": 22.3,
    "resnext50_32x4d": 22.2,
    "resnext101_1x64d": 22.0, "resnext101_2x40d": 21.7, "resnext101_4x24d": 21.4, "resnext101_8x14d": 21.3,
    "resnext101_32x4d": 21.2,
}


def applies(runs: list[Run]) -> bool:
    return any(r.model in TABLE3 for r in runs)


def resnext_report(runs: list[Run], by: list[str], out: Path) -> str:
    extra = [k for k in by if k not in ("model", "experiment")]
    by_model: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.model in TABLE3:
            by_model.setdefault((r.model, tuple(short(r.overrides.get(k, DASH)) for k in extra)), []).append(r)
    header = ["model", *extra, "setting", "params", "GMACs", "n", "top-1 err %", "paper top-1 err %"]
    rows = []
    for m, values in sorted(by_model, key=lambda mv: (list(TABLE3).index(mv[0]), mv[1])):
        group = by_model[m, values]
        cfg = group[0].config["model"]
        params, gmacs = complexity(m, group[0].config)
        done = [r for r in group if r.finished]
        rows.append([m, *values, f"{cfg['groups']} x {cfg['width_per_group']}d", f"{params:,}", f"{gmacs:.3f}",
                     count(group), fmt(stats([r.test() for r in done])), paper(TABLE3[m])])
    datasets = ", ".join(sorted({str(r.config.get("data", {}).get("dataset", "?")) for g in by_model.values()
                                 for r in g}))
    notes = ("\nSetting: cardinality C x bottleneck width d. Params and GMACs measured at 224x224, 1000 classes. Ours: "
             f"top-1 error of the final weights on the {datasets} test set, mean ± sample std over n seeds; paper: "
             "Xie et al. 2017 (arXiv 1611.05431), Table 3, ImageNet val, 1 crop.\n")
    return write_table(out, "table3", header, rows, "ResNeXt cardinality at preserved complexity", notes)
