"""Speed on one GPU, five measurements under one global deadline (8 minutes by default), for an H100/H200 holder.
They run in the order 1, 3, 5, 2, 4 (the first three are what the no-sync / CUDA-graph work is judged by):

    1. ResNet-50 training throughput (synthetic 224-px images on the device, batch 256): train.py against a plain
       PyTorch loop, same model, optimizer, precision and memory format, over precision x channels_last x compile;
       steady-state img/s, train.py/plain ratio, achieved TFLOP/s and MFU against the device's peak, peak memory;
       and, right after the first case, train.py under torch.cuda.set_sync_debug_mode("error") over the steady
       steps between two logging steps: any host-device sync there fails the run, naming the call.
    2. airbench-class CIFAR-10: `experiment=cifar10_fast` on the real images (a packed file), n seeds: test
       accuracy and wall clock split into start-up, compile, training, evaluation; against airbench94's 2.59 s (A100).
    3. He et al. 2016 CIFAR step rate: ResNet-20/56/110 iterations per second under `experiment=he2016_cifar`
       (bf16, channels_last, batch 128), eager and in each module.compile mode (default, reduce-overhead,
       max-autotune); the study's wall clock from those rates (Figure 6: 24 runs x 64k iterations; with
       ResNet-110 and plain-110, 30 runs) one run at a time, and the aggregate rate of several runs sharing the GPU.
    5. Fused runs (benchmarks/fused.py, `measure(jobs)`): several ResNet-56 jobs trained as one program.
    4. Image-folder (and FFCV, where installed) loaders on Imagenette: img/s per worker and with every core, and
       how many cores keep item 1's ResNet-50 fed.

    bash benchmarks/gpu.sh OUT            # the GPU holder's command: installs carried wheels, runs this
    python benchmarks/gpu.py OUT [--deadline 450] [--items 1 3 5 2 4]
    python benchmarks/gpu.py OUT --smoke  # the same code paths on a CPU in about a minute (tests/test_gpu_bench.py)

Every measurement runs in its own process (train.py exactly as a user runs it, or a worker of this file), under a
timeout taken from its item's share of the deadline; what does not fit is skipped with a message, and OUT/gpu.json
and OUT/gpu.md are rewritten after every measurement, so a run cut short still leaves its results.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from cnnlab.data import InMemoryDataModule
from cnnlab.data.readers import Tensors

ROOT = Path(__file__).resolve().parents[1]
# Anchors the results are read against (sources in benchmarks/README.md, GPU section).
AIRBENCH94_A100_S = 2.59  # airbench94.py: 94.01% in 2.59 s on one A100 (Jordan 2024, arXiv 2404.00498)
MLPERF_H200_IMG_S = 7950  # MLPerf Training v4.1 ResNet-50, 8x H200: per GPU
FFCV_A100_IMG_S = (2600, 3500)  # ffcv-imagenet ResNet-50 configs, per A100
# Dense tensor-core peaks in TFLOP/s, NVIDIA datasheets: (bf16 = fp16, tf32); first matching name wins.
PEAKS = [("H100 PCIe", 756.0, 378.0), ("H100", 989.4, 494.7), ("H200", 989.4, 494.7), ("A100", 312.0, 156.0)]
# ResNet-50, item 1: (precision, channels_last, compile) in the order they run until the item's time is up: the core
# grid (bf16 x channels_last x compile) first, eager before compiled (a compile costs ~1 minute), then the others.
GRID = [("bf16-mixed", True, False), ("bf16-mixed", False, False), ("bf16-mixed", True, True),
        ("bf16-mixed", False, True), ("32-true", False, False), ("16-mixed", True, False), ("32-true", True, False),
        ("16-mixed", True, True)]
FIG6_RUNS = [(d, 6) for d in (20, 32, 44, 56)]  # he2016_degradation: depth x (plain, residual) x 3 seeds = 24 runs
STUDY_RUNS = [*FIG6_RUNS, (110, 6)]  # and he2016_degradation110's plain-110 + ResNet-110, 3 seeds
MODES = [False, "default", "reduce-overhead", "max-autotune"]  # module.compile: eager, then torch.compile's modes
SHARES = {1: 0.22, 3: 0.33, 5: 0.15, 2: 0.20, 4: 0.10}  # of the deadline, in the order the items run


# ---- pieces train.py loads from here (data._target_=gpu.DeviceSynthetic, +callbacks.bench._target_=gpu.StepTimer) --
class DeviceSynthetic(InMemoryDataModule):
    """Random uint8 images made directly on the training device: a GPU-sized synthetic set in milliseconds."""

    bench_device: torch.device | None = None  # the plain loop sets it; under train.py the trainer's device is used

    def read(self, train: bool) -> Tensors:
        hp = self.hparams
        dev = self.bench_device or (self.trainer.strategy.root_device if self.trainer else torch.device("cpu"))
        n, s = hp.synthetic_size[0 if train else 1], hp.image_size
        x = torch.randint(0, 256, (n, hp.in_channels, s, s), dtype=torch.uint8, device=dev)
        return Tensors(x, torch.randint(0, hp.num_classes, (n,), device=dev), [f"c{i}" for i in range(hp.num_classes)])


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def mem_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


class Marks:
    """(step, wall time) after a device sync, at the warm-up's end and every `every` steps after it."""

    def __init__(self, warmup: int, every: int) -> None:
        self.warmup, self.every, self.points, self.first_step_s = warmup, every, [], None

    def step(self, n: int, started: float) -> None:  # n steps done
        if n == 1:
            sync()
            self.first_step_s = time.time() - started  # compile and autotuning land here
        if n >= self.warmup and (n - self.warmup) % self.every == 0:
            sync()
            self.points.append((n, time.time()))

    def rate(self, batch: int) -> float | None:
        return rate(self.points, batch)


