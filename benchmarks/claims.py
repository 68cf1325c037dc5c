"""The papers' claims on one GPU in at most 9 minutes (benchmarks/README.md, claims), for an H100/H200 holder:

    fig6         He et al. 2016 Figure 6: plain-20/56 and ResNet-20/56 on CIFAR-10, 3 seeds each. Verdicts: deeper
                 plain trains worse; deeper ResNet trains and tests better.
    cardinality  Xie et al. 2017 Table 3 at CIFAR scale: quarter-width ResNeXt-29 at C = 1, 4, 8, 32 (MACs within 5%,
                 conf/model/resnext29_cpu_*), 3 seeds each. Verdict: test error falls with C.
    fig4         He et al. 2016 Figure 4 in miniature: plain-18/34 and ResNet-18/34 on Imagenette at 64 px, 2 seeds.
    fast         experiment=cifar10_fast over 5 seeds against airbench94's 94.0%, then the ablation rows (each of
                 airbench94's steps turned off) that the time left affords.

    bash benchmarks/claims.sh OUT [--items fig6 fast] [--deadline 510]   # the GPU holder's command
    python benchmarks/claims.py OUT --smoke [--in-process]               # every code path on a CPU in about a minute

Every run is train.py as a user runs it (its own process, several at once on the GPU: these nets leave most of it
idle), with the overrides listed below; each claim has a share of the global deadline, runs not started in it are
listed as not run, runs still going at its end are killed and their curves kept. OUT/claims.md (the README's results
table form), OUT/claims.json, OUT/curves/<claim>.csv (+ .png where matplotlib is installed) are rewritten after every
claim, so a lease cut short still leaves its results.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu import Budget, in_process  # noqa: E402  (the same deadline arithmetic and in-process runs as gpu.sh)

JPEG_WARNING = "JPEG copy, not the official pixels"
GPU = ["trainer.precision=bf16-mixed", "module.channels_last=true", "trainer.enable_checkpointing=false",
       "~callbacks.best", "~callbacks.latest", "callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=10"]
IMAGENET_STATS = ["data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]"]
# The compressed schedules (the papers': 64k iterations of 128 for CIFAR, 600k of 256 for ImageNet). Batch 512 at
# the linearly scaled lr (0.1 per 128, Goyal et al. 2017) with a 5% linear warmup: fewer, fuller GPU steps.
CIFAR_RECIPE = ["experiment=he2016_cifar", "data.batch_size=512", "trainer.max_steps=1500", "schedule.unit=fraction",
                "schedule.milestones=[0.5,0.75]", "schedule.warmup=0.05", "data.eval_batch_size=2500"]
CLAIMS = {
    "fig6": {"paper": "He et al. 2016, Fig. 6", "share": 0.34, "seeds": 3, "models": ["plain20", "plain56",
             "resnet20", "resnet56"], "recipe": CIFAR_RECIPE,
             "budget": "1,500 iterations of 512 (17 epochs of the 45k split), lr 0.4 (0.1 per 128) with 5% warmup, "
                       "/10 at 50% and 75%; He et al.: 64k of 128, drops at 32k/48k"},
    "cardinality": {"paper": "Xie et al. 2017, Table 3", "share": 0.26, "seeds": 3,
                    "models": ["resnext29_cpu_1x64d", "resnext29_cpu_4x24d", "resnext29_cpu_8x14d",
                               "resnext29_cpu_32x4d"], "recipe": [*CIFAR_RECIPE, "optim.weight_decay=5e-4"],
                    "budget": "ResNeXt-29 at 1/4 width (MACs 47.0-48.7 M, within 3.5%), 1,500 iterations of 512 at "
                              "32 px, wd 5e-4, else as fig6; Xie et al.: 300 epochs, full width"},
    "fig4": {"paper": "He et al. 2016, Fig. 4", "share": 0.18, "seeds": 2,
             "models": ["plain18", "plain34", "resnet18", "resnet34"],
             "recipe": ["data=cifar10", "data.val_split=0", "data.image_size=64", *IMAGENET_STATS,
                        "augment.crop_padding=8",  # val_split=0: Imagenette's own val split scores the nets
                        "data.batch_size=256", "module.reference_batch=256", "optim.lr=0.1", "optim.weight_decay=1e-4",
                        "trainer.max_steps=1100", "trainer.max_epochs=-1", "schedule.unit=fraction",
                        "schedule.milestones=[0.5,0.75]", "model.shortcut=A"],
             "budget": "Imagenette (9,469 train / 3,925 val) at 64 px in memory, 8-px pad-crop + flip, 1,100 "
                       "iterations of 256 (30 epochs), lr 0.1 /10 at 50%, 75%, option A shortcuts; He et al.: "
                       "ImageNet at 224 px, 600k iterations"},
    "fast": {"paper": "Jordan 2024, airbench94", "share": 0.22, "seeds": 5, "models": ["airbench94"],
             "recipe": ["experiment=cifar10_fast"],
             "budget": "experiment=cifar10_fast: 10 epochs of 1024 with every airbench94 step (its header)"},
}
# cifar10_fast's ablation: each of airbench94's steps turned off alone (conf/experiment/cifar10_fast.yaml)
ABLATIONS = {
    "EMA for evaluation instead of lookahead": ["~callbacks.lookahead",
                                               "+callbacks.ema._target_=cnnlab.callbacks.EMA",
                                               "+callbacks.ema.decay=0.7737809374999998",
                                               "+callbacks.ema.update_every_n_steps=5",
                                               "+callbacks.ema.update_starting_at_step=144"],
    "whitening from the first augmented batch, bias never frozen": ["~callbacks.whitening"],
    "random instead of alternating flips": ["augment.flip_mode=random"],
    "zero instead of reflection padding": ["augment.padding_mode=zeros"],
    "2-view (flip) instead of 6-view TTA": ["eval.translate=0"],
    "no decay on the BN shifts": ["module.norm_bias_decay=false", "~callbacks.decay"],
    "last partial batch kept": ["data.drop_last=false"],
}


def summary(v: list[float]) -> dict | None:
    v = [x for x in v if isinstance(x, int | float)]
    if not v:
        return None
    return {"n": len(v), "mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v)}


def fmt(s: dict | None, pct: bool = True) -> str:
    if not s:
        return "n/a"
    k = 100 if pct else 1
    return f"{k * s['mean']:.2f} ± {k * s['std']:.2f}% ({k * s['min']:.2f}-{k * s['max']:.2f}, n={s['n']})"


def below(a: dict | None, b: dict | None) -> bool:
    """a is below b beyond the seed spread: a's largest value under b's smallest."""
    return bool(a and b and a["max"] < b["min"])


def verdicts(claim: str, by: dict[str, dict]) -> list[dict]:
    """Rows of the results table: each half of a claim, its numbers, shown or not."""
    tr = {m: summary([r.get("train_err") for r in runs]) for m, runs in by.items()}
    te = {m: summary([r.get("test_err") for r in runs]) for m, runs in by.items()}
    rows = []
    if claim in ("fig6", "fig4"):
        a, b, c, d = CLAIMS[claim]["models"]  # plain shallow, plain deep, residual shallow, residual deep
        rows.append({"claim": "Deeper plain nets train worse", "ours": f"{a} / {b}: {fmt(tr.get(a))} / "
                     f"{fmt(tr.get(b))} training error", "paper": "deeper plain above shallower",
                     "shown": below(tr.get(a), tr.get(b))})
        rows.append({"claim": "Deeper ResNets train and test better", "ours": f"{c} / {d}: {fmt(tr.get(c))} / "
                     f"{fmt(tr.get(d))} training, {fmt(te.get(c))} / {fmt(te.get(d))} test error",
                     "paper": "deeper ResNet below shallower", "shown": below(tr.get(d), tr.get(c))
                     and below(te.get(d), te.get(c))})
    elif claim == "cardinality":
        ms = CLAIMS[claim]["models"]
        means = [te[m]["mean"] if te.get(m) else None for m in ms]
        falls = None not in means and all(x > y for x, y in zip(means, means[1:], strict=False))
        rows.append({"claim": "At matched complexity, error falls with cardinality C", "ours": "C = 1 / 4 / 8 / 32: "
                     + " / ".join(fmt(te.get(m)) for m in ms) + " test error", "paper": "ResNeXt-50: 23.9 / 23.0 / "
                     "22.3 / 22.2% top-1 (ImageNet)", "shown": falls and below(te.get(ms[-1]), te.get(ms[0]))})
    elif claim == "fast":
        acc = summary([1 - r["test_err"] for r in by.get("airbench94", []) if r.get("test_err") is not None])
        rows.append({"claim": "cifar10_fast reaches airbench94's 94.0% test accuracy", "ours": f"{fmt(acc)} test "
                     "accuracy", "paper": "94.01% (n=1000)", "shown": bool(acc and acc["n"] >= 5
                                                                           and acc["mean"] >= 0.94)})
    return rows


class Claims:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.out = a, Path(a.out)
        (self.out / "curves").mkdir(parents=True, exist_ok=True)
        total = sum(CLAIMS[c]["share"] for c in a.items)  # --items: the chosen claims share the whole deadline
        self.budget = Budget(a.deadline, {i: CLAIMS[c]["share"] / total for i, c in enumerate(a.items)})
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks"),
                                                                 os.environ.get("PYTHONPATH", "")])}
        official = Path(a.cifar).name.startswith("cifar10-official")
        self.res = {"args": vars(a), "cifar": a.cifar, "cifar_pixels": "official" if official else JPEG_WARNING,
                    "claims": {}}
        if not official:
            print(f"\n!!! CIFAR-10 from {a.cifar}: {JPEG_WARNING.upper()} !!!\n", flush=True)

    def overrides(self, claim: str, model: str, seed: int) -> list[str]:
        c, s = CLAIMS[claim], self.a.smoke
        data = self.a.imagenette if claim == "fig4" else self.a.cifar
        ov = [*c["recipe"], f"model={model}", f"seed={seed}", f"data.root={Path(data).resolve()}"]
        ov += [] if claim == "fast" else GPU
        if not model.startswith("resnet") or claim == "cardinality":
            ov = [o for o in ov if not o.startswith("model.shortcut")]  # plain nets have none; ResNeXt keeps B
        if s:  # tiny: a few CPU steps of each code path
            ov += ["trainer.accelerator=cpu", "trainer.precision=32-true", "module.channels_last=false",
                   "module.compile=false", "data.batch_size=16", "data.eval_batch_size=50",
                   "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                   "callbacks.progress_bar.refresh_rate=0"]
            ov += ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "callbacks.whitening.images=50",
                   "model.widths=[16,32,32]"] if claim == "fast" else ["trainer.max_steps=2", "schedule.warmup=0"]
            ov += ["data.val_split=20"] if claim in ("fig6", "cardinality") else []
            ov += ["data.image_size=32", "augment.crop_padding=4"] if claim == "fig4" else []
        return ov

    def plan(self, claim: str) -> list[dict]:
        c = CLAIMS[claim]
        seeds = 1 if self.a.smoke else (self.a.seeds or c["seeds"])
        runs = [{"model": m, "label": m, "seed": s, "extra": []} for s in range(seeds) for m in c["models"]]
        if claim == "fast":  # the ablation rows after the recipe's own seeds, 2 seeds each, as time allows
            for s in range(1 if self.a.smoke else 2):
                runs += [{"model": "airbench94", "label": k, "seed": s, "extra": v} for k, v in ABLATIONS.items()]
            if self.a.smoke:  # 3 steps: the EMA must start at once
                ema = runs[-len(ABLATIONS)]
                ema["extra"] = [*ema["extra"], "callbacks.ema.update_starting_at_step=1"]
        return runs

    def run_claim(self, i: int, claim: str) -> None:
        self.budget.start(i)
        runs, pending, active, done = self.plan(claim), [], [], []
        pending = list(runs)
        res = self.res["claims"][claim] = {"paper": CLAIMS[claim]["paper"], "budget": CLAIMS[claim]["budget"],
                                           "runs": done, "not_run": []}
        started = time.monotonic()
        while pending or active:
            while pending and len(active) < self.a.parallel and self.budget.left(item=True) > 0:
                r = pending.pop(0)
                name = "".join(ch if ch.isalnum() else "_" for ch in r["label"])  # a Hydra-safe folder name
                r["dir"] = self.out / "runs" / claim / f"{name}-s{r['seed']}"
                r["dir"].mkdir(parents=True, exist_ok=True)
                ov = [*self.overrides(claim, r["model"], r["seed"]), *r["extra"], f"hydra.run.dir={r['dir']}",
                      f"data.cache_dir={self.out / 'cache'}"]
                r["t0"] = time.time()
                if self.a.in_process:
                    r["rc"] = in_process(ov, r["dir"])
                    done.append(self.collect(r))
                    continue
                log = (r["dir"] / "log.txt").open("w")
                r["proc"] = subprocess.Popen([sys.executable, "train.py", *ov], cwd=ROOT, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
                active.append(r)
            if not pending or self.budget.left(item=True) <= 0:
                res["not_run"] += [f"{r['label']} seed {r['seed']}" for r in pending]
                pending = []
            for r in list(active):
                if r["proc"].poll() is not None or self.budget.left(item=True) <= 0:
                    if r["proc"].poll() is None:
                        os.killpg(r["proc"].pid, 9)  # out of the claim's time: its curve so far is kept
                        r["proc"].wait()
                    r["rc"] = r["proc"].returncode
                    active.remove(r)
                    done.append(self.collect(r))
            time.sleep(0.05 if self.a.in_process else 1.0)
        res["wall_s"] = time.monotonic() - started
        by: dict[str, list] = {}
        for r in done:
            by.setdefault(r["label"], []).append(r)
        res["rows"] = verdicts(claim, by)
        if claim == "fast":
            res["ablation"] = [{"variant": k, **(summary([1 - r["test_err"] for r in v if r.get("test_err")
                                                          is not None]) or {"n": 0})} for k, v in by.items()]
        self.curves(claim, done)
        self.budget.finish()
        self.save()

    def collect(self, r: dict) -> dict:
        """A run's final numbers and per-epoch curve from its results.json and CSV log."""
        out = {k: r[k] for k in ("model", "label", "seed")} | {"rc": r["rc"], "wall_s": time.time() - r["t0"],
                                                               "curve": []}
        for f in sorted(r["dir"].glob("csv/version_*/metrics.csv")):
            with f.open() as fh:
                for row in csv.DictReader(fh):
                    if row.get("train/err1") or row.get("val/err1"):
                        out["curve"].append({"epoch": int(row["epoch"]), "step": int(row["step"]),
                                             "train_err": float(row["train/err1"]) if row.get("train/err1") else None,
                                             "val_err": float(row["val/err1"]) if row.get("val/err1") else None})
        train = [p["train_err"] for p in out["curve"] if p["train_err"] is not None]
        out["train_err"] = train[-1] if train else None  # the last epoch's running training error
        done = r["dir"] / "results.json"
        if done.exists():
            test = json.loads(done.read_text()).get("test", {})
            out["test_err"] = test.get("test/err1")
        else:
            out["unfinished"] = True
            out["log"] = (r["dir"] / "log.txt").read_text()[-1500:] if (r["dir"] / "log.txt").exists() else ""
        return out

    def curves(self, claim: str, runs: list[dict]) -> None:
        path = self.out / "curves" / f"{claim}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "seed", "epoch", "step", "train_err", "val_err"])
            for r in runs:
                for p in r["curve"]:
                    w.writerow([r["label"], r["seed"], p["epoch"], p["step"], p["train_err"], p["val_err"]])
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = {}
        for r in runs:
            c = colors.setdefault(r["label"], f"C{len(colors) % 10}")
            pts = [p for p in r["curve"] if p["train_err"] is not None]
            ax.plot([p["step"] for p in pts], [100 * p["train_err"] for p in pts], "--", color=c, lw=0.8)
            pts = [p for p in r["curve"] if p["val_err"] is not None]
            ax.plot([p["step"] for p in pts], [100 * p["val_err"] for p in pts], "-", color=c, lw=1.5,
                    label=r["label"] if r["seed"] == 0 else None)
        ax.set(xlabel="iteration", ylabel="error (%)", title=f"{CLAIMS[claim]['paper']}: dashed training, bold "
               "validation")
        ax.legend(fontsize=7)
        fig.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
        plt.close(fig)

    def save(self) -> None:
        (self.out / "claims.json").write_text(json.dumps(self.res, indent=1, default=str))
        (self.out / "claims.md").write_text(markdown(self.res))


