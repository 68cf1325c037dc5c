"""Distributed training without SLURM: DDP over gloo, a two-node launch on localhost, atomic checkpoints, bf16 on the
CPU, lr scaling, resume mismatch errors, relaunched sweeps and the SLURM launcher's resources."""

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ENV, ROOT, TINY, run_train

# conftest's tiny run with 65 test images: two ranks take 33 and 32, so a padded duplicate would show in the metrics.
TINY = [*TINY, "data.synthetic_size=[192,65]"]


def train_py(args: list[str], cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python train.py <args>` as a user runs it (Lightning's DDP launcher re-executes the script for rank 1)."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_epoch_metric(run_dir: Path, key: str) -> float:
    rows = [r for f in sorted(run_dir.glob("csv/version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    return [float(r[key]) for r in rows if r.get(key)][-1]


def evaluate_alone(ckpt: Path, run_dir: Path) -> dict:
    """Test the checkpoint's weights in this one process (a resume at the end of training only tests)."""
    epochs = torch.load(ckpt, weights_only=False)["epoch"] + 1
    run_train([*TINY, f"trainer.max_epochs={epochs}", f"ckpt_path={ckpt}"], run_dir)
    return json.loads((run_dir / "results.json").read_text())["test"]


def hydra_dirs(cwd: Path) -> set[Path]:
    return set(cwd.glob("runs/*/*")) | set(cwd.glob("outputs/*/*"))


def assert_one_run_dir(run_dir: Path, cwd: Path, before: set[Path] = frozenset()) -> None:
    """Finished, one CSV version, one log; no other Hydra run directory appeared under cwd (none per rank)."""
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"
    assert [p.name for p in run_dir.glob("csv/version_*")] == ["version_0"]
    assert (run_dir / "train.log").read_text().count("] - run directory:") == 1  # rank 1 logs to stderr only
    assert hydra_dirs(cwd) == before


@pytest.mark.slow  # about 25 s: two processes; CI runs it
def test_ddp_on_two_processes_counts_every_image_once(tmp_path):
    """trainer=ddp trainer.devices=2 over gloo: 65 test images split 33/32 with no padded duplicate, so the 2-process
    test metrics equal a 1-process evaluation of the same weights."""
    run = tmp_path / "ddp"
    finish(train_py([*TINY, "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2", f"hydra.run.dir={run}"],
                    tmp_path))
    assert_one_run_dir(run, tmp_path)
    two = json.loads((run / "results.json").read_text())["test"]
    one = evaluate_alone(run / "checkpoints" / "last.ckpt", tmp_path / "one")
    assert two["test/err1"] == pytest.approx(one["test/err1"], abs=1e-6)
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)
    assert last_epoch_metric(run, "val/err1") == pytest.approx(one["test/err1"], abs=1e-6)  # val = test set here


@pytest.mark.slow  # about 30 s: four processes; the two-process DDP test stays in the default suite
def test_two_nodes_on_localhost_share_one_run(tmp_path):
    """A manual two-node launch (NODE_RANK 0 and 1, one process each) trains one model into one run directory."""
    run, port = tmp_path / "run", free_port()
    args = [*TINY, "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_epochs=1",
            f"hydra.run.dir={run}"]
    procs = [train_py(args, tmp_path, {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                       "NODE_RANK": str(r)}) for r in (0, 1)]
    outs = [finish(p) for p in procs]
    assert "GLOBAL_RANK: 1" in outs[1] or "global_rank=1" in outs[1].lower() or "rank: 1" in outs[1].lower(), outs[1]
    assert_one_run_dir(run, tmp_path)
    one = evaluate_alone(run / "checkpoints" / "last.ckpt", tmp_path / "one")
    assert json.loads((run / "results.json").read_text())["test"]["test/err1"] == pytest.approx(one["test/err1"])


def test_lr_is_scaled_by_the_global_batch(tmp_path):
    """lr 0.1 per 32 images; accumulating 2 batches of 32 makes a global batch of 64, so the logged lr is 0.2."""
    run_train([*TINY, "trainer.max_epochs=1", "trainer.accumulate_grad_batches=2", "schedule=constant"], tmp_path)
    assert last_epoch_metric(tmp_path, "lr-SGD") == pytest.approx(0.2)


@pytest.mark.slow  # about 40 s: bf16 kernels are slow on a CPU
def test_bf16_mixed_and_channels_last_train_on_the_cpu(tmp_path):
    run_train([*TINY, "trainer.max_epochs=3", "trainer.precision=bf16-mixed", "module.channels_last=true"], tmp_path)
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_0/metrics.csv")).open()))
    train_err = [float(r["train/err1"]) for r in rows if r.get("train/err1")]
    assert len(train_err) == 3 and train_err[-1] < train_err[0] - 0.1, train_err


@pytest.mark.slow
def test_torch_compile_trains_and_keeps_checkpoint_keys(tmp_path):
    run_train([*TINY, "trainer.max_epochs=1", "module.compile=true"], tmp_path)
    keys = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert "model.fc.weight" in keys and not any("_orig_mod" in k for k in keys)


def test_kill_during_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    """kill -9 while a 200 MB checkpoint is being written over last.ckpt: the old last.ckpt still loads."""
    path = tmp_path / "last.ckpt"
    writer = (f"import torch, sys; from cnnlab.checkpoint import AtomicCheckpointIO\n"
              f"io = AtomicCheckpointIO(); io.save_checkpoint({{'step': 1, 'w': torch.ones(10)}}, r'{path}')\n"
              f"print('first', flush=True)\n"
              f"while True: io.save_checkpoint({{'step': 2, 'w': torch.ones(50_000_000)}}, r'{path}')\n")
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "first"
    tmp = None
    for _ in range(400):  # until the big write is under way
        if tmp := next(tmp_path.glob(".last.ckpt.*.tmp"), None):
            break
        time.sleep(0.01)
    assert tmp is not None, "the writer never started its second checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(path, weights_only=True)["step"] in (1, 2)  # either whole checkpoint, never a torn one


def test_resuming_another_models_checkpoint_names_the_difference(tmp_path):
    run_train([*TINY, "trainer.max_epochs=1"], tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"does not fit this model(.|\n)*ResNet\(depths=\[5, 5, 5\]") as err:
        run_train([*TINY, "trainer.max_epochs=2", "model=resnet32", f"ckpt_path={ckpt}"], tmp_path / "b")
    assert "missing from the checkpoint: model.layer1.3" in str(err.value)
    with pytest.raises(ValueError, match=r"model.fc.weight: checkpoint \(10, 64\) vs model \(5, 64\)"):
        run_train([*TINY, "trainer.max_epochs=2", "data.num_classes=5", f"ckpt_path={ckpt}"], tmp_path / "c")


@pytest.mark.slow  # about 30 s: a sweep run twice; the single-run relaunch tests stay
def test_relaunched_sweep_skips_finished_runs(tmp_path):
    """A 2-job multirun; job 1 is made unfinished; relaunching the same sweep skips job 0 and reruns job 1."""
    sweep = ["-m", *TINY, "trainer.max_epochs=1", "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    finish(train_py(sweep, tmp_path))
    (tmp_path / "1" / "results.json").unlink()
    out = finish(train_py(sweep, tmp_path))
    assert out.count("this run has finished, skipping it") == 1
    assert (tmp_path / "1" / "results.json").is_file()
    assert not (tmp_path / "0" / "csv" / "version_1").exists() and (tmp_path / "1" / "csv" / "version_1").exists()


@pytest.mark.slow  # about 25 s: two runs with the wandb client
def test_wandb_run_id_survives_a_resume(tmp_path):
    """Two processes (as a requeued job is): the second resumes the first's wandb run under the same id."""
    args = [*TINY, "logger=[csv,wandb]", f"hydra.run.dir={tmp_path}"]
    finish(train_py([*args, "trainer.max_epochs=1"], tmp_path))
    run_id = (tmp_path / "wandb_id").read_text()
    time.sleep(1)  # offline run folders are named to the second
    finish(train_py([*args, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path))
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.endswith(run_id) for r in runs), (run_id, runs)


@pytest.mark.slow  # about 10 s: the submitit launcher's --cfg in a subprocess
def test_slurm_launcher_config_shows_the_resources(tmp_path):
    """`python train.py hydra/launcher=slurm --cfg hydra` (Hydra refuses --cfg together with -m)."""
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "hydra", "hydra/launcher=slurm",
                          "hydra.launcher.gpus_per_node=8", "hydra.launcher.tasks_per_node=8",
                          "hydra.launcher.partition=gpu"], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["partition"]) == (8, 8, "gpu")
    assert launcher["signal_delay_s"] == 180 and launcher["max_num_timeout"] > 0 and launcher["cpus_per_task"] == 8
