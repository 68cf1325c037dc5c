"""Against a real SLURM (slurm/local-cluster.sh: two nodes on this machine): sbatch DDP across nodes, preemption with
requeue and resume, and the submitit launcher. Skipped where the cluster cannot be started (not root, no apt)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_distributed import TINY, assert_one_run_dir, evaluate_alone, hydra_dirs, last_epoch_metric

pytestmark = pytest.mark.slurm
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}  # the jobs run this interpreter


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, up for the session; stopped after it unless it was up before (.ci/run starts it)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root to install and start its daemons (slurm/local-cluster.sh)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no SLURM installed and no apt-get to install it")
    was_up = subprocess.run(["sinfo"], capture_output=True).returncode == 0 if shutil.which("sinfo") else False
    script = str(ROOT / "slurm" / "local-cluster.sh")
    up = subprocess.run([script, "up"], capture_output=True, text=True, timeout=600)
    try:
        if up.returncode:
            pytest.skip(f"the local SLURM cluster did not start: {up.stderr.strip()[-500:]}")
        yield
    finally:  # also after a failed start: no daemon left half-started
        if not was_up:
            subprocess.run([script, "down"], capture_output=True)


def sbatch(options: list[str], overrides: list[str], tmp_path: Path) -> str:
    out = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out", *options,
                          "slurm/train.sbatch", *overrides],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return m.group(1) if (m := re.search(rf"\b{field}=(\S+)", out)) else None


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(1)


def wait_done(job: str, timeout: float = 400) -> None:
    wait_until(lambda: job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", None),
               timeout, f"job {job}")
    assert job_field(job, "JobState") in ("COMPLETED", None), f"job {job}: {job_field(job, 'JobState')}"


def test_two_node_ddp_via_sbatch(slurm_cluster, tmp_path):
    """sbatch --nodes=2: ranks on n1 and n2 over gloo; one run directory; its validation metrics equal a 1-process
    evaluation of the same weights (65 images split 33/32, none counted twice)."""
    run, before = tmp_path / "run", hydra_dirs(ROOT)
    job = sbatch(["--nodes=2", "--ntasks-per-node=1"], [*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run}"],
                 tmp_path)
    wait_done(job)
    log = (run / "slurm.log").read_text()
    assert "on n[1-2]" in log and "trainer.num_nodes=2" in log
    assert_one_run_dir(run, ROOT, before)
    one = evaluate_alone(run / "checkpoints" / "last.ckpt", tmp_path / "one")
    assert last_epoch_metric(run, "val/err1") == pytest.approx(one["test/err1"], abs=1e-6)
    assert json.loads((run / "results.json").read_text())["test"]["test/loss"] == pytest.approx(one["test/loss"])


def test_preempted_job_requeues_and_ends_with_the_uninterrupted_weights(slurm_cluster, tmp_path):
    """`scancel -s USR1` mid-run: the job checkpoints, requeues itself, resumes in the same directory (mid-epoch
    position included) and its final weights equal those of an identical job left alone."""
    args = [*TINY, "data.synthetic_size=[1024,64]", "trainer.max_epochs=3"]
    jobs = {name: sbatch([], [*args, f"hydra.run.dir={tmp_path / name}"], tmp_path) for name in ("preempted", "alone")}
    run = tmp_path / "preempted"
    wait_until(lambda: (run / "checkpoints" / "last.ckpt").exists(), 300, "the first epoch")
    subprocess.run(["scancel", "-s", "USR1", jobs["preempted"]], check=True)
    wait_until(lambda: job_field(jobs["preempted"], "Restarts") == "1", 120, "the requeue")
    wait_until(lambda: job_field(jobs["preempted"], "JobState") == "PENDING", 120, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"jobid={jobs['preempted']}", "StartTime=now"], check=True)
    for job in jobs.values():
        wait_done(job)
    log = (run / "slurm.log").read_text()
    step = int(re.search(r"saved \S+hpc_ckpt_1.ckpt at step (\d+) and requeued", log).group(1))
    assert 0 < step < 96 and "(restart 1)" in log and "Restored all states from the checkpoint at" in log
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # consumed: the test stage used the final weights
    assert sorted(p.name for p in run.glob("csv/version_*")) == ["version_0", "version_1"]
    final = [torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False) for n in jobs]
    assert final[0]["global_step"] == final[1]["global_step"] == 96
    for k, v in final[1]["state_dict"].items():
        assert torch.equal(final[0]["state_dict"][k], v), k
    results = [json.loads((tmp_path / n / "results.json").read_text())["test"] for n in jobs]
    assert results[0] == results[1]


def test_submitit_launcher_runs_a_sweep(slurm_cluster, tmp_path):
    """`python train.py -m hydra/launcher=slurm model=resnet20,plain20`: a job array on the cluster, both finish."""
    out = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
                          f"hydra.sweep.dir={tmp_path}", "model=resnet20,plain20", *TINY, "trainer.max_epochs=1"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    residual = [(tmp_path / n / "config.yaml").read_text().count("residual: false") for n in "01"]
    assert residual == [0, 1]  # job 0 is resnet20, job 1 the plain twin
    for n in "01":
        assert json.loads((tmp_path / n / "results.json").read_text())["status"] == "finished"
    assert list(tmp_path.glob(".submitit/*/*_log.out"))  # submitit's per-job logs, in the sweep directory
