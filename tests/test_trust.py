"""Issue 20: unreadable images never crash a tool nor make a run report something untrue; a run directory is locked
while a run writes to it; a relaunch into a finished directory with another config fails naming the keys."""

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import ENV, ROOT, run_train
from PIL import Image
from test_imagenet import SYNSETS, write_tiny_imagenet

from cnnlab import evaluate, predict, visualize
from cnnlab.guards import ConfigError, NoTestData, RunDirLocked

TINY = list(conftest.QUICK)


@pytest.fixture
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt  # conftest: trained once per session


def truncated_jpeg(path: Path) -> Path:
    """A real JPEG cut in half: PIL opens its header, decoding fails ("image file is truncated")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    px = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    Image.fromarray(px).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_predict_scores_the_readable_files_and_lists_the_bad_ones(ckpt, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "imgs" / "good.png")
    truncated_jpeg(tmp_path / "imgs" / "cut.jpg")
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    with pytest.raises(SystemExit) as exit_:
        predict.main([f"ckpt={ckpt}", f"image={tmp_path}/imgs", f"save={tmp_path}/out"])
    out, err = capsys.readouterr()
    assert exit_.value.code == predict.UNREADABLE_STATUS == 2
    assert f"{tmp_path}/imgs/good.png\n  1. " in out and (tmp_path / "out" / "good.png").is_file()
    assert "2 of 3 files unreadable, left out:" in err
    assert f"{tmp_path}/imgs/cut.jpg: image file is truncated" in err and f"{tmp_path}/imgs/text.png: " in err
    with pytest.raises(SystemExit, match=f"no readable image in image={tmp_path}/imgs/cut.jpg: .*truncated"):
        predict.main([f"ckpt={ckpt}", f"image={tmp_path}/imgs/cut.jpg"])


def unreadable_folder(root: Path) -> Path:
    """An ImageNet-layout folder of 10 classes whose every val/ file is a truncated JPEG (train/ is readable)."""
    for c in range(10):
        truncated_jpeg(root / "val" / f"n{c:08d}" / "a.JPEG")
        Image.new("RGB", (40, 40)).save((root / "train" / f"n{c:08d}").mkdir(parents=True) or
                                        root / "train" / f"n{c:08d}" / "a.JPEG")
    return root


@pytest.mark.parametrize("tool", ["evaluate", "visualize"])
def test_evaluate_and_visualize_say_no_readable_test_image(tool, ckpt, tmp_path):
    """The synthetic run's ResNet-20 (10 classes, 32x32) on an image folder test set where nothing decodes."""
    root = unreadable_folder(tmp_path / "folder")
    swap = ["data=imagenet", f"data.root={root}", "data.num_classes=10", "data.num_workers=0", "eval.resize=36",
            "eval.crop=32"]
    main = {"evaluate": evaluate.main, "visualize": visualize.main}[tool]
    args = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"] if tool == "evaluate" else [
        "what=confusion", f"out={tmp_path}/cm.png"]
    with pytest.raises(SystemExit, match=f"no readable test image in {root}"):
        main([f"ckpt={ckpt}", *swap, *args])
    assert not (tmp_path / "cm.png").exists()


def test_a_run_whose_test_images_are_all_unreadable_does_not_finish(tmp_path, caplog):
    write_tiny_imagenet(tmp_path / "imagenet", {"train": 3, "val": 1})
    for wnid in SYNSETS:
        for f in (tmp_path / "imagenet" / "val" / wnid).iterdir():
            truncated_jpeg(f)
    with pytest.raises(NoTestData, match=f"no readable test image in {tmp_path}/imagenet"):
        run_train(["data=imagenet", f"data.root={tmp_path}/imagenet", "data.num_classes=3", "data.batch_size=4",
                   "data.num_workers=0", "augment.size=32", "augment.shorter_side=[36,48]", "eval.resize=36",
                   "eval.crop=32", "model=resnet20", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                   "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                   "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "no_test_data" and results["test"] == {}
    assert "no readable test image" in caplog.text and "skipped (limit_test_batches=0)" not in caplog.text


def test_a_second_run_into_a_locked_directory_fails_naming_the_holder(tmp_path):
    """Issue 20, item 6: a second `ckpt_path=last` resume of a run directory in use fails at once, naming the other
    process's pid and host; once that process is dead (kill -9), its stale .lock blocks nothing."""
    run_train([*TINY], tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pathlib\nfrom cnnlab.guards import locked\n"
                               "with locked(pathlib.Path(sys.argv[1])):\n    print('locked', flush=True)\n"
                               "    sys.stdin.read()\n", str(tmp_path / "run")],
                              env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunDirLocked, match=rf"{tmp_path}/run is in use by another run \(pid {holder.pid} on "
                                               rf"host {socket.gethostname()}\)"):
            run_train([*TINY, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {holder.pid} ")  # stale, and harmless:
    run_train([*TINY, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epoch"] == 2


def test_a_relaunch_into_a_finished_run_skips_only_the_same_config(tmp_path, caplog):
    """Issue 25: the same config skips (requeues, relaunched sweeps); another fails naming the keys and directory."""
    score = run_train(TINY, tmp_path / "run")
    before = (tmp_path / "run" / "results.json").read_text()
    with caplog.at_level(logging.INFO):
        assert run_train(TINY, tmp_path / "run") == score and "has finished, skipping it" in caplog.text
    with pytest.raises(ConfigError, match=rf"{tmp_path}/run holds a finished run of another config \(2 keys differ: "
                                          r"data.seed: 0 -> 5; seed: 0 -> 5\)"):
        run_train([*TINY, "seed=5"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"optim.lr: 0.1 -> 0.05"):
        run_train([*TINY, "optim.lr=0.05"], tmp_path / "run")
    assert (tmp_path / "run" / "results.json").read_text() == before  # untouched


@pytest.mark.slow  # two `python train.py -m` sweeps of 2 tiny jobs: ~1 min on a shared CPU
def test_a_sweep_relaunched_with_other_seeds_into_a_finished_sweep_fails_naming_seed(tmp_path):
    sweep = ["-m", *TINY, f"hydra.sweep.dir={tmp_path}/sweep"]
    first = subprocess.run([sys.executable, str(ROOT / "train.py"), *sweep, "seed=0,1"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run([sys.executable, str(ROOT / "train.py"), *sweep, "seed=0,1"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "skipping it" in again.stdout + again.stderr  # the same sweep: skipped
    other = subprocess.run([sys.executable, str(ROOT / "train.py"), *sweep, "seed=5,6"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True)
    assert other.returncode != 0
    assert f"{tmp_path}/sweep/0 holds a finished run of another config" in other.stderr
    assert "seed: 0 -> 5" in other.stderr
    assert json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())["status"] == "finished"