def rate(points: list, batch: int) -> float | None:
    """Images (batch=1: steps) per second between the first and the last mark."""
    (n0, t0), (n1, t1) = points[0], points[-1]
    return batch * (n1 - n0) / (t1 - t0) if n1 > n0 else None


class StepTimer(L.Callback):
    """Inside train.py: step marks to a JSON file; stops at `stop_at` (epoch seconds) and can skip the test stage.

    sync_debug: after the warm-up, from the step after a logging step to the start of the next logging step (the
    steady steps, where no host-device sync is allowed), run under torch.cuda.set_sync_debug_mode("error"): a sync
    there raises, naming the call, and the run fails. No marks (they synchronize) inside that window.
    """

    def __init__(self, out: str, warmup: int = 10, every: int = 10, stop_at: float | None = None,
                 exit_after_fit: bool = True, sync_debug: bool = False) -> None:
        self.out, self.marks, self.stop_at, self.exit = Path(out), Marks(warmup, every), stop_at, exit_after_fit
        self.n, self.sync_debug, self.debug_steps, self._debugging, self._after_log = 0, sync_debug, [], False, False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.time()

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if not self.sync_debug or not torch.cuda.is_available():
            return
        logging = trainer._logger_connector.should_update_logs
        if self._debugging and logging:  # the next logging step reads the device: allowed
            torch.cuda.set_sync_debug_mode(0)
            self._debugging = False
            self.debug_steps.append(trainer.global_step)
        elif self._after_log and not self.debug_steps and self.n >= self.marks.warmup:
            torch.cuda.set_sync_debug_mode("error")
            self._debugging = True
            self.debug_steps.append(trainer.global_step)
        self._after_log = logging

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.n += 1
        if not self._debugging:
            self.marks.step(self.n, self.started)
        if self.stop_at and time.time() > self.stop_at and self.marks.points:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync()
        self.out.write_text(json.dumps({"points": self.marks.points, "first_step_s": self.marks.first_step_s,
                                        "steps": self.n, "fit_start": self.started, "mem_gib": mem_gib(),
                                        "sync_debug_steps": self.debug_steps}))
        if self.exit:  # the test stage is not measured, and a compiled model would compile again for it
            os._exit(0)


