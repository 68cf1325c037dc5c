"""He et al. 2016 (arXiv 1512.03385), Figure 6 and Table 6: CIFAR plain-N and ResNet-N, the degradation problem."""

import logging
import re
from pathlib import Path

from cnnlab.report.runs import Run, groups
from cnnlab.report.tables import complexity, count, fmt, mean_curve, paper, pyplot, save, stats, write_table

log = logging.getLogger("cnnlab.report")
CIFAR_NET = re.compile(r"(plain|resnet)(\d+)")

# Table 6: CIFAR-10 test error %. The plain nets appear only in Figure 6 (curves).
# ResNet-110 is the best of 5 runs; the paper's mean +- std over those 5 is 6.61 +- 0.16.
TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
          "resnet1202": 7.93}
TABLE6_NOTE = "ResNet-110: best of 5 runs (6.61 ± 0.16 over the 5)"


def applies(runs: list[Run]) -> bool:
    return len({r.model for r in runs if CIFAR_NET.fullmatch(r.model)}) > 1


def degradation_report(runs: list[Run], by: list[str], out: Path) -> str:
    """Table 6 rows per model (and per other swept key, e.g. lr); Figure 6 when the model is all that varies."""
    nets = [r for r in runs if CIFAR_NET.fullmatch(r.model) and r.config.get("model", {}).get("stem") == "cifar"]
    extra = [k for k in by if k not in ("model", "experiment")]
    header = ["model", *extra, "layers", "params", "n", "test err %", "final train err %", "paper test err %"]
    rows, by_model = [], {}
    for values, group in groups(nets, extra).items():
        for r in group:
            by_model.setdefault((r.model, values), []).append(r)
    order = sorted(by_model, key=lambda mv: (mv[0].startswith("resnet"), int(CIFAR_NET.fullmatch(mv[0])[2]), mv[1]))
    for m, values in order:
        group = by_model[m, values]
        done = [r for r in group if r.finished]
        rows.append([m, *values, CIFAR_NET.fullmatch(m)[2], f"{complexity(m, group[0].config)[0]:,}", count(group),
                     fmt(stats([r.test() for r in done])), fmt(stats([r.last("train/err1") for r in done])),
                     paper(TABLE6.get(m))])
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
             f"{TABLE6_NOTE}; it gives no number for the plain nets (Figure 6 only).\n")
    return write_table(out, "table6", header, rows, "CIFAR test error beside He et al. 2016, Table 6", notes)


def degradation_figure(by_model: dict[str, list[Run]], what: str, stem: Path) -> None:
    depths = sorted({int(CIFAR_NET.fullmatch(m)[2]) for m in by_model})
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("plain", "resnet"), ("plain networks", "ResNets"), strict=True):
        for m, group in by_model.items():
            family, depth = CIFAR_NET.fullmatch(m).groups()
            if family != kind:
                continue
            colour = f"C{depths.index(int(depth)) % 10}"
            for key, style, width in (("train/err1", "--", 1.0), ("val/err1", "-", 2.2)):
                if curve := mean_curve(group, key):
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
