"""A run does what was asked or stops and says why (issue #14): mistakes fail before any data is decoded, naming the
key and value; a diverged run stops; runs never share a directory; a resume says what it changes."""

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, ROOT, TINY, compose_run, run_train
from hydra.errors import MissingConfigException

from cnnlab.callbacks import Diverged
from cnnlab.data.images import DatasetNotFoundError
from cnnlab.guards import ConfigError, resume_path


@pytest.mark.parametrize(("group", "option"), [("experiment", "he2016_cifar"), ("hparams_search", "lr_wd_ls")])
def test_unknown_experiment_or_search_fails_listing_the_options(group, option, tmp_path):
    with pytest.raises(MissingConfigException, match=f"no_such_recipe(.|\n)*{option}"):
        compose_run([f"{group}=no_such_recipe"], tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=0", "data.batch_size=0 must be a finite number > 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a finite number > 0"),
    ("trainer.max_steps=0", "trainer.max_steps=0 must be a finite number > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a finite number > 0"),
    # issue 20, item 5: each of these failed only after the data loaded, or was accepted silently
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 must be a finite number > 0"),
    ("optim.momentum=-1", "optim.momentum=-1 must be a finite number >= 0"),
    ("schedule.unit=epochs", r"schedule.unit='epochs' must be one of \('step', 'epoch', 'fraction'\)"),
    ("trainer.max_epochs=-1 trainer.max_steps=-1", "schedule.unit=fraction needs a finite run, but "
     "trainer.max_epochs=-1 and trainer.max_steps=-1"),
    ("optim.lr=inf", "optim.lr=inf must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number > 0"),
    ("schedule.milestones=[1.5]", r"schedule.milestones=\[1.5\] with schedule.unit=fraction: .* at most 1"),
    ("schedule.milestones=[-2]", r"schedule.milestones=\[-2\] must be numbers >= 0"),
    ("schedule.warmup=-5", "schedule.warmup=-5 must be a finite number >= 0"),
    ("schedule=triangular schedule.peak=2", "schedule.peak=2 with schedule.unit=fraction"),
    ("callbacks.best.monitor=val/typo", "callbacks.best.monitor='val/typo' is not a logged metric: one of .*val/err1"),
    ("data.synthetic_size=[0,0]", r"data.synthetic_size=\[0, 0\] must be two image counts > 0"),
    ("model.num_classes=5", "model.num_classes=5 but data.num_classes=10"),
    ("optim.lr=abc", "optim.lr='abc' is not a valid value: torch.optim.SGD takes lr: float"),
    ("data.batch_size=32.5", "data.batch_size=32.5 is not a valid value: .* takes batch_size: int"),
    ("trainer.max_epochs=two", "trainer.max_epochs='two' is not a valid value"),
    ("trainer.precision=bf17", "trainer.precision='bf17' is not a valid value"),
    ("trainer.precision=16-mixed", "trainer.precision=16-mixed needs a CUDA GPU .* use bf16-mixed"),
])
def test_bad_values_fail_before_the_run_starts_naming_key_and_value(override, message, tiny, tmp_path):
    if override.startswith("trainer.precision=16") and torch.cuda.is_available():
        pytest.skip("16-mixed runs here")
    with pytest.raises(ConfigError, match=message):
        run_train([*tiny, *override.split()], tmp_path / "run")
    assert not (tmp_path / "run").exists()  # stopped before the run wrote anything; its directory removed


def test_a_missing_dataset_folder_is_named_and_not_created(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"data.root={tmp_path}/cifar does not exist .and data.download"):
        run_train(["data=cifar10", f"data.root={tmp_path}/cifar", "data.download=false", "trainer.accelerator=cpu"],
                  tmp_path / "run")
    assert not (tmp_path / "cifar").exists() and not (tmp_path / "run").exists()
    with pytest.raises(Exception, match="could not download cifar10"):  # no internet here (nor in CI): it fails ...
        run_train(["data=cifar10", f"data.root={tmp_path}/cifar", "data.download=true", "trainer.accelerator=cpu"],
                  tmp_path / "run")
    assert not (tmp_path / "cifar").exists()  # ... and leaves no empty dataset folder behind


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    """Under @hydra.main the run directory gets .hydra/ and train.log before train() runs: a start that fails
    removes it (a second start into a directory with a run in it keeps that directory)."""
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "optim.lr=inf",
                          f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert out.returncode != 0 and "optim.lr=inf must be a finite number > 0" in out.stderr
    assert not (tmp_path / "run").exists() and sorted(os.listdir(tmp_path)) == []


