"""Sweep configs: every job of every sweep composes; the ResNeXt and degradation grids are the papers'; a multirun and
an Optuna search run end to end on synthetic data."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENV, ROOT, TINY, compose_run, config_names
from hydra.core.override_parser.overrides_parser import OverridesParser

from cnnlab.summary import build, natural_input

# conftest's tiny run, smaller: 96 synthetic 32x32 images (32 held out for validation), 2 epochs of 2 batches.
SMALL = [*TINY, "data.synthetic_size=[96,64]", "data.val_split=32", "data.eval_batch_size=64", "trainer.max_epochs=2"]


def is_sweep(name: str) -> bool:
    """Whether an experiment, or an experiment it extends, sets hydra.sweeper.params."""
    cfg = yaml.safe_load((ROOT / "conf/experiment" / f"{name}.yaml").read_text())
    parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return bool(cfg.get("hydra", {}).get("sweeper", {}).get("params")) or any(map(is_sweep, parents))


SWEEPS = [n for n in config_names("experiment") if is_sweep(n)]


def multirun(args: list[str], sweep_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python train.py -m <args>` into sweep_dir, as a user runs it (conftest is importable, for InterruptAt)."""
    env = {**ENV, "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"multirun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def sweep_jobs(experiment: str, tmp_path: Path) -> list[list[str]]:
    """The overrides of every job the basic sweeper launches for `-m experiment=<name>`."""
    params = compose_run([f"experiment={experiment}"], tmp_path).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [[]]
    for o in parsed:
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        jobs = [[*j, f"{o.key_or_group}={v}"] for j in jobs for v in values]
    return jobs


def test_sweep_configs_are_found():
    assert {"he2016_degradation", "he2016_degradation110", "he2016_degradation_small", "resnext50_ablation",
            "resnext101_ablation", "resnext50_ablation_small"} <= set(SWEEPS)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_job_of_every_sweep_composes(sweep, tmp_path):
    jobs = sweep_jobs(sweep, tmp_path / "sweep")
    assert len(jobs) > 1
    distinct = {tuple(o for o in job if not o.startswith("seed=")): job for job in jobs}  # seeds compose alike
    for i, job in enumerate(distinct.values()):
        cfg = compose_run([f"experiment={sweep}", *job], tmp_path / str(i))
        swept = dict(o.split("=", 1) for o in job)
        assert cfg.hydra.runtime.choices.model == swept.get("model", cfg.hydra.runtime.choices.model)
        if "seed" in swept:
            assert cfg.seed == int(swept["seed"])


@pytest.mark.parametrize("depth", [50, 101])
def test_resnext_sweep_is_exactly_the_five_table3_settings_at_preserved_complexity(depth, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    settings = {}
    for i, job in enumerate(sweep_jobs(f"resnext{depth}_ablation", tmp_path / "sweep")):
        cfg = compose_run([f"experiment=resnext{depth}_ablation", *job], tmp_path / str(i))
        cfg.data.num_classes = 1000  # Table 3 is ImageNet: 1000 classes at 224x224, the model built on meta
        model, x = build(cfg, natural_input(cfg.hydra.runtime.choices.model)[0])
        with FlopCounterMode(display=False) as flops:
            model(x)
        settings[(cfg.model.groups, cfg.model.width_per_group)] = flops.get_total_flops() / 2e9
    assert sorted(settings) == [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)]  # C x d of Xie et al. 2017, Table 3
    target = {50: 4.1, 101: 7.8}[depth]  # GMACs, "preserved complexity" (Xie et al. 2017, Table 3: 4.1 and 7.8 GFLOPs)
    assert all(abs(g - target) / target < 0.05 for g in settings.values()), settings


def test_degradation_sweep_is_plain_and_residual_at_each_depth_over_seeds(tmp_path):
    jobs = [dict(o.split("=") for o in job) for job in sweep_jobs("he2016_degradation", tmp_path)]
    models = {j["model"] for j in jobs}
    assert models == {f"{kind}{d}" for kind in ("plain", "resnet") for d in (20, 32, 44, 56)}
    assert len(jobs) == 8 * 3  # 3 seeds each
    cfg = compose_run(["experiment=he2016_degradation", "model=plain56"], tmp_path / "job")
    assert cfg.trainer.max_steps == 64000 and cfg.model.residual is False and list(cfg.model.depths) == [9, 9, 9]


def test_hparams_search_composes_with_the_optuna_sweeper(tmp_path):
    cfg = compose_run(["hparams_search=lr_wd_ls"], tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"optim.lr", "optim.weight_decay", "module.label_smoothing"}


def test_two_job_multirun_on_synthetic_data_completes(tmp_path):
    multirun(["experiment=he2016_degradation_small", "model=plain20,resnet20", *SMALL], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    for job, model, residual in (("0", "plain20", False), ("1", "resnet20", True)):
        results = json.loads((tmp_path / job / "results.json").read_text())
        assert results["status"] == "finished" and results["global_step"] == 4  # 2 epochs x 2 batches of 32
        logged = list(csv.DictReader((tmp_path / job / "csv/version_0/metrics.csv").open()))
        assert results["test"]["test/err1"] == pytest.approx(next(float(r["test/err1"]) for r in logged
                                                                  if r.get("test/err1")))
        assert results["best_score"] == pytest.approx(min(float(r["val/err1"]) for r in logged if r.get("val/err1")))
        assert f"model={model}" in (tmp_path / job / ".hydra/overrides.yaml").read_text()
        assert yaml.safe_load((tmp_path / job / "config.yaml").read_text())["model"]["residual"] is residual


@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_minimizes_best_val_error(tmp_path):
    multirun(["hparams_search=lr_wd_ls", "hydra.sweeper.n_trials=2", *SMALL], tmp_path)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    scores = [json.loads((tmp_path / j / "results.json").read_text())["best_score"] for j in ("0", "1")]
    assert best["best_value"] == pytest.approx(min(scores))
    lrs = [float(next(o for o in yaml.safe_load((tmp_path / j / ".hydra/overrides.yaml").read_text())
                      if o.startswith("optim.lr=")).split("=")[1]) for j in ("0", "1")]
    assert lrs[0] != lrs[1] and all(0.01 <= lr <= 0.5 for lr in lrs) and not any(math.isnan(s) for s in scores)


@pytest.mark.slow  # two runs in one subprocess
def test_a_diverged_job_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    """lr 1e9 (1e7 after the schedule's decay) diverges within the 4 steps; the next job still runs; the sweep
    exits non-zero; the report lists the diverged job as failed."""
    from cnnlab.report import report

    proc = multirun([*SMALL, "optim.lr=1e9,0.1"], tmp_path, check=False)
    assert proc.returncode != 0
    diverged = json.loads((tmp_path / "0" / "results.json").read_text(), parse_constant=pytest.fail)
    assert diverged["status"] == "diverged" and "not finite" in diverged["error"] and diverged["lr"] > 1e6
    assert json.loads((tmp_path / "1" / "results.json").read_text())["status"] == "finished"
    text = report([tmp_path], tmp_path / "report")
    assert "Failed or unfinished (1 of 2)" in text and f"{tmp_path / '0'}" in text