class Phases(L.Callback):
    """Inside train.py (item 2): synced timestamps of every epoch's training and validation, and of the test."""

    def __init__(self, out: str) -> None:
        self.out, self.t = Path(out), {"train": [], "val": [], "test": []}

    def _mark(self, key: str, end: bool) -> None:
        sync()
        if end:
            self.t[key][-1][1] = time.time()
        else:
            self.t[key].append([time.time(), None])
        self.out.write_text(json.dumps({"fit_start": getattr(self, "fit_start", None), **self.t}))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.time()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("train", False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self._mark("train", True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("val", False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("val", True)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("test", False)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("test", True)


# ---- the plain PyTorch loop (a worker process) ---------------------------------------------------------------------
def plain_loop(spec: dict) -> dict:
    """The training step without Lightning, on the model, data, optimizer and precision train.py composes."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from cnnlab.callbacks import forward_macs
    from cnnlab.module import param_groups

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=spec["overrides"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    data.bench_device = dev
    data.setup()
    x, y = data.splits["train"].x.to(dev), data.splits["train"].y.to(dev)
    data.mean, data.std = data.mean.to(dev), data.std.to(dev)
    model = instantiate(cfg.model).to(dev)
    macs = forward_macs(model, data.normalize(x[:1]))
    cl, precision = cfg.module.channels_last, cfg.trainer.precision
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if cfg.module.compile:
        model.compile()  # in place, as ClassifierModule.configure_model does
    opt = instantiate(cfg.optim)(param_groups(model, cfg.module.norm_bias_decay))
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    batch, g = cfg.data.batch_size, torch.Generator(dev).manual_seed(0)
    marks, steps, per_epoch = Marks(spec["warmup"], spec["every"]), spec["warmup"] + spec["steps"], len(y) // batch
    order, started = torch.randperm(len(y), device=dev), time.time()
    for step in range(steps):
        idx = order[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
        inputs, targets = data._train_transform(x[idx], y[idx], g)  # the data module's own augmentation
        if cl:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(inputs), targets, label_smoothing=cfg.module.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        marks.step(step + 1, started)
    return {"rate": marks.rate(batch), "first_step_s": marks.first_step_s, "mem_gib": mem_gib(), "macs": macs}


# ---- the driver --------------------------------------------------------------------------------------------------
class Budget:
    """The global deadline and each item's share of it; an item inherits what the ones before it left unused."""

    def __init__(self, total: float, shares: dict[int, float]) -> None:  # shares in the order the items run
        self.end, self.total, self.shares, self.banked = time.monotonic() + total, total, shares, 0.0

    def start(self, item: int) -> None:
        order = list(self.shares)
        later = sum(self.shares[i] for i in order[order.index(item) + 1 :]) * self.total * 0.5  # keep half of theirs
        self.item_end = time.monotonic() + min(self.shares[item] * self.total + self.banked, self.left() - later)

    def finish(self) -> None:
        self.banked = max(0.0, self.item_end - time.monotonic())

    def left(self, item: bool = False) -> float:
        return max(0.0, (min(self.item_end, self.end) if item else self.end) - time.monotonic())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-"))
        shares = {i: SHARES[i] for i in args.items}
        self.budget = Budget(args.deadline, {i: s / sum(shares.values()) for i, s in shares.items()})  # --items: theirs
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks"),
                                                                 os.environ.get("PYTHONPATH", "")])}
        self.res: dict = {"machine": self.machine(), "args": vars(args), "items": {}, "skipped": []}
        self.smoke = args.smoke

    @staticmethod
    def machine() -> dict:
        import lightning

        m = {"torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
             "cpus": len(os.sched_getaffinity(0)), "cuda": torch.version.cuda, "device": "cpu", "peak": None,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()}
        if torch.cuda.is_available():
            m["device"] = torch.cuda.get_device_name(0)
            m["peak"] = next(({"bf16": b, "fp16": b, "tf32": t} for k, b, t in PEAKS if k in m["device"]), None)
            m["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        return m

    def skip(self, item: int, what: str, why: str) -> None:
        print(f"[item {item}] skipped {what}: {why}", flush=True)
        self.res["skipped"].append({"item": item, "what": what, "why": why})
        self.save()

    def fits(self, item: int, what: str, need: float) -> bool:
        if self.budget.left(item=True) < need:
            self.skip(item, what, f"needs ~{need:.0f} s, {self.budget.left(item=True):.0f} s of the item's budget left")
            return False
        return True

    def run(self, cmd: list[str], log: Path, timeout: float) -> int | None:
        """A subprocess with its output in `log`; None when it ran out of time (killed)."""
        with log.open("w") as f:
            env = {**self.env, "CNNLAB_BENCH_T0": str(time.time())}
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return p.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
                return None

    def tail(self, log: Path, n: int = 8) -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""

    def train_py(self, name: str, overrides: list[str], timeout: float, timer: dict | None = None,
                 phases: bool = False) -> tuple[dict | None, Path]:
        """train.py as a user runs it, plus the benchmark's callback; returns its JSON (None if it failed)."""
        run = self.tmp / name
        run.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run}",
               f"data.cache_dir={self.tmp / 'cache'}"]
        out = run / "bench.json"
        if timer is not None:
            cmd += ["+callbacks.bench._target_=gpu.StepTimer", f"+callbacks.bench.out={out}",
                    *[f"+callbacks.bench.{k}={v}" for k, v in timer.items()]]
        if phases:
            cmd += ["+callbacks.bench._target_=gpu.Phases", f"+callbacks.bench.out={out}"]
        t0 = time.time()
        if self.a.in_process:
            rc = in_process([*cmd[2:], *(["+callbacks.bench.exit_after_fit=false"] if timer else [])], run)
        else:
            rc = self.run(cmd, run / "log.txt", timeout)
        if rc != 0:
            why = "timed out" if rc is None else f"exit code {rc}"
            print(f"  {name}: {why}; last lines:\n{self.tail(run / 'log.txt')}", flush=True)
            return {"failed": why, "log": self.tail(run / "log.txt")}, run
        d = json.loads(out.read_text())
        d["wall_s"], d["t0"] = time.time() - t0, t0
        if (run / "results.json").exists():
            d["results"] = json.loads((run / "results.json").read_text())
        return d, run

    def worker(self, name: str, spec: dict, timeout: float) -> dict:
        if self.smoke:  # in this process: each process start costs seconds on a CPU, and nothing compiles here
            return loader_worker(spec) if "loader" in spec else plain_loop(spec)
        log = self.tmp / f"{name}.log"
        rc = self.run([sys.executable, __file__, "--worker", json.dumps(spec)], log, timeout)
        if rc != 0:
            why = "timed out" if rc is None else f"exit code {rc}"
            print(f"  {name}: {why}; last lines:\n{self.tail(log)}", flush=True)
            return {"failed": why, "log": self.tail(log)}
        return json.loads(log.read_text().split("RESULT ")[-1])

    # ---- item 1 ------------------------------------------------------------------------------------------------
    def item1(self) -> None:
        s = self.smoke
        batch, size, warmup, steps = (2, 32, 1, 2) if s else (256, 224, 10, 30)
        grid = [("32-true", False, False)] if s else GRID
        res = self.res["items"]["1"] = {"batch": batch, "image_size": size, "warmup": warmup, "steps": steps,
                                        "rows": []}
        n = batch * (warmup + steps + 2)  # one epoch holds every measured step
        for precision, cl, comp in grid:
            name = f"{precision}{' CL' if cl else ''}{' compile' if comp else ''}"
            if not self.fits(1, f"ResNet-50 {name}", (90 if comp else 25) * (not s)):
                continue
            ov = ["model=resnet50", "data=synthetic", "data._target_=gpu.DeviceSynthetic", f"data.image_size={size}",
                  "data.num_classes=1000", f"data.synthetic_size=[{n},{batch}]", "augment=none",
                  f"data.batch_size={batch}", f"trainer.precision={precision}", f"module.channels_last={cl}",
                  f"module.compile={comp}"]
            spec = {"overrides": ov, "warmup": warmup, "steps": steps, "every": steps}
            plain = self.worker(f"r50-plain-{len(res['rows'])}", spec, self.budget.left(item=True))
            tp, _ = self.train_py(f"r50-train-{len(res['rows'])}", [*ov, f"trainer.max_steps={warmup + steps}",
                                  "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0"],
                                  self.budget.left(item=True), timer={"warmup": warmup, "every": steps})
            row = {"case": name, "precision": precision, "channels_last": cl, "compile": comp, "plain": plain,
                   "train.py": tp}
            if plain.get("rate") and tp and "points" in tp:
                tp["rate"] = rate(tp["points"], batch)
                row["ratio"] = row["train.py"]["rate"] / plain["rate"]
                tflops = 6 * plain["macs"] * row["train.py"]["rate"] / 1e12  # 3 passes x 2 FLOPs per MAC
                peak = (self.res["machine"]["peak"] or {}).get("tf32" if precision == "32-true" else "bf16")
                row |= {"tflops": tflops, "mfu": tflops / peak if peak else None}
            res["rows"].append(row)
            print(f"[item 1] {self.row1(row)}", flush=True)
            self.save()
            if len(res["rows"]) == 1:
                self.sync_check(ov, warmup)

    def sync_check(self, overrides: list[str], warmup: int) -> None:
        """train.py (item 1's first case) with torch.cuda.set_sync_debug_mode("error") over the steady steps between
        two logging steps (logged every 10): passes when no host-device sync happens there."""
        if not self.fits(1, "ResNet-50 sync debug", 0 if self.smoke else 30):
            return
        every = 2 if self.smoke else 10
        d, _ = self.train_py("r50-sync", [*overrides, f"trainer.log_every_n_steps={every}",
                                          f"trainer.max_steps={warmup + 3 * every}", "trainer.limit_val_batches=0",
                                          "trainer.num_sanity_val_steps=0"], self.budget.left(item=True),
                             timer={"warmup": warmup, "every": every, "sync_debug": True})
        if not torch.cuda.is_available() and d and "failed" not in d:
            check = {"result": "not a GPU: nothing to check"}
        elif d and "failed" not in d:
            steps = d.get("sync_debug_steps") or []
            check = {"result": "passed" if len(steps) == 2 else "no window", "steps": steps}
        else:
            check = {"result": "FAILED: a host-device sync in a steady step (or another error)", **(d or {})}
        self.res["items"]["1"]["sync_debug"] = check
        print(f"[item 1] sync debug: {check}", flush=True)
        self.save()

    @staticmethod
    def row1(r: dict) -> str:
        p, t = r["plain"], r["train.py"] or {}
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        return (f"| {r['case']} | {f(p.get('rate'), '.1f')} | {f(t.get('rate'), '.1f')} | {f(r.get('ratio'), '.3f')} "
                f"| {f(r.get('tflops'), '.1f')} | {f(r.get('mfu'), '.1%')} | {f(t.get('mem_gib'), '.1f')} "
                f"| {f(p.get('first_step_s'), '.1f')} / {f(t.get('first_step_s'), '.1f')} |"
                + (f" {p.get('failed', '')} {t.get('failed', '')}" if "failed" in p or "failed" in t else ""))

    # ---- item 2 ------------------------------------------------------------------------------------------------
    def item2(self) -> None:
        data = Path(self.a.cifar)
        if not data.is_file():
            return self.skip(2, "cifar10_fast", f"no packed CIFAR-10 at {data} (bash benchmarks/gpu.sh --prepare)")
        res = self.res["items"]["2"] = {"data": str(data), "runs": []}
        seeds = [0] if self.smoke else list(range(self.a.seeds))
        extra = ["trainer.max_epochs=1", "module.compile=false", "trainer.precision=32-true",
                 "data.batch_size=16"] if self.smoke else []
        for seed in seeds:
            if not self.fits(2, f"cifar10_fast seed {seed}", 0 if self.smoke else 40):
                continue
            d, _ = self.train_py(f"fast-{seed}", ["experiment=cifar10_fast", f"data.root={data.resolve()}",
                                                  f"seed={seed}", *extra], self.budget.left(item=True), phases=True)
            res["runs"].append(self.phases(seed, d))
            print(f"[item 2] seed {seed}: {res['runs'][-1]}", flush=True)
            self.save()
        ok = [r for r in res["runs"] if "train_s" in r]
        if ok:
            res["summary"] = {k: stats([r[k] for r in ok]) for k in ok[0] if k not in ("seed",)}

    @staticmethod
    def phases(seed: int, d: dict | None) -> dict:
        if not d or "failed" in d or not d.get("train"):
            return {"seed": seed, "failed": (d or {}).get("failed", "no timings")}
        epochs = [b - a for a, b in d["train"] if b]
        vals = [b - a for a, b in d["val"] if b]
        steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
        steady_val = statistics.median(vals[1:]) if len(vals) > 1 else (vals[0] if vals else 0.0)
        test = sum(b - a for a, b in d["test"] if b)
        acc = 1 - d["results"]["test"]["test/err1"] if "results" in d else None
        return {"seed": seed, "test_acc": acc, "startup_s": d["fit_start"] - d["t0"],
                "compile_s": (epochs[0] - steady) + (vals[0] - steady_val if vals else 0.0),
                "train_s": steady * len(epochs), "train_measured_s": sum(epochs), "epochs": len(epochs),
                "val_s": steady_val * len(vals), "test_s": test, "wall_s": d["wall_s"],
                "other_s": d["wall_s"] - (d["fit_start"] - d["t0"]) - sum(epochs) - sum(vals) - test}

    # ---- item 3 ------------------------------------------------------------------------------------------------
    def item3(self) -> None:
        s, data = self.smoke, Path(self.a.cifar)
        warmup, steps = (2, 4) if s else (20, 200)
        src = [f"data.root={data.resolve()}"] if data.is_file() else ["data=synthetic"]
        src += ["data.val_split=20"] if s or not data.is_file() else []  # tiny sets: He et al.'s 5000 do not fit
        res = self.res["items"]["3"] = {"data": "packed CIFAR-10" if data.is_file() else "synthetic 32x32",
                                        "batch": 16 if s else 128, "warmup": warmup, "steps": steps, "rates": [],
                                        "sharing": []}
        fast = ["data.batch_size=16"] if s else ["trainer.precision=bf16-mixed", "module.channels_last=true"]
        base = ["experiment=he2016_cifar", *src, *fast, "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0"]
        # eager first, then each compile mode on ResNet-56 (the study's mid-size net), then on 20 and 110
        jobs = [(d, False) for d in (20, 56, 110)] + [(d, m) for d in (56, 20, 110) for m in MODES[1:]]
        for depth, comp in [(20, False)] if s else jobs:  # smoke: no compile (minutes on a CPU)
            # seconds: start-up, compile (max-autotune tunes kernels: about twice as long), 220 steps
            need = 0 if s else (20 if not comp else (70 + 0.6 * depth) * (2 if comp == "max-autotune" else 1))
            if not self.fits(3, f"ResNet-{depth} {comp or 'eager'}", need):
                continue
            d, _ = self.train_py(f"he-{depth}-{comp}", [*base, f"model=resnet{depth}", f"module.compile={comp}",
                                                       f"trainer.max_steps={warmup + steps}"],
                                 self.budget.left(item=True), timer={"warmup": warmup, "every": 10 if not s else 2})
            r = {"depth": depth, "compile": comp}
            if d and "points" in d:
                r |= {"it_s": rate(d["points"], 1), "first_step_s": d["first_step_s"],
                      "mem_gib": d["mem_gib"], "wall_s": d["wall_s"]}
            else:
                r["failed"] = (d or {}).get("failed")
            res["rates"].append(r)
            print(f"[item 3] {r}", flush=True)
            self.save()
            if (depth, comp) == (56, False) or (s and not comp):
                self.sharing(res, base, warmup)
        self.sweep(res)

    def sharing(self, res: dict, base: list[str], warmup: int) -> None:
        """k train.py runs of ResNet-56 (ResNet-20 in smoke mode) at once: the GPU's aggregate iterations/s."""
        depth = 20 if self.smoke else 56
        if self.a.in_process:
            return self.skip(3, "runs sharing the GPU", "they need separate processes (--in-process)")
        for k in (2,) if self.smoke else (4, 8, 2):
            window = 3 if self.smoke else 10
            if not self.fits(3, f"{k} runs sharing the GPU", 0 if self.smoke else 25 + window):
                return
            start = time.time()
            stop_at = start + (20 if self.smoke else 25) + window  # start-up (several at once), then the window
            procs = []
            for i in range(k):
                run = self.tmp / f"share-{k}-{i}"
                run.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "train.py", *base, f"model=resnet{depth}", "module.compile=false",
                       f"trainer.max_steps={warmup + 6 if self.smoke else 64000}", f"hydra.run.dir={run}",
                       "+callbacks.bench._target_=gpu.StepTimer", f"+callbacks.bench.out={run / 'bench.json'}",
                       f"+callbacks.bench.warmup={warmup}",
                       "+callbacks.bench.every=5", f"+callbacks.bench.stop_at={stop_at}"]
                f = (run / "log.txt").open("w")
                procs.append((subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                               start_new_session=True), run))
            for p, _ in procs:
                try:
                    p.wait(timeout=max(1.0, self.budget.left(item=True)))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
            pts = [json.loads((run / "bench.json").read_text())["points"] for _, run in procs
                   if (run / "bench.json").exists()]
            if len(pts) < k:
                self.skip(3, f"{k} runs sharing the GPU", f"{k - len(pts)} of them did not finish")
                continue
            lo, hi = max(p[0][1] for p in pts), min(p[-1][1] for p in pts)  # every run measured inside [lo, hi]
            agg = sum(steps_between(p, lo, hi) for p in pts) / (hi - lo) if hi > lo else None
            mem = [json.loads((run / "bench.json").read_text())["mem_gib"] for _, run in procs]
            res["sharing"].append({"runs": k, "depth": depth, "compile": False, "aggregate_it_s": agg,
                                   "window_s": hi - lo, "mem_gib_each": max(m or 0 for m in mem)})
            print(f"[item 3] sharing: {res['sharing'][-1]}", flush=True)
            self.save()

    @staticmethod
    def sweep(res: dict) -> None:
        """The study's wall clock at the measured rates, per compile mode: Figure 6's 24 runs x 64k iterations
        (depths 32, 44 interpolated linearly) and, with plain-110/ResNet-110 x 3 seeds, the 30-run study (110
        extrapolated when not measured); a plain net costs as its residual twin, evaluation is not counted."""
        for comp in MODES:
            known = {r["depth"]: 1 / r["it_s"] for r in res["rates"] if r.get("it_s") and r["compile"] == comp}
            if 20 not in known or 56 not in known:
                continue
            slope = (known[56] - known[20]) / 36  # seconds per step per layer
            per_step = {d: known.get(d, known[20] + slope * (d - 20)) for d, _ in STUDY_RUNS}
            hours = sum(64000 * per_step[d] * n for d, n in FIG6_RUNS) / 3600
            one = {"compile": comp, "one_gpu_h": hours, "study_h": sum(64000 * per_step[d] * n
                                                                       for d, n in STUDY_RUNS) / 3600}
            best = max((s for s in res["sharing"] if s.get("aggregate_it_s")), default=None,
                       key=lambda s: s["aggregate_it_s"])
            if best and not comp:
                single56 = 1 / known[56]  # it/s of one ResNet-56 run alone
                one |= {"shared_h": hours * single56 / best["aggregate_it_s"], "shared_runs": best["runs"]}
            res.setdefault("sweep", []).append(one)

    # ---- item 5: HOOK for fused runs (issue 21, item 3) ---------------------------------------------------------
    def item5(self) -> None:
        """Fused ResNet-56 jobs (2, 4, 8) as one program: benchmarks/fused.py's measure(jobs) returns a dict (rates,
        memory) stored as item 5 of gpu.json; until that file exists, a message."""
        try:
            from fused import measure  # benchmarks/fused.py
        except ImportError:
            print("fused: not available", flush=True)
            return self.skip(5, "fused runs", "fused: not available (no benchmarks/fused.py)")
        smoke = {"model": "resnet8", "batch": 16, "steps": 2, "warmup": 1, "device": "cpu"} if self.smoke else {}
        self.res["items"]["5"] = measure([2] if self.smoke else [2, 4, 8], **smoke)
        self.save()

    # ---- item 4 ------------------------------------------------------------------------------------------------
    def item4(self) -> None:
        data = Path(self.a.imagenette)
        if not data.is_file():
            return self.skip(4, "loaders", f"no packed Imagenette at {data} (bash benchmarks/gpu.sh --prepare)")
        from cnnlab.data.pack import unpack

        folder = unpack(data, self.tmp / "imagenette")
        res = self.res["items"]["4"] = {"data": str(data), "images": len(list((folder / "train").rglob("*.*"))),
                                        "rows": []}
        cores = self.res["machine"]["cpus"]
        for workers in sorted({1, max(1, cores - 1)}):
            if not self.fits(4, f"image folder, {workers} workers", 0 if self.smoke else 8):
                continue
            spec = {"loader": str(folder), "workers": workers, "seconds": 1 if self.smoke else 4,
                    "batch": 8 if self.smoke else 64}
            r = self.worker(f"loader-{workers}", spec, self.budget.left(item=True))
            res["rows"].append({"loader": "image folder (data=imagenette)", "workers": workers, **r})
            print(f"[item 4] {res['rows'][-1]}", flush=True)
            self.save()
        try:
            import ffcv  # noqa: F401
        except ImportError:
            self.skip(4, "FFCV loader", "ffcv is not installed here (it compiles against libturbojpeg and OpenCV)")

    # ---- output ------------------------------------------------------------------------------------------------
    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.res, indent=1, default=str))
        (self.out / "gpu.md").write_text(markdown(self.res))