def test_unwritable_cache_or_checkpoint_directory_fails_before_decoding(cifar10_slice, tiny, tmp_path):
    """A path under a regular file cannot be created, whoever runs the test (root ignores permission bits)."""
    (tmp_path / "file").write_text("")
    cifar = ["data=cifar10", f"data.root={cifar10_slice}", "trainer.accelerator=cpu"]
    with pytest.raises(ConfigError, match=f"data.cache_dir={tmp_path}/file/cache is not a writable directory"):
        run_train([*cifar, f"data.cache_dir={tmp_path}/file/cache"], tmp_path / "a")
    assert not list(tmp_path.rglob("*.pt"))
    with pytest.raises(ConfigError, match="callbacks.best.dirpath=.*/file/ckpt is not a writable directory"):
        run_train([*tiny, f"callbacks.best.dirpath={tmp_path}/file/ckpt"], tmp_path / "b")


def test_resume_with_nothing_to_resume_fails_naming_the_directory(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"ckpt_path=last: nothing to resume in the run directory {tmp_path}"):
        run_train([*tiny, "ckpt_path=last"], tmp_path)
    with pytest.raises(FileNotFoundError, match="ckpt_path=/no/such.ckpt: no such checkpoint file"):
        run_train([*tiny, "ckpt_path=/no/such.ckpt"], tmp_path)


