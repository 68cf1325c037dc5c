"""Reports over run directories: runs grouped by the swept keys, learning curves, and the papers' figures and tables
with the papers' numbers beside ours.

    python -m cnnlab.report <multirun dir> [<dir> ...] [--out DIR] [--eval center tencrop [--set data.root=...]]
    python -m cnnlab.report --ckpt resnet50=runs/x/checkpoints/best.ckpt [[NAME=]CKPT ...] --eval center tencrop
    python -m cnnlab.report --table readme results/      # the README's results rows, from committed runs (claims)
    python -m cnnlab.report --table cpu-doc results/     # docs/reproductions-cpu.md's tables
    python -m cnnlab.report --collect results/NAME <dirs> --measured commit=... command=... machine=... threads=1 \
        dates=... experiment=...                         # copy finished runs' small files into results/NAME

A directory is any folder holding run directories at any depth (a multirun, a runs/ tree, one run); a run directory
is one with .hydra/ or config.yaml. A run has finished when train.py wrote its results.json (the file is written
last); the others failed or are unfinished and are listed, as are sweep jobs that never started. Written into --out
(default: <first dir>/report):

  runs.csv                      one row per run: status, its overrides, test and best validation error, steps
  summary.md, summary.csv       grouped by the swept keys other than the seed: mean +- std over seeds, n stated
  curves.png, curves.pdf        training error (dashed) and validation error (solid) against iterations
and, where the runs' models make them apply (each paper's numbers sit in its module, beside its table code):
  degradation.png/.pdf, table6.md/.csv   CIFAR plain-N and ResNet-N: He et al. 2016, Figure 6 and Table 6 (he2016)
  table3.md/.csv                         ResNeXt cardinality settings: Xie et al. 2017, Table 3 (xie2017)
  recipes.md/.csv                        the seed papers' CIFAR-10 / MNIST recipes beside their errors (recipes)
  ilsvrc.md/.csv, ilsvrc_gmacs.png/.pdf  ImageNet models (evaluated with --eval protocols) beside the papers'
                                         1-crop / 10-crop rows and the ILSVRC winners; top-1 error against GMACs

Errors are printed in % of images; params and GMACs (multiply-adds, one image) are measured on the model each run
built, at its paper's input (cnnlab.summary: 224x224 and 1000 classes for ImageNet models, 32x32 and 10 for CIFAR).
"""

import argparse
import logging
from pathlib import Path

from cnnlab.report import claims, he2016, recipes, xie2017
from cnnlab.report.he2016 import degradation_figure, degradation_report
from cnnlab.report.ilsvrc import checkpoint_entries, evaluate_checkpoint, ilsvrc_entries, ilsvrc_report
from cnnlab.report.recipes import recipes_report
from cnnlab.report.runs import Run, find_runs, read_curves, read_run, read_sweeps, swept_keys
from cnnlab.report.tables import complexity, curves_figure, sweep_report
from cnnlab.report.xie2017 import resnext_report

__all__ = ["Run", "checkpoint_entries", "complexity", "curves_figure", "degradation_figure", "degradation_report",
           "evaluate_checkpoint", "find_runs", "ilsvrc_entries", "ilsvrc_report", "main", "read_curves", "read_run",
           "read_sweeps", "recipes_report", "report", "resnext_report", "sweep_report", "swept_keys"]
log = logging.getLogger("cnnlab.report")


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
        if he2016.applies(runs):
            parts.append(degradation_report(runs, by, out))
        if xie2017.applies(runs):
            parts.append(resnext_report(runs, by, out))
        if recipes.applies(runs):
            parts.append(recipes_report(runs, out))
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
    parser.add_argument("--table", choices=("readme", "cpu-doc"),
                        help="print only the README's results rows or docs/reproductions-cpu.md's tables, from the "
                             "results folders (with MEASURED.json) under dirs; writes nothing")
    parser.add_argument("--collect", type=Path, metavar="DEST",
                        help="copy the small files of the finished runs under dirs into DEST (results/<name>)")
    parser.add_argument("--measured", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"for --collect, DEST/MEASURED.json: {', '.join(claims.MEASURED_KEYS)}")
    args = parser.parse_args(argv)
    if not args.dirs and not args.ckpt:
        parser.error("give at least one directory or --ckpt")
    if args.table:
        print("\n".join(claims.readme_rows(args.dirs)) if args.table == "readme" else claims.cpu_doc_tables(args.dirs))
        return
    if args.collect:
        info = dict(kv.split("=", 1) for kv in args.measured)
        for path in claims.collect(args.collect, args.dirs, info):
            print(path)
        return
    if args.ckpt and not args.eval:
        parser.error("--ckpt needs --eval (e.g. --eval center tencrop)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(report(args.dirs, args.out, tuple(args.eval), tuple(args.ckpt), tuple(args.overrides)))
