"""End to end through train.py's train(): run directory contents, real CIFAR-10 JPEGs, exact resume, clear errors."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY, Interrupted, run_train

from cnnlab.data import DatasetNotFoundError


def step_losses(run_dir: Path, version: int = 0) -> dict[int, float]:
    out = {}
    with (run_dir / f"csv/version_{version}/metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("train/step_loss"):
                out[int(row["step"])] = float(row["train/step_loss"])
    return out


def epoch_metric(run_dir: Path, key: str) -> list[float]:
    rows = csv.DictReader(next(run_dir.glob("csv/version_*/metrics.csv")).open())
    return [float(r[key]) for r in rows if r.get(key)]


def test_run_directory_holds_config_metrics_checkpoints_and_learning_happens(tmp_path):
    best = run_train([*TINY, "trainer.max_epochs=4", "logger=[csv,tensorboard]"], tmp_path)
    assert isinstance(best, float) and 0 <= best <= 1
    assert (tmp_path / "config.yaml").is_file() and "${" not in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and list(tmp_path.glob("checkpoints/best-*.ckpt"))
    assert list(tmp_path.glob("tensorboard/version_0/events.out.tfevents.*"))
    train_err = epoch_metric(tmp_path, "train/err1")
    assert len(train_err) == 4 and train_err[-1] < train_err[0] - 0.2, train_err
    assert epoch_metric(tmp_path, "test/err1")[0] < 0.85  # chance is 0.9; BN statistics lag after 24 steps
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # torch's safe default
    assert ckpt["hyper_parameters"]["run_config"]["model"]["depths"] == [3, 3, 3]
    assert ckpt["InMemoryDataModule"]["classes"][0] == "class0"


def test_wandb_logger_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_train([*TINY, "trainer.max_epochs=1", "logger=[csv,wandb]"], tmp_path)
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_real_cifar10_jpeg_slice_trains_and_tests(cifar10_slice, tmp_path):
    run_train([f"data.root={cifar10_slice}", f"data.cache_dir={tmp_path}/cache", "data.batch_size=50",
               "data.val_split=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
               "callbacks.progress_bar.refresh_rate=0"],
              tmp_path / "run")
    assert len(epoch_metric(tmp_path / "run", "test/err1")) == 1
    assert list((tmp_path / "cache").glob("cifar-train-32px-3ch-*.pt"))


@pytest.mark.parametrize(("where", "crash_at", "resume_at"), [("epoch_end", 14, 12), ("mid_epoch", 6, 4)])
def test_resume_continues_exactly_like_an_uninterrupted_run(where, crash_at, resume_at, tmp_path):
    """6 steps per epoch, 3 epochs. A run crashes at step `crash_at` and resumes from its last checkpoint: last.ckpt
    (end of epoch 2, step 12) or a mid-epoch one (step 4 of epoch 1); its losses equal the uninterrupted run's."""
    run = [*TINY, "trainer.max_epochs=3"]
    run_train(run, tmp_path / "full")
    reference = step_losses(tmp_path / "full")
    assert sorted(reference) == list(range(18))

    part = tmp_path / "part"
    crash = ["+callbacks.crash._target_=conftest.InterruptAt", f"+callbacks.crash.step={crash_at}"]
    mid = ["+callbacks.mid._target_=lightning.pytorch.callbacks.ModelCheckpoint", f"+callbacks.mid.dirpath={part}",
           "+callbacks.mid.every_n_train_steps=4", "+callbacks.mid.filename=mid"]
    with pytest.raises(Interrupted):
        run_train([*run, *crash, *(mid if where == "mid_epoch" else [])], part)
    ckpt = "last" if where == "epoch_end" else f"{part}/mid.ckpt"  # "last": last.ckpt of this run directory
    run_train([*run, f"ckpt_path={ckpt}"], part)

    resumed = step_losses(part, version=1)
    assert sorted(resumed) == list(range(resume_at, 18))
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


def test_bad_dataset_path_and_bad_config_value_fail_clearly(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}/missing.*data.root"):
        run_train(["data.root=" + str(tmp_path / "missing"), "data.download=false"], tmp_path / "a")
    with pytest.raises(Exception, match="shortcut must be one of .* got 'C'"):
        run_train([*TINY, "model.shortcut=C"], tmp_path / "b")
    with pytest.raises(ValueError, match="val_split must be in"):
        run_train([*TINY, "data.val_split=500"], tmp_path / "c")


@pytest.mark.parametrize(("model", "size", "classes"), [
    ("googlenet", 224, 1000), pytest.param("inception_v3", 299, 1000, marks=pytest.mark.slow),  # ~15 s at 299 px
    ("resnet50", 64, 10), ("densenet_bc100", 32, 10)])
def test_zoo_models_train_through_train_py(model, size, classes, tmp_path):
    """Auxiliary heads (GoogLeNet, Inception-v3) and ImageNet layouts go through the module end to end."""
    best = run_train([*TINY, f"model={model}", f"data.image_size={size}", f"data.num_classes={classes}",
                      "data.synthetic_size=[2,2]", "data.batch_size=2", "data.eval_batch_size=2",
                      "trainer.max_epochs=1"], tmp_path)
    assert best is not None and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_paper_recipe_counted_in_iterations_runs(tmp_path):
    """experiment=he2016_cifar stops by max_steps with max_epochs=-1, before Lightning has loaded the training data;
    the schedule still needs the steps per epoch."""
    run_train([*TINY, "experiment=he2016_cifar", "data=synthetic", "data.val_split=32", "trainer.max_steps=7",
               "schedule.milestones=[3,5]"], tmp_path)
    lrs = [float(r["lr-SGD"]) for r in csv.DictReader(next(tmp_path.glob("csv/version_0/metrics.csv")).open())
           if r.get("lr-SGD")]
    assert lrs[:3] == pytest.approx([0.025] * 3) and lrs[-1] == pytest.approx(0.00025)  # 0.1 per 128, batch 32