def markdown(res: dict) -> str:
    a = res["args"]
    smoke = " (SMOKE: tiny CPU runs, the numbers mean nothing)" if a["smoke"] else ""
    out = [f"# The papers' claims on one GPU{smoke}", "", f"CIFAR-10: {res['cifar']} ({res['cifar_pixels']}); deadline "
           f"{a['deadline']} s; up to {a['parallel']} runs at once.", "",
           "| claim (paper) | recipe, budget | n | ours | paper | shown? |", "|---|---|---|---|---|---|"]
    for claim, c in res["claims"].items():
        if "error" in c:
            out.append(f"| {CLAIMS[claim]['paper']} | {claim} | 0 | failed: {c['error']} | | NOT SHOWN |")
            continue
        n = len({r["seed"] for r in c["runs"] if r.get("test_err") is not None})
        for row in c.get("rows", []):
            pixels = f" [{res['cifar_pixels']}]" if claim != "fig4" and res["cifar_pixels"] != "official" else ""
            out.append(f"| {row['claim']} ({c['paper']}) | {c['budget']}; {c['wall_s']:.0f} s{pixels} | {n} | "
                       f"{row['ours']} | {row['paper']} | {'yes' if row['shown'] else 'NOT SHOWN'} |")
    for claim, c in res["claims"].items():
        if "runs" not in c:
            continue
        bad = [f"{r['label']} seed {r['seed']}" for r in c["runs"] if r.get("unfinished")]
        if bad or c["not_run"]:
            out += ["", f"{claim}: unfinished (killed or failed; curves kept): {', '.join(bad) or 'none'}; not run "
                    f"(out of time): {', '.join(c['not_run']) or 'none'}"]
    if fast := res["claims"].get("fast", {}).get("ablation"):
        out += ["", "## cifar10_fast ablation (each airbench94 step off alone)", "", "| variant | n | test accuracy |",
                "|---|---|---|"]
        for v in fast:
            label = "all steps (experiment=cifar10_fast)" if v["variant"] == "airbench94" else v["variant"]
            acc = f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}%" if v["n"] else "not run"
            out.append(f"| {label} | {v['n']} | {acc} |")
    return "\n".join(out) + "\n"