def test_requeued_job_resumes_if_present_and_starts_afresh_otherwise(tmp_path, monkeypatch):
    cfg = compose_run(list(TINY), tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_path(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_path(cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert resume_path(cfg, tmp_path) is None  # not requeued: a run starts afresh unless asked to resume


def test_divergence_stops_the_run_keeps_the_finite_checkpoint_and_says_so(tiny, tmp_path):
    """lr 0.1 for the first epoch (6 steps), then 1e6: the loss is non-finite within a few steps of epoch 2."""
    lr_jump = ["optim.lr=1e6", "schedule=constant", "schedule.unit=epoch", "schedule.warmup=1",
               "schedule.warmup_mode=constant", "schedule.warmup_start=1e-7", "trainer.max_epochs=4"]
    with pytest.raises(Diverged, match=r"not finite at step (\d+) \(epoch 1, lr 1e\+06\)") as err:
        run_train([*tiny, *lr_jump], tmp_path)
    assert 6 <= err.value.step < 12  # within the epoch the lr jumped in
    results = json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert results["status"] == "diverged" and results["lr"] == 1e6 and results["global_step"] == err.value.step
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and all(v.isfinite().all() for v in last["state_dict"].values()
                                            if v.is_floating_point())
    with pytest.raises(Diverged, match="records a diverged run"):  # a relaunched sweep meets it again
        run_train([*tiny, *lr_jump], tmp_path)


def test_skipping_the_test_or_validation_stage_finishes(tiny, tmp_path):
    assert run_train([*tiny, "trainer.max_epochs=1", "trainer.limit_test_batches=0"], tmp_path / "a") is not None
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["status"] == "finished" and results["test"] == {}
    assert run_train([*tiny, "trainer.max_epochs=1", "trainer.limit_val_batches=0"], tmp_path / "b") is None
    assert json.loads((tmp_path / "b" / "results.json").read_text())["test"]["test/err1"] <= 1


def test_resume_with_another_length_warns_with_the_lr_jump(tiny, tmp_path, caplog):
    """multistep at 50% and 75%: after 1 epoch (6 steps) the lr is 0.001; a resume to 2 epochs puts step 6 at 50%,
    where the recomputed schedule gives 0.01."""
    run_train([*tiny, "trainer.max_epochs=1"], tmp_path)
    with caplog.at_level(logging.WARNING):
        run_train([*tiny, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path)
    assert "RESUMING WITH A DIFFERENT RUN LENGTH: trainer.max_epochs=2 (the checkpoint's run: 1)" in caplog.text
    assert "at step 6 the lr goes from 0.001 to 0.01" in caplog.text


def test_mid_epoch_checkpoints_as_documented(tiny, tmp_path):
    run_train([*tiny, "trainer.max_epochs=1", "callbacks.latest.every_n_epochs=0",
               "callbacks.latest.every_n_train_steps=4"], tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_run_ends_saying_where_its_outputs_went(tiny, tmp_path, caplog):
    """The last lines: the run directory, the best and last checkpoints, the test metrics; Lightning's model summary
    without its "Total Flops: 0"."""
    with caplog.at_level(logging.INFO):
        run_train([*tiny, "trainer.max_epochs=1"], tmp_path)
    last = [r.getMessage() for r in caplog.records if r.name == "train"][-4:]
    assert last[0] == f"finished after 6 steps. run directory: {tmp_path}"
    assert last[1].startswith(f"best checkpoint: {tmp_path}/checkpoints/best-epoch000-step6.ckpt (val/err1 ")
    assert last[2] == f"last checkpoint: {tmp_path}/checkpoints/last.ckpt" and last[3].startswith("test: test/loss ")
    assert "Total params" in caplog.text and "FLOPs" not in caplog.text and "Total Flops" not in caplog.text


def test_orphaned_temporary_checkpoints_are_removed_at_the_next_start(tiny, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "checkpoints").mkdir(parents=True)
    orphan = tmp_path / "checkpoints" / f".last.ckpt.{int(dead.stdout)}.tmp"
    live = tmp_path / "checkpoints" / f".last.ckpt.{os.getppid()}.tmp"  # a writer that still runs: kept
    orphan.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    run_train([*tiny, "trainer.max_epochs=1"], tmp_path)
    assert not orphan.exists() and live.exists()


def test_the_default_run_directory_is_claimed_once_per_config(tmp_path, monkeypatch):
    """Two configs composed in the same second resolve two directories; one config resolves its own once."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        a, b = (compose("train", return_hydra_config=True) for _ in range(2))
    assert a.hydra.run.dir == a.hydra.run.dir != b.hydra.run.dir
    assert all((tmp_path / c.hydra.run.dir).is_dir() for c in (a, b))
    assert a.hydra.sweep.dir != b.hydra.sweep.dir


@pytest.mark.slow  # two processes of ~10 s each; minutes on a loaded machine
def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """Two `python train.py` released together (after their imports) with the default run directory. Each ends by
    printing where its outputs went; train.log holds that and Lightning's own lines, without a FLOPs count of 0."""
    go = tmp_path / "go"
    script = (f"import sys, time, pathlib, runpy, torch, lightning, hydra, cnnlab.guards\n"  # the slow imports
              f"pathlib.Path(sys.argv.pop(1)).touch()\n"
              f"while not pathlib.Path(r'{go}').exists(): time.sleep(0.001)\n"
              f"sys.argv[0] = r'{ROOT / 'train.py'}'; runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = [*TINY, "data.synthetic_size=[64,32]", "trainer.max_epochs=1"]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"ready{i}"), *args], cwd=tmp_path,
                              env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        time.sleep(0.05)
    time.sleep(1.02 - time.time() % 1)  # just after a second starts: both resolve ${now:%H-%M-%S} alike
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = {p.parent.resolve() for p in tmp_path.glob("runs/*/*/results.json")}
    assert len(dirs) == 2, (dirs, outs)
    for out in outs:  # the last lines: where everything went
        last = out.strip().splitlines()[-4:]
        d = Path(last[0].split("run directory: ")[1])
        assert d in dirs and "best checkpoint: " in last[1] and "last checkpoint: " in last[2], last
        assert "test: test/loss" in last[3], last
        log = (d / "train.log").read_text()
        assert all(line.split("] - ")[1] in log for line in last)
        assert "Total params" in log and "FLOPs" not in log and "Total Flops" not in out


def test_slurm_tests_are_opt_in(tmp_path):
    """Plain `pytest` installs nothing and starts no daemon: the slurm-marked tests are deselected by default."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", str(ROOT / "tests/test_slurm.py"),
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    assert "3 deselected" in out.stdout, out.stdout[-2000:]


def test_json_results_are_strict(tmp_path):
    from cnnlab.guards import write_results

    write_results(tmp_path / "r.json", status="finished", best_score=math.nan, test={"test/loss": math.inf})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=pytest.fail) == {
        "status": "finished", "best_score": None, "test": {"test/loss": None}}
