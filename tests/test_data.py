"""Readers (both CIFAR layouts, MNIST, image folders with odd files), the decode cache, batch augmentation and the
in-memory loader's sharding and resume."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import DATASETS
from PIL import Image

from cnnlab.data import BatchAugment, DatasetNotFoundError, InMemoryDataModule, TensorBatches, readers


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=3, size=32) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")


def test_image_folder_converts_resizes_skips_corrupt_and_caches_outside_the_dataset(tmp_path, caplog):
    root = tmp_path / "ds"
    write_image_folder(root)
    Image.fromarray(np.full((40, 60), 200, np.uint8), mode="L").save(root / "train" / "cat" / "grey.png")
    Image.new("CMYK", (100, 80), (0, 255, 0, 0)).save(root / "train" / "dog" / "cmyk.jpg")
    good = (root / "train" / "dog" / "0.jpg").read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        t = readers.read_cifar("cifar10", root, True, False, 32, cache)
    assert t.x.dtype == torch.uint8 and t.x.shape == (3 + 1 + 3 + 1, 3, 32, 32)  # truncated one skipped
    assert t.classes == ["cat", "dog"] and t.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert "skipped 1 unreadable" in caplog.text and "truncated.jpg" in caplog.text
    grey = t.x[3]  # sorted names: 0.jpg 1.jpg 2.jpg grey.png
    assert torch.equal(grey[0], grey[1]) and (grey.float().mean() - 200).abs() < 2
    assert list(cache.glob("*.pt")) and not list(root.rglob("*.pt"))

    def fail(*_):
        raise AssertionError("decoded again despite the cache")

    readers._Decode.__getitem__, original = fail, readers._Decode.__getitem__
    try:
        again = readers.read_cifar("cifar10", root, True, False, 32, cache)
    finally:
        readers._Decode.__getitem__ = original
    assert torch.equal(again.x, t.x)


def test_python_pickle_layout_is_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # fake md5s
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    for root in (tmp_path, d):  # the parent, as torchvision wants it, or the folder itself
        t = readers.read_cifar("cifar10", root, True, False, 32, tmp_path / "cache")
        assert t.x.shape == (20, 3, 32, 32) and t.classes[0] == "c0"


def test_missing_or_incomplete_dataset_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}/nowhere.*data.root"):
        readers.read_cifar("cifar10", tmp_path / "nowhere", True, False, 32, tmp_path)
    (tmp_path / "half" / "train" / "cat").mkdir(parents=True)  # no test/ split
    with pytest.raises(DatasetNotFoundError, match="half"):
        readers.read_cifar("cifar10", tmp_path / "half", True, False, 32, tmp_path)
    (tmp_path / "half" / "test" / "cat").mkdir(parents=True)  # an empty class folder
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        readers.read_cifar("cifar10", tmp_path / "half", True, False, 32, tmp_path)
    with pytest.raises(DatasetNotFoundError, match="MNIST"):
        readers.read_mnist(tmp_path / "nowhere", True, False)


def test_class_count_mismatch_is_an_error(tmp_path):
    write_image_folder(tmp_path / "ds", classes=("a", "b", "c"))
    dm = InMemoryDataModule("cifar10", root=str(tmp_path / "ds"), num_classes=10, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetNotFoundError, match="3 classes.*num_classes=10"):
        dm.setup()


def test_mnist_from_the_shared_copy():
    if not (DATASETS / "mnist" / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST copy")
    dm = InMemoryDataModule("mnist", root=str(DATASETS / "mnist"), in_channels=1, pad=2, image_size=32,
                            mean=(0.1307,), std=(0.3081,))
    dm.setup()
    assert dm.splits["train"].x.shape == (60000, 1, 32, 32) and len(dm.splits["test"].y) == 10000
    assert not dm.splits["train"].x[:, :, :2].any()  # the 2-pixel zero border around each 28x28 digit


def test_val_split_is_held_out_of_training(tmp_path):
    dm = InMemoryDataModule("synthetic", synthetic_size=(100, 20), val_split=30)
    dm.setup()
    assert [len(dm.splits[s].y) for s in ("train", "val", "test")] == [70, 30, 20]
    train = {tuple(x.flatten()[:64].tolist()) for x in dm.splits["train"].x}
    assert not any(tuple(x.flatten()[:64].tolist()) in train for x in dm.splits["val"].x)


def test_batch_augment_crops_windows_of_the_padded_image_and_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).to(torch.uint8).repeat(64, 1, 1, 1)
    out = BatchAugment(crop_padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2,) * 4)
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    for i in range(len(x)):
        hits = [w for w in windows if torch.equal(out[i], padded[i, :, w[0] : w[0] + 8, w[1] : w[1] + 8])]
        assert hits, f"image {i} is not a crop of its padded self"
    assert not torch.equal(out, x)  # some crops moved
    flipped = BatchAugment(flip=True)(x, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(f, i.flip(2)) for f, i in zip(flipped, x, strict=True)])
    assert 0.2 < mirrored.float().mean() < 0.8
    again = BatchAugment(flip=True)(x, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)


def test_eval_loader_counts_every_image_once_across_ranks():
    x, y = torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103)
    seen = []
    for rank in range(4):
        batches = TensorBatches(x, y, 10, lambda b, g: b.float(), shuffle=False, rank=rank, world_size=4)
        labels = [b[1] for b in batches]
        assert len(labels) == len(batches)
        seen += torch.cat(labels).tolist()
    assert sorted(seen) == list(range(103))


def test_train_loader_shuffles_per_epoch_and_resumes_mid_epoch():
    x, y = torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50)
    epoch = {"now": 0}

    def loader():
        return TensorBatches(x, y, 8, lambda b, g: b.float(), shuffle=True, seed=1,
                             position=lambda: (epoch["now"], 0))

    first = [b[1].tolist() for b in loader()]
    assert len(first) == 7 and sorted(sum(first, [])) == list(range(50))
    epoch["now"] = 1
    second = [b[1].tolist() for b in loader()]
    assert second != first
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batch": 3})
    assert [b[1].tolist() for b in resumed] == first[3:]
