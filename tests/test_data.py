"""Readers (both CIFAR layouts, MNIST, image folders with odd files), the one image decoder (16-bit, alpha, EXIF,
hidden files), the decode cache, batch augmentation and the in-memory loader's sharding, resume and test views."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import DATASETS
from PIL import Image

from cnnlab.data import Augment, DatasetNotFoundError, InMemoryDataModule, TensorBatches, images, readers
from cnnlab.evaluation import EvalProtocol


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


def augment_batch(preset: Augment, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The preset's per-batch stage with mean 0 and std 1/255: its output is the augmented uint8 pixels."""
    y, mean, std = torch.zeros(len(x), dtype=torch.long), torch.zeros(1, 1, 1), torch.full((1, 1, 1), 1 / 255)
    out, _ = preset.batch(x, y, mean, std, 10, torch.Generator().manual_seed(seed))
    return out.round().to(torch.uint8)


def test_batch_augment_crops_windows_of_the_padded_image_and_flips():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).to(torch.uint8).repeat(64, 1, 1, 1)
    out = augment_batch(Augment(crop="pad", crop_padding=2, flip=False), x, 0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2,) * 4)
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    for i in range(len(x)):
        hits = [w for w in windows if torch.equal(out[i], padded[i, :, w[0] : w[0] + 8, w[1] : w[1] + 8])]
        assert hits, f"image {i} is not a crop of its padded self"
    assert not torch.equal(out, x)  # some crops moved
    flipped = augment_batch(Augment(crop="none", flip=True), x, 0)
    mirrored = torch.tensor([torch.equal(f, i.flip(2)) for f, i in zip(flipped, x, strict=True)])
    assert 0.2 < mirrored.float().mean() < 0.8
    again = augment_batch(Augment(crop="none", flip=True), x, 0)
    assert torch.equal(flipped, again)


def test_eval_loader_counts_every_image_once_across_ranks():
    x, y = torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103)
    seen = []
    for rank in range(4):
        batches = TensorBatches(x, y, 10, lambda b, y, g: (b.float(), y), shuffle=False, rank=rank, world_size=4)
        labels = [b[1] for b in batches]
        assert len(labels) == len(batches)
        seen += torch.cat(labels).tolist()
    assert sorted(seen) == list(range(103))


def test_train_loader_shuffles_per_epoch_and_resumes_mid_epoch():
    x, y = torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50)
    epoch = {"now": 0}

    def loader():
        return TensorBatches(x, y, 8, lambda b, y, g: (b.float(), y), shuffle=True, seed=1,
                             position=lambda: (epoch["now"], 0))

    first = [b[1].tolist() for b in loader()]
    assert len(first) == 7 and sorted(sum(first, [])) == list(range(50))
    epoch["now"] = 1
    second = [b[1].tolist() for b in loader()]
    assert second != first
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batch": 3})
    assert [b[1].tolist() for b in resumed] == first[3:]


def gradient16(h: int = 32, w: int = 32) -> np.ndarray:
    """16-bit values whose high and low bytes differ everywhere: 0x0100 * row + 0x00ff - col."""
    rows, cols = np.mgrid[0:h, 0:w]
    return (rows * 2048 + 37 * cols + 255).astype(np.uint16)


def test_16bit_greyscale_png_and_tiff_keep_their_high_byte_on_both_backends(tmp_path):
    v = gradient16()
    root = tmp_path / "ds"
    write_image_folder(root, per_class=1)
    Image.fromarray(v).save(root / "train" / "cat" / "deep.png")  # mode I;16
    Image.fromarray(v).save(root / "train" / "dog" / "deep.tif")
    for name in ("cat/deep.png", "dog/deep.tif"):
        img = images.open_image(root / "train" / name)  # the image-folder backends' decoder
        assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 1], v >> 8), name
    t = readers.read_cifar("cifar10", root, True, False, 32, tmp_path / "cache")  # the CIFAR-folder decode path
    assert t.x.shape[0] == 4  # the TIFF too: no longer skipped as unreadable
    for k in (1, 3):  # sorted names: 0.jpg deep.png | 0.jpg deep.tif
        assert torch.equal(t.x[k, 0], torch.from_numpy((v >> 8).astype(np.uint8)))


