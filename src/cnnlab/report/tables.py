"""What every report shares: mean +- std with n, Markdown and CSV tables, figures, measured complexity; and the
generic report of any sweep (runs grouped by the swept keys, learning curves)."""

import csv
import statistics
from functools import cache
from pathlib import Path

import yaml

from cnnlab.extras import require
from cnnlab.report.runs import DASH, Run, groups


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


def count(group: list[Run]) -> str | int:
    """n finished, or `k/m` when only k of the group's m runs finished."""
    done = sum(r.finished for r in group)
    return f"{done}/{len(group)}" if done < len(group) else done


def matches(row: dict, name: str, model_cfg: dict) -> bool:
    """Whether a paper's row describes this model: its config name, and the model keys the row fixes (`where`, e.g.
    shortcut A for He et al.'s Table 2) set to the row's values."""
    return row["model"] == name and all(model_cfg.get(k) == v for k, v in row.get("where", {}).items())


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def write_table(out: Path, name: str, header: list[str], rows: list[list], title: str, notes: str = "") -> str:
    with (out / f"{name}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    text = f"## {title}\n\n{markdown(header, rows)}\n{notes}"
    (out / f"{name}.md").write_text(text)
    return text


def save(fig, stem: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def pyplot():
    matplotlib = require("matplotlib", "report", "cnnlab.report's figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


# ---------------------------------------------------------------------------------------------------------- any sweep
def sweep_report(runs: list[Run], keys: list[str], missing: list[str], best: list[str], out: Path) -> str:
    by = [k for k in keys if k != "seed"]
    header = ["run", "status", *keys, "test err1 %", "test err5 %", "best val err1 %", "steps"]
    rows = [[str(r.path), r.status, *(r.overrides.get(k, DASH) for k in keys),
             fmt(stats([r.test()])), fmt(stats([r.test("test/err5")])),
             fmt(stats([r.results.get("best_score") if r.finished else None])), r.steps] for r in runs]
    with (out / "runs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])

    header = [*by, "n", "test err1 %", "test err5 %", "best val err1 %", "final train err1 %", "steps"]
    rows = []
    for values, group in groups(runs, by).items():
        done = [r for r in group if r.finished]
        rows.append([*values, count(group),
                     fmt(stats([r.test() for r in done])), fmt(stats([r.test("test/err5") for r in done])),
                     fmt(stats([r.results.get("best_score") for r in done])),
                     fmt(stats([r.last("train/err1") for r in done])), max((r.steps for r in group), default=0)])
    notes = (f"\nMean ± sample std over the finished runs of each group (n; `k/m`: k of m finished). Swept keys: "
             f"{', '.join(keys) or 'none'}. Test error: the final weights on the test set; best val: the best "
             f"epoch's validation error (what the sweep optimizes).\n")
    unfinished = [f"- `{r.path}` ({', '.join(f'{k}={r.overrides.get(k)}' for k in keys)}): "
                  f"{'status ' + r.status if r.results else 'no results.json'}, last logged step {r.steps}"
                  for r in runs if not r.finished]
    unfinished += [f"- `{m}`: defined by the sweep, never started" for m in missing]
    if best:
        notes += "\nBest trials (the objective: best val/err1):\n\n" + "\n".join(best) + "\n"
    if unfinished:
        notes += f"\nFailed or unfinished ({len(unfinished)} of {len(runs) + len(missing)}):\n\n" + "\n".join(
            unfinished) + "\n"
    text = write_table(out, "summary", header, rows, f"{len(runs)} runs", notes)
    curves_figure(groups(runs, by), by, out / "curves")
    return text


def mean_curve(group: list[Run], key: str) -> list[tuple[int, float]]:
    """The seeds' mean at the epochs all of them reached."""
    curves = [r.curves[key] for r in group if r.curves.get(key)]
    n = min((len(c) for c in curves), default=0)
    return [(curves[0][i][0], statistics.mean(c[i][1] for c in curves)) for i in range(n)]


def curves_figure(by_group: dict[tuple, list[Run]], keys: list[str], stem: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for i, (values, group) in enumerate(by_group.items()):
        colour = f"C{i % 10}"
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "runs"
        for key, style in (("train/err1", "--"), ("val/err1", "-")):
            if curve := mean_curve(group, key):
                steps, err = zip(*curve, strict=True)
                ax.plot(steps, [100 * e for e in err], style, color=colour, marker=".", markersize=4,
                        label=label if style == "-" else None)
    ax.set(xlabel="iterations", ylabel="top-1 error (%)", title="training (dashed) and validation (solid) error")
    if len(by_group) <= 20:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, stem)
