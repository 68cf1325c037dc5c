"""ImageNet single models beside the papers' 1-crop and 10-crop rows, torchvision's weights and the ILSVRC winners;
top-1 error against GMACs."""

from pathlib import Path

from cnnlab.report.runs import DASH, Run, progress, read_run
from cnnlab.report.tables import complexity, markdown, matches, paper, pyplot, save, write_table

# Single models on ImageNet val: (top-1, top-5) error % at 1 crop (shorter side 256, center 224) and at 10 crops
# (4 corners + center and their flips, softmax averaged), and torchvision's released weights at 1 crop (its acc@1,
# acc@5; error = 100 - acc). `row` names the paper's row exactly; `where` holds the model keys the row fixes (a run
# compares against the row only when its model has them). None = not published.
ILSVRC = [
    dict(model="alexnet", row="Krizhevsky et al. 2012, Table 2, '1 CNN' (val, 10 patches)", crop1=(None, None),
         crop10=(40.7, 18.2), torchvision=None),
    dict(model="alexnet_owt", row="torchvision's alexnet (Krizhevsky 2014, one weird trick)", crop1=(None, None),
         crop10=(None, None), torchvision=(56.522, 79.066)),
    dict(model="vgg16", row="He et al. 2016, Table 3, 'VGG-16' (10-crop); KaimingHe/deep-residual-networks README "
         "(1-crop)", crop1=(28.5, 9.9), crop10=(28.07, 9.33), torchvision=(71.592, 90.382)),
    dict(model="googlenet", row="Szegedy et al. 2015, Table 3, '1 model' at 1 crop and at 10 crops",
         crop1=(None, 10.07), crop10=(None, 9.15), torchvision=(69.778, 89.530)),
    dict(model="plain18", row="He et al. 2016, Table 2, 'plain 18 layers' (10-crop)", crop1=(None, None),
         crop10=(27.94, None), torchvision=None),
    dict(model="plain34", row="He et al. 2016, Table 2, 'plain 34 layers'; Table 3, 'plain-34' (10-crop)",
         crop1=(None, None), crop10=(28.54, 10.02), torchvision=None),
    dict(model="resnet18", where={"shortcut": "A"}, row="He et al. 2016, Table 2, 'ResNet 18 layers', option A "
         "(10-crop)", crop1=(None, None), crop10=(27.88, None), torchvision=None),
    dict(model="resnet18", where={"shortcut": "B"}, row="torchvision's resnet18 (option B; the paper's Table 2 row "
         "is option A)", crop1=(None, None), crop10=(None, None), torchvision=(69.758, 89.078)),
    dict(model="resnet34", where={"shortcut": "A"}, row="He et al. 2016, Table 3, 'ResNet-34 A' (= Table 2, "
         "'ResNet 34 layers'; 10-crop)", crop1=(None, None), crop10=(25.03, 7.76), torchvision=None),
    dict(model="resnet34", where={"shortcut": "B"}, row="He et al. 2016, Table 3, 'ResNet-34 B' (10-crop)",
         crop1=(None, None), crop10=(24.52, 7.46), torchvision=(73.314, 91.420)),
    dict(model="resnet50", where={"shortcut": "B"}, row="He et al. 2016, Table 3, 'ResNet-50' (option B, 10-crop); "
         "released model (1-crop)", crop1=(24.7, 7.8), crop10=(22.85, 6.71), torchvision=(76.130, 92.862)),
    dict(model="resnet101", where={"shortcut": "B"}, row="He et al. 2016, Table 3, 'ResNet-101' (option B, "
         "10-crop); released model (1-crop)", crop1=(23.6, 7.1), crop10=(21.75, 6.05), torchvision=(77.374, 93.546)),
    dict(model="resnet152", where={"shortcut": "B"}, row="He et al. 2016, Table 3, 'ResNet-152' (option B, "
         "10-crop); released model (1-crop)", crop1=(23.0, 6.7), crop10=(21.43, 5.71), torchvision=(78.312, 94.046)),
    dict(model="resnext50_32x4d", row="Xie et al. 2017, Table 3, 'ResNeXt-50, 32 x 4d' (1 crop)", crop1=(22.2, None),
         crop10=(None, None), torchvision=(77.618, 93.698)),
    dict(model="densenet121", row="Huang et al. 2017, Table 3, 'DenseNet-121' (single-crop, 10-crop)",
         crop1=(25.02, 7.71), crop10=(23.61, 6.66), torchvision=(74.434, 91.972)),
]