def in_process(overrides: list[str], run: Path) -> int:
    """train.py's train() in this process (--in-process: tests on a CPU, where each process start costs seconds)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    sys.path.insert(0, str(ROOT))
    from train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir, cfg.hydra.job.num = str(run), 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # train() sees the job config, as under @hydra.main
    try:
        train(cfg)
    except Exception as err:
        (run / "log.txt").write_text(f"{type(err).__name__}: {err}")
        return 1
    return 0


def steps_between(points: list[list[float]], lo: float, hi: float) -> float:
    """Steps a run made between times lo and hi, interpolated linearly between its marks."""
    n = [p[0] for p in points]
    t = [p[1] for p in points]

    def at(x: float) -> float:
        for (n0, t0), (n1, t1) in zip(zip(n, t, strict=True), zip(n[1:], t[1:], strict=True), strict=False):
            if t0 <= x <= t1:
                return n0 + (n1 - n0) * (x - t0) / (t1 - t0)
        return n[0] if x < t[0] else n[-1]

    return at(hi) - at(lo)


def stats(v: list) -> dict | None:
    v = [x for x in v if isinstance(x, int | float)]
    if not v:
        return None
    return {"mean": statistics.mean(v), "min": min(v), "max": max(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v)}


def loader_worker(spec: dict) -> dict:
    """Images/s of the data=imagenette training loader (ImageFolderDataModule, PIL in DataLoader workers)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=imagenette", f"data.root={spec['loader']}",
                                          f"data.batch_size={spec['batch']}", f"data.num_workers={spec['workers']}"])
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), evaluation=None, _convert_="all")
    data.setup()
    loader = data.train_dataloader()
    for _ in loader:  # warm-up pass: worker start, page cache
        pass
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < spec["seconds"]:
        for x, _ in loader:
            n += len(x)
    rate = n / (time.perf_counter() - t)
    return {"img_s": rate, "img_s_per_worker": rate / spec["workers"]}