def test_16bit_rgb_png_scales_each_channel_to_its_high_byte(tmp_path):
    cv2 = pytest.importorskip("cv2")  # PIL cannot write 48-bit PNGs
    rgb = np.stack([gradient16(), 65535 - gradient16(), np.full((32, 32), 0x1234, np.uint16)], -1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    expect = (rgb >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(images.open_image(tmp_path / "rgb16.png")), expect)


def test_transparent_pixels_come_out_white_and_exif_rotation_is_applied(tmp_path):
    px = np.zeros((8, 8, 4), np.uint8)
    px[..., 0], px[:4, :, 3] = 255, 255  # red everywhere; opaque top half, transparent bottom half
    Image.fromarray(px, mode="RGBA").save(tmp_path / "alpha.png")
    out = np.asarray(images.open_image(tmp_path / "alpha.png"))
    assert (out[:4] == (255, 0, 0)).all() and (out[4:] == 255).all()  # not the hidden red under alpha 0
    root = tmp_path / "ds"
    write_image_folder(root, per_class=1)
    Image.fromarray(px, mode="RGBA").resize((32, 32), Image.NEAREST).save(root / "train" / "cat" / "alpha.png")
    t = readers.read_cifar("cifar10", root, True, False, 32, tmp_path / "cache")  # sorted: 0.jpg alpha.png
    assert (t.x[1, :, :16] == torch.tensor([255, 0, 0])[:, None, None]).all() and (t.x[1, :, 16:] == 255).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (0, 200, 0)).save(tmp_path / "phone.jpg", exif=exif)
    assert images.open_image(tmp_path / "phone.jpg").size == (20, 40)  # as a viewer shows it


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    root = tmp_path / "ds"
    write_image_folder(root, per_class=2)
    for hidden in (".ipynb_checkpoints", ".git"):
        (root / "train" / hidden).mkdir()
        Image.new("RGB", (32, 32)).save(root / "train" / hidden / "x.jpg")
    (root / "train" / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00")
    files, labels, classes = images.list_image_folder(root / "train")
    assert classes == ["cat", "dog"] and [f.name for f in files] == ["0.jpg", "1.jpg", "0.jpg", "1.jpg"]


def test_a_folder_of_only_unreadable_files_names_it(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "ds" / split / "cat").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "ds" / split / "cat" / f"{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetNotFoundError, match="none of the 2 images in .*train could be decoded"):
        readers.read_cifar("cifar10", tmp_path / "ds", True, False, 32, tmp_path / "cache")


def test_in_memory_test_stage_cuts_the_flip_views_and_refuses_file_protocols():
    dm = InMemoryDataModule("synthetic", synthetic_size=(20, 10), eval_batch_size=4, device_resident=False,
                            evaluation=EvalProtocol("flip"))
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 2, 3, 32, 32) and torch.equal(x[:, 1], x[:, 0].flip(-1))  # image, mirror image
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 3, 32, 32)  # validation: the stored images
    with pytest.raises(ValueError, match="eval=tencrop cuts views from image files.*eval=none or eval=flip"):
        InMemoryDataModule("synthetic", evaluation=EvalProtocol("tencrop"))


def test_debug_limits_see_every_class_of_a_class_sorted_folder(cifar10_slice, tmp_path):
    """trainer=debug and `limit=N` read the first images of the test split: from a class-sorted folder they take the
    classes in turn, not the first class only (issue: the debug test set was all airplanes)."""
    from cnnlab.data.readers import across_classes

    assert across_classes([0, 0, 0, 1, 1, 2]) == [0, 3, 5, 1, 4, 2]
    data = InMemoryDataModule(dataset="cifar10", root=str(cifar10_slice), batch_size=10, eval_batch_size=10,
                              cache_dir=str(tmp_path / "cache"), device_resident=False)
    data.setup()
    first = data.splits["test"].y[:10].tolist()
    assert sorted(first) == list(range(10))  # one of each class in the first ten
    assert sorted(data.splits["test"].y.tolist()) == [c for c in range(10) for _ in range(10)]  # every image kept


@pytest.mark.parametrize("backend", ["imagefolder", "device_decode"])
def test_debug_limits_see_every_class_of_a_class_sorted_image_folder(backend, cifar10_slice):
    """data=imagenet|imagenette (and the _gpu loaders): the val and test stages read val/ so that the first ten
    images of a 10-class folder are ten classes, the same order every run and for any seed; training keeps the
    folder's order (it shuffles its own) and every image is still read."""
    from cnnlab.data.device_decode import DeviceDecodeDataModule
    from cnnlab.data.imagefolder import ImageFolderDataModule

    cls = {"imagefolder": ImageFolderDataModule, "device_decode": DeviceDecodeDataModule}[backend]

    def module(seed: int) -> ImageFolderDataModule:
        data = cls(str(cifar10_slice), num_classes=10, batch_size=10, eval_batch_size=10, num_workers=0,
                   val_dir="test", evaluation=EvalProtocol("center", 32, 32), seed=seed)
        data.setup()
        return data

    data = module(seed=0)
    for loader in (data.val_dataloader(), data.test_dataloader()):  # what limit_*_batches=1 would score
        x, y = next(iter(loader))
        assert sorted(y.tolist()) == list(range(10))
    files, labels = data.splits["val"]
    assert sorted(labels) == [c for c in range(10) for _ in range(10)] and len(set(files)) == 100
    assert data.splits["val"] == module(seed=1).splits["val"]  # fixed, whatever the run's seed
    train_files, train_labels, _ = images.list_image_folder(cifar10_slice / "train")
    assert data.splits["train"] == (train_files, train_labels)  # training's order is the folder's