# ILSVRC classification winners, top-5 test error %, as the lectures tabulate them.
WINNERS = [
    ("SuperVision (AlexNet)", 2012, 16.4, "15.3 with ImageNet-22k; 1 CNN on val: top-1 40.7, top-5 18.2"),
    ("Clarifai (ZFNet)", 2013, 11.7, "11.2 with 22k"),
    ("VGG (2nd)", 2014, 7.32, ""),
    ("GoogLeNet (1st)", 2014, 6.67, "7 models, 144 crops"),
    ("ResNet (1st)", 2015, 3.57, "ensemble"),
    ("human expert", None, 5.1, ""),
]

PROTOCOL_ORDER = ("center", "tencrop", "flip", "multiscale", "none")  # conf/eval; "none": the test images as stored
Entry = tuple[str, dict, dict[str, tuple[float, float]]]  # (model name, run config, {protocol: (top-1, top-5) error})


def paper_row(name: str, config: dict) -> dict | None:
    """The ILSVRC row a model compares against: its config name and the keys the row fixes (shortcut A or B)."""
    return next((row for row in ILSVRC if matches(row, name, config.get("model", {}))), None)


def evaluate_checkpoint(ckpt: Path, protocol: str, overrides: tuple[str, ...] = ()) -> tuple[float, float]:
    """(top-1, top-5) error fractions of a checkpoint under an eval protocol (conf/eval/<protocol>.yaml)."""
    from cnnlab.evaluate import evaluate

    result = evaluate(ckpt, protocol, overrides)
    return result["err1"], result["err5"]


def ilsvrc_entries(runs: list[Run], protocols: list[str], overrides: tuple[str, ...] = ()) -> list[Entry]:
    """Finished runs of the ImageNet models: their own test (under the run's eval protocol) and, for each of
    protocols, their best checkpoint's."""
    entries = []
    for r in progress([r for r in runs if r.finished and paper_row(r.model, r.config)], "evaluating runs"):
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
    for spec in progress(ckpts, "evaluating checkpoints"):
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
              "paper 10-crop", "torchvision 1-crop", "paper row"]
    rows, points = [], []
    for name, config, errors in entries:
        params, gmacs = complexity(name, config)
        ref = paper_row(name, config) or dict(row=DASH, crop1=(None, None), crop10=(None, None), torchvision=None)
        tv = ref["torchvision"]
        rows.append([name, f"{params:,}", f"{gmacs:.3f}",
                     *("/".join(f"{100 * e:.2f}" for e in errors[p]) if p in errors else DASH for p in protocols),
                     "/".join(paper(v) for v in ref["crop1"]), "/".join(paper(v) for v in ref["crop10"]),
                     f"{100 - tv[0]:.2f}/{100 - tv[1]:.2f}" if tv else DASH, ref["row"]])
        ours = next((100 * errors[p][0] for p in protocols if p in errors), None)
        points.append((name, gmacs, ours, ref["crop1"][0] or ref["crop10"][0] or (100 - tv[0] if tv else None)))
    winners = markdown(["ILSVRC entry", "year", "top-5 test err %", "note"],
                       [[n, y or DASH, e, note or DASH] for n, y, e, note in WINNERS])
    datasets = ", ".join(sorted({str(c.get("data", {}).get("root", "?")) for _, c, _ in entries}))
    notes = ("\nOurs: top-1/top-5 error % of each run's final weights under its own eval protocol (results.json) and "
             "of its best checkpoint (or the given checkpoint) under each --eval protocol: center = 1 crop of 224 from "
             "the 256-resized image, tencrop = 4 corners + center and their flips, none = the test images as stored; "
             f"data: {datasets}. Paper columns: ImageNet val, top-1/top-5 %, from the row named (a ResNet compares "
             "only with the row of its own shortcut option); torchvision: its released weights (acc@1/acc@5 as "
             "errors). Params and GMACs at 224x224, 1000 classes.\n\n"
             f"### ILSVRC classification winners (top-5 test error, as the course lectures tabulate them)\n\n"
             f"{winners}\n")
    text = write_table(out, "ilsvrc", header, rows, "ImageNet single models beside the papers", notes)
    ilsvrc_figure(points, out / "ilsvrc_gmacs")
    return text


def ilsvrc_figure(points: list[tuple[str, float, float | None, float | None]], stem: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
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
