"""Fused runs (hydra/launcher=fused, cnnlab.fused): each job trains as its separate train.py run does and writes
what that run writes; a diverging job stops alone; a relaunch resumes; unsupported sweeps fail at the start."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ENV, ROOT, TINY, compose_run, run_train
from omegaconf import OmegaConf

from cnnlab.fused import Job, train_fused
from cnnlab.fused.checks import check_same_shapes, check_supported
from cnnlab.guards import ConfigError

# 20 steps: 2 epochs of 10 batches of 32. Learning rates where fp32 rounding (grouped vs single convolutions, ~3e-6
# relative in the first gradient) does not grow past 1e-4 in 20 steps; at lr 0.1 a net this small amplifies it to
# ~1e-3, as any two fp32 runs that sum in different orders would diverge.
EQUIV = [*TINY, "data.synthetic_size=[320,64]", "model.widths=[8,16,32]", "trainer.max_epochs=2"]
SWEEP = [["seed=0", "optim.lr=0.01"], ["seed=1", "optim.lr=0.005", "module.label_smoothing=0.1"]]


def fused_jobs(base: list[str], sweep: list[list[str]], root: Path) -> list[Job]:
    """The jobs the fused launcher hands to train_fused: each config resolved in its own run directory."""
    jobs = []
    for i, overrides in enumerate(sweep):
        cfg = compose_run([*base, *overrides], root / str(i))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("hydra")
        jobs.append(Job(OmegaConf.create(resolved), root / str(i), " ".join(overrides)))
    return jobs


def step_losses(run_dir: Path) -> list[float]:
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        rows += [float(r["train/step_loss"]) for r in csv.DictReader(path.open()) if r.get("train/step_loss")]
    return rows


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def flat(state: dict, running: bool) -> torch.Tensor:
    """All parameters (or all BN running means and variances) as one vector: a per-tensor ratio would measure
    rounding against BN biases that start at 0."""
    return torch.cat([v.flatten().float() for k, v in state.items() if ("running_" in k) == running
                      and "num_batches" not in k])


@pytest.mark.parametrize("model", ["resnet8", "plain8"])
def test_fused_jobs_equal_separate_runs(model: str, tmp_path: Path) -> None:
    base = [*EQUIV, f"model={model}"]
    scores = train_fused(fused_jobs(base, SWEEP, tmp_path / "fused"))
    for i, overrides in enumerate(SWEEP):
        run_train([*base, *overrides], tmp_path / "alone" / str(i))
        fused, alone = tmp_path / "fused" / str(i), tmp_path / "alone" / str(i)
        a, b = torch.tensor(step_losses(fused)), torch.tensor(step_losses(alone))
        assert len(a) == len(b) == 20
        assert ((a - b).abs() / b.abs()).max() < 1e-4, (a, b)
        fa, fb = weights(fused), weights(alone)
        assert fa.keys() == fb.keys()
        assert rel(flat(fa, running=False), flat(fb, running=False)) < 1e-4
        assert rel(flat(fa, running=True), flat(fb, running=True)) < 1e-4  # BN statistics per job
        assert all(torch.equal(fa[k], fb[k]) for k in fa if "num_batches" in k)
        ra, rb = (json.loads((d / "results.json").read_text()) for d in (fused, alone))
        assert ra["status"] == rb["status"] == "finished" and ra["global_step"] == rb["global_step"] == 20
        assert ra["best_score"] == scores[i] and ra["test"]["test/loss"] == pytest.approx(rb["test"]["test/loss"],
                                                                                        rel=1e-4)
        header = next(csv.reader(next(fused.glob("csv/version_0/metrics.csv")).open()))
        assert header == next(csv.reader(next(alone.glob("csv/version_0/metrics.csv")).open()))
    assert not torch.equal(weights(tmp_path / "fused" / "0")["model.fc.weight"],
                           weights(tmp_path / "fused" / "1")["model.fc.weight"])  # two different jobs


def test_resume_continues_as_one_run(tmp_path: Path) -> None:
    """A fused sweep stopped after epoch 1 and relaunched with ckpt_path=last ends where an unbroken one ends."""
    base = [*TINY, "model=resnet8", "model.widths=[4,8,16]", "data.synthetic_size=[96,32]", "schedule=constant"]
    sweep = [["seed=0"], ["seed=1"]]
    train_fused(fused_jobs([*base, "trainer.max_epochs=2"], sweep, tmp_path / "whole"))
    train_fused(fused_jobs([*base, "trainer.max_epochs=1"], sweep, tmp_path / "parts"))
    train_fused(fused_jobs([*base, "trainer.max_epochs=2", "ckpt_path=last"], sweep, tmp_path / "parts"))
    for i in range(2):
        whole, parts = weights(tmp_path / "whole" / str(i)), weights(tmp_path / "parts" / str(i))
        assert all(torch.allclose(whole[k].float(), parts[k].float(), rtol=1e-6, atol=1e-7) for k in whole)
        assert step_losses(tmp_path / "whole" / str(i)) == pytest.approx(step_losses(tmp_path / "parts" / str(i)))
        assert sorted(p.name for p in (tmp_path / "parts" / str(i) / "csv").iterdir()) == ["version_0", "version_1"]


@pytest.mark.slow  # about 35 s: a whole fused sweep, its report and evaluate
def test_sweep_cli_divergence_report_evaluate(tmp_path: Path) -> None:
    """python train.py -m ... hydra/launcher=fused: the lr=1e6 job diverges alone (results.json "diverged", exit 1
    as train.py's divergence), the other finishes; the report and the evaluator read the run directories."""
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, "train.py", "-m", "optim.lr=0.05,1e6", "hydra/launcher=fused", *TINY, "model=resnet8",
           "model.widths=[4,8,16]", "data.synthetic_size=[96,32]", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Diverged" in out.stderr
    ok, bad = (json.loads((sweep / i / "results.json").read_text()) for i in ("0", "1"))
    assert ok["status"] == "finished" and ok["global_step"] == 3 and set(ok["test"]) == {"test/loss", "test/err1",
                                                                                          "test/err5"}
    assert bad["status"] == "diverged" and bad["lr"] > 1e3 and "optim.lr" in bad["error"]  # lr at that step
    for i in ("0", "1"):
        assert {p.name for p in (sweep / i / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
        assert (sweep / i / "train.log").read_text().count("fused: 2 jobs") == 1
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not list((sweep / "1").rglob("*.ckpt"))  # diverged in its first epoch: nothing to keep

    from cnnlab.evaluate import evaluate

    scored = evaluate(sweep / "0" / "checkpoints" / "last.ckpt", overrides=["trainer.accelerator=cpu"])
    assert scored["err1"] == pytest.approx(ok["test"]["test/err1"]) and scored["n_images"] == 32
    assert scored["loss"] == pytest.approx(ok["test"]["test/loss"], rel=1e-5)

    report = subprocess.run([sys.executable, "-m", "cnnlab.report", str(sweep)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "0.05 | 1 |" in report.stdout and "1e+06 | 0/1" in report.stdout

    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "skipping it" in again.stdout + again.stderr  # finished: skipped
    assert json.loads((sweep / "0" / "results.json").read_text()) == ok


def test_unsupported_sweeps_fail_naming_the_key(tmp_path: Path) -> None:
    jobs = fused_jobs([*TINY, "model=resnet8"], [["model.depths=[1,1,1]"], ["model.depths=[2,2,2]"]], tmp_path)
    cfgs = [OmegaConf.to_container(j.cfg) for j in jobs]
    with pytest.raises(ConfigError, match=r"model.depths differs.*basic launcher"):
        check_same_shapes(cfgs, [str(j.run_dir) for j in jobs])
    check_same_shapes([cfgs[0], {**cfgs[0], "seed": 7, "optim": {**cfgs[0]["optim"], "lr": 1.0}}],
                      [str(jobs[0].run_dir)] * 2)
    for key, value in (("trainer", {"precision": "16-mixed"}), ("augment", {"mixup": 0.2})):
        with pytest.raises(ConfigError, match=rf"{key}\.{next(iter(value))}={next(iter(value.values()))!r}"):
            check_supported({**cfgs[0], key: {**cfgs[0][key], **value}})
    with pytest.raises(ConfigError, match="data._target_"):
        check_supported({**cfgs[0], "data": {"_target_": "cnnlab.data.ImageFolderDataModule"}})


def test_benchmark_runs_on_the_cpu() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.fused import measure

    r = measure([2], model="resnet8", batch=4, steps=2, device="cpu", warmup=1, overrides=["model.widths=[4,8,16]"])
    assert r["single"]["it_per_s"] > 0 and r["fused"][2]["it_per_s"] > 0 and r["fused"][2]["speedup"] > 0
