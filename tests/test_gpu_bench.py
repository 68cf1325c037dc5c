"""The GPU benchmark's pieces on the CPU: the lossless dataset packer (and the CIFAR reader's hook for it), and
benchmarks/gpu.py end to end in smoke mode, so the one command a GPU holder runs cannot rot before a GPU shows up."""

from pathlib import Path

import pytest
import torch

from cnnlab.data import DatasetNotFoundError, InMemoryDataModule
from cnnlab.data.pack import pack, read_packed, unpack
from cnnlab.data.readers import read_image_folder

ROOT = Path(__file__).resolve().parents[1]


def test_packed_cifar_reads_exactly_as_the_folder(cifar10_slice, tmp_path):
    out = tmp_path / "cifar.npz"
    stats = pack(cifar10_slice, out, "cifar10")
    assert stats["images"] == 300 and stats["prefix_bytes"] > 500  # the JPEG header the encoder repeats
    assert stats["packed_bytes"] < 0.5 * stats["source_bytes"]  # CIFAR-10 in full: 52.7 MiB of files -> 19.4 MiB
    for train in (True, False):
        folder = read_image_folder(cifar10_slice / ("train" if train else "test"), 32, 3, tmp_path / "cache")
        packed = read_packed(out, train, 32)
        assert torch.equal(packed.x, folder.x) and torch.equal(packed.y, folder.y)
        assert packed.classes == folder.classes
    data = InMemoryDataModule("cifar10", root=str(out), cache_dir=str(tmp_path / "cache"))  # data.root=<file>
    data.setup()
    assert len(data.splits["train"].y) == 200 and len(data.splits["test"].y) == 100


def test_pack_per_class_and_unpack_round_trip(cifar10_slice, tmp_path):
    out = tmp_path / "small.npz"
    assert pack(cifar10_slice, out, "cifar10", per_class=3)["images"] == 60  # 3 x 10 classes x 2 splits
    back = unpack(out, tmp_path / "back")
    files = sorted(p.relative_to(back) for p in back.rglob("*.jpg"))
    assert len(files) == 60 and files[0] == Path("test/airplane/0000.jpg")
    for f in files:
        assert (back / f).read_bytes() == (cifar10_slice / f).read_bytes()


def test_pack_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="must hold train/<class>/\\* and test/ or val/"):
        pack(tmp_path / "only", tmp_path / "x.npz", "x")
    bogus = tmp_path / "bogus.npz"
    torch.save({"x": 1}, bogus)
    with pytest.raises((DatasetNotFoundError, ValueError, OSError)):
        read_packed(bogus, True, 32)