def markdown(res: dict) -> str:
    m, items = res["machine"], res["items"]
    out = [f"# cnnlab on {m['device']}", "",
           f"{m['date']}; torch {m['torch']} (CUDA {m['cuda']}), lightning {m['lightning']}, Python {m['python']}, "
           f"{m['cpus']} CPUs; peak dense TFLOP/s {m['peak']}; deadline {res['args']['deadline']} s"
           + ("; SMOKE MODE (tiny sizes on the CPU: the numbers mean nothing)" if res["args"]["smoke"] else ""), ""]
    if "1" in items:
        i = items["1"]
        out += [f"## 1. ResNet-50 training, synthetic {i['image_size']}-px images on the device, batch {i['batch']}",
                f"Steady state over {i['steps']} steps after {i['warmup']}; TFLOP/s and MFU of train.py "
                f"(6 x forward MACs x img/s); memory: train.py's peak allocated. Anchors: MLPerf Training v4.1 "
                f"{MLPERF_H200_IMG_S} img/s per H200; ffcv-imagenet {FFCV_A100_IMG_S[0]}-{FFCV_A100_IMG_S[1]} "
                f"per A100.",
                "", "| precision, memory format, compile | plain img/s | train.py img/s | train.py/plain | TFLOP/s | "
                "MFU | GiB | first step s (plain / train.py) |", "|---|---|---|---|---|---|---|---|",
                *[Bench.row1(r) for r in i["rows"]], ""]
        if "sync_debug" in i:
            out += [f"torch.cuda.set_sync_debug_mode('error') over the steady steps between two logging steps "
                    f"(train.py, the first case above, logged every 10 steps): {i['sync_debug']['result']}", ""]
    if "2" in items:
        i = items["2"]
        out += [f"## 2. experiment=cifar10_fast on {i['data']} (airbench94: {AIRBENCH94_A100_S} s on an A100)", "",
                "| seed | test acc | start-up s | compile s | training s (steady) | eval s (val + test) | other s "
                "| wall s |",
                "|---|---|---|---|---|---|---|---|"]
        for r in i["runs"]:
            if "failed" in r:
                out.append(f"| {r['seed']} | failed: {r['failed']} | | | | | | |")
                continue
            out.append(f"| {r['seed']} | {r['test_acc'] or 0:.4f} | {r['startup_s']:.1f} | {r['compile_s']:.1f} | "
                       f"{r['train_s']:.2f} | {r['val_s'] + r['test_s']:.1f} | {r['other_s']:.1f} "
                       f"| {r['wall_s']:.1f} |")
        if s := i.get("summary"):
            tr, acc = s["train_s"], s["test_acc"]
            out += ["", f"n={tr['n']}: training {tr['mean']:.2f} s (range {tr['min']:.2f}-{tr['max']:.2f}) = "
                    f"{tr['mean'] / AIRBENCH94_A100_S:.2f}x airbench94's A100 time; test accuracy "
                    + (f"{acc['mean']:.4f} +- {acc['std']:.4f}" if acc else "n/a")
                    + f"; wall clock {s['wall_s']['mean']:.1f} s of which start-up {s['startup_s']['mean']:.1f}, "
                    f"compile {s['compile_s']['mean']:.1f}."]
        out.append("")
    if "3" in items:
        i = items["3"]
        out += [f"## 3. experiment=he2016_cifar step rate ({i['data']}, batch {i['batch']}, {i['steps']} steps after "
                f"{i['warmup']})", "", "| model | compile | it/s | first step s | GiB |", "|---|---|---|---|---|"]
        for r in i["rates"]:
            out.append(f"| ResNet-{r['depth']} | {r['compile']} | " + (
                f"{r['it_s']:.1f} | {r['first_step_s']:.1f} | {r['mem_gib'] or 0:.2f} |" if r.get("it_s")
                else f"failed: {r.get('failed')} | | |"))
        for s in i["sharing"]:
            fit = (f"; by memory about {m['memory_gib'] // (s['mem_gib_each'] + 0.5):.0f} such runs fit, counting "
                   f"0.5 GiB per process for the CUDA context") if m.get("memory_gib") else ""
            out.append(f"\n{s['runs']} ResNet-{s['depth']} runs sharing the GPU: {s['aggregate_it_s'] or 0:.1f} it/s "
                       f"in total over {s['window_s']:.1f} s ({s['mem_gib_each']:.2f} GiB allocated each{fit}).")
        for s in i.get("sweep", []):
            out.append(f"\nFigure 6 sweep (24 runs x 64k iterations, depths 32/44 interpolated, plain = residual "
                       f"cost, evaluation not counted), compile={s['compile']}: {s['one_gpu_h']:.1f} GPU-hours one "
                       f"run at a time" + (f"; {s['shared_h']:.1f} h with {s['shared_runs']} runs sharing the GPU"
                                          if "shared_h" in s else "")
                       + f"; with plain-110 and ResNet-110 x 3 seeds (30 runs) {s['study_h']:.1f} GPU-hours.")
        out.append("")
    if "5" in items:
        out += ["## 5. Fused runs (benchmarks/fused.py)", "", "```", json.dumps(items["5"], indent=1, default=str),
                "```", ""]
    if "4" in items:
        i = items["4"]
        out += [f"## 4. Loaders on {i['images']} Imagenette training images ({i['data']})", "",
                "| loader | workers | img/s | img/s per worker |", "|---|---|---|---|"]
        out += [f"| {r['loader']} | {r['workers']} | {r.get('img_s', 0):.0f} | {r.get('img_s_per_worker', 0):.0f} |"
                for r in i["rows"]]
        best = max((r.get("rate") or 0 for r in items.get("1", {}).get("rows", [])
                    for r in [r.get("train.py") or {}]), default=0)
        full = max((r for r in i["rows"] if r.get("img_s_per_worker")), key=lambda r: r["workers"], default=None)
        if best and full:  # per worker with every core busy: what a GPU's share of a node delivers
            out.append(f"\nItem 1's best train.py rate, {best:.0f} img/s, needs "
                       f"{best / full['img_s_per_worker']:.1f} cores of this loader ({full['img_s_per_worker']:.0f} "
                       f"img/s per worker with {full['workers']} workers); this machine's {full['workers']} give "
                       f"{full['img_s']:.0f} img/s.")
        out.append("")
    if res["skipped"]:
        out += ["## Skipped", "", *[f"- item {s['item']}, {s['what']}: {s['why']}" for s in res["skipped"]], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder: gpu.json, gpu.md")
    p.add_argument("--deadline", type=float, default=450, help="seconds for everything (the 8-minute slot)")
    p.add_argument("--items", type=int, nargs="+", default=list(SHARES), help="in the order they run")
    p.add_argument("--seeds", type=int, default=3, help="item 2's runs")
    p.add_argument("--cifar", default=str(ROOT / ".gpu-data" / "cifar10.npz"))
    p.add_argument("--imagenette", default=str(ROOT / ".gpu-data" / "imagenette.npz"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps: the code paths on a CPU")
    p.add_argument("--in-process", action="store_true", help="with --smoke: train.py's runs in this process (tests)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        print("RESULT " + json.dumps(loader_worker(spec) if "loader" in spec else plain_loop(spec)), flush=True)
        return
    if not a.out:
        p.error("the output folder is required")
    b = Bench(a)
    print(f"{b.res['machine']}", flush=True)
    for item in a.items:
        b.budget.start(item)
        t = time.monotonic()
        try:
            getattr(b, f"item{item}")()
        except Exception as err:  # one broken item must not lose the others' results
            b.skip(item, "the rest of the item", f"{type(err).__name__}: {err}")
        b.budget.finish()
        print(f"[item {item}] {time.monotonic() - t:.0f} s", flush=True)
        b.save()
    print((b.out / "gpu.md").read_text())


if __name__ == "__main__":
    main()
