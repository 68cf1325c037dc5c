"""ImageNet-layout data through both backends (PIL workers, FFCV), odd JPEGs, unreadable files in training and in
evaluation, the archive preparation script, class names, the ffcv install hint, and a short real Imagenette run
through train.py."""

import csv
import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATASETS, ROOT, compose_run, run_train
from hydra.utils import instantiate
from PIL import Image

from cnnlab.data import Augment, ImageFolderDataModule, InMemoryDataModule, eval_transform
from cnnlab.data.images import open_rgb
from cnnlab.evaluation import EvalProtocol

SYNSETS = ["n00000001", "n00000002", "n00000003"]
NAMES = ["red thing", "green thing", "blue thing"]


def write_tiny_imagenet(root: Path, per_class: dict[str, int] = None) -> int:
    """3 classes of colour-coded noise (learnable), images of varying size, plus in train/ of class 0 a greyscale,
    a CMYK and a truncated JPEG; returns the number of readable train images."""
    per_class = per_class or {"train": 6, "val": 2}
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, wnid in enumerate(SYNSETS):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
                px = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
                px[..., c] += 120
                Image.fromarray(px).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    odd = root / "train" / SYNSETS[0]
    Image.fromarray(np.full((50, 70), 200, np.uint8), mode="L").save(odd / "grey.JPEG")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(odd / "cmyk.JPEG")  # red in CMYK
    good = (odd / f"{SYNSETS[0]}_0.JPEG").read_bytes()
    (odd / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    lines = [f"{s} {n}, other name\n" for s, n in zip(SYNSETS, NAMES, strict=True)]
    (root / "LOC_synset_mapping.txt").write_text("".join(lines))
    return per_class["train"] * 3 + 2


@pytest.fixture
def tiny_imagenet(tmp_path) -> Path:
    write_tiny_imagenet(tmp_path / "imagenet")
    return tmp_path / "imagenet"


def small_preset(**kw) -> Augment:
    return Augment(size=32, crop="shorter_side", shorter_side=(36, 48), lighting=0.1, **kw)


def test_image_folder_backend_converts_odd_jpegs_and_replaces_the_truncated_one(tiny_imagenet, caplog):
    data = ImageFolderDataModule(str(tiny_imagenet), num_classes=3, batch_size=3, num_workers=1,
                                 augment=small_preset(), evaluation=EvalProtocol("center", 40, 32))
    data.setup()
    assert data.classes == SYNSETS and data.class_names == NAMES
    with caplog.at_level(logging.WARNING):
        batches = [list(data.train_dataloader()) for _epoch in range(2)][1]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
    assert len(x) == 21 and len(batches) == 7  # 21 files, 7 full batches of 3: the truncated one replaced
    assert [Path(p).name for p in data.unreadable] == ["truncated.JPEG"]  # met twice, one distinct file
    assert caplog.text.count("truncated.JPEG") == 1 and "1 distinct so far" in caplog.text
    # substitutes carry their own label: the colour-coded class survives the crop
    assert (x.float().mean((2, 3)).argmax(1) == y).float().mean() > 0.9
    batch = data.on_after_batch_transfer((x[:4], y[:4]), 0)  # outside fit: the eval path
    assert batch[0].dtype == torch.float32 and batch[0].shape == (4, 3, 32, 32)
    # greyscale stays grey in RGB; CMYK red comes back red
    grey = Augment(size=32, crop="shorter_side", shorter_side=(36, 36), flip=False)
    g = grey.image(open_rgb(tiny_imagenet / "train" / SYNSETS[0] / "grey.JPEG"))
    assert torch.equal(g[0], g[1]) and abs(g.float().mean() - 200) < 3
    r = grey.image(open_rgb(tiny_imagenet / "train" / SYNSETS[0] / "cmyk.JPEG")).float().mean((1, 2))
    assert r[0] > 200 and r[1] < 60 and r[2] < 60
    val = torch.cat([b[0] for b in data.val_dataloader()])
    assert val.shape == (6, 3, 32, 32)
    state = data.state_dict()
    assert state["classes"] == SYNSETS and state["class_names"] == NAMES and state["mean"].shape == (3, 1, 1)


def add_unreadable_pair(root: Path) -> list[str]:
    """Two corrupt files that sort first in val/ of classes 0 and 1: the first two images of the evaluation order
    (the classes in turn), so batches of 2 make a batch of only them (`readable_batches` checks that it does)."""
    bad = [root / "val" / SYNSETS[c] / f"{'ab'[c]}_bad.JPEG" for c in (0, 1)]
    bad[0].write_bytes(b"not a jpeg")
    bad[1].write_bytes((root / "val" / SYNSETS[1] / f"{SYNSETS[1]}_0.JPEG").read_bytes()[:200])  # truncated
    return sorted(map(str, bad))


def readable_batches(data: ImageFolderDataModule, batch_size: int, bad: list[str]) -> list[list[int]]:
    """The labels of the evaluation batches, read off the data module's own val order: the `bad` files left out and
    a batch of only them skipped. Fails if no batch is only bad files (a fixture that no longer tests the skip)."""
    files, labels = data.splits["val"]
    batches = [[y for f, y in zip(files[i : i + batch_size], labels[i : i + batch_size], strict=True)
                if str(f) not in bad] for i in range(0, len(files), batch_size)]
    assert [] in batches, f"no evaluation batch of only {bad}: order {[f.name for f in files]}"
    return [b for b in batches if b]


@pytest.mark.parametrize("protocol", ["center", "tencrop", "dense"])
def test_an_evaluation_batch_of_only_unreadable_images_is_skipped_and_counted_once(tiny_imagenet, protocol, caplog):
    bad = add_unreadable_pair(tiny_imagenet)
    data = ImageFolderDataModule(str(tiny_imagenet), num_classes=3, eval_batch_size=2, num_workers=0,
                                 augment=small_preset(), evaluation=EvalProtocol(protocol, 40, 32, scales=(32, 40)))
    data.setup()
    with caplog.at_level(logging.WARNING):
        for _epoch in range(2):
            batches = list(data.test_dataloader())
    assert [b[1].tolist() for b in batches] == readable_batches(data, 2, bad)  # the batch [a_bad, b_bad] left out
    assert len(batches) == 3 and sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(data.unreadable) == bad and "2 distinct so far" in caplog.text
    assert "3 distinct" not in caplog.text and "4 distinct" not in caplog.text  # files, not events


def test_unreadable_validation_images_side_by_side_do_not_stop_train_py(tiny_imagenet, tmp_path):
    add_unreadable_pair(tiny_imagenet)
    run_train(["data=imagenet", f"data.root={tiny_imagenet}", "data.num_classes=3", "data.batch_size=4",
               "data.eval_batch_size=2", "data.num_workers=0", "augment.size=32", "augment.shorter_side=[36,48]",
               "eval.resize=36", "eval.crop=32", "model=resnet18", "model.widths=[8,8,16,16]",
               "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
               "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    test = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    assert 0 <= test["test/err1"] <= 1


@pytest.mark.slow  # numba compiles FFCV's pipelines: minutes on a shared CPU
def test_ffcv_backend_writes_and_reads_the_same_folder(tiny_imagenet, tmp_path):
    pytest.importorskip("ffcv")
    from cnnlab.data.ffcv import FFCVDataModule
    from cnnlab.data.write_ffcv import main

    out = tmp_path / "betons"
    main([str(tiny_imagenet), str(out), "--max-side", "64", "--quality", "95", "--workers", "1"])
    meta = json.loads((out / "classes.json").read_text())
    assert meta["splits"] == {"train": 20, "val": 6} and meta["class_names"] == NAMES
    assert meta["eval_order"] == "across_classes"
    assert [Path(p).name for p in meta["skipped"]["train"]] == ["truncated.JPEG"]
    data = FFCVDataModule(str(out), num_classes=3, batch_size=4, num_workers=1, augment=small_preset(),
                          evaluation=EvalProtocol("center", 40, 32))
    data.setup()
    batches = list(data.train_dataloader())
    assert len(batches) == 5 and all(len(b) == 2 for b in batches)
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32)
    val = list(data.val_dataloader())
    assert torch.cat([b[1] for b in val]).tolist() == [0, 1, 2, 0, 1, 2]  # as the image folder's val: classes in turn
    # the same meaning: the class colour survives decoding, cropping and flipping on both paths
    for xb, yb in val:
        for img, label in zip(xb, yb, strict=True):
            assert img.float().mean((1, 2)).argmax() == label
    normalized, y = data.augment.batch(x, torch.cat([b[1] for b in batches]), data.mean, data.std, 3)
    assert normalized.dtype == torch.float32 and normalized.abs().max() < 5
    # through train.py: epochs cut short, then the test stage (under inference mode) on a fresh loader
    run_train(["data=imagenet_ffcv", f"data.root={out}", "data.num_classes=3", "data.batch_size=4",
               "data.num_workers=1", "augment.size=32", "augment.shorter_side=[36,48]", "eval=flip", "eval.resize=40",
               "eval.crop=32", "model=resnet18", "model.widths=[8,8,16,16]", "trainer.accelerator=cpu",
               "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
               "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    rows = list(csv.DictReader(next((tmp_path / "run").glob("csv/version_*/metrics.csv")).open()))
    assert [r for r in rows if r.get("test/err1")] and len([r for r in rows if r.get("train/loss")]) == 2


def test_ffcv_crop_sampler_is_the_presets_own(tiny_imagenet):
    pytest.importorskip("numba")
    import numba

    from cnnlab.data.ffcv import crop_generator

    for preset in (Augment(crop="shorter_side", shorter_side=(256, 480)),
                   Augment(crop="shorter_side", shorter_side=(256, 256), center_square=True),
                   Augment(crop="resized")):
        jitted = numba.njit(crop_generator(preset))
        boxes = np.array([jitted(np.uint32(375), np.uint32(500), None, None) for _ in range(3000)])
        np.random.seed(0)
        ref = np.array([preset.box(375, 500) for _ in range(3000)])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 375).all()
        assert (boxes[:, 1] + boxes[:, 3] <= 500).all()
        assert abs(boxes[:, 2].mean() - ref[:, 2].mean()) < 0.05 * ref[:, 2].mean()  # same distribution
        for q in (1, 99):  # the tails too (percentiles: the extremes of 3000 draws differ by chance)
            assert abs(np.percentile(boxes[:, 2], q) - np.percentile(ref[:, 2], q)) < 0.05 * ref[:, 2].mean()


def test_ffcv_missing_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    from cnnlab.data.ffcv import FFCVDataModule

    with pytest.raises(ImportError, match=r"apt-get install -y libturbojpeg0-dev.*pip install -e '\.\[ffcv\]'"):
        FFCVDataModule("/nowhere", num_classes=3)


def test_a_preset_for_the_other_kind_of_data_fails_naming_both(tmp_path):
    with pytest.raises(ValueError, match="ImageFolderDataModule.*augment.crop must be one of .* got 'pad'.*alexnet"):
        ImageFolderDataModule(str(tmp_path), augment=Augment(crop="pad", crop_padding=4))
    with pytest.raises(ValueError, match="InMemoryDataModule.*augment.crop must be one of .* got 'resized'.*=cifar"):
        InMemoryDataModule("synthetic", augment=Augment())
    with pytest.raises(ValueError, match="eval=none.*eval=center"):
        ImageFolderDataModule(str(tmp_path), evaluation=EvalProtocol("none"))
    cfg = compose_run(["data=imagenet"], tmp_path / "run")  # data=imagenet brings its own augment and eval defaults
    assert cfg.augment.crop == "shorter_side" and cfg.eval.name == "center"
    cfg = compose_run(["data=imagenet", "augment=alexnet", "eval=tencrop"], tmp_path / "run")
    assert cfg.augment.center_square and cfg.data.evaluation.name == "tencrop" and cfg.data.evaluation.crop == 224
    assert "evaluation" not in cfg.module  # one protocol, the data module's: it cuts the views
    cfg = compose_run(["experiment=ilsvrc_alexnet", "eval=tencrop"], tmp_path / "run")
    assert cfg.data.evaluation.square  # the paper's 10 patches of the central 256x256


def test_eval_transform_for_a_pil_image_matches_the_test_loader(tiny_imagenet, tmp_path):
    cfg = compose_run(["data=imagenet", f"data.root={tiny_imagenet}", "data.num_classes=3", "eval.resize=40",
                       "eval.crop=32", "data.num_workers=0"], tmp_path / "run")
    data = instantiate(cfg.data, augment=instantiate(cfg.augment), _convert_="all")
    data.setup()
    x, y = data.on_after_batch_transfer(next(iter(data.test_dataloader())), 0)
    f = eval_transform(cfg.data, cfg.eval)
    assert torch.allclose(f(Image.open(data.splits["val"][0][0])), x[0], atol=1e-6)
    cifar = eval_transform({"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    assert cifar(Image.new("RGB", (40, 50), (255, 0, 0))).shape == (3, 32, 32)
    mnist = eval_transform({"image_size": 32, "pad": 2, "in_channels": 1, "mean": [0.13], "std": [0.31]})
    assert mnist(Image.new("L", (28, 28), 255)).shape == (1, 32, 32)


def test_prepare_imagenet_on_a_tiny_fake_devkit(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    wnids = ["n01440764", "n01443537", "n01484850"]
    synsets = np.zeros((4,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for i, (wnid, words) in enumerate(zip([*wnids, "n00001740"], ["tench, Tinca tinca", "goldfish", "great white shark",
                                                                   "entity"], strict=True)):
        synsets[i] = (i + 1, wnid, words, 0 if i < 3 else 3)  # the 4th is an inner node of the hierarchy
    mat = io.BytesIO()
    scipy_io.savemat(mat, {"synsets": synsets})
    truth = [3, 1, 2, 1, 3]  # ILSVRC2012_IDs of val images 1..5
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as tar:
        for name, payload in (("meta.mat", mat.getvalue()),
                              ("ILSVRC2012_validation_ground_truth.txt", "\n".join(map(str, truth)).encode())):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    def jpeg(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), seed, np.uint8)).save(buf, "JPEG")
        return buf.getvalue()

    def add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    val = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(val, "w") as tar:
        for i in reversed(range(5)):  # archive order must not matter: labels follow file names
            add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(i))
    train = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(train, "w") as tar:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as cls_tar:
                for i in range(2):
                    add(cls_tar, f"{wnid}_{i}.JPEG", jpeg(i))
            add(tar, f"{wnid}.tar", inner.getvalue())
    out = tmp_path / "imagenet"
    subprocess.run([sys.executable, str(ROOT / "data" / "prepare_imagenet.py"), "--out", str(out), "--devkit",
                    str(devkit), "--val", str(val), "--train", str(train)], check=True, capture_output=True)
    assert sorted(p.name for p in (out / "val" / wnids[0]).iterdir()) == ["ILSVRC2012_val_00000002.JPEG",
                                                                         "ILSVRC2012_val_00000004.JPEG"]
    assert sorted(p.name for p in (out / "val" / wnids[2]).iterdir()) == ["ILSVRC2012_val_00000001.JPEG",
                                                                         "ILSVRC2012_val_00000005.JPEG"]
    assert sorted(p.name for p in (out / "train" / wnids[1]).iterdir()) == [f"{wnids[1]}_0.JPEG", f"{wnids[1]}_1.JPEG"]
    data = ImageFolderDataModule(str(out), num_classes=3)
    data.setup()
    assert data.class_names == ["tench", "goldfish", "great white shark"]
    assert not (out / "val" / "n00001740").exists()


@pytest.fixture
def imagenette() -> Path:
    root = DATASETS / "imagenette2-224"
    if not (root / "train").is_dir():
        pytest.skip(f"Imagenette is not at {root} (set CNNLAB_DATASETS)")
    return root


@pytest.mark.slow  # about 20 s: real Imagenette JPEGs, ten crops
def test_short_imagenette_run_trains_and_tests_with_ten_crops(imagenette, tmp_path):
    """6 images of each of the 10 classes at 64 px, a ResNet-18, 4 epochs: the training loss goes down, and the test
    stage scores 10 views of each of the 6 x 10 val images."""
    run_train(["data=imagenette", f"data.root={imagenette}", "data.per_class=6", "data.batch_size=16",
               "data.num_workers=1", "augment.size=64", "augment.shorter_side=[72,96]", "eval=tencrop",
               "eval.resize=72", "eval.crop=64", "data.eval_batch_size=12", "model=resnet18", "optim=adamw",
               "schedule=constant", "trainer.max_epochs=4", "trainer.accelerator=cpu", "trainer.limit_val_batches=1",
               "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0",
               "trainer.log_every_n_steps=1"], tmp_path)
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_*/metrics.csv")).open()))
    epoch_loss = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(epoch_loss) == 4 and epoch_loss[-1] < epoch_loss[0] - 0.2, epoch_loss
    assert [r for r in rows if r.get("test/err1")]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ImageFolderDataModule"]["class_names"][0] == "tench"