def pack_official(src: Path, out: Path) -> dict:
    """The official python-version CIFAR-10 (cifar-10-batches-py under src) as a packed file of lossless PNGs."""
    import tempfile

    import torch
    from torchvision.io import encode_png

    from cnnlab.data.pack import pack
    from cnnlab.data.readers import read_cifar

    with tempfile.TemporaryDirectory() as tmp:
        for train, split in ((True, "train"), (False, "test")):
            t = read_cifar("cifar10", src, train, False, 32, Path(tmp) / "cache")
            for i, (x, y) in enumerate(zip(t.x, t.y.tolist(), strict=True)):
                f = Path(tmp) / "png" / split / t.classes[y] / f"{i:05d}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(bytes(encode_png(x, compression_level=9).numpy()))
        del torch
        return pack(Path(tmp) / "png", out, "cifar10-official")


def pack_resized(src: Path, out: Path, size: int) -> dict:
    """An image-folder dataset with every image's shorter side resized to `size` and center-cropped (JPEG q95)."""
    import tempfile

    from PIL import Image

    from cnnlab.data.pack import SPLITS, pack

    with tempfile.TemporaryDirectory() as tmp:
        for split in SPLITS:
            for f in sorted((src / split).glob("*/*")) if (src / split).is_dir() else []:
                img = Image.open(f).convert("RGB")
                s = size / min(img.size)
                img = img.resize((max(size, round(img.width * s)), max(size, round(img.height * s))), Image.BILINEAR)
                left, top = (img.width - size) // 2, (img.height - size) // 2
                g = Path(tmp) / split / f.parent.name / (f.stem + ".jpg")
                g.parent.mkdir(parents=True, exist_ok=True)
                img.crop((left, top, left + size, top + size)).save(g, quality=95)
        return pack(Path(tmp), out, f"{src.name}-{size}px")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder: claims.md, claims.json, curves/, runs/")
    p.add_argument("--deadline", type=float, default=510, help="seconds for everything (9 minutes less start-up)")
    p.add_argument("--items", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    p.add_argument("--parallel", type=int, default=8, help="train.py runs at once on the GPU")
    p.add_argument("--seeds", type=int, default=None, help="seeds per model (default: each claim's)")
    p.add_argument("--cifar", default=None, help="packed CIFAR-10 (default: .gpu-data/cifar10-official.npz, else "
                                                 "the JPEG copy .gpu-data/cifar10.npz)")
    p.add_argument("--imagenette", default=str(ROOT / ".gpu-data" / "imagenette64.npz"))
    p.add_argument("--smoke", action="store_true", help="a few CPU steps of every run kind")
    p.add_argument("--in-process", action="store_true", help="with --smoke: the runs in this process (tests)")
    p.add_argument("--pack-official", nargs=2, metavar=("SRC", "OUT"), help="pack the official CIFAR-10 losslessly")
    p.add_argument("--pack-resized", nargs=3, metavar=("SRC", "OUT", "SIZE"), help="pack an image folder resized")
    a = p.parse_args(argv)
    if a.pack_official or a.pack_resized:
        s = pack_official(Path(a.pack_official[0]), Path(a.pack_official[1])) if a.pack_official else \
            pack_resized(Path(a.pack_resized[0]), Path(a.pack_resized[1]), int(a.pack_resized[2]))
        print(f"{s['images']} images, {s['packed_bytes'] / 2**20:.1f} MiB")
        return
    if not a.out:
        p.error("the output folder is required")
    if a.cifar is None:
        official = ROOT / ".gpu-data" / "cifar10-official.npz"
        a.cifar = str(official if official.is_file() else ROOT / ".gpu-data" / "cifar10.npz")
    if a.smoke:
        a.parallel = min(a.parallel, 2)
    c = Claims(a)
    for i, claim in enumerate(a.items):
        t = time.monotonic()
        try:
            c.run_claim(i, claim)
        except Exception as err:  # one broken claim must not lose the others' results
            c.res["claims"].setdefault(claim, {})["error"] = f"{type(err).__name__}: {err}"
            c.save()
        print(f"[{claim}] {time.monotonic() - t:.0f} s", flush=True)
    print((c.out / "claims.md").read_text())


if __name__ == "__main__":
    main()
